"""Cost model, speedup composition and the recommendation (Hydra yaml + JSON + Markdown)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from scylla.measure.analytic import batch_speedup, leviathan_speedup
from scylla.fit import FitError, fit_law
from scylla.fit.cost import fit_cost_model
from scylla.fit.recommend import acceptance_table, candidate_drafts, recommend
from scylla.fit.synthetic import TRUTH, synthetic_results

LEVIATHAN = Path(__file__).resolve().parent / "data" / "leviathan2023_table4_expected_speedup.csv"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synthetic_results(0)


@pytest.fixture(scope="module")
def fitted(table):
    acc = acceptance_table(table)
    law = fit_law(acc, "joint_logit_linear", ["draft_tokens", "draft_params"], "alpha_token", n_bootstrap=300,
                  holdout=False)
    cost = fit_cost_model(table, n_bootstrap=300)
    return acc, law, cost


def test_acceptance_table_pools_batch_sizes_and_gammas(table):
    acc = acceptance_table(table)
    assert len(acc) == 25 and (acc["n_rows"] == 6).all()
    row = acc.iloc[0]
    raw = table[(table["draft_name"] == row["draft_name"]) & (table["draft_tokens"] == row["draft_tokens"])]
    assert row["accepted"] == raw["accepted"].sum()
    assert row["alpha"] == pytest.approx(raw["accepted"].sum() / raw["drafted"].sum())
    assert row["tau"] == pytest.approx(1 + raw["accepted"].sum() / raw["steps"].sum())  # bonus token included
    # same prompts at every batch size: per-prompt counters are summed elementwise
    assert len(row["prompt_accepted"]) == 16 and sum(row["prompt_accepted"]) == row["accepted"]
    # per-token acceptance = accepted / judged positions, from the per-position counters
    reached = raw.filter(regex=r"^reached_\d+$").sum().sum()
    assert row["alpha_token"] == pytest.approx(row["accepted"] / reached)
    assert (acc["alpha_token"] > acc["alpha"]).all()  # accepted/drafted understates it for gamma > 1
    assert sum(row["prompt_reached"]) == pytest.approx(reached)


def test_token_acceptance_from_tau_inverts_the_iid_chain_model():
    from scylla.measure.analytic import expected_tau
    from scylla.fit.recommend import token_acceptance_from_tau

    p = np.array([0.1, 0.5, 0.8, 0.95])
    g = np.array([1, 4, 5, 8])
    np.testing.assert_allclose(token_acceptance_from_tau(expected_tau(p, g) - 1, g), p, atol=1e-9)
    # without per-position counters the table falls back to this inversion, and it agrees
    t = synthetic_results(3, shapes=((64, 2),), tokens=(1e7,), batch_sizes=(1,), gammas=(4,), n_prompts=64,
                          prompt_sd=0.0)
    with_pos = acceptance_table(t)["alpha_token"].iloc[0]
    without = acceptance_table(t.drop(columns=[c for c in t if c.startswith(("reached_", "accepted_"))]))
    assert without["alpha_token"].iloc[0] == pytest.approx(with_pos, abs=0.02)


def test_cost_model_recovers_the_generating_step_times(fitted):
    _, _, cost = fitted
    d0, d1, d2 = TRUTH["draft"]
    t0, t1, t2 = TRUTH["target"]
    for got, want in zip(cost.draft_coef, (d0, d1, d2)):
        assert got == pytest.approx(want, rel=0.15)
    for got, want in zip(cost.target_coef, (t0, t1, t2)):
        assert got == pytest.approx(want, rel=0.15)
    assert cost.r2_draft > 0.95 and cost.r2_target > 0.95
    assert cost.draft_time(1e6, 4, np.array([1, 8]), draws=True).shape == (300, 2)


def test_composition_agrees_with_leviathan_and_the_published_table():
    """With verification as cheap as one step, batch_speedup is Leviathan's Theorem 3.8; the
    published Table 4 expected speedups are matched within 0.1 (the table's alpha is itself rounded
    to two decimals, which moves three of the twelve rows across a rounding boundary)."""
    t = pd.read_csv(LEVIATHAN)
    s = batch_speedup(t["alpha"].to_numpy(), t["gamma"].to_numpy(), 1.0, 1.0, t["c"].to_numpy())
    np.testing.assert_allclose(s, leviathan_speedup(t["alpha"], t["gamma"], t["c"]))
    np.testing.assert_allclose(s, t["expected_speedup"], atol=0.1)


def test_recommendation_is_the_true_best_and_reports_uncertainty(table, fitted):
    acc, law, cost = fitted
    cands = candidate_drafts(table)
    assert set(cands.columns) >= {"draft_name", "d_model", "n_layers", "n_heads", "ffn_dim", "draft_params"}
    assert (cands["n_heads"] == (cands["d_model"] // 64).clip(lower=1)).all()
    rec = recommend(law, cost, candidates=cands, token_budgets=acc["draft_tokens"].unique(), batch_sizes=[1, 4, 16])
    # ground truth: the same composition with the generating law and cost coefficients
    t = TRUTH
    best, best_score = None, -np.inf
    for _, c in cands.iterrows():
        for T in acc["draft_tokens"].unique():
            a = 1 / (1 + np.exp(-(t["a"] + t["b1"] * np.log(T) + t["b2"] * np.log(c["draft_params"]))))
            score = 0.0
            for B in (1, 4, 16):
                td = t["draft"][0] + t["draft"][1] * c["n_layers"] + t["draft"][2] * c["draft_params"] * B
                tt = lambda k: t["target"][0] + t["target"][1] * B + t["target"][2] * B * k  # noqa: E731
                score += np.log(max(batch_speedup(a, g, tt(1), tt(g + 1), td) for g in range(9))) / 3
            if score > best_score:
                best, best_score = (c["draft_name"], T), score
    assert (rec.draft["draft_name"], rec.draft["tokens"]) == best
    assert 0 < rec.p_best <= 1 and rec.regret >= 0 and rec.n_draws == 300
    gammas = [r["gamma"] for r in rec.per_batch]
    assert gammas == sorted(gammas, reverse=True)  # verification cost grows with batch: gamma shrinks
    for r in rec.per_batch:
        assert r["low"] <= r["speedup"] <= r["high"]


def test_compute_budget_restricts_the_choice(table, fitted):
    acc, law, cost = fitted
    cands = candidate_drafts(table)
    budget = 6 * 1e6 * 2e7
    rec = recommend(law, cost, candidates=cands, token_budgets=acc["draft_tokens"].unique(), batch_sizes=[1],
                    compute_budget=budget)
    assert 6 * rec.draft["draft_params"] * rec.draft["tokens"] <= budget
    with pytest.raises(FitError, match="compute budget"):
        recommend(law, cost, candidates=cands, token_budgets=[1e6], batch_sizes=[1], compute_budget=1.0)


def test_outputs_hydra_yaml_json_markdown(table, fitted, tmp_path):
    acc, law, cost = fitted
    rec = recommend(law, cost, candidates=candidate_drafts(table), token_budgets=acc["draft_tokens"].unique(),
                    batch_sizes=[1, 16])
    paths = rec.write(tmp_path)
    cfg = yaml.safe_load(paths["yaml"].read_text())
    assert set(cfg) == {"name", "family", "d_model", "n_layers", "n_heads", "ffn_dim", "tokens"}
    assert cfg["family"] == "llama" and cfg["ffn_dim"] is None and cfg["name"] == paths["yaml"].stem
    text = paths["yaml"].read_text()
    assert "batch_size=16" in text and "gamma=" in text and "speedup=" in text
    report = json.loads(paths["json"].read_text())
    assert report["per_batch"][0]["gamma"] == rec.per_batch[0]["gamma"] and "p_best" in report
    md = paths["markdown"].read_text()
    assert "P(best" in md and "| 16 |" in md


def test_emitted_draft_config_composes_as_draft_name(table, fitted, tmp_path, monkeypatch):
    """The yaml is a real `draft` group option: dropped into a copy of configs/, `draft=<name>`
    composes, validates, and yields the recommended shape and token budget."""
    import shutil

    from scylla.config import compose, config_dir, validate

    acc, law, cost = fitted
    rec = recommend(law, cost, candidates=candidate_drafts(table), token_budgets=acc["draft_tokens"].unique(),
                    batch_sizes=[1, 16])
    configs = tmp_path / "configs"
    shutil.copytree(config_dir(), configs)
    paths = rec.write(tmp_path / "fit")
    shutil.copy(paths["yaml"], configs / "draft" / paths["yaml"].name)
    monkeypatch.setenv("SCYLLA_CONFIG_DIR", str(configs))
    job = validate(compose([f"draft={rec.name}"]))
    assert job.draft.name == rec.name and job.draft.family == "llama"
    assert (job.draft.d_model, job.draft.n_layers, job.draft.tokens) == (
        rec.draft["d_model"], rec.draft["n_layers"], int(rec.draft["tokens"]))
    assert job.draft.d_model % job.draft.n_heads == 0


def test_recommend_needs_bootstrap_and_alpha(fitted, table):
    acc, _, cost = fitted
    no_boot = fit_law(acc, "joint_logit_linear", ["draft_tokens", "draft_params"], "alpha_token", holdout=False)
    raw_rate = fit_law(acc, "joint_logit_linear", ["draft_tokens", "draft_params"], "alpha", n_bootstrap=20,
                       holdout=False)
    with pytest.raises(FitError, match="alpha_token"):
        recommend(raw_rate, cost, candidates=candidate_drafts(table), token_budgets=[1e7], batch_sizes=[1])
    with pytest.raises(FitError, match="bootstrap"):
        recommend(no_boot, cost, candidates=candidate_drafts(table), token_budgets=[1e7], batch_sizes=[1])
    with pytest.raises(FitError, match="cost model needs"):
        fit_cost_model(table.drop(columns=["draft_step_seconds"]))


def test_cost_model_warns_when_verification_was_measured_at_one_gamma():
    """A single verify width leaves the cost of other gammas to linear interpolation: say so."""
    from scylla.fit.checks import FitWarning

    one = synthetic_results(2, gammas=(4,), shapes=((64, 2), (128, 4)), tokens=(2e6, 2e7), batch_sizes=(1, 4, 16))
    with pytest.warns(FitWarning, match=r"1 gamma only \(4\)"):
        fit_cost_model(one)
    two = synthetic_results(2, gammas=(1, 4), shapes=((64, 2), (128, 4)), tokens=(2e6, 2e7), batch_sizes=(1, 4, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        fit_cost_model(two)
