"""Scylla: a scaling-law experiment harness for speculative decoding.

Metric convention used everywhere: ``tau = 1 + accepted / steps`` counts tokens emitted per target
forward *including* the bonus/correction token (1.00 for plain decoding).
"""

from scylla.analytic import batch_speedup, best_gamma, expected_tau, leviathan_speedup
from scylla.engine import DecodeStats, SpeculativeOutput, speculative_generate
from scylla.models import ModelSpec, build_llama, count_parameters, load_causal_lm

__version__ = "0.1.0"

__all__ = [
    "DecodeStats",
    "ModelSpec",
    "SpeculativeOutput",
    "batch_speedup",
    "best_gamma",
    "build_llama",
    "count_parameters",
    "expected_tau",
    "leviathan_speedup",
    "load_causal_lm",
    "speculative_generate",
]
