"""Fitting Scylla's laws: law forms, robust fits with bootstrap intervals, model checks, and the
recommended draft configuration. See docs/fitting.md.

    from scylla.fit import fit_law
    res = fit_law(table, "logit_linear", x="draft_tokens", y="alpha", n_bootstrap=1000)
    res.params, res.intervals, res.predict(new_rows, interval=True)
"""

from .checks import FitWarning, aicc, r_squared
from .core import compare_forms
from .core import FitError, FitResult, fit_law, huber
from .laws import FORMS, LawForm, get_form, register_form

__all__ = [
    "FORMS", "FitError", "FitResult", "FitWarning", "LawForm", "aicc", "compare_forms", "fit_law",
    "get_form", "huber", "r_squared", "register_form",
]
