"""Input hygiene for the fits: non-finite numbers and out-of-range arguments never reach a law.

A NaN `accepted` summed by pandas counts as 0 (lowering alpha) and a NaN `draft_tokens` becomes a
candidate budget, so rows with a non-finite value in a column the fits use are dropped *with a note*
(a `FitWarning` naming how many rows and which columns). Arguments are checked before anything is
read or written.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .checks import FitWarning
from .core import FitError

__all__ = ["REQUIRED_NUMERIC", "OPTIONAL_NUMERIC", "drop_non_finite", "check_arguments"]

# Columns every fit uses: a non-finite value here always drops the row.
REQUIRED_NUMERIC = ["drafted", "accepted", "steps", "draft_params", "draft_tokens"]
# Columns some fits use: checked when the table has them with at least one finite value (a column
# that is absent or entirely empty, e.g. no speedups in a synthetic table, is simply not used).
OPTIONAL_NUMERIC = ["gamma", "batch_size", "speedup"]


def drop_non_finite(table: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """``table`` without rows holding NaN/inf in the fitted columns, and the note saying what went."""
    cols = [c for c in REQUIRED_NUMERIC if c in table.columns]
    for c in OPTIONAL_NUMERIC:
        if c in table.columns and np.isfinite(pd.to_numeric(table[c], errors="coerce").to_numpy(float)).any():
            cols.append(c)
    if not cols or table.empty:
        return table, None
    values = table[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = ~np.isfinite(values)
    rows = bad.any(axis=1)
    if not rows.any():
        return table, None
    which = [c for c, hit in zip(cols, bad.any(axis=0)) if hit]
    note = (f"dropped {int(rows.sum())} of {len(table)} row(s) with a non-finite (NaN/inf) value in "
            f"{', '.join(which)}; check the records they came from")
    warnings.warn(note, FitWarning, stacklevel=2)
    kept = table[~rows].reset_index(drop=True)
    if kept.empty:
        raise FitError(f"every row has a non-finite value in {', '.join(which)}: nothing left to fit")
    return kept, note


def _positive_finite(values: Sequence[float] | None, flag: str) -> None:
    if values is None:
        return
    if len(values) == 0:
        raise FitError(f"{flag} is empty; give comma-separated positive numbers, e.g. {flag} 1,8,32")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise FitError(f"{flag} must list positive finite numbers, got {', '.join(f'{v:g}' for v in bad)}")


def check_arguments(*, level: float, max_gamma: int, compute_budget: float | None, n_bootstrap: int,
                    batch_sizes: Sequence[float] | None, token_budgets: Sequence[float] | None) -> None:
    """Raise `FitError` naming the first argument that cannot work (before any file is read)."""
    if not (math.isfinite(level) and 0 < level < 1):
        raise FitError(f"--level must lie strictly between 0 and 1 (e.g. 0.95), got {level:g}")
    if max_gamma < 1:
        raise FitError(f"--max-gamma must be >= 1 (the longest draft considered), got {max_gamma}")
    if compute_budget is not None and not (math.isfinite(compute_budget) and compute_budget > 0):
        raise FitError(f"--compute-budget must be a positive number of FLOP (e.g. 1e16), got {compute_budget:g}")
    if n_bootstrap < 0 or n_bootstrap == 1:
        raise FitError("--n-bootstrap must be 0 or >= 2 (use >= 1000 for reported intervals)")
    _positive_finite(batch_sizes, "--batch-sizes")
    _positive_finite(token_budgets, "--token-budgets")
