"""`scylla.harness.study` end to end on the smoke experiment: sweep, export, fit per task and pooled, report;
resuming skips finished jobs; bad input fails with one clear message and leaves no half-written study."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest


def _study(python: str, env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "scylla.harness.study", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def study_env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**subprocess_env, "SCYLLA_RESULTS": str(tmp_path / "results")}


def test_study_runs_fits_reports_and_resumes(python: str, study_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "exp" / "smoke-study"
    proc = _study(python, study_env, "--experiment", "smoke", "--out", str(out), "--n-bootstrap", "20",
                  "runtime.progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # smoke grid: 2 drafts x 2 budgets = 4 jobs; 2 tasks x 2 batch sizes inside each job
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 * 2 * 2
    assert table["run_id"].nunique() == 4
    assert "record_path" not in table.columns  # machine-local paths stay out of committed tables
    assert {"alpha", "tau", "speedup", "draft_tokens", "draft_params"} <= set(table.columns)
    fit_dirs = sorted(p.name for p in (out / "fit").iterdir() if p.is_dir())
    assert any(name.startswith("task-all") for name in fit_dirs), fit_dirs  # pooled over tasks
    assert any(name.startswith("task-code") for name in fit_dirs), fit_dirs  # and per task
    report = (out / "report.md").read_text()
    assert "## Fitted laws (pooled over tasks)" in report and "bonus" in report
    assert "## Acceptance per task" in report
    assert report.startswith("# Scylla reference study: `smoke-study`")  # the study's name, not the staging folder
    pooled = next((out / "fit").glob("task-all*"))
    fits = json.loads((pooled / "fits.json").read_text())
    assert fits["n_rows"] == len(table)
    assert not (out.parent / "smoke-study.partial").exists()
    # the serving recommendation, checked by decoding its cells (and at least 3 others) for real
    assert (out / "serving" / "serving.json").is_file() and (out / "serving" / "serving.md").is_file()
    checks = pd.read_csv(out / "validation" / "checks.csv")
    assert len(checks) >= 4 and checks["role"].str.contains("recommended").any() and checks["oracle_match"].all()
    assert ((checks["ratio"] - checks["measured_speedup"] / checks["predicted_speedup"]).abs() < 1e-4).all()
    assert "## Recommendation checked by measurement" in report and "## Serving recommendation" in report

    # resume: every job has a record, so the sweep is not launched again; files the study does not write
    # (a user's notes beside the report) survive the re-write, and the study's own files are replaced
    (out / "claims.py").write_text("# my analysis\n")
    (out / "report.md").write_text("stale")
    again = _study(python, study_env, "--experiment", "smoke", "--out", str(out), "--n-bootstrap", "20",
                   "runtime.progress=false", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 already done" in again.stdout
    assert "scylla.harness.run" not in again.stdout  # no sweep command was run
    assert (out / "claims.py").read_text() == "# my analysis\n"
    assert (out / "report.md").read_text().startswith("# Scylla reference study")


def test_study_bad_input_is_one_clear_error(python: str, study_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "exp" / "nothing"
    proc = _study(python, study_env, "--experiment", "smoke", "--out", str(out), "--fit-only", cwd=tmp_path)
    assert proc.returncode == 1
    assert "no records of this study" in proc.stderr and "without --fit-only" in proc.stderr
    assert not out.exists()

    bad = _study(python, study_env, "--experiment", "smoke", "--out", str(out), "draft.tokens=-5", cwd=tmp_path)
    assert bad.returncode == 2
    assert "draft.tokens" in bad.stderr and "Traceback" not in bad.stderr
    assert not out.exists()


def test_a_study_plan_runs_its_parts_and_checks_every_job_first() -> None:
    from scylla.config import ConfigError
    from scylla.harness.study import part_commands, study_plan

    parts = ("study.parts=[{name: widths, drafts: [tiny1, tiny2], tokens: [4096, 2048]},"
             "{name: fast, drafts: [tiny1], tokens: [2048], overrides: ['train.lr=0.001']}]")
    plan = study_plan("smoke", [parts])
    assert [(j.part, j.draft, j.tokens) for j in plan] == [
        ("widths", "tiny1", 2048), ("widths", "tiny1", 4096), ("widths", "tiny2", 2048), ("widths", "tiny2", 4096),
        ("fast", "tiny1", 2048)]
    assert len({j.run_id for j in plan}) == 5  # train.lr is part of a job's identity
    assert plan[0].run_id == study_plan("smoke", [])[0].run_id  # same job as the default grid's
    widths = [j for j in plan if j.part == "widths"]
    assert part_commands(widths, parallel=False) == [
        ["draft=tiny1,tiny2", "draft.token_budgets=[2048,4096]", "draft.tokens=2048,4096"]]
    assert part_commands(widths, parallel=True)[0][-1] == "draft.tokens=4096"  # train each size first
    assert part_commands([plan[-1]], parallel=False) == [
        ["draft=tiny1", "draft.token_budgets=[2048]", "train.lr=0.001", "draft.tokens=2048"]]
    with pytest.raises(ConfigError, match=r"study.parts\[bad\].overrides"):
        study_plan("smoke", ["study.parts=[{name: bad, drafts: [tiny1], tokens: [2048], overrides: ['draft=tiny2']}]"])
    with pytest.raises(ConfigError, match="draft.tokens"):
        study_plan("smoke", ["study.parts=[{name: small, drafts: [tiny1], tokens: [10]}]"])
