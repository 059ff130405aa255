"""The multi-token-prediction (self-speculative) family in the fitter: pooled tables and tau against k.

An MTP job with a k-head model measures every k' in 2..k (`scylla.harness.pipeline.mtp_measure_fn`), so the
results table has one row per (job, task, batch size, k') with ``gamma = k' - 1``. What is fitted and
reported for the family (see docs/fitting.md, "Multi-token prediction"):

- tau (tokens per forward, bonus token included, in [1, k']) against draft tokens and draft params,
  at the largest k' measured: ``log_linear`` on tau (the Scylla paper's form, in tau's own units);
- the same on ``tau_fraction = (tau - 1) / (k' - 1)`` (the share of the k' - 1 extra tokens a forward
  could emit that it does emit, in [0, 1]), compared by AICc with the bounded forms ``logit_linear``
  and ``saturating_power``: on a fixed k', log_linear on tau_fraction is the same law as log_linear on
  tau, so the comparison says whether a bounded form fits better;
- a table of tau and wall-clock speedup against k' (per batch size) for every configuration, and the
  best measured configuration per batch size.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from .core import FitError
from .recommend import acceptance_table

__all__ = ["mtp_rows", "mtp_table", "tau_vs_k", "best_per_batch", "headline_configuration", "mtp_summary"]

CONFIG = ["draft_name", "draft_params", "draft_tokens"]


def mtp_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the MTP family (none when the table has no ``family`` column)."""
    if "family" not in frame.columns:
        return frame.iloc[:0]
    return frame[frame["family"] == "mtp"]


def _position_cols(frame: pd.DataFrame, prefix: str) -> list[str]:
    cols = [c for c in frame.columns if re.fullmatch(rf"{prefix}_\d+", str(c))]
    return sorted(cols, key=lambda c: int(str(c).rsplit("_", 1)[1]))


def mtp_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (MTP configuration, k'), counters pooled over batch sizes (and rows of one task).

    Columns: those of `acceptance_table` (``tau`` = 1 + accepted / steps, from the pooled counters),
    plus ``k`` (= gamma + 1, heads used), ``tau_fraction`` = (tau - 1) / (k - 1) with its per-prompt
    denominator ``prompt_steps_gamma`` (so fits of it resample prompts and are weighted by their
    standard errors), per-head acceptance ``alpha_j`` = accepted_j / reached_j (position j is head
    j + 1) and ``speedup_mean`` (mean measured speedup over the pooled rows)."""
    frame = mtp_rows(frame) if "family" in frame.columns else frame
    if len(frame) == 0:
        raise FitError("no multi-token-prediction (family 'mtp') rows")
    if (pd.to_numeric(frame["gamma"], errors="coerce") < 1).any():
        raise FitError("MTP rows need gamma = k' - 1 >= 1 (k' >= 2 heads used)")
    by = [c for c in ("family", "task", "temperature", *CONFIG, "gamma") if c in frame.columns]
    out = acceptance_table(frame, by=by)
    groups = frame.groupby(by, dropna=False, sort=True)
    acc_cols, reach_cols = _position_cols(frame, "accepted"), _position_cols(frame, "reached")
    if acc_cols and reach_cols:
        sums = groups[acc_cols + reach_cols].sum(min_count=1).reset_index(drop=True)
        for a in acc_cols:
            j = a.rsplit("_", 1)[1]
            out[a] = sums[a].to_numpy(float)
            if f"reached_{j}" in sums:
                out[f"reached_{j}"] = sums[f"reached_{j}"].to_numpy(float)
                with np.errstate(divide="ignore", invalid="ignore"):
                    out[f"alpha_{j}"] = np.where(out[f"reached_{j}"] > 0, out[a] / out[f"reached_{j}"], np.nan)
    if "speedup" in frame.columns:
        out["speedup_mean"] = groups["speedup"].mean().to_numpy(float)
    out["k"] = out["gamma"].astype(int) + 1
    out["tau_fraction"] = (out["tau"] - 1.0) / out["gamma"]
    if "prompt_steps" in out.columns:
        out["prompt_steps_gamma"] = [None if not isinstance(s, (list, tuple, np.ndarray)) else
                                     list(np.asarray(s, float) * g) for s, g in zip(out["prompt_steps"], out["gamma"])]
    return out


def tau_vs_k(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean tau and mean wall-clock speedup per (configuration, k', batch size), over the rows there
    (tasks, when the table is pooled over them)."""
    m = mtp_rows(frame) if "family" in frame.columns else frame
    m = m.assign(k=m["gamma"].astype(int) + 1)
    keys = [c for c in CONFIG if c in m.columns] + ["k", "batch_size"]
    agg = {"tau": ("tau", "mean"), "n_rows": ("tau", "size")}
    if "speedup" in m.columns:
        agg["speedup"] = ("speedup", "mean")
    return m.groupby(keys, dropna=False, sort=True).agg(**agg).reset_index()


def best_per_batch(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Per batch size, the measured MTP configuration and k' with the highest mean speedup."""
    t = tau_vs_k(frame)
    if "speedup" not in t.columns:
        return []
    out = []
    for b, g in t.groupby("batch_size", sort=True):
        g = g[np.isfinite(g["speedup"].to_numpy(float))]
        if g.empty:
            continue
        r = g.loc[g["speedup"].idxmax()]
        out.append({"batch_size": float(b), "draft_name": str(r["draft_name"]),
                    "draft_params": float(r["draft_params"]),
                    "draft_tokens": float(r["draft_tokens"]), "k": int(r["k"]), "tau": float(r["tau"]),
                    "speedup": float(r["speedup"])})
    return out


def headline_configuration(table: pd.DataFrame) -> pd.Series:
    """The largest MTP model (most parameters) at its largest token budget: the report's tau-vs-k table."""
    top = table[table["draft_params"] == table["draft_params"].max()]
    top = top[top["draft_tokens"] == top["draft_tokens"].max()]
    return top.iloc[0][CONFIG]


def _f(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def mtp_summary(frame: pd.DataFrame, table: pd.DataFrame) -> dict[str, Any]:
    """The ``mtp`` entry of fits.json: per configuration and k', pooled tau (and tau / k, per-head
    acceptance) with the mean speedup per batch size; the headline configuration; the best measured
    configuration per batch size."""
    per_batch = tau_vs_k(frame)
    head_cols = [c for c in table.columns if re.fullmatch(r"alpha_\d+", str(c))]
    rows = []
    for _, r in table.sort_values(["draft_params", "draft_tokens", "draft_name", "k"]).iterrows():
        pb = per_batch[(per_batch["draft_name"] == r["draft_name"]) & (per_batch["draft_tokens"] == r["draft_tokens"])
                       & (per_batch["draft_params"] == r["draft_params"]) & (per_batch["k"] == r["k"])]
        rows.append({
            "draft_name": str(r["draft_name"]), "draft_params": float(r["draft_params"]),
            "draft_tokens": float(r["draft_tokens"]), "k": int(r["k"]), "tau": _f(r["tau"]),
            "tau_over_k": _f(r["tau"] / r["k"]), "tau_fraction": _f(r["tau_fraction"]),
            "alpha_per_head": {f"head_{int(c.rsplit('_', 1)[1]) + 1}": _f(r[c]) for c in head_cols
                               if _f(r[c]) is not None},
            "speedup": {f"{float(b):g}": _f(s)
                        for b, s in zip(pb["batch_size"], pb.get("speedup", pb["tau"] * np.nan))},
            "tau_per_batch": {f"{float(b):g}": _f(t) for b, t in zip(pb["batch_size"], pb["tau"])},
        })
    head = headline_configuration(table)
    return {
        "n_rows": int(len(frame)), "n_configurations": int(table[CONFIG].drop_duplicates().shape[0]),
        "k_max": int(table["k"].max()), "batch_sizes": sorted(float(b) for b in per_batch["batch_size"].unique()),
        "headline": {"draft_name": str(head["draft_name"]), "draft_params": float(head["draft_params"]),
                     "draft_tokens": float(head["draft_tokens"])},
        "tau_vs_k": rows, "best_per_batch": best_per_batch(frame),
        "conventions": {"k": "heads used (k' = gamma + 1); k = 1 is the model's own plain decoding (tau = 1)",
                        "tau": "tokens per forward = 1 + accepted / steps, bonus/correction token included",
                        "tau_fraction": "(tau - 1) / (k - 1)",
                        "speedup": "wall clock, over the same model's k = 1 decoding at the same batch size",
                        "alpha_per_head": "head j: accepted / offered with every earlier guess accepted"},
    }
