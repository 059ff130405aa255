"""scylla-fit end to end on a synthetic results table, plus its errors."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from scylla.fit.cli import build_parser, fit_results, load_table, main
from scylla.fit.mtp import mtp_table
from scylla.fit.synthetic import MTP_TRUTH, synthetic_mtp_results, synthetic_results


@pytest.fixture(scope="module")
def results_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("results") / "table.parquet"
    synthetic_results(1, shapes=((64, 2), (128, 4), (256, 4)), tokens=(2e6, 2e7, 2e8)).to_parquet(path)
    return path


def test_cli_writes_fits_report_recommendation_and_figures(results_file, tmp_path, capsys):
    out = tmp_path / "fit"
    code = main([str(results_file), "--out", str(out), "--n-bootstrap", "60", "--batch-sizes", "1,4,16"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "recommended rec_d" in printed and "gamma=" in printed
    summary = json.loads((out / "fits.json").read_text())
    assert {"alpha_joint/joint_logit_linear", "alpha_vs_tokens/logit_linear", "loss/chinchilla",
            "speedup_vs_batch/log_linear"} <= set(summary["fits"])
    weights = [row["akaike_weight"] for row in summary["comparisons"]["alpha_vs_tokens"]]
    assert weights == sorted(weights, reverse=True)
    rec = summary["recommendation"]
    assert [r["batch_size"] for r in rec["per_batch"]] == [1.0, 4.0, 16.0]
    cfg = yaml.safe_load((out / "draft" / f"{rec['name']}.yaml").read_text())
    assert cfg["name"] == rec["name"] and cfg["family"] == "llama"
    assert (out / "report.md").read_text().startswith("# Scylla fit report")
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert "speedup_vs_batch.png" in figs and "law_alpha_joint__joint_logit_linear.png" in figs
    assert any(f.startswith("residuals_") for f in figs)
    assert all((out / "figures" / f).stat().st_size > 5000 for f in figs)
    assert summary["mtp"] is None and not any(k.startswith("mtp_") for k in summary["fits"])  # llama only
    assert "mtp_tau_vs_k.png" not in figs and "Multi-token prediction" not in (out / "report.md").read_text()


def test_cli_groups_by_task(results_file, tmp_path):
    t = pd.read_parquet(results_file)
    two = pd.concat([t, t.assign(task="code")], ignore_index=True)
    path = tmp_path / "two.csv"
    two.drop(columns=["prompt_accepted", "prompt_drafted", "prompt_steps", "draft_val_loss"]).to_csv(path, index=False)
    out = tmp_path / "fit"
    assert main([str(path), "--out", str(out), "--n-bootstrap", "20", "--no-plots", "--task", "code"]) == 0
    assert (out / "fits.json").exists()  # one group: no subfolder
    assert main([str(path), "--out", str(out / "all"), "--n-bootstrap", "20", "--no-plots"]) == 0
    groups = sorted(p.name for p in (out / "all").iterdir())
    assert groups == ["task-code_temperature-0.0", "task-prose_temperature-0.0"]


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main([str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o")]) == 2
    assert "no results" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"x": [1, 2]}).to_csv(bad, index=False)
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "lacks column" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "o")]) == 2
    assert "results path" in capsys.readouterr().err


def test_help_documents_the_options():
    text = build_parser().format_help()
    for opt in ("--out", "--wandb-project", "--n-bootstrap", "--batch-sizes", "--compute-budget", "--max-gamma"):
        assert opt in text
    run = subprocess.run([sys.executable, "-m", "scylla.fit", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "draft=<name>" in run.stdout


def test_wandb_source_as_a_results_spec(monkeypatch):
    """`make fit RESULTS=wandb:team/proj` reaches scylla.harness.results.load_wandb with the project path."""
    from scylla.harness import results

    seen = []
    monkeypatch.setattr(results, "load_wandb", lambda project: seen.append(project) or pd.DataFrame({"a": [1]}))
    assert len(load_table("wandb:team/proj")) == 1 and seen == ["team/proj"]
    assert len(load_table(None, wandb_project="proj")) == 1 and seen[-1] == "proj"
    with pytest.raises(FileNotFoundError, match="needs a project name"):
        load_table("wandb:")


def test_load_table_reads_tables(results_file):
    assert len(load_table(str(results_file))) == len(pd.read_parquet(results_file))
    assert len(load_table(str(results_file.parent))) == len(pd.read_parquet(results_file))


# ---------------------------------------------------------------------------------------------------
# The multi-token-prediction family


@pytest.fixture(scope="module")
def mtp_frame():
    return synthetic_mtp_results(3)


def test_mtp_table_pools_batch_sizes_per_head_count(mtp_frame):
    t = mtp_table(mtp_frame)
    assert len(t) == 3 * 5 * 3  # shapes x token budgets x k' (batch sizes pooled)
    assert sorted(t.k.unique()) == [2, 3, 4] and (t.k == t.gamma + 1).all()
    assert ((t.tau_fraction - (t.tau - 1) / (t.k - 1)).abs() < 1e-12).all()
    assert t.loc[t.k == 2, "alpha_2"].isna().all() and t.loc[t.k == 4, "alpha_3"].between(0, 1).all()
    row = t.iloc[0]
    assert sum(row.prompt_accepted) / sum(row.prompt_steps_gamma) == pytest.approx(row.tau_fraction)


def test_mtp_laws_next_to_the_separate_draft_recommendation(results_file, mtp_frame, tmp_path):
    table = pd.concat([pd.read_parquet(results_file), mtp_frame], ignore_index=True)
    out = tmp_path / "fit"
    summary = next(iter(fit_results(table, out, n_bootstrap=200, seed=0).values()))
    fits = summary["fits"]
    assert {"mtp_tau_vs_tokens/log_linear", "mtp_tau_vs_params/log_linear", "mtp_tau_fraction_vs_tokens/log_linear",
            "mtp_tau_fraction_vs_tokens/logit_linear"} <= set(fits)
    law = fits["mtp_tau_vs_tokens/log_linear"]
    assert law["y"] == "tau" and law["x"] == ["draft_tokens"] and law["n_points"] == 5
    lo, hi = law["intervals"]["b"]
    assert lo < MTP_TRUTH["b1"] < hi and lo > 0, law  # the known slope of tau in ln tokens is recovered
    assert abs(law["params"]["b"] - MTP_TRUTH["b1"]) < 0.05
    assert law["bootstrap_mode"] == "prompts+configurations"
    assert [r["form"] for r in summary["comparisons"]["mtp_tau_fraction_vs_tokens"]]
    # the separate-draft recommendation is untouched by the MTP rows
    rec = summary["recommendation"]
    assert rec is not None and rec["name"].startswith("rec_d") and (out / "draft" / f"{rec['name']}.yaml").is_file()
    assert "alpha_joint/joint_logit_linear" in fits
    mtp = summary["mtp"]
    assert mtp["k_max"] == 4 and mtp["headline"]["draft_name"] == "mtp_d256_l2_k4"
    head = [r for r in mtp["tau_vs_k"] if r["draft_name"] == "mtp_d256_l2_k4" and r["draft_tokens"] == 2e8]
    assert [r["k"] for r in head] == [2, 3, 4] and [r["tau"] for r in head] == sorted(r["tau"] for r in head)
    assert set(head[0]["speedup"]) == {"1", "4", "16"}
    assert set(head[-1]["alpha_per_head"]) == {"head_2", "head_3", "head_4"}
    assert [b["batch_size"] for b in mtp["best_per_batch"]] == [1.0, 4.0, 16.0]
    on_disk = json.loads((out / "fits.json").read_text())
    assert on_disk["mtp"]["k_max"] == 4 and "mtp_tau_vs_params/log_linear" in on_disk["fits"]
    report = (out / "report.md").read_text()
    assert "## Multi-token prediction (self-speculative)" in report and "### mtp_tau_vs_tokens/log_linear" in report
    assert "Best measured MTP configuration per batch size" in report and "separate draft: gamma" in report
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"mtp_tau_vs_k.png", "law_mtp_tau_vs_tokens__log_linear.png", "speedup_vs_batch.png"} <= figs
    assert (out / "figures" / "mtp_tau_vs_k.png").stat().st_size > 5000


def test_mtp_rows_alone_are_fitted(mtp_frame, tmp_path):
    out = tmp_path / "fit"
    summary = next(iter(fit_results(mtp_frame, out, n_bootstrap=30, seed=1).values()))
    assert summary["recommendation"] is None and summary["n_configurations"] == 0
    assert "mtp_tau_vs_tokens/log_linear" in summary["fits"] and summary["mtp"]["n_configurations"] == 15
    assert any("no separate-draft" in n for n in summary["notes"])
    assert "## Multi-token prediction" in (out / "report.md").read_text()
    assert (out / "figures" / "mtp_tau_vs_k.png").is_file() and not (out / "recommendation.json").exists()
    # one model at one budget: the table and figure, but no laws (and no crash)
    one = mtp_frame[(mtp_frame.draft_d_model == 64) & (mtp_frame.draft_tokens == 2e6)]
    summary = next(iter(fit_results(one, tmp_path / "one", n_bootstrap=0, plots=False).values()))
    assert not summary["fits"] and summary["mtp"]["k_max"] == 4
    assert any("fewer than 3 distinct values" in n for n in summary["notes"])
