"""scylla-fit end to end on a synthetic results table, plus its errors."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from scylla.fit.cli import build_parser, load_table, main
from scylla.fit.synthetic import synthetic_results


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


def test_load_table_reads_tables(results_file):
    assert len(load_table(str(results_file))) == len(pd.read_parquet(results_file))
    assert len(load_table(str(results_file.parent))) == len(pd.read_parquet(results_file))
