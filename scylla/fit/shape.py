"""The best draft shape per serving batch size: the data of the Scylla paper's batch-size law.

At batch 1 a verification forward on many tokens costs about as much as on one (memory-bound), so long
chains and wide trees pay; as the batch grows, every verified token costs target compute, and the best
gamma (chain length) and tree size shrink. `best_shape_per_batch` reads that off measured (or
oracle-predicted) speedups: for one draft configuration, at each batch size, the chain length and the
tree size (draft nodes verified per step) with the highest speedup, 0 when no shape beats plain
decoding. The fitting CLI fits ``best_gamma`` and ``best_nodes`` against ln batch size.
"""

from __future__ import annotations

import pandas as pd

from scylla.decode.tree import TreeSpec

__all__ = ["shape_nodes", "best_shape_per_batch"]


def shape_nodes(tree: object, gamma: object) -> int:
    """Draft nodes the target verifies per step: the tree's size (a chain of gamma has gamma)."""
    if isinstance(tree, str) and tree:
        return TreeSpec.parse(tree).size
    return int(gamma)  # type: ignore[call-overload]


def best_shape_per_batch(rows: pd.DataFrame) -> pd.DataFrame:
    """Per batch size, over the rows of one draft configuration (speedups averaged over tasks): the best
    chain length (``best_gamma``), the best number of verified draft nodes over chains and trees
    (``best_nodes``) with its shape, and its speedup. Plain decoding (speedup 1, 0 nodes) is a candidate,
    so a batch size where nothing pays gives 0."""
    need = {"batch_size", "gamma", "speedup"}
    if not need <= set(rows.columns):
        raise ValueError(f"best_shape_per_batch needs columns {sorted(need)}")
    tree = rows["tree"] if "tree" in rows.columns else pd.Series([None] * len(rows), index=rows.index)
    shapes = tree.where(tree.notna() & (tree.astype(str) != ""), "chain:" + rows["gamma"].astype(int).astype(str))
    frame = rows.assign(shape=shapes.astype(str))
    frame = frame.assign(nodes=[shape_nodes(s, g) for s, g in zip(frame["shape"], frame["gamma"])],
                         is_chain=frame["shape"].str.startswith("chain:"))
    mean = frame.groupby(["batch_size", "shape", "nodes", "is_chain", "gamma"], as_index=False)["speedup"].mean()
    out = []
    for b, at in mean.groupby("batch_size"):
        top = at.loc[at["speedup"].idxmax()]
        chains = at[at["is_chain"]]
        top_chain = chains.loc[chains["speedup"].idxmax()] if len(chains) else None
        pays = float(top["speedup"]) > 1.0
        out.append({
            "batch_size": float(b),
            "best_shape": str(top["shape"]) if pays else "chain:0",
            "best_nodes": int(top["nodes"]) if pays else 0,
            "best_gamma": int(top_chain["gamma"]) if top_chain is not None and float(top_chain["speedup"]) > 1.0 else 0,
            "speedup": max(float(top["speedup"]), 1.0),
        })
    return pd.DataFrame(out)
