"""notebooks/analysis.ipynb: committed with outputs stripped, and runs headless end to end on a
synthetic results table (known laws, see scylla.fit.synthetic), printing the fitted slopes and
writing the recommendation."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from scylla.fit.synthetic import TRUTH, synthetic_results  # noqa: E402
from scylla.harness.results import COLUMNS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"
KERNEL = "scylla-test-python"


def test_committed_notebook_is_stripped_and_parameterised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 5
    for cell in code:
        assert cell.outputs == [], f"outputs committed in cell: {cell.source[:60]!r}"
        assert cell.execution_count is None
    first = code[0].source
    assert 'os.environ.get("SCYLLA_RESULTS_PATH", "outputs/results")' in first
    assert 'os.environ.get("SCYLLA_NOTEBOOK_OUT", "outputs/notebook")' in first
    assert "SCYLLA_NOTEBOOK_BOOTSTRAP" in first
    assert "widgets" not in nb.metadata


@pytest.fixture(scope="module")
def results_table(tmp_path_factory) -> Path:
    """A tidy results table with the columns of scylla.harness.results.COLUMNS: separate drafts (4 shapes x 5
    token budgets x 5 batch sizes x 2 gammas) plus a few self-speculative (mtp) rows."""
    batch_sizes = (1, 2, 4, 8, 16)
    llama = synthetic_results(2, shapes=((64, 2), (128, 2), (128, 4), (256, 4)), batch_sizes=batch_sizes)
    mtp = synthetic_results(3, shapes=((128, 2),), tokens=(2e7,), batch_sizes=batch_sizes, gammas=(3,)).assign(
        family="mtp", draft_name="mtp-w128-k4", run_id="syn-mtp")
    frame = pd.concat([llama, mtp], ignore_index=True)
    frame = frame.reindex(columns=COLUMNS + [c for c in frame.columns if c not in COLUMNS])
    path = tmp_path_factory.mktemp("results") / "results.parquet"
    frame.to_parquet(path)
    return path


def _kernel_dir(root: Path) -> Path:
    """A kernelspec for this interpreter (the venv), found first through JUPYTER_PATH: the notebook runs
    with the project's packages whatever kernels the user has installed elsewhere."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Scylla tests", "language": "python",
    }))
    return root


def _block(text: str, key: str) -> str:
    m = re.search(rf"^== {re.escape(key)}: (.*?)(?=^== |\Z)", text, re.S | re.M)
    assert m, f"no printed fit for {key} in:\n{text}"
    return m.group(1)


def _param(block: str, name: str) -> tuple[float, float, float]:
    m = re.search(rf"^\s+{name} = (\S+)\s+\d+% interval \[(\S+), (\S+)\]", block, re.M)
    assert m, f"parameter {name} not printed in:\n{block}"
    return tuple(float(v) for v in m.groups())


def test_notebook_runs_on_a_results_table(results_table, tmp_path, monkeypatch):
    out = tmp_path / "notebook-out"
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_dir(tmp_path / "jupyter")))
    for key, value in {"SCYLLA_RESULTS_PATH": str(results_table), "SCYLLA_NOTEBOOK_OUT": str(out),
                       "SCYLLA_NOTEBOOK_BOOTSTRAP": "200", "SCYLLA_NOTEBOOK_TASK": "",
                       "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                       "OPENBLAS_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300, startup_timeout=120,
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError with the traceback when a cell fails

    printed = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                        for o in c.outputs if o.output_type == "stream" and o.get("name") == "stdout")
    rich = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type in ("display_data", "execute_result")]
    assert f"results: {results_table}" in printed

    # acceptance grows with pretraining tokens and with draft size in the synthetic truth
    # (logit alpha_token = a + b1 ln tokens + b2 ln params, b1 = 0.16, b2 = 0.20)
    for key in ("alpha_vs_tokens/log_linear", "alpha_vs_params/log_linear"):
        b, lo, hi = _param(_block(printed, key), "b")
        assert 0 < lo <= b <= hi, (key, b, lo, hi)
    joint = _block(printed, "alpha_token_joint/joint_logit_linear")
    for name, truth in (("b1", TRUTH["b1"]), ("b2", TRUTH["b2"])):
        # pooling prompts of different difficulty flattens the logit slope a little: near, not exact
        est, lo, hi = _param(joint, name)
        assert 0 < lo <= est <= hi and abs(est - truth) < 0.4 * truth, (name, est, lo, hi)
    assert float(re.search(r"R\^2 = (\S+)", joint).group(1)) > 0.9
    # verification of gamma + 1 tokens costs more as the batch grows: speedup falls with batch size
    b, _, _ = _param(_block(printed, "speedup_vs_batch/log_linear"), "b")
    assert b < 0

    # the pipeline wrote the recommendation and a usable draft config, and the notebook showed them
    assert (out / "recommendation.md").read_text().startswith("# Recommended draft")
    (yaml_file,) = (out / "draft").glob("rec_*.yaml")
    assert "family: llama" in yaml_file.read_text()
    markdown = "\n".join(o["data"].get("text/markdown", "") for o in rich)
    assert "# Recommended draft" in markdown and f"name: {yaml_file.stem}" in markdown
    assert "mtp-w128-k4" in "\n".join(o["data"].get("text/plain", "") + o["data"].get("text/html", "")
                                       for o in rich)  # mtp rows summarised
    figures = [o for o in rich if "image/png" in o["data"]]
    assert len(figures) >= 5  # four laws inline, plus the predicted speedup figure
