"""Analytic helpers against published numbers (Leviathan et al. 2023)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scylla.measure.analytic import batch_speedup, best_gamma, expected_tau, leviathan_speedup

DATA = Path(__file__).resolve().parent / "data"  # published tables, see tests/data/README.md


def test_table1_alpha08_gamma5_c0():
    assert round(leviathan_speedup(0.8, 5, 0.0), 2) == 3.69


def test_table4_expected_speedups_to_one_decimal():
    table = pd.read_csv(DATA / "leviathan2023_table4_expected_speedup.csv")
    predicted = leviathan_speedup(table["alpha"].to_numpy(), table["gamma"].to_numpy(), table["c"].to_numpy())
    expected = table["expected_speedup"].to_numpy()
    assert len(table) == 12
    # The table prints alpha and c to two decimals; the paper computed from unrounded values.
    # 9 of 12 rows match at one decimal from the rounded inputs ...
    assert (np.round(predicted, 1) == expected).sum() >= 9
    assert np.all(np.abs(predicted - expected) < 0.1)
    # ... and every row lies inside the range its own rounding of alpha and c (+-0.005) allows.
    a, g, c = table["alpha"].to_numpy(), table["gamma"].to_numpy(), table["c"].to_numpy()
    high = leviathan_speedup(a + 0.005, g, np.clip(c - 0.005, 0, None))
    low = leviathan_speedup(a - 0.005, g, c + 0.005)
    assert np.all((expected >= np.round(low, 1)) & (expected <= np.round(high, 1)))


def test_tau_limits_and_bonus_token():
    assert expected_tau(0.0, 5) == 1.0  # plain decoding still emits the correction token
    assert expected_tau(1.0, 5) == 6.0  # all accepted plus the bonus token
    assert expected_tau(0.5, 0) == 1.0


def test_best_gamma_is_the_argmax():
    g, s = best_gamma(0.8, 0.05, max_gamma=20)
    grid = [leviathan_speedup(0.8, k, 0.05) for k in range(21)]
    assert g == int(np.argmax(grid)) and s == pytest.approx(max(grid))
    assert best_gamma(0.1, 0.5)[0] == 0  # a bad, slow draft should not be used at all


def test_batch_form_reduces_to_leviathan_when_verify_is_free():
    # T_t(B, gamma+1) == T_t(B, 1) and T_d = c * T_t gives Thm 3.8 exactly.
    assert batch_speedup(0.7, 4, 1.0, 1.0, 0.1) == pytest.approx(leviathan_speedup(0.7, 4, 0.1))
    # Verification that costs more (large batch) lowers the speedup.
    assert batch_speedup(0.7, 4, 1.0, 2.0, 0.1) < leviathan_speedup(0.7, 4, 0.1)


@pytest.mark.parametrize("bad", [dict(alpha=1.5, gamma=3), dict(alpha=0.5, gamma=-1), dict(alpha=0.5, gamma=2.5)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        expected_tau(**bad)


def test_tau_matches_a_simulated_iid_chain():
    """The closed form counts the bonus token: simulate i.i.d. acceptance and compare."""
    rng = np.random.default_rng(0)
    alpha, gamma, n = 0.6, 4, 200_000
    accepted = np.cumprod(rng.random((n, gamma)) < alpha, axis=1).sum(1)
    assert expected_tau(alpha, gamma) == pytest.approx(1 + accepted.mean(), abs=0.01)


def test_specbench_mean_accepted_tokens_counts_the_bonus_token():
    """Spec-Bench's "mean accepted tokens" is our tau (bonus token included): at least 1 for every method,
    and a method's speedup never exceeds it (a step cannot emit fewer tokens than the speedup it buys at
    batch 1 with a non-free draft)."""
    table = pd.read_csv(DATA / "specbench_leaderboard_fd2c1cd.csv")
    assert len(table) == 41
    assert (table["mean_accepted_tokens"] >= 1.0).all()
    assert (table["overall_speedup"] <= table["mean_accepted_tokens"]).all()
