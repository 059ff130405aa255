"""Law registry: every form's Jacobian matches finite differences, transforms invert, grids are sane."""

import numpy as np
import pytest

from scylla.fit import FORMS, FitError, get_form
from scylla.fit.laws import LOG, LOG1M, LOGIT, Grid


@pytest.mark.parametrize("name", sorted(FORMS))
def test_jacobian_matches_finite_differences(name):
    form = get_form(name)
    rng = np.random.default_rng(0)
    U = np.log(rng.uniform(1e5, 1e9, size=(12, form.n_axes)))
    theta = {
        "saturating_power": np.array([np.log(0.1), 1.0, 0.3]),
        "chinchilla": np.array([6.0, 7.5, 0.6, 0.34, 0.28]),
    }.get(name, rng.normal(0, 0.1, form.n_params))
    J = form.jacobian(theta, U)
    eps = 1e-6
    for j in range(form.n_params):
        d = np.zeros_like(theta)
        d[j] = eps
        fd = (form.model(theta + d, U) - form.model(theta - d, U)) / (2 * eps)
        np.testing.assert_allclose(J[:, j], fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_model_broadcasts_over_parameter_draws(name):
    form = get_form(name)
    U = np.log(np.geomspace(1e5, 1e9, 7))[:, None].repeat(form.n_axes, axis=1)
    grid = form.init_grid(U, np.full(7, -1.0))
    draws = grid.points[:4]
    stacked = form.model(draws, U)
    assert stacked.shape == (4, 7)
    np.testing.assert_allclose(stacked[2], form.model(draws[2], U))


def test_transforms_invert():
    y = np.array([0.01, 0.3, 0.9, 0.999])
    for tr in (LOGIT, LOG, LOG1M):
        np.testing.assert_allclose(tr.inverse(tr.forward(y)), y, rtol=1e-12)
    assert not LOGIT.valid(np.array([1.0]))[0] and not LOG1M.valid(np.array([1.0]))[0]


def test_chinchilla_grid_is_hoffmanns_4500_points_and_names():
    form = get_form("chinchilla")
    assert form.grid.points.shape == (4500, 5)
    assert form.param_names == ("A", "B", "E", "alpha", "beta")
    assert form.huber_delta == 1e-3 and form.transform is LOG
    # the reported parameters are exp() of the optimised logs
    np.testing.assert_allclose(form.to_params(np.array([np.log(2.0), 0.0, 0.0, 0.3, 0.4])), [2.0, 1.0, 1.0, 0.3, 0.4])


def test_grid_product_marks_boundary():
    g = Grid.product([np.array([0.0, 1.0, 2.0]), np.array([5.0])])
    assert g.points.shape == (3, 2)
    assert g.on_boundary.tolist() == [True, False, True]


def test_unknown_form_lists_the_registered_ones():
    with pytest.raises(ValueError, match="logit_linear"):
        get_form("no_such_law")
    import pandas as pd

    from scylla.fit import fit_law

    with pytest.raises(FitError, match="registered forms"):
        fit_law(pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0]}), "no_such_law", "x", "y")
