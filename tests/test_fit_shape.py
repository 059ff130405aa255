"""The best draft shape per batch size (the Scylla paper's batch-size law of gamma and tree size)."""

import json

import pandas as pd

from scylla.fit.cli import fit_results
from scylla.fit.shape import best_shape_per_batch, shape_nodes


def _rows(speedups: dict[tuple[float, str], float]) -> pd.DataFrame:
    rows = []
    for (b, shape), s in speedups.items():
        for task, jitter in (("a", -0.01), ("b", 0.01)):  # means over tasks decide
            gamma = int(shape.split(":")[1]) if shape.startswith("chain:") else 3
            rows.append({"batch_size": b, "gamma": gamma, "tree": None if shape.startswith("chain:") else shape,
                         "speedup": s + jitter, "task": task})
    return pd.DataFrame(rows)


def test_best_chain_and_tree_per_batch_size_with_plain_as_a_candidate():
    assert shape_nodes("static:3x2x1", 3) == 3 + 6 + 6 and shape_nodes(None, 4) == 4
    table = best_shape_per_batch(_rows({
        (1, "chain:1"): 1.2, (1, "chain:4"): 1.6, (1, "static:3x2x1"): 1.9,
        (8, "chain:1"): 1.1, (8, "chain:4"): 1.05, (8, "static:3x2x1"): 0.9,
        (32, "chain:1"): 0.8, (32, "chain:4"): 0.6, (32, "static:3x2x1"): 0.5}))
    assert table["best_gamma"].tolist() == [4, 1, 0]
    assert table["best_nodes"].tolist() == [15, 1, 0]
    assert table["best_shape"].tolist() == ["static:3x2x1", "chain:1", "chain:0"]
    assert table["speedup"].tolist()[-1] == 1.0  # nothing pays at 32: plain decoding


def test_the_fit_writes_the_table_and_a_shrinking_law(tmp_path):
    """Shrinking best gamma over 4 batch sizes: a log-linear law with a negative slope in fits.json."""
    speed = {}
    for b, best in ((1, 6), (4, 4), (16, 2), (64, 1)):
        for g in (1, 2, 4, 6):
            speed[(b, f"chain:{g}")] = 1.5 - 0.05 * abs(g - best)
    rows = _rows(speed)
    n = len(rows)
    frame = rows.assign(family="llama", draft_name="d", draft_tokens=1e6, draft_params=1e5, draft_d_model=64,
                        draft_n_layers=2, drafted=100, accepted=50, steps=60, alpha=0.5, tau=1.8, temperature=0.0,
                        task=["t"] * n)
    fit_results(frame, tmp_path, n_bootstrap=30, plots=False)
    table = pd.read_csv(tmp_path / "best_shape_per_batch.csv")
    assert table["best_gamma"].tolist() == [6, 4, 2, 1]
    fits = json.loads((tmp_path / "fits.json").read_text())["fits"]
    assert fits["best_gamma_vs_batch/log_linear"]["params"]["b"] < 0
