"""Wall-clock measurement: speculative against plain decoding on the same prompts and batch size.

Both runs go through `speculative_generate` (plain = gamma 0), so the baseline has the same
machinery and overheads; a warm-up pass and interleaved repeats keep the comparison side by side.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from scylla.engine import DecodeStats, speculative_generate


@dataclass
class SpeedupMeasurement:
    """Speculative vs plain decoding at one batch size, with the step times the cost model needs."""

    gamma: int
    batch_size: int
    speculative: DecodeStats
    baseline: DecodeStats
    speculative_tps: float
    baseline_tps: float

    @property
    def speedup(self) -> float:
        """Wall-clock tokens/s of speculative decoding over plain decoding."""
        return self.speculative_tps / self.baseline_tps

    @property
    def target_step_seconds(self) -> float:
        """One plain decoding step of the target (one token per row) at this batch size."""
        return self.baseline.verify_seconds / max(self.baseline.verify_forwards, 1)

    @property
    def draft_step_seconds(self) -> float:
        """One autoregressive draft step at this batch size."""
        s = self.speculative
        return s.draft_seconds / s.draft_forwards if s.draft_forwards else float("nan")

    @property
    def verify_step_seconds(self) -> float:
        """One target forward on gamma+1 tokens per row (with acceptance) at this batch size."""
        s = self.speculative
        return s.verify_seconds / max(s.verify_forwards, 1)

    @property
    def c(self) -> float:
        """Draft step time over target step time, both at this batch size (Leviathan's c)."""
        return self.draft_step_seconds / self.target_step_seconds

    def to_dict(self) -> dict[str, Any]:
        spec = self.speculative.to_dict()
        return {
            "gamma": self.gamma,
            "batch_size": self.batch_size,
            **{k: spec[k] for k in (
                "drafted", "accepted", "steps", "accepted_per_position", "reached_per_position",
                "target_forwards", "draft_forwards", "draft_seconds", "verify_seconds", "prefill_seconds",
                "wall_seconds", "generated_tokens", "alpha", "alpha_n", "tau", "prompt_accepted",
                "prompt_drafted", "prompt_steps", "prompt_generated", "tau_definition")},
            "tokens_per_second": self.speculative_tps,
            "baseline_tokens_per_second": self.baseline_tps,
            "baseline_wall_seconds": self.baseline.wall_seconds,
            "speedup": self.speedup,
            "c": self.c,
            "draft_step_seconds": self.draft_step_seconds,
            "target_step_seconds": self.target_step_seconds,
            "verify_step_seconds": self.verify_step_seconds,
        }


def measure_speedup(
    target: torch.nn.Module,
    draft: torch.nn.Module | None,
    prompts: Sequence[Sequence[int]],
    *,
    gamma: int,
    batch_size: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_token_id: int | None = None,
    seed: int = 0,
    repeats: int = 1,
    warmup: bool = True,
) -> SpeedupMeasurement:
    """Decode ``prompts`` speculatively and plainly at ``batch_size``; report speedup and c.

    Repeats are interleaved (plain, speculative, plain, ...) and summarised by the median
    tokens/s, so drifting machine load hits both sides alike. Counters come from the last repeat
    (they are identical across repeats at temperature 0 and for a fixed seed).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
                  eos_token_id=eos_token_id, seed=seed)
    if warmup:
        few = list(prompts[: min(len(prompts), batch_size)])
        speculative_generate(target, None, few, gamma=0, **{**kwargs, "max_new_tokens": min(8, max_new_tokens)})
        speculative_generate(target, draft, few, gamma=gamma, **{**kwargs, "max_new_tokens": min(8, max_new_tokens)})
    base_tps: list[float] = []
    spec_tps: list[float] = []
    base = spec = None
    for _ in range(repeats):
        base = speculative_generate(target, None, prompts, gamma=0, **kwargs).stats
        spec = speculative_generate(target, draft, prompts, gamma=gamma, **kwargs).stats
        base_tps.append(base.tokens_per_second)
        spec_tps.append(spec.tokens_per_second)
    assert base is not None and spec is not None
    return SpeedupMeasurement(
        gamma=gamma, batch_size=batch_size, speculative=spec, baseline=base,
        speculative_tps=statistics.median(spec_tps), baseline_tps=statistics.median(base_tps),
    )
