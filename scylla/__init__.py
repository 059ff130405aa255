"""Scylla: a scaling-law experiment harness for speculative decoding.

Metric convention used everywhere: ``tau = 1 + accepted / steps`` counts tokens emitted per target
forward *including* the bonus/correction token (1.00 for plain decoding).
"""

from scylla.measure.analytic import batch_speedup, best_gamma, expected_tau, leviathan_speedup
from scylla.decode.engine import DecodeStats, SpeculativeOutput, speculative_generate
from scylla.measure.oracle import acceptance_oracle
from scylla.models.llama import ModelSpec, build_llama, count_parameters
from scylla.models.pretrained import load_causal_lm

__version__ = "0.1.0"

__all__ = [
    "DecodeStats",
    "acceptance_oracle",
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
