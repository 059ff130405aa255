"""Registry of law forms.

A form is everything the fitter needs to know about one functional law, declared as data:

- the parameters it reports (`param_names`) and the parameters it optimises (`raw_names`; e.g. the
  Chinchilla form optimises `a = ln A` so positivity is free and the loss surface is better scaled),
- box bounds on the raw parameters (L-BFGS-B),
- an initialisation grid (fixed, or built from the data for forms whose scale depends on it),
- a response transform `z = T(y)`: the scale on which residuals are measured (identity, logit for
  bounded rates, ln for losses, ln(1 - y) for a saturating rate),
- the model `z = f(theta, U)` with `U = ln(x)` (every Scylla law is a law in log-axes) and its
  Jacobian, so objective and gradient are exact and cheap.

Models broadcast over a leading batch of parameter vectors (`theta` of shape (B, p) gives (B, n)),
which is how bootstrap draws are turned into prediction bands without a Python loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Transform",
    "LawForm",
    "Grid",
    "FORMS",
    "get_form",
    "register_form",
    "IDENTITY",
    "LOGIT",
    "LOG",
    "LOG1M",
]

_EPS = 1e-300


@dataclass(frozen=True)
class Transform:
    """Response transform z = forward(y), with inverse and dz/dy (used to carry standard errors)."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray]
    valid: Callable[[np.ndarray], np.ndarray]
    domain: str


def _logit(y: np.ndarray) -> np.ndarray:
    return np.log(y) - np.log1p(-y)


def _expit(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


IDENTITY = Transform("identity", lambda y: y, lambda z: z, np.ones_like, np.isfinite, "any finite value")
LOGIT = Transform(
    "logit", _logit, _expit, lambda y: 1.0 / (y * (1.0 - y)), lambda y: (y > 0) & (y < 1), "0 < y < 1"
)
LOG = Transform("log", np.log, np.exp, lambda y: 1.0 / y, lambda y: y > 0, "y > 0")
LOG1M = Transform(
    "log1m", lambda y: np.log1p(-y), lambda z: -np.expm1(z), lambda y: -1.0 / (1.0 - y),
    lambda y: y < 1, "y < 1",
)


@dataclass(frozen=True)
class Grid:
    """Initialisation points in raw-parameter space, and which of them lie on the grid's boundary
    (a best start on the boundary means the grid may not bracket the optimum)."""

    points: np.ndarray  # (G, p)
    on_boundary: np.ndarray  # (G,) bool

    @classmethod
    def product(cls, axes: list[np.ndarray]) -> Grid:
        axes = [np.atleast_1d(np.asarray(a, dtype=float)) for a in axes]
        pts = np.array(list(itertools.product(*axes)), dtype=float)
        idx = np.array(list(itertools.product(*[range(len(a)) for a in axes])), dtype=int)
        edge = np.zeros(len(pts), dtype=bool)
        for j, a in enumerate(axes):
            if len(a) > 2:  # a 1- or 2-value axis has no interior; do not flag it
                edge |= (idx[:, j] == 0) | (idx[:, j] == len(a) - 1)
        return cls(pts, edge)


GridSpec = Grid | Callable[[np.ndarray, np.ndarray], Grid]


@dataclass(frozen=True)
class LawForm:
    """One functional law. See the module docstring for the meaning of each field."""

    name: str
    equation: str
    n_axes: int
    param_names: tuple[str, ...]
    raw_names: tuple[str, ...]
    bounds: tuple[tuple[float | None, float | None], ...]
    transform: Transform
    model: Callable[[np.ndarray, np.ndarray], np.ndarray]
    jacobian: Callable[[np.ndarray, np.ndarray], np.ndarray]
    to_params: Callable[[np.ndarray], np.ndarray]
    grid: GridSpec
    reduced_grid: GridSpec | None = None
    convex: bool = False  # linear in raw params on the z scale: one optimum, IRLS is exact
    huber_delta: float | None = None  # None: 1.345 x robust residual scale of a linear pre-fit
    bounded_rate: bool = False  # predicted y can never reach 1 by construction
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return len(self.raw_names)

    def init_grid(self, U: np.ndarray, z: np.ndarray, reduced: bool = False) -> Grid:
        spec = self.reduced_grid if (reduced and self.reduced_grid is not None) else self.grid
        return spec(U, z) if callable(spec) else spec

    def predict_z(self, theta: np.ndarray, U: np.ndarray) -> np.ndarray:
        return self.model(np.asarray(theta, dtype=float), U)

    def predict_y(self, theta: np.ndarray, U: np.ndarray) -> np.ndarray:
        return self.transform.inverse(self.predict_z(theta, U))


FORMS: dict[str, LawForm] = {}


def register_form(form: LawForm) -> LawForm:
    """Add a form to the registry (names are unique)."""
    if form.name in FORMS:
        raise ValueError(f"law form {form.name!r} is already registered")
    FORMS[form.name] = form
    return form


def get_form(form: str | LawForm) -> LawForm:
    """Look a form up by name (or pass a LawForm through)."""
    if isinstance(form, LawForm):
        return form
    try:
        return FORMS[form]
    except KeyError:
        raise ValueError(f"unknown law form {form!r}; registered forms: {', '.join(sorted(FORMS))}") from None


# --------------------------------------------------------------------------------------------------
# Linear-in-log forms: z = a + sum_j b_j ln x_j (+ b12 ln x_1 ln x_2)


def _design(U: np.ndarray, interaction: bool) -> np.ndarray:
    cols = [np.ones(len(U))] + [U[:, j] for j in range(U.shape[1])]
    if interaction:
        cols.append(U[:, 0] * U[:, 1])
    return np.column_stack(cols)


def _linear_grid(interaction: bool) -> Callable[[np.ndarray, np.ndarray], Grid]:
    """OLS solution +- 2 standard errors per coefficient: the objective is convex, so the grid only
    has to be a sane neighbourhood (the multi-start then doubles as a check of that convexity)."""

    def grid(U: np.ndarray, z: np.ndarray) -> Grid:
        X = _design(U, interaction)
        beta, *_ = np.linalg.lstsq(X, z, rcond=None)
        resid = z - X @ beta
        dof = max(len(z) - X.shape[1], 1)
        s2 = max(float(resid @ resid) / dof, 1e-12 * (1.0 + float(np.var(z))))
        cov = s2 * np.linalg.pinv(X.T @ X)
        se = np.sqrt(np.clip(np.diag(cov), 1e-24, None))
        axes = [b + np.array([-2.0, 0.0, 2.0]) * s for b, s in zip(beta, se)]
        return Grid.product(axes)

    return grid


def _make_linear(name: str, n_axes: int, transform: Transform, interaction: bool, equation: str,
                 description: str) -> LawForm:
    names = ("a", "b") if n_axes == 1 else ("a", "b1", "b2") + (("b12",) if interaction else ())

    def model(theta: np.ndarray, U: np.ndarray) -> np.ndarray:
        X = _design(U, interaction)
        return theta @ X.T

    def jacobian(theta: np.ndarray, U: np.ndarray) -> np.ndarray:
        return _design(U, interaction)

    return LawForm(
        name=name, equation=equation, n_axes=n_axes, param_names=names, raw_names=names,
        bounds=tuple((None, None) for _ in names), transform=transform, model=model,
        jacobian=jacobian, to_params=lambda t: np.asarray(t, dtype=float), grid=_linear_grid(interaction),
        convex=True, bounded_rate=transform is LOGIT, description=description,
        extra={"interaction": interaction},
    )


register_form(_make_linear(
    "log_linear", 1, IDENTITY, False, "y = a + b ln x",
    "The Scylla paper's per-axis law. Unbounded: a rate fitted this way can be extrapolated past 1.",
))
register_form(_make_linear(
    "logit_linear", 1, LOGIT, False, "logit(y) = a + b ln x",
    "Log-linear on the logit scale: behaves like y = a + b ln x in the middle, never crosses 0 or 1.",
))
register_form(_make_linear(
    "joint_log_linear", 2, IDENTITY, False, "y = a + b1 ln x1 + b2 ln x2",
    "Joint law over two axes (e.g. x = [draft_tokens, draft_params]).",
))
register_form(_make_linear(
    "joint_log_linear_interaction", 2, IDENTITY, True, "y = a + b1 ln x1 + b2 ln x2 + b12 ln x1 ln x2",
    "Joint law with an interaction term: the gain from tokens depends on the draft's size.",
))
register_form(_make_linear(
    "joint_logit_linear", 2, LOGIT, False, "logit(y) = a + b1 ln x1 + b2 ln x2",
    "Joint law for a bounded rate over two axes.",
))
register_form(_make_linear(
    "joint_logit_linear_interaction", 2, LOGIT, True, "logit(y) = a + b1 ln x1 + b2 ln x2 + b12 ln x1 ln x2",
    "Joint law for a bounded rate, with interaction.",
))


# --------------------------------------------------------------------------------------------------
# Log-sum-exp forms (Besiroglu et al. 2024): positive power-law terms, optimised in log space.


def _softmax_terms(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """terms (..., k, n) -> (logsumexp over k, softmax weights over k)."""
    m = np.max(terms, axis=-2, keepdims=True)
    ex = np.exp(terms - m)
    s = np.sum(ex, axis=-2, keepdims=True)
    return (m + np.log(s))[..., 0, :], ex / s


def _sat_model(theta: np.ndarray, U: np.ndarray) -> np.ndarray:
    # raw theta = (e, a, beta): ln(1 - y) = LSE(e, a - beta ln x)
    e, a, beta = theta[..., 0, None], theta[..., 1, None], theta[..., 2, None]
    u = U[:, 0]
    terms = np.stack(np.broadcast_arrays(e + 0 * u, a - beta * u), axis=-2)
    return _softmax_terms(terms)[0]


def _sat_jac(theta: np.ndarray, U: np.ndarray) -> np.ndarray:
    e, a, beta = theta
    u = U[:, 0]
    terms = np.stack([np.full_like(u, e), a - beta * u])
    _, w = _softmax_terms(terms)
    return np.column_stack([w[0], w[1], -w[1] * u])


def _sat_grid(U: np.ndarray, z: np.ndarray) -> Grid:
    """E below the smallest observed 1 - y; for each (E, beta) the amplitude that matches the data
    on average, then +-1 nat around it."""
    gap = np.exp(z)  # 1 - y
    lo = max(float(np.min(gap)), 1e-9)
    e_axis = np.log(lo * np.array([0.02, 0.2, 0.5, 0.8, 0.95]))
    beta_axis = np.array([0.05, 0.15, 0.35, 0.7, 1.2, 2.0])
    off_axis = np.array([-1.0, 0.0, 1.0])
    pts, edge = [], []
    for i, e in enumerate(e_axis):
        for j, beta in enumerate(beta_axis):
            resid = np.clip(gap - np.exp(e), lo * 1e-3, None)
            a0 = float(np.median(np.log(resid) + beta * U[:, 0]))
            for k, off in enumerate(off_axis):
                pts.append((e, a0 + off, beta))
                edge.append(i in (0, len(e_axis) - 1) or j in (0, len(beta_axis) - 1) or k in (0, 2))
    return Grid(np.array(pts), np.array(edge))


register_form(LawForm(
    name="saturating_power",
    equation="1 - y = E + A x^-beta",
    n_axes=1,
    param_names=("E", "A", "beta"),
    raw_names=("e", "a", "beta"),
    bounds=((-30.0, 0.0), (-50.0, 80.0), (0.0, 5.0)),
    transform=LOG1M,
    model=_sat_model,
    jacobian=_sat_jac,
    to_params=lambda t: np.stack([np.exp(t[..., 0]), np.exp(t[..., 1]), t[..., 2]], axis=-1),
    grid=_sat_grid,
    bounded_rate=True,
    description="A rate approaching a ceiling 1 - E as a power law; fitted on ln(1 - y) in "
    "log-sum-exp form (E = exp(e), A = exp(a)).",
))


def _chin_model(theta: np.ndarray, U: np.ndarray) -> np.ndarray:
    # raw theta = (a, b, e, alpha, beta): ln L = LSE(a - alpha ln N, b - beta ln D, e)
    a, b, e, al, be = (theta[..., j, None] for j in range(5))
    lnN, lnD = U[:, 0], U[:, 1]
    terms = np.stack(np.broadcast_arrays(a - al * lnN, b - be * lnD, e + 0 * lnN), axis=-2)
    return _softmax_terms(terms)[0]


def _chin_jac(theta: np.ndarray, U: np.ndarray) -> np.ndarray:
    a, b, e, al, be = theta
    lnN, lnD = U[:, 0], U[:, 1]
    terms = np.stack([a - al * lnN, b - be * lnD, np.full_like(lnN, e)])
    _, w = _softmax_terms(terms)
    return np.column_stack([w[0], w[1], w[2], -w[0] * lnN, -w[1] * lnD])


# Hoffmann et al. (2022) Approach 3 grid, as used by Besiroglu et al. (2024): 6*6*5*5*5 = 4500 points
# in (a, b, e, alpha, beta).
_CHIN_GRID = Grid.product([
    np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5),
    np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5),
])
_CHIN_GRID_REDUCED = Grid.product([
    np.array([0.0, 5.0, 10.0]), np.array([0.0, 5.0, 10.0]), np.array([-1.0, 0.0, 1.0]),
    np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.5, 1.0]),
])

register_form(LawForm(
    name="chinchilla",
    equation="L(N, D) = E + A / N^alpha + B / D^beta",
    n_axes=2,
    param_names=("A", "B", "E", "alpha", "beta"),
    raw_names=("a", "b", "e", "alpha", "beta"),
    bounds=((-10.0, 60.0), (-10.0, 60.0), (-10.0, 5.0), (0.0, 5.0), (0.0, 5.0)),
    transform=LOG,
    model=_chin_model,
    jacobian=_chin_jac,
    to_params=lambda t: np.stack(
        [np.exp(t[..., 0]), np.exp(t[..., 1]), np.exp(t[..., 2]), t[..., 3], t[..., 4]], axis=-1
    ),
    grid=_CHIN_GRID,
    reduced_grid=_CHIN_GRID_REDUCED,
    huber_delta=1e-3,
    description="Hoffmann et al. (2022) loss law, fitted as Besiroglu et al. (2024): ln L in "
    "log-sum-exp form, Huber delta = 1e-3 on ln L, summed over points; x = [params, tokens].",
))
