"""Cost model: step times as a function of draft shape, batch size and tokens per row.

Wall-clock speedups are noisy and hardware-bound, so Scylla fits acceptance and cost separately and
composes them (docs/design.md, "Pitfalls" and "Speedup formulas"). The cost side is two small
non-negative linear models, fitted by NNLS on relative errors (each row divided by its measured
time) so that fast and slow steps count alike:

    draft step      T_d(N, L, B) = d0 + d1 * L + d2 * N * B
                    (fixed overhead, per-layer kernel launches, compute ~ params x rows)
    target forward  T_t(B, k)    = t0 + t1 * B + t2 * B * k
                    (k tokens per row: 1 for plain decoding, gamma + 1 for verification)

Non-negativity keeps extrapolation monotone (a bigger draft is never predicted to be faster).
The cost of other gammas follows the per-token term. Verification measured at one gamma cannot
check that, and a warning says so. On this CPU a multi-token forward also pays an extra that barely
depends on batch size, and the model has no term for it. Fitted on the reference study (gamma 4), it
predicts the verify/plain step ratio of the gamma 1-2 validation run 12-20% low at batch sizes 1-4
(experiments/reference-small/validation/verify_cost_check.txt).
The bootstrap resamples measured rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from .checks import emit, r_squared
from .core import FitError, single_thread_blas

__all__ = ["CostModel", "fit_cost_model"]

DRAFT_TERMS = ("overhead", "per_layer", "per_param_row")
TARGET_TERMS = ("overhead", "per_row", "per_token")


def _draft_features(params: np.ndarray, layers: np.ndarray, batch: np.ndarray) -> np.ndarray:
    params, layers, batch = np.broadcast_arrays(*(np.asarray(a, float) for a in (params, layers, batch)))
    return np.stack([np.ones_like(params), layers, params * batch], axis=-1)


def _target_features(batch: np.ndarray, k: np.ndarray) -> np.ndarray:
    batch, k = np.broadcast_arrays(np.asarray(batch, float), np.asarray(k, float))
    return np.stack([np.ones_like(batch), batch, batch * k], axis=-1)


def _nnls_rel(F: np.ndarray, t: np.ndarray) -> np.ndarray:
    """NNLS on relative residuals; columns scaled to unit norm for conditioning."""
    A = F / t[:, None]
    s = np.linalg.norm(A, axis=0)
    s[s == 0] = 1.0
    coef, _ = nnls(A / s, np.ones_like(t), maxiter=50 * F.shape[1])
    return coef / s


@dataclass
class CostModel:
    """Fitted step-time model; `*_draws` hold bootstrap coefficient draws (or None)."""

    draft_coef: np.ndarray
    target_coef: np.ndarray
    draft_draws: np.ndarray | None
    target_draws: np.ndarray | None
    batch_range: tuple[float, float]
    params_range: tuple[float, float]
    r2_draft: float
    r2_target: float
    n_draft: int
    n_target: int

    def draft_time(self, params: np.ndarray, layers: np.ndarray, batch: np.ndarray, draws: bool = False) -> np.ndarray:
        """Seconds per draft step (one token per row). draws=True adds a leading bootstrap axis."""
        F = _draft_features(params, layers, batch)
        coef = self.draft_draws if draws else self.draft_coef
        return np.einsum("...f,bf->b...", F, np.atleast_2d(coef)) if draws else F @ coef

    def target_time(self, batch: np.ndarray, k: np.ndarray, draws: bool = False) -> np.ndarray:
        """Seconds per target forward on k tokens per row. draws=True adds a leading bootstrap axis."""
        F = _target_features(batch, k)
        coef = self.target_draws if draws else self.target_coef
        return np.einsum("...f,bf->b...", F, np.atleast_2d(coef)) if draws else F @ coef

    def warn_range(self, batch_sizes: np.ndarray) -> None:
        lo, hi = self.batch_range
        b = np.asarray(batch_sizes, float)
        if np.any((b < lo) | (b > hi)):
            emit([f"serving batch sizes {sorted(set(b[(b < lo) | (b > hi)].tolist()))} lie outside the measured "
                  f"batch sizes [{lo:g}, {hi:g}]: step times there are extrapolated by the cost model"])

    def to_dict(self) -> dict:
        return {
            "draft_step_seconds": {"equation": "d0 + d1 * n_layers + d2 * params * batch",
                                   "coef": dict(zip(DRAFT_TERMS, map(float, self.draft_coef))),
                                   "r2": self.r2_draft, "n_rows": self.n_draft},
            "target_forward_seconds": {"equation": "t0 + t1 * batch + t2 * batch * tokens_per_row",
                                       "coef": dict(zip(TARGET_TERMS, map(float, self.target_coef))),
                                       "r2": self.r2_target, "n_rows": self.n_target},
            "batch_range": list(self.batch_range), "params_range": list(self.params_range),
        }


def _numeric(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise FitError(f"the cost model needs column(s) {missing}; the results table lacks them")
    sub = frame[cols].apply(pd.to_numeric, errors="coerce")
    return sub[np.all(np.isfinite(sub.to_numpy(float)), axis=1) & np.all(sub.to_numpy(float) > 0, axis=1)]


@single_thread_blas
def fit_cost_model(frame: pd.DataFrame, *, n_bootstrap: int = 0, seed: int = 0) -> CostModel:
    """Fit draft and target step times from a results table (rows of one target model).

    Uses `draft_step_seconds` vs (`draft_params`, `draft_n_layers`, `batch_size`) on separate-draft
    rows (family "llama" when the column exists), and `target_step_seconds` (k = 1) plus
    `verify_step_seconds` (k = gamma + 1) vs `batch_size`.
    """
    if "target_params" in frame.columns and frame["target_params"].nunique() > 1:
        raise FitError("the table mixes target models (several target_params values); fit one target at a time")
    drafts = frame[frame["family"] == "llama"] if "family" in frame.columns else frame
    dd = _numeric(drafts, ["draft_step_seconds", "draft_params", "draft_n_layers", "batch_size"])
    if len(dd) < 3:
        raise FitError(f"the cost model needs >= 3 rows with draft step times, found {len(dd)}")
    tt = _numeric(frame, ["target_step_seconds", "batch_size"])
    vv = _numeric(drafts, ["verify_step_seconds", "batch_size", "gamma"])  # verification as separate drafts do it
    batch = np.concatenate([tt["batch_size"].to_numpy(float), vv["batch_size"].to_numpy(float)])
    k = np.concatenate([np.ones(len(tt)), vv["gamma"].to_numpy(float) + 1.0])
    t_target = np.concatenate([tt["target_step_seconds"].to_numpy(float), vv["verify_step_seconds"].to_numpy(float)])
    if len(t_target) < 3:
        raise FitError(f"the cost model needs >= 3 target/verify step times, found {len(t_target)}")

    Fd = _draft_features(dd["draft_params"].to_numpy(float), dd["draft_n_layers"].to_numpy(float),
                         dd["batch_size"].to_numpy(float))
    td = dd["draft_step_seconds"].to_numpy(float)
    Ft = _target_features(batch, k)
    widths = np.unique(k[k > 1])
    if len(widths) < 2:
        which = f"1 gamma only ({widths[0] - 1:g})" if len(widths) else "no gamma"
        emit([f"verification was measured at {which}: "
              "step times at other gammas are interpolated linearly in tokens per row, which under-prices small "
              "gammas where any multi-token forward costs a fixed extra (a CPU does); sweep two gammas or more, "
              "e.g. axes.gammas=[1,4], before trusting a recommended gamma far from the measured one"])
    cd, ct = _nnls_rel(Fd, td), _nnls_rel(Ft, t_target)

    dboot = tboot = None
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        dboot = np.empty((n_bootstrap, 3))
        tboot = np.empty((n_bootstrap, 3))
        for b in range(n_bootstrap):
            i = rng.integers(0, len(td), len(td))
            j = rng.integers(0, len(t_target), len(t_target))
            dboot[b] = _nnls_rel(Fd[i], td[i])
            tboot[b] = _nnls_rel(Ft[j], t_target[j])
    return CostModel(
        draft_coef=cd, target_coef=ct, draft_draws=dboot, target_draws=tboot,
        batch_range=(float(batch.min()), float(batch.max())),
        params_range=(float(dd["draft_params"].min()), float(dd["draft_params"].max())),
        r2_draft=r_squared(np.log(td), np.log(np.maximum(Fd @ cd, 1e-300))),
        r2_target=r_squared(np.log(t_target), np.log(np.maximum(Ft @ ct, 1e-300))),
        n_draft=len(td), n_target=len(t_target),
    )
