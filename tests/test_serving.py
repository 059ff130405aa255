"""The measured-cell serving recommender (scylla.fit.serving) and what it emits (scylla.fit.deploy).

Every study here is a handful of synthetic job records built in the test (a few prompts, fake probes),
so the true best cell is known."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from scylla.decode.stats import DecodeStats
from scylla.decode.tree import TreeSpec
from scylla.fit import deploy, serving
from scylla.fit.synthetic import oracle_record, simulate_oracle_stats, synthetic_probes
from scylla.measure.compose import predict_seconds, predict_speedup, step_plan
from scylla.measure.probes import CostTable, ForwardProbe, OverheadProbe

B3 = [1, 4, 16]


def _trace(shape: str, steps, generated, full: int = 0) -> dict:
    """Oracle counters with given per-prompt step counts (``full`` steps accepted every draft)."""
    spec = TreeSpec.parse(shape)
    steps = [float(s) for s in steps]
    st = DecodeStats(gamma=spec.depth, temperature=0.0, batch_size=0, n_prompts=len(steps), tree=spec.describe(),
                     steps=int(round(sum(steps))), accepted=int(sum(generated) - len(steps) - sum(steps)),
                     accepted_per_position=[full] * spec.depth, reached_per_position=[full] * spec.depth,
                     prompt_steps=steps, prompt_generated=[int(g) for g in generated],
                     prompt_accepted=[0] * len(steps), prompt_drafted=[0] * len(steps))
    return st.to_dict()


def _job(run_id: str, traces: dict[str, dict[str, dict]], *, family: str = "llama", batches=B3, seed: int = 0,
         draft_cost=(2e-3, 1e-4), target_cost=(1e-2, 1e-3), noise: float = 0.05, keys=None, probes=None,
         **draft) -> dict:
    shapes = sorted({s for by in traces.values() for s in by})
    has = family not in serving.MODEL_FREE_FAMILIES
    if probes is None:
        probes = synthetic_probes(shapes, list(batches), has_draft=has, draft=draft_cost, target=target_cost,
                                  noise=noise, rng=np.random.default_rng(seed))
    info = {"name": draft.pop("name", run_id), "family": family, "tokens": draft.pop("tokens", 1000),
            "params": 1000, "d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_dim": 96, **draft}
    return oracle_record(run_id, draft=info, stats=traces, batch_sizes=list(batches), probes=probes[0],
                         overheads=probes[1], continuation_keys=keys)


def _objects(record: dict) -> tuple[list[ForwardProbe], list[OverheadProbe]]:
    fp = [ForwardProbe(**{k: v for k, v in p.items() if k not in ("median", "best")}) for p in record["probes"]]
    op = [OverheadProbe(**{k: v for k, v in o.items() if k not in ("median", "best")}) for o in record["overheads"]]
    return fp, op


def _stats(d: dict) -> DecodeStats:
    names = {f.name for f in dataclasses.fields(DecodeStats)}
    return DecodeStats(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------------------------------
# Pricing: the same numbers as scylla.measure.compose


@pytest.mark.parametrize("family", ["llama", "ngram"])
def test_point_estimate_equals_the_composed_prediction(family):
    """Row 0 of the vectorised pricing is predict_speedup's point estimate, for chains, static trees, a
    model-free proposer, ragged prompts and chunks that do not divide the prompt count."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(4, 25, 11)
    shapes = ["chain:1", "chain:3"] + (["static:2x2x1"] if family == "llama" else [])
    stats = {"code": {s: simulate_oracle_stats(np.full(11, 0.6), s, lengths, rng) for s in shapes}}
    rec = _job("r", stats, family=family, batches=[1, 3, 8])
    out = serving.recommend_cells([rec], n_boot=20)
    fp, op = _objects(rec)
    for s in shapes:
        c = out.candidates.index[out.candidates["shape"] == s][0]
        for j, b in enumerate([1, 3, 8]):
            ref = predict_speedup(_stats(stats["code"][s]), b, fp, op, has_draft_model=family == "llama", n_boot=0)
            assert out.speedup[0, c, j] == pytest.approx(ref["speedup"], rel=1e-12)


def test_activity_histogram_prices_fractional_expected_steps_like_predict_seconds():
    """Temperature > 0: expected step counts are fractional and the last step costs its share."""
    rec = _job("r", {"code": {"chain:2": _trace("chain:2", [2.5, 0.4, 3.0, 1.7, 6.25], [9, 2, 8, 6, 14])}})
    fp, op = _objects(rec)
    table, plan = CostTable(fp, op), step_plan(TreeSpec.parse("chain:2"), True)
    steps = np.array([2.5, 0.4, 3.0, 1.7, 6.25])
    for b in (1, 2, 4):
        hist = serving.activity_histogram(steps, b)
        m = np.arange(1, b + 1)
        cost = np.array([table.time("target", "decode", 3, x) + table.time("draft", "decode", 1, x) * 1
                         + table.time("draft", "decode", 1, x) + table.overhead(x, 2) for x in m])
        prefill = sum(table.prefill("target", n) + table.prefill("draft", n)
                      for n in [min(b, 5 - i) for i in range(0, 5, b)])
        assert float(hist[1:] @ cost) + prefill == pytest.approx(predict_seconds(steps, b, table, plan), rel=1e-12)
    integer = serving.activity_histogram(np.array([[3, 1, 4, 1, 5]]), 2)  # chunks (3,1), (4,1), (5,)
    assert integer.tolist() == [[0.0, 2 + 3 + 5, 1 + 1]]
    out = serving.recommend_cells([rec], n_boot=10, batch_sizes=[1, 4])  # the fractional path end to end
    for j, b in enumerate([1, 4]):
        ref = predict_speedup(_stats(rec["measurements"][0]["speculative"]), b, fp, op, n_boot=0)["speedup"]
        assert out.speedup[0, 1, j] == pytest.approx(ref, rel=1e-12)


# ---------------------------------------------------------------------------------------------------
# The choice and its uncertainty


def _two_drafts(factor: float, keys_b=None, seed: int = 0) -> list[dict]:
    """Draft "a" and draft "b" with b needing ``factor`` x a's steps on every prompt; same costs."""
    rng = np.random.default_rng(seed)
    gen = rng.integers(2, 40, 12)
    steps = np.maximum(1, np.round((gen - 1) / rng.uniform(1.1, 3.0, 12)))  # prompts differ in acceptance
    probes = synthetic_probes(["chain:2"], B3, target=(1e-2, 1e-4), draft=(1e-3, 1e-5),
                              rng=np.random.default_rng(7))  # speculation pays at every batch size
    a = _job("a", {"code": {"chain:2": _trace("chain:2", steps, gen)}}, probes=probes)
    b = _job("b", {"code": {"chain:2": _trace("chain:2", np.ceil(steps * factor), gen)}}, probes=probes, keys=keys_b)
    return [a, b]


def test_a_dominating_draft_has_p_best_near_one_and_no_regret():
    rec = serving.recommend_cells(_two_drafts(1.5), n_boot=200)
    for r in rec.per_batch:
        assert r["best"]["run_id"] == "a" and r["p_best"] >= 0.99 and r["regret_log"] < 1e-3
        assert r["best"]["low"] <= r["best"]["speedup"] <= r["best"]["high"]
        assert r["runner_up"]["run_id"] in ("b", None)


def test_identical_candidates_split_p_best():
    """Two copies of one draft tie in every draw: each wins half; a prompt-reversed copy (same point
    estimate at batch 1, different draws) wins about half of the draws."""
    a, _ = _two_drafts(1.0)
    twin = json.loads(json.dumps(a).replace('"run_id": "a"', '"run_id": "twin"'))
    rec = serving.recommend_cells([a, twin], n_boot=200)
    assert rec.per_batch[0]["p_best"] == pytest.approx(0.5)
    rev = json.loads(json.dumps(a).replace('"run_id": "a"', '"run_id": "rev"'))
    for m in rev["measurements"]:
        m["speculative"]["prompt_steps"] = m["speculative"]["prompt_steps"][::-1]
        m["speculative"]["prompt_generated"] = m["speculative"]["prompt_generated"][::-1]
    rec = serving.recommend_cells([a, rev], n_boot=400, batch_sizes=[1])
    assert rec.speedup[0, 1, 0] == pytest.approx(rec.speedup[0, 2, 0], rel=1e-12)
    assert 0.3 < rec.per_batch[0]["p_best"] < 0.7


def test_pairing_keeps_a_constant_factor_decisive():
    """b needs 5% (at least one) more steps than a on every prompt. Paired (both decoded the same prompts: one
    continuations key), a wins every draw. Unpaired (different keys, independent resamples of noisy
    prompts), b wins some draws: the test that fails without pairing."""
    paired = serving.recommend_cells(_two_drafts(1.05), n_boot=300, batch_sizes=[1])
    assert paired.per_batch[0]["best"]["run_id"] == "a" and paired.per_batch[0]["p_best"] == 1.0
    unpaired = serving.recommend_cells(_two_drafts(1.05, keys_b={"code": "other-prompts"}), n_boot=300,
                                       batch_sizes=[1])
    assert unpaired.per_batch[0]["best"]["run_id"] == "a" and unpaired.per_batch[0]["p_best"] < 0.9


def test_no_speculation_wins_when_every_draft_is_slow(tmp_path):
    rng = np.random.default_rng(1)
    gen = rng.integers(10, 30, 8)
    stats = {"code": {s: simulate_oracle_stats(np.full(8, 0.5), s, gen, rng) for s in ("chain:1", "chain:3")}}
    slow = _job("slow", stats, draft_cost=(5e-2, 1e-3))  # a draft step costs 5x a target step
    rec = serving.recommend_cells([slow], n_boot=100)
    for r in rec.per_batch:
        assert r["best"]["run_id"] is None and not r["speculation_pays"] and r["p_no_speculation_best"] > 0.99
    assert not any(rec.deploy[p]["speculation"] for p in serving.PROFILES)
    assert all(rec.deploy[p]["p_best"] > 0.99 for p in serving.PROFILES)  # drafts that are never on do not tie
    paths = deploy.write_serving(rec, tmp_path / "serving")
    assert not (tmp_path / "serving" / "vllm_speculative_config.json").exists()
    assert "serve without speculation" in paths["markdown"].read_text()


def test_disable_by_batch_size_is_where_speculation_stops_paying():
    """Verification costs 2 ms per row per token: speculation pays at batch 1 and 4, not at 16."""
    rng = np.random.default_rng(2)
    gen = rng.integers(20, 33, 16)
    stats = {"code": {s: simulate_oracle_stats(np.full(16, 0.8), s, gen, rng) for s in ("chain:2", "chain:4")}}
    rec_ = _job("d", stats, target_cost=(1e-2, 2e-3), draft_cost=(1e-3, 1e-5), noise=0.0)
    rec = serving.recommend_cells([rec_], n_boot=50)
    v = rec.deploy["vllm"]
    fp, op = _objects(rec_)
    truth = {b: predict_speedup(_stats(stats["code"][v["shape"]]), b, fp, op, n_boot=0)["speedup"] for b in B3}
    assert truth[1] > 1 and truth[16] < 1  # the premise
    expected = min(b for b in B3 if all(truth[x] < 1 for x in B3 if x >= b))
    assert v["speculation"] and v["disable_by_batch_size"] == expected
    assert v["vllm_disable_by_batch_size"] == max(b for b in B3 if b < expected)
    assert [p["on"] for p in v["per_batch"]] == [b < expected for b in B3]
    assert rec.deploy["any"]["disable_by_batch_size"] == expected


def test_engine_measured_cells_are_candidates_with_repeat_intervals():
    """An engine row (MTP self-speculation, say) is a measured candidate: its value as measured, an
    interval from its timing repeats, flagged measured."""
    gen = [20] * 6
    oracle = _job("o", {"code": {"chain:2": _trace("chain:2", [12] * 6, gen)}}, draft_cost=(5e-2, 1e-3))

    def engine_row(b: int, reps: list[float]) -> dict:
        return {"task": "code", "batch_size": b, "tree": "chain:3", "gamma": 3, "source": "engine",
                "speedup": float(np.median(reps)), "tokens_per_second": float(np.median(reps)) * 100,
                "baseline_tokens_per_second": 100.0, "tokens_per_second_repeats": [r * 100 for r in reps],
                "baseline_tokens_per_second_repeats": [100.0] * len(reps),
                "speculative": {"generated_tokens": 120}, "baseline": {"generated_tokens": 120}, "k": 4}
    mtp = oracle_record("m", draft={"name": "mtp-w64", "family": "mtp", "tokens": 10, "params": 10}, stats={},
                        batch_sizes=B3, probes=[], overheads=[],
                        engine=[engine_row(1, [1.4, 1.5, 1.6]), engine_row(4, [1.2, 1.3, 1.25]),
                                engine_row(16, [0.9, 0.9, 0.9])])
    mtp["continuations"] = {}
    rec = serving.recommend_cells([oracle, mtp], n_boot=200)
    best = rec.per_batch[0]["best"]
    assert best["run_id"] == "m" and best["measured"] and best["source"] == "engine"
    assert best["speedup"] == pytest.approx(1.5) and best["low"] < 1.5 < best["high"]
    assert rec.per_batch[2]["best"]["run_id"] is None  # 0.9 measured at 16: no speculation
    assert any("measured" in n for n in rec.notes)
    assert (rec.deploy["vllm"]["draft"] or {}).get("family") != "mtp"
    assert any("without a vllm exporter" in n for n in rec.deploy["vllm"]["notes"])


def test_errors_name_the_problem():
    a, _ = _two_drafts(1.2)
    with pytest.raises(serving.ServingError, match="never measured"):
        serving.recommend_cells([a], batch_sizes=[1, 3])
    with pytest.raises(serving.ServingError, match="never measured"):
        serving.recommend_cells([a], tasks=["prose"])
    with pytest.raises(serving.ServingError, match="no cost probes"):
        serving.recommend_cells([{**a, "probes": []}])
    with pytest.raises(serving.ServingError, match="no oracle rows"):
        serving.recommend_cells([{**a, "measurements": []}])
    with pytest.raises(serving.ServingError, match="record_path"):
        serving.recommend_cells(pd.DataFrame({"task": ["code"]}))


# ---------------------------------------------------------------------------------------------------
# Checking with the engine


def test_validation_cells_and_the_ratio_verdict():
    rng = np.random.default_rng(4)
    gen = rng.integers(10, 30, 8)
    shapes = ("chain:1", "chain:2", "chain:4", "static:2x2x1")
    recs = [_job(f"j{i}", {t: {s: simulate_oracle_stats(np.full(8, p), s, gen, rng) for s in shapes}
                           for t in ("code", "prose")}, seed=i)
            for i, p in enumerate((0.4, 0.6, 0.8))]
    rec = serving.recommend_cells(recs, n_boot=50)
    cells = serving.validation_cells(rec)
    cell_keys = {(c.run_id, c.shape, c.batch_size) for c in cells}
    recommended = {(r["best"]["run_id"], r["best"]["shape"], r["batch_size"]) for r in rec.per_batch}
    assert recommended <= cell_keys and len(cell_keys) >= len(recommended) + 3
    assert {c.task for c in cells} == {"code", "prose"}
    measured = {c.as_tuple(): c.predicted_speedup * (1.05 if i % 2 else 0.97) for i, c in enumerate(cells)}
    table, ok = serving.compare_checks(cells, measured)
    assert ok and table["ratio"].between(0.96, 1.06).all()
    measured[cells[0].as_tuple()] = cells[0].predicted_speedup * 1.2
    table, ok = serving.compare_checks(cells, measured)
    assert not ok and not table["ok"].iloc[0]
    frame = pd.DataFrame([{"run_id": k[0], "task": k[1], "tree": k[2], "batch_size": k[3], "speedup": v}
                          for k, v in measured.items()])
    assert serving.compare_checks(cells, frame)[1] is False
    with pytest.raises(serving.ServingError, match="no measured speedup"):
        serving.compare_checks(cells, dict(list(measured.items())[1:]))


# ---------------------------------------------------------------------------------------------------
# What is emitted


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory) -> Path:
    from scylla.testing import tiny_llama
    from scylla.training.checkpoints import save_checkpoint

    return save_checkpoint(tiny_llama(64, d_model=32, n_layers=1, n_heads=2), tmp_path_factory.mktemp("ck") / "d",
                           {"val_loss": 1.0})


def _llama_study(checkpoint: Path | None) -> list[dict]:
    rng = np.random.default_rng(5)
    gen = rng.integers(20, 33, 12)
    stats = {"code": {s: simulate_oracle_stats(np.full(12, 0.8), s, gen, rng) for s in ("chain:2", "chain:3")}}
    return [_job("fast", stats, target_cost=(1e-2, 2e-3), draft_cost=(1e-3, 1e-5), noise=0.0, name="draft-w32",
                 tokens=200000, checkpoint=None if checkpoint is None else str(checkpoint))]


def test_llama_emits_vllm_sglang_hydra_and_the_exported_folder(llama_checkpoint, tmp_path, monkeypatch):
    import shutil

    from scylla.config import compose, config_dir, validate

    rec = serving.recommend_cells(_llama_study(llama_checkpoint), n_boot=30)
    out = tmp_path / "fit" / "serving"
    paths = deploy.write_serving(rec, out)
    v = rec.deploy["vllm"]
    cfg = json.loads((out / "vllm_speculative_config.json").read_text())
    assert cfg["method"] == "draft_model" and cfg["num_speculative_tokens"] == v["gamma"]
    assert cfg["disable_by_batch_size"] == v["vllm_disable_by_batch_size"] >= 2
    assert Path(cfg["model"]) == out / "export" / deploy.serving_name(v["draft"])
    assert {"config.json", "model.safetensors", "scylla_export.json"} <= {p.name for p in Path(cfg["model"]).iterdir()}
    dyn = json.loads((out / "vllm_speculative_config.per_batch_size.json").read_text())
    assert dyn["num_speculative_tokens_per_batch_size"][0][:2] == [1, 3] and "disable_by_batch_size" not in dyn
    flags = (out / "sglang_flags.txt").read_text()
    g = rec.deploy["sglang"]["gamma"]
    for flag in ("--speculative-algorithm STANDALONE", f"--speculative-num-steps {g}", "--speculative-eagle-topk 1",
                 f"--speculative-num-draft-tokens {g + 1}", "--speculative-draft-model-path"):
        assert flag in flags
    summary = json.loads(paths["json"].read_text())
    assert summary["per_batch"][0]["best"]["run_id"] == "fast" and summary["checks"]
    assert set(pd.read_csv(paths["cells"])["batch_size"]) == set(B3)
    name = deploy.serving_name(v["draft"])
    node = yaml.safe_load((out / "draft" / f"{name}.yaml").read_text())
    assert node["name"] == name and node["family"] == "llama" and node["tokens"] == 200000
    configs = tmp_path / "configs"
    shutil.copytree(config_dir(), configs)
    shutil.copy(out / "draft" / f"{name}.yaml", configs / "draft" / f"{name}.yaml")
    monkeypatch.setenv("SCYLLA_CONFIG_DIR", str(configs))
    job = validate(compose([f"draft={name}"]))
    assert (job.draft.name, job.draft.d_model, job.draft.tokens) == (name, 32, 200000)
    deploy.write_serving(rec, out, export=False)  # replaces the folder; configs point at the checkpoint
    assert json.loads((out / "vllm_speculative_config.json").read_text())["model"] == str(llama_checkpoint)
    assert not (out / "export").exists()


def test_ngram_emits_settings_and_no_folder(tmp_path):
    rng = np.random.default_rng(6)
    gen = rng.integers(20, 33, 12)
    stats = {"code": {s: simulate_oracle_stats(np.full(12, 0.7), s, gen, rng) for s in ("chain:2", "chain:4")}}
    rec = serving.recommend_cells([_job("ng", stats, family="ngram", name="ngram", ngram_max=4, ngram_min=2,
                                        target_cost=(1e-2, 1e-3), noise=0.0)], n_boot=20)
    out = tmp_path / "serving"
    deploy.write_serving(rec, out)
    cfg = json.loads((out / "vllm_speculative_config.json").read_text())
    assert cfg["method"] == "ngram" and "model" not in cfg
    assert (cfg["prompt_lookup_max"], cfg["prompt_lookup_min"]) == (4, 2)
    assert cfg["num_speculative_tokens"] == rec.deploy["vllm"]["gamma"]
    flags = (out / "sglang_flags.txt").read_text()
    assert "--speculative-algorithm NGRAM" in flags and "--speculative-ngram-max-match-window-size 4" in flags
    assert "--speculative-draft-model-path" not in flags and not (out / "export").exists()


def test_reduced_vocabulary_is_exported_but_not_claimed_servable(tmp_path):
    from scylla.models.llama import ModelSpec
    from scylla.models.reduced import ReducedVocabFactory
    from scylla.models.vocab import DraftVocab
    from scylla.training.checkpoints import save_checkpoint

    vocab = DraftVocab(__import__("torch").arange(0, 64, 2), 64)
    ck = save_checkpoint(ReducedVocabFactory(vocab)(ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=64)),
                         tmp_path / "ck", {"val_loss": 1.0})
    rec = serving.recommend_cells(_llama_study(ck), n_boot=10)
    out = tmp_path / "serving"
    deploy.write_serving(rec, out)
    name = deploy.serving_name(rec.deploy["vllm"]["draft"])
    folder = out / "export" / name
    assert DraftVocab.load(folder).draft_to_target.tolist() == list(range(0, 64, 2))
    assert not (out / "vllm_speculative_config.json").exists() and not (out / "sglang_flags.txt").exists()
    text = (out / "serving.md").read_text()
    assert "reduced draft vocabulary (32 of 64 tokens)" in text and "draft.vocab_size=null" in text


def test_unregistered_family_and_atomic_writes(tmp_path, llama_checkpoint):
    record = _llama_study(llama_checkpoint)[0]
    eagle = {**record, "draft": {**record["draft"], "family": "medusa"}}
    with pytest.raises(deploy.ExportError, match="no exporter registered for family 'medusa'"):
        deploy.export_draft(eagle, tmp_path / "x")
    assert "medusa" not in deploy.engine_families()["vllm"]
    rec = serving.recommend_cells([eagle], n_boot=10)
    assert not rec.deploy["vllm"]["speculation"] and rec.deploy["any"]["speculation"]
    out = tmp_path / "serving"
    deploy.write_serving(rec, out)
    assert "no exporter registered for family 'medusa'" in (out / "serving.md").read_text()
    before = sorted(p.name for p in out.iterdir())

    def boom(record, dest):
        dest.mkdir(parents=True)
        (dest / "half.bin").write_text("x")
        raise RuntimeError("disk full")

    assert deploy.register_exporter("medusa", boom) is None
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            deploy.write_serving(serving.recommend_cells([eagle], n_boot=10), out)
    finally:
        assert deploy.register_exporter("medusa", None) is boom
    assert sorted(p.name for p in out.iterdir()) == before  # the old folder is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".serving")] == []


# ---------------------------------------------------------------------------------------------------
# scylla-fit


def test_scylla_fit_writes_the_serving_folder_and_exits_2_on_bad_requests(tmp_path, llama_checkpoint, capsys):
    from scylla.fit.cli import main
    from scylla.harness.results import ResultStore

    store = ResultStore(tmp_path / "results")
    record = _llama_study(llama_checkpoint)[0]
    store.write(record)
    out = tmp_path / "fit"
    assert main([str(store.root), "--out", str(out), "--n-bootstrap", "20", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "[serving] B=1:" in printed and (out / "serving" / "vllm_speculative_config.json").is_file()
    assert main([str(store.root), "--out", str(out), "--serving-batch-sizes", "1,3", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "serving batch size(s) 3 were never measured (measured: 1, 4, 16)" in err
    bare = ResultStore(tmp_path / "bare")
    bare.write({**record, "probes": []})
    assert main([str(bare.root), "--out", str(tmp_path / "o2"), "--serving", "--no-plots"]) == 2
    assert "no cost probes" in capsys.readouterr().err
    # not asked for: reported, and the law fits go on (one draft: nothing to fit, exit 1 as before)
    assert main([str(bare.root), "--out", str(tmp_path / "o2"), "--n-bootstrap", "20", "--no-plots"]) == 1
    assert "[serving] not written: the records hold oracle rows but no cost probes" in capsys.readouterr().out
    table = tmp_path / "table.csv"
    from scylla.harness.results import load

    load(store.root).drop(columns=["record_path"]).to_csv(table, index=False)
    assert main([str(table), "--out", str(tmp_path / "o3"), "--serving", "--no-plots"]) == 2
    assert "needs the job records" in capsys.readouterr().err
    from scylla.fit.cli import build_parser

    text = build_parser().format_help()
    assert "--serving-batch-sizes" in text and "--serving-task" in text and "docs/serving.md" in text
