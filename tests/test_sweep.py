"""End to end: the job pipeline in-process, and real multirun sweeps through every launcher.

All on experiment=smoke (byte tokenizer, a 0.1M-parameter target, 8k/35k-parameter drafts). A
session fixture trains the target and both drafts once (in-process), so the subprocess sweeps
below only evaluate, and the "never retrains" checks compare the checkpoint cache before and after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from scylla.config import compose, config_hash
from scylla.harness.pipeline import run_job
from scylla.harness.results import ResultStore, load

SMOKE = ["experiment=smoke", "runtime.threads=1", "runtime.progress=false"]
GRID_BUDGETS = "[2048,4096]"


def job_overrides(results: Path, *extra: str) -> list[str]:
    return [*SMOKE, f"paths.results_dir={results}", *extra]


def expected_id(results: Path, *overrides: str) -> str:
    return config_hash(compose(job_overrides(results, *overrides)), "cpu")


def training_state(cache: Path) -> dict[str, Any]:
    """Training runs (one per model size) and checkpoints (one per size and budget) in the cache."""
    runs = sorted(p.parent.name for p in (cache / "runs").glob("*/run.json"))
    ckpts = sorted(p.parent.name for p in (cache / "checkpoints").glob("*/provenance.json"))
    shapes = sorted((json.loads(p.read_text())["spec"]["d_model"], json.loads(p.read_text())["spec"]["n_layers"])
                    for p in (cache / "runs").glob("*/run.json"))
    return {"runs": runs, "checkpoints": ckpts, "shapes": shapes}


@pytest.fixture(scope="session")
def trained(scylla_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Target + both smoke drafts at both grid budgets, trained once for the session (in-process)."""
    results = tmp_path_factory.mktemp("warm-results")
    outcomes = [run_job(compose(job_overrides(results, f"draft={d}", "draft.tokens=4096",
                                               f"draft.token_budgets={GRID_BUDGETS}")))
                for d in ("tiny1", "tiny2")]
    return {"results": results, "outcomes": outcomes}


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    import sys

    proc = subprocess.run([sys.executable, "-m", "scylla.harness.run", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"scylla-run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# ---------------------------------------------------------------------------------------------------
# In-process


def test_job_writes_one_complete_record_and_skips_on_rerun(trained: dict[str, Any]) -> None:
    first = trained["outcomes"][0]
    assert first.status == "done" and first.record_path.is_file()
    record = json.loads(first.record_path.read_text())
    assert record["run_id"] == first.run_id == first.record_path.stem
    assert {"config", "measurements", "timings", "provenance", "target", "draft"} <= set(record)
    prov = record["provenance"]
    assert prov["code_version"] and prov["corpus_manifest_hash"] and prov["versions"]["torch"]
    assert prov["tokenizer_fingerprint"] == "byte-v1"  # settings named like "token" are not secrets
    assert record["draft"]["token_budgets"] == [2048, 4096] and record["draft"]["tokens_seen"] == 4096
    # forwards probed at every row count a batch of 4 passes through as its rows finish; prefills at 1 and 4
    assert {p["batch_size"] for p in record["probes"] if p["kind"] == "decode"} == {1, 2, 3, 4}
    assert {p["batch_size"] for p in record["probes"] if p["kind"] == "prefill"} == {1, 4}
    frame = load(trained["results"])
    assert len(frame) == 2 * 2 * 2  # jobs x tasks x batch sizes
    assert set(frame.task) == {"code", "bible"} and set(frame.batch_size) == {1, 4}
    assert frame.alpha.between(0, 1).all() and (frame.alpha < 1).any(), "smoke models must not be degenerate"
    assert ((frame.tau - (1 + frame.accepted / frame.steps)).abs() < 1e-9).all()  # bonus token included
    assert (frame.speedup > 0).all() and (frame.draft_params < frame.target_params).all()
    assert frame.draft_val_loss.notna().all() and frame.target_val_loss.notna().all()
    again = run_job(compose(job_overrides(trained["results"], "draft=tiny1", "draft.tokens=4096",
                                          f"draft.token_budgets={GRID_BUDGETS}")))
    assert again.status == "skipped" and again.run_id == first.run_id


def test_token_sweep_jobs_share_one_training_run(trained: dict[str, Any], scylla_cache: Path,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scylla.training.trainer as train

    # Each draft's budgets come out of one run (its cooldown branches), never one run per budget. Other
    # test files share the session cache, so this reads the run behind each fixture job's checkpoint.
    provenance = {p.parent: json.loads(p.read_text()) for p in (scylla_cache / "checkpoints").glob("*/provenance.json")}
    for outcome in trained["outcomes"]:
        used = Path(json.loads(outcome.record_path.read_text())["draft"]["checkpoint"])
        run_key = provenance[used]["run_key"]
        budgets = sorted(prov["budget"] for prov in provenance.values() if prov["run_key"] == run_key)
        assert {2048, 4096} <= set(budgets) and len(budgets) == len(set(budgets)), (used, budgets)
        assert (scylla_cache / "runs" / run_key / "run.json").is_file()
    state = training_state(scylla_cache)
    calls: list[list[int]] = []
    real = train.train_budgets

    def spy(spec: Any, corpora: Any, tok: Any, budgets: Any, *a: Any, **k: Any) -> Any:
        calls.append(list(budgets))
        return real(spec, corpora, tok, budgets, *a, **k)

    monkeypatch.setattr(train, "train_budgets", spy)
    for tokens in (2048, 4096):  # the two jobs of `sweep=tokens` for tiny2
        run_job(compose(job_overrides(tmp_path, "draft=tiny2", f"draft.tokens={tokens}",
                                      f"draft.token_budgets={GRID_BUDGETS}")))
    target_tokens = compose(SMOKE).target.tokens
    # the target's one budget, then every budget of the sweep (so one run trains them all)
    assert calls == [[target_tokens], [2048, 4096], [target_tokens], [2048, 4096]]
    assert training_state(scylla_cache) == state  # and nothing was trained again


def test_wandb_failure_keeps_the_record_and_secrets_stay_home(trained: dict[str, Any], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    secret = "wandb-secret-for-pipeline-0a1b2c3d4e"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", "hf_pipeline_secret_998877")
    wdir = tmp_path / "wandb"
    outcome = run_job(compose(job_overrides(tmp_path / "ok", "logger=wandb", f"logger.dir={wdir}",
                                            "eval.tasks=[bible]", "decode.batch_sizes=[2]")))
    assert outcome.status == "done"
    files = [p for p in (tmp_path / "ok").rglob("*") if p.is_file()] + [p for p in wdir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files), "no offline wandb run was written"
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data and b"hf_pipeline_secret_998877" not in data, path

    def broken(**_: Any) -> None:
        raise wandb.errors.CommError("network unreachable")

    monkeypatch.setattr(wandb, "init", broken)
    outcome = run_job(compose(job_overrides(tmp_path / "broken", "logger=wandb", "eval.tasks=[bible]",
                                            "decode.batch_sizes=[2]")))
    assert outcome.status == "done" and outcome.record_path.is_file()


# ---------------------------------------------------------------------------------------------------
# Multirun sweeps in a subprocess


def test_grid_sweep_killed_midway_resumes_without_loss_or_duplicates(trained: dict[str, Any], tmp_path: Path,
                                                                    subprocess_env: dict[str, str]) -> None:
    import sys

    results = tmp_path / "results"
    args = ["-m", "sweep=grid", *job_overrides(results)]
    expected = {expected_id(results, f"draft={d}", f"draft.tokens={t}", f"draft.token_budgets={GRID_BUDGETS}",
                            "decode.batch_sizes=[1,4]")
                for d in ("tiny1", "tiny2") for t in (2048, 4096)}
    assert len(expected) == 4
    proc = subprocess.Popen([sys.executable, "-m", "scylla.harness.run", *args, f"hydra.sweep.dir={tmp_path}/sweep1"],
                            cwd=tmp_path, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list(results.glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in results.glob("*.json")}
    assert 1 <= len(before) < 4, f"kill came too late to test resumption: {sorted(before)}"

    out = run_cli([*args, f"hydra.sweep.dir={tmp_path}/sweep2"], subprocess_env, tmp_path)
    store = ResultStore(results)
    assert set(store.run_ids()) == expected
    for name, (inode, blob) in before.items():  # finished records were skipped, not rewritten
        assert (results / name).stat().st_ino == inode and (results / name).read_bytes() == blob
    assert f"{4 - len(before)} run, {len(before)} skipped" in out.stdout
    assert "Scylla sweep summary" in out.stdout
    frame = load(results)
    assert len(frame) == 4 * 2 * 2 and not frame.duplicated(["run_id", "task", "batch_size"]).any()
    assert sorted(frame.groupby(["draft_name", "draft_tokens"]).size().index.tolist()) == [
        ("tiny1", 2048), ("tiny1", 4096), ("tiny2", 2048), ("tiny2", 4096)]


def test_batch_sweep_with_joblib_never_retrains(trained: dict[str, Any], tmp_path: Path, scylla_cache: Path,
                                               subprocess_env: dict[str, str]) -> None:
    results = tmp_path / "results"
    before = training_state(scylla_cache)
    out = run_cli(["-m", "sweep=batch", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   f"hydra.sweep.dir={tmp_path}/sweep", *job_overrides(results), "runtime.threads=null"],
                  subprocess_env, tmp_path)
    expected = {expected_id(results, f"decode.gamma={g}", "decode.batch_sizes=[1,4]") for g in (2, 3)}
    assert set(ResultStore(results).run_ids()) == expected
    assert training_state(scylla_cache) == before, "a batch sweep retrained something"
    frame = load(results)
    assert sorted(set(frame.gamma)) == [2, 3] and sorted(set(frame.batch_size)) == [1, 4]
    assert len(frame) == 2 * 2 * 2
    assert "2 run, 0 skipped" in out.stdout
    from scylla.harness.pipeline import available_cores

    threads = {r["provenance"]["threads"] for r in ResultStore(results)}
    assert threads == {max(1, available_cores() // 2)}, "joblib jobs must split the cores between them"


def test_parallel_token_sweep_trains_each_draft_size_once(trained: dict[str, Any], tmp_path: Path,
                                                         scylla_cache: Path, subprocess_env: dict[str, str]) -> None:
    """Two token-budget jobs of one new draft size run at once under joblib: one trains both budgets
    under the run's file lock, the other waits and reuses them (no second training of the size)."""
    results = tmp_path / "results"
    shape = ["draft=tiny2", "draft.name=tiny2-w24", "draft.d_model=24"]
    before = training_state(scylla_cache)
    assert (24, 2) not in before["shapes"], "pick a draft shape no other test trains"
    out = run_cli(["-m", "sweep=tokens", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   f"hydra.sweep.dir={tmp_path}/sweep", *job_overrides(results, *shape)], subprocess_env, tmp_path)
    expected = {expected_id(results, *shape, f"draft.tokens={t}", f"draft.token_budgets={GRID_BUDGETS}")
                for t in (2048, 4096)}
    assert set(ResultStore(results).run_ids()) == expected
    assert "2 run, 0 skipped" in out.stdout
    after = training_state(scylla_cache)
    assert after["shapes"].count((24, 2)) == 1
    new = sorted(set(after["checkpoints"]) - set(before["checkpoints"]))
    assert len(new) == 2 and all(c.startswith("d24-L2-") for c in new), new
    (run_dir,) = [p.parent for p in (scylla_cache / "runs").glob("*/run.json")
                  if json.loads(p.read_text())["spec"]["d_model"] == 24]
    trained_budgets = [json.loads(line)["budget"] for line in (run_dir / "log.jsonl").read_text().splitlines()
                       if json.loads(line).get("phase") == "checkpoint"]
    assert sorted(trained_budgets) == [2048, 4096], "a budget was trained twice (the run lock did not hold)"
    frame = load(results)
    assert sorted(set(frame.draft_tokens)) == [2048, 4096] and len(frame) == 2 * 2 * 2


def test_capacity_sweep_with_submitit_local(trained: dict[str, Any], tmp_path: Path,
                                            subprocess_env: dict[str, str]) -> None:
    results = tmp_path / "results"
    out = run_cli(["-m", "sweep=capacity", "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}/sweep",
                   *job_overrides(results)], subprocess_env, tmp_path)
    expected = {expected_id(results, f"draft={d}") for d in ("tiny1", "tiny2")}
    assert set(ResultStore(results).run_ids()) == expected
    frame = load(results)
    assert sorted(set(frame.draft_name)) == ["tiny1", "tiny2"] and len(frame) == 2 * 2 * 2
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # really went through submitit
    assert "2 run, 0 skipped" in out.stdout


# ---------------------------------------------------------------------------------------------------
# The demo


def test_demo_grid_ids_match_the_sweep_and_the_table_reads_them(tmp_path: Path) -> None:
    from scylla.harness.demo import grid_run_ids, summary_table

    ids = grid_run_ids("smoke", [f"paths.results_dir={tmp_path}", "runtime.threads=1"])
    expected = {expected_id(tmp_path, f"draft={d}", f"draft.tokens={t}", f"draft.token_budgets={GRID_BUDGETS}",
                            "decode.batch_sizes=[1,4]"): (d, t) for d in ("tiny1", "tiny2") for t in (2048, 4096)}
    assert ids == expected
    from test_results import make_record

    from scylla.harness.results import records_to_frame

    frame = records_to_frame([make_record("a", "draft-w32", 1000), make_record("b", "draft-w64", 2000)])
    table = summary_table(frame)
    assert "draft-w64" in table and "best at batch   4" in table and "alpha by task: bible 0.433" in table


def test_checks_table_compares_measured_with_predicted_and_flags_counter_mismatches() -> None:
    import pandas as pd

    from scylla.harness.demo import checks_table

    checks = pd.DataFrame({"draft_name": ["d", "d"], "draft_tokens": [1000, 1000], "batch_size": [1, 8],
                           "gamma": [4, 2], "tree": [None, "static:2x1"], "speedup": [1.1, 0.8],
                           "predicted_speedup": [1.0, 1.0], "oracle_match": [True, False]})
    table = checks_table(checks)
    assert "chain:4" in table and "static:2x1" in table and "DIFFER" in table
    assert "0.800-1.100 over 2 cells (worst |ratio - 1| = 0.200)" in table
    assert "equal the oracle's in 1 of 2" in table
    assert checks_table(checks.iloc[:0]) == "no engine checks in these records"


@pytest.mark.slow
def test_demo_runs_the_grid_and_prints_the_summary(trained: dict[str, Any], tmp_path: Path,
                                                   subprocess_env: dict[str, str]) -> None:
    import sys

    proc = subprocess.run([sys.executable, "-m", "scylla.harness.demo", "--experiment", "smoke", "--no-fit",
                           f"paths.results_dir={tmp_path}/results", "runtime.progress=false",
                           f"hydra.sweep.dir={tmp_path}/sweep"],
                          capture_output=True, text=True, env=subprocess_env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Scylla demo results (4 jobs, 16 measurements" in proc.stdout
    assert f"records: {tmp_path}/results" in proc.stdout
    assert len(ResultStore(tmp_path / "results")) == 4


@pytest.mark.slow
def test_mtp_family_drafts_for_itself(trained: dict[str, Any], tmp_path: Path) -> None:
    outcome = run_job(compose(job_overrides(tmp_path, "draft=tiny-mtp", "eval.tasks=[bible]", "decode.batch_sizes=[2]")))
    frame = load(tmp_path)
    row = frame.iloc[0]
    assert outcome.status == "done" and len(frame) == 1  # k = 2 heads: k' = 2 only
    assert row.family == "mtp" and row.target_name == "tiny-mtp"  # no separate target
    assert row.gamma == 1 and row.c == 0.0  # k = 2 heads: one drafted token per step, no draft model cost
    assert 0 <= row.alpha <= 1 and row.tau >= 1
    # a 3-head model: every k' in 2..3 is measured inside the one job, one row each (gamma = k' - 1)
    three = tmp_path / "k3"
    outcome = run_job(compose(job_overrides(three, "draft=tiny-mtp", "draft.k=3", "eval.tasks=[bible]",
                                            "decode.batch_sizes=[1,2]")))
    frame = load(three)
    assert outcome.status == "done" and len(frame) == 2 * 2  # batch sizes x k'
    assert sorted(frame.gamma) == [1, 1, 2, 2] and frame.run_id.nunique() == 1
    assert [m["k"] for m in outcome.record["measurements"]] == [2, 3, 2, 3]
    assert ((frame.tau - (1 + frame.accepted / frame.steps)).abs() < 1e-9).all() and (frame.tau >= 1).all()
    # per-head counters: head 3 (position 2) only exists in the k' = 3 rows
    assert frame.loc[frame.gamma == 2, "reached_2"].notna().all()
    assert frame.loc[frame.gamma == 1, "reached_2"].isna().all()


def test_summary_and_task_tables_tell_data_sources_apart() -> None:
    """The same draft preset trained on corpus text and on the target's responses reads as two rows."""
    from test_results import make_record

    from scylla.harness.demo import summary_table
    from scylla.harness.results import records_to_frame
    from scylla.harness.study import task_table

    corpus = make_record("a", "draft-w64", 1000)
    responses = make_record("b", "draft-w64", 1000)
    responses["draft"]["data_source"] = "responses"
    frame = records_to_frame([corpus, responses])
    assert set(frame["data_source"].fillna("corpus")) == {"corpus", "responses"}
    table = summary_table(frame)
    assert "draft-w64[responses]" in table
    assert len([line for line in table.splitlines() if line.startswith("draft-w64")]) == 2
    frame = frame.assign(tree="chain:3")
    lines = task_table(frame, gamma=3)
    rows = [line for line in lines if line.startswith("| draft-w64")]
    assert len(rows) == 2 and "| bible | code |" in lines[2]
    # tau = 1 + accepted / steps = 1 + 13 / 10 in every cell of make_record
    assert rows[0].endswith("| 2.30 | 2.30 |")
    assert task_table(frame, gamma=5) == []
