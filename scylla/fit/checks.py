"""Model checks: goodness of fit, held-out extrapolation, model comparison, range warnings.

A law is only useful for what it predicts outside the data, so besides R^2 every fit reports how
well it predicts the configurations at the largest value of each axis when they are held out
(leave-largest-out), and every prediction warns when it leaves the fitted range.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["FitWarning", "r_squared", "aicc", "akaike_weights", "range_warnings"]


class FitWarning(UserWarning):
    """A fit or prediction that is usable but should not be trusted blindly."""


def r_squared(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Coefficient of determination on the given scale (nan when y is constant)."""
    y, y_hat = np.asarray(y, float), np.asarray(y_hat, float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot <= 0:
        return float("nan")
    return 1.0 - float(np.sum((y - y_hat) ** 2)) / ss_tot


def aicc(rss: float, n: int, n_params: int) -> float:
    """Small-sample AIC of a least-squares fit with Gaussian errors; the error variance counts as a
    parameter. Only comparable between fits of the same points on the same response scale."""
    k = n_params + 1
    if n - k - 1 <= 0:
        return float("nan")
    rss = max(float(rss), 1e-300)
    return n * math.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def akaike_weights(values: np.ndarray) -> np.ndarray:
    """exp(-dAICc/2), normalised: the relative support of each model in a comparison."""
    v = np.asarray(values, float)
    ok = np.isfinite(v)
    out = np.zeros_like(v)
    if ok.any():
        d = v[ok] - v[ok].min()
        e = np.exp(-0.5 * d)
        out[ok] = e / e.sum()
    return out


def range_warnings(x_names: list[str], X: np.ndarray, x_range: dict[str, tuple[float, float]],
                   y_pred: np.ndarray | None = None, rate: bool = False) -> list[str]:
    """Messages for predictions outside the fitted x range, and for predicted rates at or above 1."""
    msgs = []
    for j, name in enumerate(x_names):
        lo, hi = x_range[name]
        col = X[:, j]
        n_out = int(np.sum((col < lo * (1 - 1e-9)) | (col > hi * (1 + 1e-9))))
        if n_out:
            msgs.append(
                f"{n_out} prediction(s) extrapolate in {name!r} outside the fitted range "
                f"[{lo:.4g}, {hi:.4g}] (up to {col.max():.4g}, down to {col.min():.4g}); treat them as extrapolations"
            )
    if rate and y_pred is not None:
        n_hi = int(np.sum(np.asarray(y_pred) >= 1.0))
        if n_hi:
            msgs.append(
                f"{n_hi} predicted rate(s) reach or exceed 1 (max {np.max(y_pred):.4g}): the law has left its "
                "domain; use a bounded form (logit_linear, saturating_power) for extrapolation"
            )
    return msgs


def emit(msgs: list[str]) -> None:
    for m in msgs:
        warnings.warn(m, FitWarning, stacklevel=3)
