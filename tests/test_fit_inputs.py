"""scylla-fit on bad input: NaN rows dropped with a note, bad arguments refused, nothing half-written."""

from __future__ import annotations

import json
import shlex
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scylla.fit.checks import FitWarning
from scylla.fit.cli import fit_results, main
from scylla.fit.inputs import drop_non_finite
from scylla.fit.recommend import acceptance_table
from scylla.fit.synthetic import synthetic_results

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synthetic_results(1, shapes=((64, 2), (128, 4), (256, 4)), tokens=(2e6, 2e7, 2e8))


@pytest.fixture(scope="module")
def table_file(table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tables") / "t.parquet"
    table.to_parquet(path)
    return path


def test_nan_accepted_is_dropped_with_a_note_not_pooled_as_zero(table: pd.DataFrame) -> None:
    bad = table.copy()
    bad.loc[[0, 5], "accepted"] = np.nan
    bad.loc[7, "draft_tokens"] = np.inf
    with pytest.warns(FitWarning, match=r"dropped 3 of \d+ row\(s\) with a non-finite \(NaN/inf\) value in "
                                        r"accepted, draft_tokens"):
        kept, note = drop_non_finite(bad)
    assert len(kept) == len(table) - 3 and note and "accepted, draft_tokens" in note
    clean = acceptance_table(table.drop(index=[0, 5, 7]))
    assert np.allclose(acceptance_table(kept)["alpha"], clean["alpha"])  # NaN never counts as 0 accepted


def test_nan_draft_tokens_never_becomes_a_candidate(table: pd.DataFrame, tmp_path: Path) -> None:
    bad = table.copy()
    bad.loc[bad.index[:4], "draft_tokens"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        summary = next(iter(fit_results(bad, tmp_path, n_bootstrap=40, plots=False).values()))
    rec = summary["recommendation"]
    assert rec is not None and "nan" not in json.dumps(rec).lower()
    assert np.isfinite(rec["draft"]["tokens"])
    budgets = {float(c["draft_tokens"]) for c in rec["candidates"]}
    assert budgets and all(np.isfinite(b) for b in budgets)
    assert any("dropped 4 of" in n and "draft_tokens" in n for n in summary["notes"])
    assert "dropped 4 of" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--level", "2"], "--level must lie strictly between 0 and 1"),
    (["--max-gamma", "-1"], "--max-gamma must be >= 1"),
    (["--compute-budget", "-1"], "--compute-budget must be a positive number"),
    (["--token-budgets", "0,-5"], "--token-budgets must list positive finite numbers, got 0, -5"),
    (["--batch-sizes", "nan"], "--batch-sizes must list positive finite numbers"),
    (["--n-bootstrap", "1"], "--n-bootstrap must be 0 or >= 2"),
])
def test_bad_arguments_exit_2_before_writing(table_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            args: list[str], message: str) -> None:
    out = tmp_path / "fit"
    assert main([str(table_file), "--out", str(out), *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "wrote" not in captured.out
    assert not out.exists()


def test_record_without_measurements_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "abc.json").write_text(json.dumps({"run_id": "abc", "measurements": []}))
    out = tmp_path / "fit"
    assert main([str(results), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "no measurement rows" in captured.err and "wrote" not in captured.out
    assert not out.exists()


def test_nothing_fitted_exits_non_zero(table: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    one = table[(table["draft_params"] == table["draft_params"].min())
                & (table["draft_tokens"] == table["draft_tokens"].min())]
    path = tmp_path / "one.csv"
    one.drop(columns=["prompt_accepted", "prompt_drafted", "prompt_steps"]).drop(columns=["speedup"]).to_csv(path, index=False)
    code = main([str(path), "--out", str(tmp_path / "fit"), "--n-bootstrap", "20", "--no-plots"])
    captured = capsys.readouterr()
    assert code == 1 and "nothing was fitted" in captured.err and "wrote" not in captured.out


def test_out_inside_the_results_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "abc.json").write_text(json.dumps({"run_id": "abc", "measurements": []}))
    assert main([str(results), "--out", str(results / "fit")]) == 2
    assert "is inside the results folder" in capsys.readouterr().err
    assert not (results / "fit").exists()


def test_make_fit_quotes_paths_with_spaces() -> None:
    proc = subprocess.run(["make", "-n", "fit", "RESULTS=my results/a b", "OUT=fit out"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    line = [ln for ln in proc.stdout.splitlines() if "scylla-fit" in ln][-1]
    assert shlex.split(line)[1:] == ["my results/a b", "--out", "fit out"]


def test_drafts_of_another_data_source_stay_out_of_the_laws(table: pd.DataFrame, tmp_path: Path) -> None:
    """A draft preset trained on the target's responses must not be pooled with the same preset trained
    on corpus text: the laws fit one source and a note counts the rows left out."""
    responses = table.assign(data_source="responses", accepted=0)
    both = pd.concat([table.assign(data_source="corpus"), responses], ignore_index=True)
    alone = next(iter(fit_results(table, tmp_path / "alone", n_bootstrap=20, plots=False).values()))
    mixed = next(iter(fit_results(both, tmp_path / "mixed", n_bootstrap=20, plots=False).values()))
    assert mixed["n_configurations"] == alone["n_configurations"]
    assert any(f"{len(responses)} rows of drafts trained on ['responses'] are left out" in n for n in mixed["notes"])
    key = "alpha_vs_tokens/log_linear"
    assert mixed["fits"][key]["params"] == pytest.approx(alone["fits"][key]["params"])
