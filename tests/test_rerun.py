"""Re-runs replace records; unreadable records are repaired, not skipped; shared sweep folders count right."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from scylla.config import compose
from scylla.harness.pipeline import run_job
from scylla.harness.results import ResultStore, load
from scylla.harness.sweep_summary import JOB_FILE, format_summary, summarize

SMOKE = ["experiment=smoke", "runtime.threads=1", "runtime.progress=false", "eval.tasks=[code]",
         "decode.batch_sizes=[1]"]


def _job(results: Path, *extra: str):
    return run_job(compose([*SMOKE, f"paths.results_dir={results}", *extra]))


def test_skip_existing_false_replaces_the_record(tmp_path: Path) -> None:
    first = _job(tmp_path)
    assert first.status == "done"
    old = json.loads(first.record_path.read_text())
    again = _job(tmp_path, "runtime.skip_existing=false")
    new = json.loads(again.record_path.read_text())
    assert again.status == "replaced" and again.run_id == first.run_id
    assert new["timings"] != old["timings"]  # measured again
    assert new["timings"] == again.record["timings"]  # the file holds the new record, not the old one
    assert ResultStore(tmp_path).run_ids() == [first.run_id]
    assert not list(tmp_path.glob(".*.tmp"))


def test_truncated_record_is_remeasured_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = _job(tmp_path)
    blob = first.record_path.read_text()
    first.record_path.write_text(blob[: len(blob) // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="scylla.harness.pipeline"):
        again = _job(tmp_path)
    assert again.status == "replaced"
    assert "is unreadable" in caplog.text and "re-measuring and replacing it" in caplog.text
    assert json.loads(again.record_path.read_text())["run_id"] == first.run_id
    assert len(load(tmp_path)) == 1
    assert _job(tmp_path).status == "skipped"  # repaired: the next run skips it


def _job_file(folder: Path, num: int, status: str, sweep_id: str) -> None:
    (folder / str(num)).mkdir(parents=True, exist_ok=True)
    (folder / str(num) / JOB_FILE).write_text(json.dumps(
        {"run_id": f"r{num}", "status": status, "record": "/nowhere.json", "sweep_id": sweep_id}))


def test_two_sweeps_sharing_one_folder_count_their_own_jobs(tmp_path: Path) -> None:
    for n in range(4):  # sweep A: 4 jobs done
        _job_file(tmp_path, n, "done", "A")
    for n in range(2):  # sweep B, same folder: 2 jobs, both skipped
        _job_file(tmp_path, n, "skipped", "B")
    b = summarize(tmp_path, total=2, sweep_id="B")
    assert (b["done"], b["skipped"], b["failed"]) == (0, 2, 0) and len(b["jobs"]) == 2
    assert "2 jobs: 0 run, 2 skipped (record existed), 0 failed" in format_summary(b, tmp_path)
    a = summarize(tmp_path, total=4, sweep_id="A")  # A's jobs 0-1 were overwritten by B
    assert (a["done"], a["failed"]) == (2, 2)


def test_sweep_summary_shows_the_best_shape_per_batch_size() -> None:
    """A job measures several draft shapes; its line must not average them into one speedup."""
    from scylla.harness.sweep_summary import best_shapes

    def row(task: str, gamma: int, batch: int, speedup: float, alpha: float) -> dict:
        return {"draft_name": "d", "draft_params": 9_000, "draft_params_non_embedding": 1_000, "draft_tokens": 5,
                "task": task, "gamma": gamma, "tree": None, "batch_size": batch, "speedup": speedup, "alpha": alpha,
                "tau": 1 + alpha}

    rows = [row(t, 1, 1, 1.0, 0.5) for t in "ab"] + [row(t, 4, 1, 1.4, 0.4) for t in "ab"]
    rows += [row("a", 1, 8, 0.9, 0.5), row("b", 1, 8, 0.7, 0.5), row("a", 4, 8, 0.6, 0.4), row("b", 4, 8, 0.6, 0.4)]
    assert best_shapes(rows) == {1: ("chain:4", 1.4), 8: ("chain:1", 0.8)}
    text = format_summary({"jobs": [{"num": "0", "status": "done", "rows": rows, "record": "x"}], "done": 1,
                           "skipped": 0, "failed": 0, "total": 1}, Path("r"))
    line = next(x for x in text.splitlines() if x.strip().startswith("0 done"))
    assert line.split()[3:] == ["1,000", "5", "chain:4", "0.400", "1.40", "1.40", "0.80"], line
