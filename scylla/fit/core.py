"""Fitting a law: robust objective, multi-start L-BFGS-B, convergence checks, bootstrap.

Objective (Besiroglu et al. 2024, after Hoffmann et al. 2022): the SUM over points of a Huber loss of
standardised residuals on the form's response scale,

    F(theta) = sum_i c_i * huber_delta( sqrt(w_i) * (z_i - f(theta, ln x_i)) ),

with c_i bootstrap multiplicities (1 for the point fit) and w_i weights from per-point standard
errors (1 when none are known). The sum, not the mean: a mean Huber loss is ~1e-6 in size and
L-BFGS-B's relative tolerance `ftol * max(|F|, 1)` then stops it within a step or two of its start.
We additionally rescale F by its starting value and polish the best start, and we *check* the result:
the largest cosine between the residual influence vector and a Jacobian column (a scale-free
gradient test, ~0 at an optimum, O(1) away from one) must be small.

Uncertainty: nonparametric bootstrap. Configurations (rows) are resampled within the sweep; when
per-prompt counters are present and the response is `alpha`, `alpha_token`, `tau` or `tau_fraction`, prompts are also
resampled within each configuration and the rate recomputed from the resampled counts. Bootstrap fits start
from the point estimate; forms linear on their response scale are solved for all draws at once by
iteratively reweighted least squares (exact for a convex Huber objective).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from . import checks
from .checks import FitWarning
from .laws import LawForm, get_form

__all__ = ["FitError", "FitResult", "fit_law", "huber", "leave_largest_out", "compare_forms"]

HUBER_K = 1.345  # 95% efficiency under Gaussian errors
CONVERGENCE_TOL = 1e-3  # max cosine between residual influence and a Jacobian column
SCREEN_ITERS = 200  # L-BFGS-B iterations per grid start before the best few are polished
POLISH = 5
PROMPT_COLUMNS = {"alpha": ("prompt_accepted", "prompt_drafted"), "tau": ("prompt_accepted", "prompt_steps"),
                  "alpha_token": ("prompt_accepted", "prompt_reached"),
                  # MTP: (tau - 1) / (k - 1) = accepted / (steps * gamma), see scylla.fit.mtp
                  "tau_fraction": ("prompt_accepted", "prompt_steps_gamma")}


def single_thread_blas(fn: Callable) -> Callable:
    """Run `fn` with one BLAS thread. The problems here are tiny (a few parameters, tens to hundreds of
    points): a multi-threaded BLAS spends more time waking threads than computing, and on a shared
    machine L-BFGS-B became ~30x slower. No-op when threadpoolctl is absent."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover
            ctx = contextlib.nullcontext()
        else:
            ctx = threadpool_limits(limits=1, user_api="blas")
        with ctx:
            return fn(*args, **kwargs)

    return wrapper


class FitError(ValueError):
    """The data cannot identify the law (too few points, constant axis, values outside the form's domain)."""


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative psi (the clipped residual)."""
    a = np.abs(r)
    quad = a <= delta
    rho = np.where(quad, 0.5 * r * r, delta * (a - 0.5 * delta))
    return rho, np.clip(r, -delta, delta)


# --------------------------------------------------------------------------------------------------
# Data preparation


@dataclass
class _Data:
    X: np.ndarray  # (n, d) positive axis values
    y: np.ndarray  # (n,) response, natural scale
    z: np.ndarray  # (n,) response on the form's scale
    w: np.ndarray  # (n,) weights (mean 1)
    x_names: list[str]
    y_name: str
    prompt_num: list[np.ndarray] | None = None  # per-row per-prompt numerators (accepted)
    prompt_den: list[np.ndarray] | None = None  # per-row per-prompt denominators (drafted / steps)

    @property
    def U(self) -> np.ndarray:
        return np.log(self.X)

    @property
    def n(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> _Data:
        idx = np.flatnonzero(mask)
        num = None if self.prompt_num is None else [self.prompt_num[i] for i in idx]
        den = None if self.prompt_den is None else [self.prompt_den[i] for i in idx]
        return _Data(self.X[idx], self.y[idx], self.z[idx], self.w[idx], self.x_names, self.y_name, num, den)

    def validate(self, form: LawForm) -> None:
        """Raise FitError when the points cannot identify the form's parameters."""
        n, p = self.n, form.n_params
        if n == 1:
            raise FitError(f"cannot fit {form.name!r} to a single point; a law needs points along {self.x_names}")
        U = self.U
        for j, name in enumerate(self.x_names):
            if np.ptp(U[:, j]) == 0:
                raise FitError(
                    f"all values of {name!r} are equal ({self.X[0, j]:.6g}): the slope along it is not "
                    "identifiable; vary that axis or drop it from x"
                )
        if n <= p:
            raise FitError(
                f"{form.name!r} has {p} parameters but only {n} point(s); it needs at least {p + 1} "
                "(add configurations or use a form with fewer parameters)"
            )
        distinct = np.unique(self.X, axis=0).shape[0]
        if distinct < p:
            raise FitError(
                f"{form.name!r} has {p} parameters but the data hold only {distinct} distinct x "
                f"configuration(s) of {self.x_names}; add configurations or use a smaller form"
            )
        if U.shape[1] > 1:
            D = np.column_stack([np.ones(n), U])
            if np.linalg.matrix_rank(D, tol=1e-8 * np.abs(D).max()) < D.shape[1]:
                raise FitError(
                    f"ln({self.x_names[0]}) and ln({self.x_names[1]}) are collinear (e.g. a fixed "
                    "tokens-per-parameter ray): a joint law cannot separate them; vary the axes independently"
                )


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        raise FitError(f"column {name!r} is not in the table; available: {', '.join(map(str, frame.columns))}")
    try:
        col = pd.to_numeric(frame[name], errors="raise").to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise FitError(f"column {name!r} is not numeric") from None
    bad = ~np.isfinite(col)
    if bad.any():
        rows = list(frame.index[bad][:5])
        raise FitError(
            f"column {name!r} has {int(bad.sum())} NaN/inf value(s) (rows {rows}); drop or repair them "
            f"first, e.g. frame.dropna(subset=[{name!r}])"
        )
    return col


def _prompt_lists(frame: pd.DataFrame, y: str) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    cols = PROMPT_COLUMNS.get(y)
    if cols is None or not all(c in frame.columns for c in cols):
        return None
    num, den = [], []
    for a, d in zip(frame[cols[0]], frame[cols[1]]):
        if a is None or d is None or (np.isscalar(a) and pd.isna(a)):
            return None
        a, d = np.asarray(a, dtype=float), np.asarray(d, dtype=float)
        if a.shape != d.shape or a.size == 0 or d.sum() <= 0:
            return None
        num.append(a)
        den.append(d)
    return num, den


def _ratio_se(num: np.ndarray, den: np.ndarray) -> float:
    """Standard error of sum(num)/sum(den) over prompts (linearisation / cluster estimator)."""
    m = num.size
    R = num.sum() / den.sum()
    if m < 2:
        return float("nan")
    return float(math.sqrt(m / (m - 1) * np.sum((num - R * den) ** 2)) / den.sum())


def _prepare(frame: pd.DataFrame, form: LawForm, x: str | Sequence[str], y: str, weights: Any) -> _Data:
    if not isinstance(frame, pd.DataFrame):
        raise FitError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    x_names = [x] if isinstance(x, str) else list(x)
    if len(x_names) != form.n_axes:
        raise FitError(f"{form.name!r} takes {form.n_axes} x column(s) ({form.equation}), got {x_names}")
    if len(frame) == 0:
        raise FitError("the table is empty")
    X = np.column_stack([_column(frame, c) for c in x_names])
    for j, c in enumerate(x_names):
        if np.any(X[:, j] <= 0):
            raise FitError(f"column {c!r} must be > 0 (the laws are in ln {c}); got min {X[:, j].min():.4g}")
    yv = _column(frame, y)
    tr = form.transform
    ok = tr.valid(yv)
    if not ok.all():
        bad = yv[~ok]
        hint = ""
        if tr.name in ("logit", "log1m") and np.any(bad >= 1):
            hint = (" A rate of exactly 1 has infinite logit / ln(1 - y): drop those points, fit a form on "
                    "the identity scale (log_linear), or measure more tokens so the rate is estimated below 1.")
        raise FitError(f"{form.name!r} needs {tr.domain} for {y!r}; {int((~ok).sum())} value(s) violate it "
                       f"(e.g. {bad[0]:.6g}).{hint}")
    z = tr.forward(yv)
    prompts = _prompt_lists(frame, y)

    if weights is None or weights is True:  # automatic: from standard errors when present
        se = None
        if f"{y}_se" in frame.columns:  # lenient: a missing standard error means "unknown", not an error
            se = pd.to_numeric(frame[f"{y}_se"], errors="coerce").to_numpy(dtype=float)
            if not np.all(np.isfinite(se)) and prompts is None:
                warnings.warn(f"column {y}_se has missing or non-finite values: fitting {y!r} unweighted",
                              FitWarning, stacklevel=4)
        if (se is None or not np.all(np.isfinite(se))) and prompts is not None:
            se = np.array([_ratio_se(a, d) for a, d in zip(*prompts)])
        if se is not None and np.all(np.isfinite(se)) and np.any(se > 0):
            se_z = np.abs(se * tr.derivative(yv))
            floor = 0.1 * np.median(se_z[se_z > 0])
            w = 1.0 / np.maximum(se_z, floor) ** 2
        else:
            w = np.ones(len(yv))
    elif weights is False:
        w = np.ones(len(yv))
    elif isinstance(weights, str):
        w = _column(frame, weights)
    else:
        w = np.asarray(weights, dtype=float)
        if w.shape != yv.shape or not np.all(np.isfinite(w)):
            raise FitError(f"weights must be {len(yv)} finite numbers, got shape {w.shape}")
    if np.any(w < 0) or not np.any(w > 0):
        raise FitError("weights must be >= 0 with at least one > 0")
    w = w / w.mean()
    num, den = prompts if prompts is not None else (None, None)
    return _Data(X, yv, z, w, x_names, y, num, den)


# --------------------------------------------------------------------------------------------------
# Optimisation


def _objective(form: LawForm, theta: np.ndarray, U: np.ndarray, z: np.ndarray, sw: np.ndarray,
               c: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    r = sw * (z - form.model(theta, U))
    rho, psi = huber(r, delta)
    J = form.jacobian(theta, U)
    return float(np.sum(c * rho)), -(J.T @ (c * sw * psi))


def _offset(form: LawForm, theta: np.ndarray, U: np.ndarray, z: np.ndarray, sw: np.ndarray, c: np.ndarray,
            delta: float) -> float:
    """Scale-free convergence measure: max over free parameters of the cosine between a Jacobian
    column and the residual influence vector c*sqrt(w)*psi(r). Zero at a stationary point."""
    r = sw * (z - form.model(theta, U))
    v = c * sw * np.clip(r, -delta, delta)
    nv = np.linalg.norm(v)
    if nv == 0:
        return 0.0
    J = form.jacobian(theta, U)
    g = J.T @ v  # = -gradient
    cos = np.abs(g) / (np.linalg.norm(J, axis=0) * nv + 1e-300)
    # a parameter held at a bound by a gradient pointing outwards is not free
    for j, (lo, hi) in enumerate(form.bounds):
        if lo is not None and theta[j] <= lo + 1e-9 and g[j] < 0:
            cos[j] = 0.0
        if hi is not None and theta[j] >= hi - 1e-9 and g[j] > 0:
            cos[j] = 0.0
    return float(np.max(cos))


def _projected_grad_norm(form: LawForm, theta: np.ndarray, U: np.ndarray, z: np.ndarray, sw: np.ndarray,
                         c: np.ndarray, delta: float) -> float:
    """Infinity norm of the SUM objective's gradient, components held at a bound by an outward
    gradient excluded (what L-BFGS-B's pgtol tests). Reported next to the scale-free offset."""
    _, g = _objective(form, theta, U, z, sw, c, delta)
    for j, (lo, hi) in enumerate(form.bounds):
        if (lo is not None and theta[j] <= lo + 1e-9 and g[j] > 0) or (hi is not None and theta[j] >= hi - 1e-9
                                                                       and g[j] < 0):
            g[j] = 0.0
    return float(np.max(np.abs(g))) if g.size else 0.0


def _lbfgsb(form: LawForm, theta0: np.ndarray, U: np.ndarray, z: np.ndarray, sw: np.ndarray, c: np.ndarray,
            delta: float, maxiter: int = 5000, ftol: float = 1e-14) -> tuple[np.ndarray, float, bool]:
    f0, _ = _objective(form, theta0, U, z, sw, c, delta)
    scale = f0 if f0 > 0 else 1.0

    def fun(t: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = _objective(form, t, U, z, sw, c, delta)
        return f / scale, g / scale

    res = minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=form.bounds,
                   options={"maxiter": maxiter, "maxfun": 2 * maxiter, "ftol": ftol, "gtol": 1e-12, "maxcor": 10})
    return res.x, float(res.fun) * scale, bool(res.success)


def _robust_delta(form: LawForm, data: _Data) -> float:
    """Huber threshold: fixed by the form (Chinchilla: 1e-3 on ln L), else 1.345 x a robust scale
    (MAD) of the standardised residuals of a weighted linear pre-fit of z on ln x."""
    if form.huber_delta is not None:
        return float(form.huber_delta)
    U = data.U
    D = np.column_stack([np.ones(data.n), U])
    sw = np.sqrt(data.w)
    beta, *_ = np.linalg.lstsq(D * sw[:, None], data.z * sw, rcond=None)
    r = sw * (data.z - D @ beta)
    dof = data.n - D.shape[1]
    if data.n >= 10:
        s = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    else:  # too few points for a robust scale: the residual standard deviation
        s = float(np.sqrt(np.sum(r * r) / max(dof, 1)))
    if not s > 0:
        s = max(float(np.std(r)), 1e-9 * (1.0 + float(np.std(data.z))))
    return HUBER_K * s


def _fit_point(form: LawForm, data: _Data, delta: float, *, reduced: bool = False, max_starts: int | None = None,
               extra_starts: Sequence[np.ndarray] = (), starts: np.ndarray | None = None,
               ) -> tuple[np.ndarray, float, int, np.ndarray, bool, bool]:
    """Multi-start L-BFGS-B. Returns (theta, objective, n_starts, best_start, best_start_on_boundary, ok)."""
    U, z, sw, c = data.U, data.z, np.sqrt(data.w), np.ones(data.n)
    if starts is not None:
        pts = np.atleast_2d(np.asarray(starts, dtype=float))
        if pts.shape[1] != form.n_params:
            raise FitError(f"starts must be raw parameter vectors {form.raw_names}, got shape {pts.shape}")
        edge = np.zeros(len(pts), dtype=bool)
    else:
        grid = form.init_grid(U, z, reduced=reduced)
        pts, edge = grid.points, grid.on_boundary
    lo = np.array([b[0] if b[0] is not None else -np.inf for b in form.bounds])
    hi = np.array([b[1] if b[1] is not None else np.inf for b in form.bounds])
    pts = np.clip(pts, lo, hi)
    if form.convex and starts is None:  # one optimum: the grid's centre (the OLS solution) and its corners suffice
        max_starts = min(max_starts or 3, 3)
    if max_starts is not None and max_starts < len(pts):
        # screen the grid by its objective value (vectorised) and keep the most promising starts
        r = sw * (z - form.model(pts, U))
        f = np.sum(huber(r, delta)[0], axis=1)
        keep = np.argsort(f, kind="stable")[:max_starts]
        pts, edge = pts[keep], edge[keep]
    starts = [(p, bool(e)) for p, e in zip(pts, edge)] + [(np.clip(s, lo, hi), False) for s in extra_starts]
    # phase 1: a short run from every start; phase 2: polish the best few to full tolerance. Flat
    # valleys (few points, nearly redundant terms) otherwise cost thousands of tiny steps per start.
    runs = []
    for p0, on_edge in starts:
        theta, f, _ = _lbfgsb(form, p0, U, z, sw, c, delta, maxiter=SCREEN_ITERS, ftol=1e-11)
        if np.isfinite(f):
            runs.append((f, theta, p0, on_edge))
    if not runs:
        raise FitError(f"{form.name!r}: every start gave a non-finite objective; check the data's scale")
    runs.sort(key=lambda r: r[0])
    polished = []
    for f, theta, p0, on_edge in runs[:POLISH]:
        theta, f, ok = _lbfgsb(form, theta, U, z, sw, c, delta)
        polished.append((f, theta, p0, on_edge, ok))
    polished.sort(key=lambda r: r[0])
    f, theta, p0, on_edge, ok = polished[0]
    # a boundary start only matters when no interior start reaches the same optimum
    tol = 1e-6 * max(abs(f), 1e-300)
    interior = min([r[0] for r in polished if not r[3]] + [r[0] for r in runs if not r[3]], default=np.inf)
    on_edge = bool(on_edge and not form.convex and interior > f + tol)
    return theta, f, len(starts), p0, on_edge, ok


# --------------------------------------------------------------------------------------------------
# Bootstrap


def _bootstrap_z(data: _Data, form: LawForm, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Response on the fit scale for every resampled slot; prompts re-drawn within configurations."""
    if data.prompt_num is None:
        return data.z[idx]
    yb = np.empty(idx.shape)
    for i in range(data.n):
        bb, jj = np.nonzero(idx == i)
        if bb.size == 0:
            continue
        num, den = data.prompt_num[i], data.prompt_den[i]
        draws = rng.integers(0, num.size, size=(bb.size, num.size))
        ratio = num[draws].sum(axis=1) / np.maximum(den[draws].sum(axis=1), 1e-300)
        yb[bb, jj] = 1.0 + ratio if data.y_name == "tau" else ratio
    with np.errstate(divide="ignore", invalid="ignore"):
        zb = form.transform.forward(yb)
    return zb


def _bootstrap(form: LawForm, data: _Data, theta_hat: np.ndarray, delta: float, n_boot: int,
               seed: int) -> tuple[np.ndarray, int]:
    """(n_boot, p) raw parameter draws (NaN rows for resamples that cannot identify the law or whose
    refit fails the gradient check) and the number that failed."""
    rng = np.random.default_rng(seed)
    n, p = data.n, form.n_params
    idx = rng.integers(0, n, size=(n_boot, n))
    zb = _bootstrap_z(data, form, idx, rng)
    U = data.U
    wb = data.w[idx]
    # a resample must still identify the law: enough distinct configurations, no constant axis
    good = np.all(np.isfinite(zb), axis=1)
    for j in range(U.shape[1]):
        good &= np.ptp(U[idx, j], axis=1) > 0
    n_distinct = np.array([np.unique(r).size for r in np.sort(idx, axis=1)]) if n < 200 else np.full(n_boot, n)
    good &= n_distinct >= p
    out = np.full((n_boot, p), np.nan)
    todo = np.flatnonzero(good)
    if form.convex and todo.size:
        X = form.jacobian(theta_hat, U)  # the design matrix; constant for a linear form
        th = _irls(X[idx[todo]], zb[todo], wb[todo], theta_hat, delta)
        for k, b in enumerate(todo):
            sw = np.sqrt(wb[b])
            ok = np.all(np.isfinite(th[k]))
            if ok and _offset(form, th[k], U[idx[b]], zb[b], sw, np.ones(n), delta) < CONVERGENCE_TOL:
                out[b] = th[k]
        todo = np.array([b for b in todo if not np.all(np.isfinite(out[b]))], dtype=int)
    for b in todo:  # warm-started at the point estimate; a draw must pass the same gradient check
        Ub, swb, cb = U[idx[b]], np.sqrt(wb[b]), np.ones(n)
        theta, f, _ = _lbfgsb(form, theta_hat, Ub, zb[b], swb, cb, delta, maxiter=300, ftol=1e-12)
        if np.isfinite(f) and _offset(form, theta, Ub, zb[b], swb, cb, delta) >= CONVERGENCE_TOL:
            theta, f, _ = _lbfgsb(form, theta, Ub, zb[b], swb, cb, delta)  # polish once to full tolerance
            if _offset(form, theta, Ub, zb[b], swb, cb, delta) >= CONVERGENCE_TOL:
                continue  # not a stationary point: counted as failed rather than biasing the interval
        if np.isfinite(f):
            out[b] = theta
    failed = int(np.sum(~np.all(np.isfinite(out), axis=1)))
    return out, failed


def _irls(X: np.ndarray, z: np.ndarray, w: np.ndarray, theta0: np.ndarray, delta: float,
          max_iter: int = 500, tol: float = 1e-12) -> np.ndarray:
    """Huber regression by iteratively reweighted least squares for a stack of problems at once.
    X (B, n, p), z and w (B, n). The Huber objective is convex here, so this reaches the same optimum
    as L-BFGS-B; non-converged draws are caught by the caller's offset check."""
    B, n, p = X.shape
    theta = np.tile(theta0, (B, 1))
    sw = np.sqrt(w)
    ridge = 1e-12 * np.eye(p)
    for _ in range(max_iter):
        r = sw * (z - np.einsum("bnp,bp->bn", X, theta))
        a = np.abs(r)
        omega = np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-300))
        XtW = X * (w * omega)[..., None]
        A = np.einsum("bnp,bnq->bpq", XtW, X) + ridge
        rhs = np.einsum("bnp,bn->bp", XtW, z)
        try:
            new = np.linalg.solve(A, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:
            new = np.einsum("bpq,bq->bp", np.linalg.pinv(A), rhs)
        change = np.max(np.abs(new - theta) / (1.0 + np.abs(theta)))
        theta = new
        if change < tol:
            break
    return theta


# --------------------------------------------------------------------------------------------------
# Result


@dataclass
class FitResult:
    """A fitted law: point estimate, bootstrap intervals, diagnostics. `params` and `intervals` use the
    form's reported names (e.g. A, B, E, alpha, beta); `raw` is the optimiser's parameter vector."""

    form: LawForm
    x: list[str]
    y: str
    raw: np.ndarray
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    level: float
    n: int
    objective: float
    delta: float
    converged: bool
    offset: float
    n_starts: int
    best_start: np.ndarray
    best_start_on_boundary: bool
    params_at_bounds: list[str]
    x_range: dict[str, tuple[float, float]]
    r2: float
    r2_transformed: float
    rss: float
    aicc: float
    rate: bool
    seed: int
    weighted: bool
    weights_spec: Any = None
    grad_norm: float = float("nan")  # |projected gradient of the summed objective|_inf at the estimate
    bootstrap_mode: str = "none"
    boot_raw: np.ndarray | None = None
    n_bootstrap_failed: int = 0
    holdout: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    # -- prediction -------------------------------------------------------------------------------
    def _X(self, frame: pd.DataFrame) -> np.ndarray:
        X = np.column_stack([_column(frame, c) for c in self.x])
        if np.any(X <= 0):
            raise FitError(f"x columns {self.x} must be > 0 to predict")
        return X

    def predict(self, frame: pd.DataFrame, *, interval: bool = False, warn: bool = True) -> pd.Series | pd.DataFrame:
        """Predicted y (natural scale) for the rows of `frame`. With interval=True, a frame with columns
        `pred`, `low`, `high`: the percentile band of the bootstrap draws (a confidence band on the
        law, not a prediction interval for a new noisy measurement). Warns (FitWarning) when a
        prediction leaves the fitted range or a predicted rate reaches 1."""
        X = self._X(frame)
        pred = self.form.predict_y(self.raw, np.log(X))
        if warn:
            checks.emit(checks.range_warnings(self.x, X, self.x_range, pred, rate=self.rate))
        if not interval:
            return pd.Series(pred, index=frame.index, name=f"{self.y}_pred")
        if self.boot_raw is None:
            raise FitError("no bootstrap draws: refit with n_bootstrap > 0 to get intervals")
        draws = self.predict_draws(frame)
        q = 50 * (1 - self.level)
        lo, hi = np.nanpercentile(draws, [q, 100 - q], axis=0)
        return pd.DataFrame({"pred": pred, "low": lo, "high": hi}, index=frame.index)

    def predict_draws(self, frame: pd.DataFrame) -> np.ndarray:
        """(n_ok_draws, len(frame)) predictions, one row per successful bootstrap draw."""
        if self.boot_raw is None:
            raise FitError("no bootstrap draws: refit with n_bootstrap > 0")
        ok = np.all(np.isfinite(self.boot_raw), axis=1)
        return self.form.predict_y(self.boot_raw[ok], np.log(self._X(frame)))

    def param_draws(self) -> pd.DataFrame:
        """Bootstrap draws of the reported parameters (one row per successful draw)."""
        if self.boot_raw is None:
            raise FitError("no bootstrap draws: refit with n_bootstrap > 0")
        ok = np.all(np.isfinite(self.boot_raw), axis=1)
        return pd.DataFrame(self.form.to_params(self.boot_raw[ok]), columns=list(self.form.param_names))

    # -- reporting --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no bootstrap draws)."""
        def f(v: float) -> float | None:
            return None if v is None or not np.isfinite(v) else float(v)

        return {
            "form": self.form.name, "equation": self.form.equation, "x": self.x, "y": self.y,
            "response_scale": self.form.transform.name,
            "params": {k: f(v) for k, v in self.params.items()},
            "intervals": {k: [f(a), f(b)] for k, (a, b) in self.intervals.items()},
            "level": self.level, "n_points": self.n,
            "n_bootstrap": 0 if self.boot_raw is None else len(self.boot_raw),
            "n_bootstrap_failed": self.n_bootstrap_failed, "bootstrap_mode": self.bootstrap_mode,
            "seed": self.seed, "weighted": self.weighted,
            "huber_delta": self.delta, "objective": self.objective, "objective_reduction": "sum",
            "converged": self.converged, "convergence_offset": self.offset, "gradient_norm": f(self.grad_norm),
            "n_starts": self.n_starts,
            "best_start": [float(v) for v in self.best_start],
            "best_start_on_grid_boundary": self.best_start_on_boundary,
            "params_at_bounds": self.params_at_bounds,
            "x_range": {k: [float(a), float(b)] for k, (a, b) in self.x_range.items()},
            "r2": f(self.r2), "r2_transformed": f(self.r2_transformed), "rss": f(self.rss), "aicc": f(self.aicc),
            "leave_largest_out": self.holdout, "warnings": list(self.warnings),
        }

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"{self.form.name}: {self.form.equation}  (x = {self.x}, y = {self.y!r}, n = {self.n})"]
        for k, v in self.params.items():
            lo, hi = self.intervals.get(k, (float("nan"), float("nan")))
            lines.append(f"  {k:>6} = {v:.6g}   [{lo:.6g}, {hi:.6g}]")
        lines.append(f"  R^2 = {self.r2:.4f}, AICc = {self.aicc:.3f}, converged = {self.converged}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __repr__(self) -> str:  # keeps notebooks readable
        return self.summary()


# --------------------------------------------------------------------------------------------------
# Public entry point


@single_thread_blas
def fit_law(
    frame: pd.DataFrame,
    form: str | LawForm,
    x: str | Sequence[str],
    y: str,
    *,
    weights: Any = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
    delta: float | None = None,
    grid: str = "full",
    max_starts: int | None = None,
    starts: Any = None,
    holdout: bool = True,
) -> FitResult:
    """Fit `form` (a registered name or a LawForm) to the rows of `frame`.

    x names one column (per-axis forms) or two (joint forms; Chinchilla takes [params, tokens]); y
    names the response. `weights`: None = from per-point standard errors when the table has them
    (`<y>_se`, or per-prompt counters for alpha/tau), False = unweighted, a column name or an array.
    `n_bootstrap` > 0 adds percentile intervals at `level` (use >= 1000 for reported numbers; the
    seed fixes them). `grid="reduced"` uses a form's smaller start grid; `max_starts` keeps only the
    best-scoring grid points as starts; `starts` (rows of raw parameters, `form.raw_names`) replaces
    the grid. `holdout` runs the leave-largest-out check per axis.
    Raises FitError with the reason when the data cannot identify the law.
    """
    try:
        form = get_form(form)
    except ValueError as exc:
        raise FitError(str(exc)) from None
    if grid not in ("full", "reduced"):
        raise FitError(f"grid must be 'full' or 'reduced', got {grid!r}")
    if not 0 < level < 1:
        raise FitError(f"level must be in (0, 1), got {level}")
    data = _prepare(frame, form, x, y, weights)
    data.validate(form)
    d = float(delta) if delta is not None else _robust_delta(form, data)
    theta, obj, n_starts, start, on_edge, _ = _fit_point(form, data, d, reduced=grid == "reduced",
                                                         max_starts=max_starts, starts=starts)
    U = data.U
    offset = _offset(form, theta, U, data.z, np.sqrt(data.w), np.ones(data.n), d)
    grad_norm = _projected_grad_norm(form, theta, U, data.z, np.sqrt(data.w), np.ones(data.n), d)
    converged = offset < CONVERGENCE_TOL
    msgs: list[str] = []
    if not converged:
        msgs.append(f"optimiser did not reach a stationary point (gradient offset {offset:.2g} >= "
                    f"{CONVERGENCE_TOL}, gradient norm {grad_norm:.2g}); do not trust these parameters")
    if on_edge:
        msgs.append("the best start lies on the boundary of the initialisation grid: the grid may not "
                    "bracket the optimum; widen it or check the estimate")
    at_bounds = [form.raw_names[j] for j, (lo, hi) in enumerate(form.bounds)
                 if (lo is not None and theta[j] <= lo + 1e-6) or (hi is not None and theta[j] >= hi - 1e-6)]
    if at_bounds:
        msgs.append(f"parameter(s) {at_bounds} sit on their bounds: the law is degenerate on this data")
    if U.shape[1] == 2:
        corr = np.corrcoef(U[:, 0], U[:, 1])[0, 1]
        if abs(corr) > 0.98:
            msgs.append(f"ln({data.x_names[0]}) and ln({data.x_names[1]}) are nearly collinear (r = {corr:.3f}); "
                        "the joint fit is ill-conditioned: vary the axes independently")

    y_hat = form.predict_y(theta, U)
    z_hat = form.predict_z(theta, U)
    rss = float(np.sum((data.y - y_hat) ** 2))
    rate = bool(np.all((data.y >= 0) & (data.y <= 1)))
    params = dict(zip(form.param_names, map(float, form.to_params(theta))))

    result = FitResult(
        form=form, x=data.x_names, y=y, raw=theta, params=params, intervals={}, level=level, n=data.n,
        objective=obj, delta=d, converged=converged, offset=offset, n_starts=n_starts, best_start=start,
        best_start_on_boundary=on_edge, params_at_bounds=at_bounds,
        x_range={c: (float(data.X[:, j].min()), float(data.X[:, j].max())) for j, c in enumerate(data.x_names)},
        r2=checks.r_squared(data.y, y_hat), r2_transformed=checks.r_squared(data.z, z_hat), rss=rss,
        aicc=checks.aicc(rss, data.n, form.n_params), rate=rate, seed=seed,
        weighted=bool(np.ptp(data.w) > 0), weights_spec=weights, grad_norm=grad_norm,
    )
    if rate and not form.bounded_rate and np.any(y_hat >= 1):
        msgs.append("the fitted law predicts a rate >= 1 inside the data range; use a bounded form")

    if n_bootstrap:
        if n_bootstrap < 2:
            raise FitError("n_bootstrap must be 0 or >= 2 (use >= 1000 for reported intervals)")
        draws, failed = _bootstrap(form, data, theta, d, int(n_bootstrap), seed)
        result.boot_raw, result.n_bootstrap_failed = draws, failed
        result.bootstrap_mode = "prompts+configurations" if data.prompt_num is not None else "configurations"
        ok = np.all(np.isfinite(draws), axis=1)
        if ok.sum() < 2:
            raise FitError("every bootstrap resample failed to identify the law; too few configurations")
        if failed > 0.05 * n_bootstrap:
            msgs.append(f"{failed} of {n_bootstrap} bootstrap resamples could not identify the law and were "
                        "dropped; the intervals are optimistic; add configurations")
        q = 50 * (1 - level)
        rep = form.to_params(draws[ok])
        lo, hi = np.percentile(rep, [q, 100 - q], axis=0)
        result.intervals = {k: (float(a), float(b)) for k, a, b in zip(form.param_names, lo, hi)}
    if holdout:
        result.holdout = leave_largest_out(result, frame)
    result.warnings = msgs
    for m in msgs:
        warnings.warn(f"{form.name} ({y} ~ {data.x_names}): {m}", FitWarning, stacklevel=3)
    return result


# ---------------------------------------------------------------------------------------------------
# Checks that refit (here, not in checks.py, so that checks.py never imports this module)


def leave_largest_out(result: FitResult, frame: pd.DataFrame) -> dict[str, dict]:
    """Per axis: refit without the configurations at that axis' largest value and predict them.

    Reports the mean absolute and mean relative error on the response's natural scale, and how far
    the held-out points lie beyond the training range (the extrapolation factor in x). The relative
    error leaves out held-out points whose true value is 0 (a best gamma of 0, say), where it is
    undefined; with no other point it is absent and the absolute error stands alone.
    """
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
        }
        nonzero = y_true != 0
        if nonzero.any():
            out[name]["mean_rel_error"] = float(np.mean(np.abs(err[nonzero]) / np.abs(y_true[nonzero])))
    return out


def compare_forms(frame: pd.DataFrame, forms: list[str | LawForm], x: str | list[str], y: str,
                  **fit_kwargs) -> pd.DataFrame:
    """Fit several forms to the same points and rank them by AICc on y's natural scale.

    Returns one row per form (sorted, best first) with AICc, its difference to the best, the Akaike
    weight, R^2 and the leave-largest-out errors. Forms that cannot be fitted are listed with the reason.
    """
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
        table["akaike_weight"] = checks.akaike_weights(table["aicc"].to_numpy(dtype=float))
        table = table.sort_values("aicc", na_position="last").reset_index(drop=True)
    return table
