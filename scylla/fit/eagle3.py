"""The EAGLE-3 family in the fitter: acceptance against layers, parameters and tokens, and the gap between
the training-time metrics and served acceptance.

Rows with ``family == "eagle3"`` (`scylla.harness.pipeline`) are pooled per head configuration and
draft shape (batch sizes pooled: acceptance does not depend on them). What is fitted (docs/eagle3.md):

- ``tau`` and ``alpha`` against ``ln layers`` (``draft_n_layers``, the capacity axis: one layer is EAGLE-3),
  against ``ln params`` (the head's own parameters) and against ``ln tokens``: the Scylla paper's
  log-linear form (``log_linear``), and for ``alpha`` the bounded forms beside it (AICc comparison).
  Each axis law is fitted at the headline shape (the deepest chain measured) on the slice where the
  other axis (tokens, or layers) is at its largest value;
- a table of the head's training-time prediction of tau (``draft_train_tau``: ``1 + sum_k prod_{i<=k}
  acc_i`` from the per-step validation accuracies at the checkpoint) beside the oracle's and the
  engine's tau for the same chain, and their ratio: SpecForge #455's complaint (high training accuracy,
  served acceptance length near 1) made measurable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .core import FitError
from .recommend import acceptance_table

__all__ = ["eagle3_rows", "eagle3_table", "headline_shape", "training_vs_served", "AXES"]

CONFIG = ["draft_name", "draft_params", "draft_tokens"]
AXES = ("draft_n_layers", "draft_params", "draft_tokens")


def eagle3_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the EAGLE-3 family (none when the table has no ``family`` column)."""
    if "family" not in frame.columns:
        return frame.iloc[:0]
    return frame[frame["family"] == "eagle3"]


def eagle3_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (head configuration, draft shape): counters pooled over batch sizes (and over the
    rows of one task), with ``draft_n_layers`` and ``draft_layers`` (= it), ``alpha``, ``alpha_token``
    and ``tau`` recomputed from the pooled counters."""
    rows = eagle3_rows(frame) if "family" in frame.columns else frame
    if len(rows) == 0:
        raise FitError("no EAGLE-3 (family 'eagle3') rows")
    if "tree" not in rows.columns:
        rows = rows.assign(tree=[f"chain:{int(g)}" for g in rows["gamma"]])
    by = [c for c in ("family", "task", "temperature", *CONFIG, "tree") if c in rows.columns]
    out = acceptance_table(rows, by=by)
    if "draft_n_layers" not in out.columns:
        raise FitError("EAGLE-3 rows need draft_n_layers (the head's layer count)")
    out["draft_layers"] = out["draft_n_layers"].astype(float)
    if "draft_train_tau" in rows.columns:
        train = rows.groupby(by, dropna=False, sort=True)["draft_train_tau"].first().reset_index(drop=True)
        out["draft_train_tau"] = train.to_numpy(float)
    return out


def headline_shape(table: pd.DataFrame) -> str:
    """The deepest chain measured (the shape the axis laws are fitted at); else the most common shape."""
    chains = [t for t in table["tree"].unique() if str(t).startswith("chain:")]
    if chains:
        return max(chains, key=lambda t: int(str(t).split(":")[1]))
    return str(table["tree"].value_counts().idxmax())


def training_vs_served(frame: pd.DataFrame, checks: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """Per (head configuration, chain shape): the training-time tau (``draft_train_tau``), the tau of the
    oracle's rows and of the engine's rows (each pooled over tasks and batch sizes: 1 + accepted /
    steps; engine rows come from the table, or from the jobs' engine ``checks`` when the table has none)
    and the served / training ratios (of tau, and of tau - 1, the accepted tokens per step)."""
    rows = eagle3_rows(frame) if "family" in frame.columns else frame
    if len(rows) == 0 or "draft_train_tau" not in rows.columns:
        return []
    if checks is not None and len(checks) and not (rows["source"] == "engine").any():
        extra = eagle3_rows(checks) if "family" in checks.columns else checks
        if "draft_train_tau" in extra.columns:
            rows = pd.concat([rows, extra.assign(source="engine")], ignore_index=True)
    rows = rows[rows["tree"].astype(str).str.startswith("chain:")]
    keys = ["draft_name", "draft_params", "draft_tokens", "draft_n_layers", "tree"]
    out = []
    for key, g in rows.groupby(keys, dropna=False, sort=True):
        entry = dict(zip(keys, key))
        train = _f(g["draft_train_tau"].iloc[0])
        taus = {}
        for source, gs in g.groupby("source"):
            steps = float(gs["steps"].sum())
            taus[str(source)] = 1.0 + float(gs["accepted"].sum()) / steps if steps else None
        served = taus.get("oracle", taus.get("engine"))
        out.append({"draft_name": str(entry["draft_name"]), "draft_layers": _f(entry["draft_n_layers"]),
                    "draft_params": _f(entry["draft_params"]), "draft_tokens": _f(entry["draft_tokens"]),
                    "tree": str(entry["tree"]), "train_tau": train, "oracle_tau": _f(taus.get("oracle")),
                    "engine_tau": _f(taus.get("engine")),
                    "served_over_train": _f(served / train) if served is not None and train else None,
                    "accepted_over_train": (_f((served - 1) / (train - 1))
                                            if served is not None and train is not None and train > 1 else None)})
    return out


def _f(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None
