"""Closed-form predictions of speculative decoding under an i.i.d. acceptance model.

Conventions (docs/design.md, "Metrics"): `alpha` is the per-token acceptance rate, `gamma` the number of drafted
tokens per step, `c` the draft-step / target-step time ratio, and `tau` counts tokens emitted per
target forward *including* the bonus/correction token (1.0 for plain decoding).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _check(alpha: ArrayLike, gamma: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(alpha, dtype=float)
    g = np.asarray(gamma, dtype=float)
    if np.any((a < 0) | (a > 1)) or np.any(~np.isfinite(a)):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if np.any(g < 0) or np.any(g != np.round(g)):
        raise ValueError(f"gamma must be a non-negative integer, got {gamma}")
    return a, g


def expected_tau(alpha: ArrayLike, gamma: ArrayLike) -> np.ndarray | float:
    """Expected tokens per target forward: (1 - alpha^(gamma+1)) / (1 - alpha); gamma+1 at alpha=1."""
    a, g = _check(alpha, gamma)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(a >= 1.0, g + 1.0, (1.0 - a ** (g + 1.0)) / np.where(a >= 1.0, 1.0, 1.0 - a))
    return float(tau) if tau.ndim == 0 else tau


def leviathan_speedup(alpha: ArrayLike, gamma: ArrayLike, c: ArrayLike) -> np.ndarray | float:
    """Expected wall-clock speedup, Leviathan et al. 2023 Thm 3.8: tau / (gamma * c + 1)."""
    c_arr = np.asarray(c, dtype=float)
    if np.any(c_arr < 0):
        raise ValueError(f"c (draft/target step-time ratio) must be >= 0, got {c}")
    s = np.asarray(expected_tau(alpha, gamma)) / (np.asarray(gamma, dtype=float) * c_arr + 1.0)
    return float(s) if s.ndim == 0 else s


def best_gamma(alpha: float, c: float, max_gamma: int = 32) -> tuple[int, float]:
    """The integer gamma in [0, max_gamma] that maximises Leviathan's speedup, and that speedup."""
    gammas = np.arange(0, max_gamma + 1)
    speedups = np.asarray(leviathan_speedup(alpha, gammas, c))
    i = int(np.argmax(speedups))
    return int(gammas[i]), float(speedups[i])


def batch_speedup(
    alpha: ArrayLike,
    gamma: ArrayLike,
    t_target_1: ArrayLike,
    t_target_verify: ArrayLike,
    t_draft: ArrayLike,
) -> np.ndarray | float:
    """Speedup at a batch size from measured step times (docs/design.md, "Speedup formulas", batch form):

    S(B) = tau * T_t(B, 1) / (T_t(B, gamma+1) + gamma * T_d(B, 1)),
    where T_t(B, 1) is a plain decoding step, T_t(B, gamma+1) a verification forward on gamma+1
    tokens per row, and T_d(B, 1) one draft step, all at batch size B. Verification stops being
    free as B grows, which is how batch size moves the optimal draft and gamma.
    """
    tau = np.asarray(expected_tau(alpha, gamma))
    g = np.asarray(gamma, dtype=float)
    s = tau * np.asarray(t_target_1, dtype=float) / (
        np.asarray(t_target_verify, dtype=float) + g * np.asarray(t_draft, dtype=float)
    )
    return float(s) if s.ndim == 0 else s
