"""Model checks: goodness of fit, held-out extrapolation, model comparison, range warnings.

A law is only useful for what it predicts outside the data, so besides R^2 every fit reports how
well it predicts the configurations at the largest value of each axis when they are held out
(leave-largest-out), and every prediction warns when it leaves the fitted range.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from .core import FitResult
    from .laws import LawForm

__all__ = ["FitWarning", "r_squared", "aicc", "akaike_weights", "range_warnings", "leave_largest_out",
           "compare_forms"]


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


def leave_largest_out(result: FitResult, frame: pd.DataFrame) -> dict[str, dict]:
    """Per axis: refit without the configurations at that axis' largest value and predict them.

    Reports the mean absolute and mean relative error on the response's natural scale, and how far
    the held-out points lie beyond the training range (the extrapolation factor in x).
    """
    from .core import FitError, _fit_point, _prepare  # local: core imports this module

    out: dict[str, dict] = {}
    data = _prepare(frame, result.form, result.x, result.y, result.weights_spec)
    for j, name in enumerate(result.x):
        col = data.X[:, j]
        held = col >= col.max() * (1 - 1e-12)
        train = ~held
        if np.unique(col).size < 3:
            out[name] = {"skipped": f"needs >= 3 distinct values of {name!r}, has {np.unique(col).size}"}
            continue
        try:
            sub = data.subset(train)
            sub.validate(result.form)
            theta, *_ = _fit_point(result.form, sub, result.delta, reduced=True,
                                   max_starts=1 if result.form.convex else 20, extra_starts=[result.raw])
        except FitError as exc:
            out[name] = {"skipped": str(exc)}
            continue
        y_hat = result.form.predict_y(theta, data.U[held])
        y_true = data.y[held]
        err = y_hat - y_true
        out[name] = {
            "n_heldout": int(held.sum()),
            "n_train": int(train.sum()),
            "x_heldout": float(col.max()),
            "extrapolation_factor": float(col.max() / col[train].max()),
            "mean_abs_error": float(np.mean(np.abs(err))),
            "mean_error": float(np.mean(err)),
            "mean_rel_error": float(np.mean(np.abs(err) / np.maximum(np.abs(y_true), 1e-300))),
        }
    return out


def compare_forms(frame: pd.DataFrame, forms: list[str | LawForm], x: str | list[str], y: str,
                  **fit_kwargs) -> pd.DataFrame:
    """Fit several forms to the same points and rank them by AICc on y's natural scale.

    Returns one row per form (sorted, best first) with AICc, its difference to the best, the Akaike
    weight, R^2 and the leave-largest-out errors. Forms that cannot be fitted are listed with the reason.
    """
    from .core import FitError, fit_law

    rows = []
    for form in forms:
        try:
            res = fit_law(frame, form, x, y, **fit_kwargs)
        except FitError as exc:
            rows.append({"form": form if isinstance(form, str) else form.name, "error": str(exc)})
            continue
        lloe = [v.get("mean_rel_error") for v in res.holdout.values() if "mean_rel_error" in v]
        rows.append({
            "form": res.form.name, "n_params": res.form.n_params, "aicc": res.aicc, "r2": res.r2,
            "llo_mean_rel_error": float(np.mean(lloe)) if lloe else float("nan"), "converged": res.converged,
            "result": res,
        })
    table = pd.DataFrame(rows)
    if "aicc" in table:
        table["delta_aicc"] = table["aicc"] - table["aicc"].min()
        table["akaike_weight"] = akaike_weights(table["aicc"].to_numpy(dtype=float))
        table = table.sort_values("aicc", na_position="last").reset_index(drop=True)
    return table
