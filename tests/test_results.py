"""Results store and tracking: atomic immutable records, the tidy frame contract, wandb round trip."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from scylla.config import LoggerConfig
from scylla.harness.results import COLUMNS, ResultsError, ResultStore, load, load_wandb, records_to_frame
from scylla.harness.tracking import WandbTracker, make_tracker, resolve_mode

CONTRACT = [
    "run_id", "family", "task", "draft_name", "draft_params", "draft_params_non_embedding", "draft_n_layers",
    "draft_d_model", "draft_tokens", "batch_size", "gamma", "temperature", "target_name", "target_params", "drafted",
    "accepted", "steps", "generated_tokens", "target_forwards", "draft_forwards", "draft_seconds", "verify_seconds",
    "wall_seconds", "alpha", "tau", "tokens_per_second", "baseline_tokens_per_second", "speedup", "c",
    "draft_step_seconds", "target_step_seconds", "verify_step_seconds", "draft_val_loss", "target_val_loss",
    "prompt_accepted", "prompt_drafted", "prompt_steps", "corpus_manifest_hash", "code_version", "data_source",
]


def _stats(accepted_pos: list[int], reached_pos: list[int], steps: int, gamma: int) -> dict[str, Any]:
    accepted, drafted = sum(accepted_pos), steps * gamma
    return {
        "gamma": gamma, "drafted": drafted, "accepted": accepted, "steps": steps,
        "accepted_per_position": accepted_pos, "reached_per_position": reached_pos,
        "alpha": accepted / drafted if drafted else float("nan"),
        "alpha_n": [a / r if r else float("nan") for a, r in zip(accepted_pos, reached_pos)],
        "tau": 1 + accepted / steps if steps else float("nan"),
        "target_forwards": steps + 1, "draft_forwards": drafted, "draft_seconds": 0.1, "verify_seconds": 0.2,
        "prefill_seconds": 0.01, "wall_seconds": 0.4, "generated_tokens": 40, "prompt_accepted": [accepted],
        "prompt_drafted": [drafted], "prompt_steps": [steps],
    }


def make_record(run_id: str = "abc123", draft: str = "draft-w32", tokens: int = 1000, batches=(1, 4)) -> dict[str, Any]:
    """A record shaped like the pipeline's (field names from scylla.harness.pipeline.run_job)."""
    measurements = []
    for task in ("code", "bible"):
        for b in batches:
            spec = _stats([8, 5, 0], [10, 8, 5], steps=10, gamma=3)
            base = _stats([], [], steps=40, gamma=0)
            measurements.append({
                "task": task, "batch_size": b, "gamma": 3, "temperature": 0.0, "n_prompts": 1, "max_new_tokens": 40,
                "speculative": spec, "baseline": base, "tokens_per_second": 100.0, "baseline_tokens_per_second": 50.0,
                "speedup": 2.0, "c": 0.1, "draft_step_seconds": 0.001, "target_step_seconds": 0.01,
                "verify_step_seconds": 0.012,
            })
    return {
        "schema_version": 1, "run_id": run_id, "created_at": "2026-01-01T00:00:00Z",
        "config": {"experiment": "unit"},
        "target": {"name": "demo", "params": 5_000_000, "params_non_embedding": 4_000_000, "val_loss": 2.5},
        "draft": {"name": draft, "family": "llama", "params": 100_000, "params_non_embedding": 20_000,
                  "n_layers": 2, "d_model": 32, "n_heads": 2, "ffn_dim": 96, "tokens": tokens, "val_loss": None},
        "measurements": measurements,
        "provenance": {"code_version": "git:abc", "corpus_manifest_hash": "deadbeef", "device": "cpu", "threads": 1},
    }


# ---------------------------------------------------------------------------------------------------
# Store


def test_write_is_atomic_and_immutable(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    path = store.write(make_record("r1", tokens=1000))
    assert path == store.path("r1") and store.has("r1")
    store.write(make_record("r1", tokens=999_999))  # a second finisher of the same job
    assert store.read("r1")["draft"]["tokens"] == 1000, "a finished record must never be replaced"
    assert sorted(p.name for p in (tmp_path / "results").iterdir() if not p.name.startswith(".locks")) == ["r1.json"]
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["draft"]["val_loss"] is None  # strict JSON


def _writer(args: tuple[str, int]) -> None:
    root, i = args
    store = ResultStore(root)
    for k in range(20):
        store.write(make_record(f"shared{k % 3}", tokens=i))  # all processes race on 3 names
        store.write(make_record(f"own{i}-{k}", tokens=i))


def test_concurrent_writers_corrupt_nothing(tmp_path: Path) -> None:
    root = str(tmp_path / "results")
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(root, i) for i in range(4)])
    store = ResultStore(root)
    assert len(store) == 3 + 4 * 20
    for record in store:  # every file parses and is whole
        assert len(record["measurements"]) == 4
    assert not list(Path(root).glob(".*.tmp")), "temporary files left behind"
    frame = load(root)
    assert not frame.duplicated(["run_id", "task", "batch_size"]).any()


def test_killed_writer_leaves_no_record(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    (tmp_path / ".r9.1234.abcd.tmp").write_text('{"run_id": "r9", "measu')  # a writer killed mid-write
    assert not store.has("r9") and len(store) == 0
    store.write(make_record("r1"))
    assert set(load(tmp_path)["run_id"]) == {"r1"}


def test_lock_is_per_job_and_released(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    with store.lock("a"):
        assert store.lock("a").is_locked is False  # a new lock object: not held by this instance
    with store.lock("a"):  # re-acquirable after release
        pass


# ---------------------------------------------------------------------------------------------------
# The frame


def test_load_returns_the_contract_frame(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    store.write(make_record("r1", draft="draft-w32", tokens=1000))
    store.write(make_record("r2", draft="draft-w64", tokens=2000, batches=(1, 4, 16)))
    frame = load(tmp_path / "results")
    assert isinstance(frame, pd.DataFrame)
    missing = [c for c in CONTRACT if c not in frame.columns]
    assert not missing, missing
    assert list(frame.columns[: len(COLUMNS)]) == COLUMNS
    assert len(frame) == 2 * 2 + 2 * 3  # one row per (job, task, batch size)
    row = frame[(frame.run_id == "r2") & (frame.task == "bible") & (frame.batch_size == 16)].iloc[0]
    assert row.draft_name == "draft-w64" and row.draft_tokens == 2000 and row.family == "llama"
    assert row.alpha == pytest.approx(13 / 30) and row.tau == pytest.approx(1 + 13 / 10)
    assert row.alpha_1 == pytest.approx(0.8) and row.alpha_2 == pytest.approx(5 / 8) and row.alpha_3 == 0.0
    assert row.accepted_1 == 8 and row.reached_3 == 5
    assert math.isnan(row.draft_val_loss) and row.target_val_loss == 2.5
    assert row.prompt_accepted == [13] and row.corpus_manifest_hash == "deadbeef" and row.experiment == "unit"
    # file, glob and list inputs give the same rows
    assert len(load(store.path("r1"))) == 4
    assert len(load(str(tmp_path / "results" / "*.json"))) == 10
    assert len(load([store.path("r1"), store.path("r2"), store.path("r1")])) == 10  # duplicates collapse


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no results at"):
        load(tmp_path / "nothing-here")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ResultsError, match="bad.json"):
        load(tmp_path)
    assert load(str(tmp_path / "*.nomatch.json")).empty


# ---------------------------------------------------------------------------------------------------
# wandb


def test_wandb_mode_is_offline_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode(LoggerConfig(backend="wandb")) == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_mode(LoggerConfig(backend="wandb")) == "online"
    assert resolve_mode(LoggerConfig(backend="wandb", mode="offline")) == "offline"
    assert type(make_tracker(LoggerConfig(backend="none"))).__name__ == "Tracker"


class _FakeRun:
    def __init__(self, summary: dict[str, Any], run_id: str) -> None:
        self.summary, self.id = summary, run_id


class _FakeApi:
    """What `load_wandb` needs from wandb.Api, fed from offline run folders."""

    def __init__(self, runs: list[_FakeRun]) -> None:
        self._runs = runs
        self.paths: list[str] = []

    def runs(self, path: str, filters: dict | None = None) -> list[_FakeRun]:
        self.paths.append(path)
        return self._runs


def test_wandb_offline_round_trip_and_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "wandb-key-for-test-7f3a9c1e55"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", "hf_test_secret_abcdef123")
    wdir = tmp_path / "wb"
    record = make_record("r1")
    config = {"logger": {"project": f"p-{secret}"}, "draft": {"tokens": 1000}}
    tracker = WandbTracker(LoggerConfig(backend="wandb", project="scylla-test"), run_id="r1", config=config,
                           name="unit", wandb_dir=str(wdir))
    assert tracker.run_dir is not None, "offline wandb.init failed"
    tracker.log_train("draft", {"loss": 3.0, "lr": 1e-3, "tokens": 512, "phase": "trunk"})
    for m in record["measurements"]:
        tracker.log_measurement(m)
    tracker.log_record(record)
    summary = tracker.summary()
    tracker.finish()
    assert len(list(wdir.rglob("*.wandb"))) == 1, "no offline run written"
    assert summary["code/b1/alpha"] == pytest.approx(13 / 30)
    api = _FakeApi([_FakeRun(summary, "abc"), _FakeRun({"other": 1}, "not-scylla")])
    frame = load_wandb("scylla-test", entity="me", api=api)
    assert api.paths == ["me/scylla-test"]
    expected = records_to_frame([record])
    cols = [c for c in expected.columns if c != "record_path"]
    pd.testing.assert_frame_equal(frame[cols], expected[cols])
    for path in wdir.rglob("*"):  # config, summary, metadata and the binary run log
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and b"hf_test_secret_abcdef123" not in data, path


def test_wandb_failure_never_raises(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import wandb

    finished: list[int] = []

    class BrokenRun:
        dir = url = None
        summary: dict = {}

        def log(self, *_a: Any, **_k: Any) -> None:
            raise RuntimeError("disk full")

        def finish(self, exit_code: int = 0) -> None:
            finished.append(exit_code)

    monkeypatch.setattr(wandb, "init", lambda **_k: BrokenRun())
    tracker = WandbTracker(LoggerConfig(backend="wandb"), run_id="r", config={}, name="n")
    record = make_record("r")
    tracker.log_measurement(record["measurements"][0])  # fails -> warns, disables, finishes the run
    tracker.log_record(record)
    tracker.finish()
    assert finished == [1]
    assert "wandb disabled" in caplog.text

    def boom(**_k: Any) -> None:
        raise wandb.errors.CommError("no network")

    monkeypatch.setattr(wandb, "init", boom)
    tracker = WandbTracker(LoggerConfig(backend="wandb"), run_id="r", config={}, name="n")
    tracker.log_record(record)
    tracker.finish()  # nothing to finish, nothing raised


def test_records_never_hold_env_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-should-not-leak-998877")
    record = make_record("r1")
    record["config"]["note"] = "tok-should-not-leak-998877"
    from scylla.config import scrub_secrets

    ResultStore(tmp_path).write(scrub_secrets(record))
    assert "tok-should-not-leak-998877" not in (tmp_path / "r1.json").read_text()
    assert os.environ["MY_SERVICE_TOKEN"]  # untouched
