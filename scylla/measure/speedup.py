"""Wall-clock measurement: speculative against plain decoding on the same prompts and batch size.

Both runs go through `speculative_generate` (plain = gamma 0), so the baseline has the same
machinery and overheads; a warm-up pass and interleaved repeats keep the comparison side by side.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

import torch

from scylla.decode.engine import DecodeStats, speculative_generate


@dataclass
class SpeedupMeasurement:
    """Speculative vs plain decoding at one batch size, with the step times the cost model needs."""

    gamma: int
    batch_size: int
    speculative: DecodeStats
    baseline: DecodeStats
    speculative_tps: float
    baseline_tps: float
    # Every repeat's stats, in run order (the last one is ``speculative`` / ``baseline``). Rates and
    # step times are summarised over them (``summary``): one run's timers on a shared 2-core machine
    # drift by 10-20 %.
    speculative_runs: list[DecodeStats] = field(default_factory=list)
    baseline_runs: list[DecodeStats] = field(default_factory=list)
    # How repeats are summarised: "median", or "best" (each side's fastest run, shortest step times).
    summary: Literal["median", "best"] = "median"
    # Other processes' CPU use (cores) during each kept (plain, speculative) pair, and how many pairs
    # were decoded again because it was over `scylla.measure.probes.foreign_core_limit`.
    foreign_cores: list[float | None] = field(default_factory=list)
    pairs_retimed: int = 0

    def summarised(self, how: Literal["median", "best"]) -> "SpeedupMeasurement":
        """The same runs summarised another way. ``"best"`` takes each side's fastest run and shortest
        step times: interference on a shared machine only ever slows a run down, so the fastest of
        several is the closest estimate of the hardware's own cost (the advice of Python's ``timeit``).
        Benchmarks report it beside the median; records keep the median."""
        if how not in ("median", "best"):
            raise ValueError(f"summary must be 'median' or 'best', got {how!r}")
        agg = statistics.median if how == "median" else max
        return replace(self, summary=how, speculative_tps=agg(s.tokens_per_second for s in self._spec_runs),
                       baseline_tps=agg(b.tokens_per_second for b in self._base_runs))

    def _step(self, values: Any) -> float:
        return (statistics.median if self.summary == "median" else min)(values)

    @property
    def speedup(self) -> float:
        """Wall-clock tokens/s of speculative decoding over plain decoding."""
        return self.speculative_tps / self.baseline_tps

    @property
    def _spec_runs(self) -> list[DecodeStats]:
        return self.speculative_runs or [self.speculative]

    @property
    def _base_runs(self) -> list[DecodeStats]:
        return self.baseline_runs or [self.baseline]

    @property
    def target_step_seconds(self) -> float:
        """One plain decoding step of the target (one token per row) at this batch size (over repeats)."""
        return self._step(b.verify_seconds / max(b.verify_forwards, 1) for b in self._base_runs)

    @property
    def draft_step_seconds(self) -> float:
        """One autoregressive draft step at this batch size (over repeats)."""
        if not self.speculative.draft_forwards:
            return float("nan")
        return self._step(s.draft_seconds / s.draft_forwards for s in self._spec_runs)

    @property
    def verify_step_seconds(self) -> float:
        """One target forward on gamma+1 tokens per row (with acceptance) at this batch size (over repeats)."""
        return self._step(s.verify_seconds / max(s.verify_forwards, 1) for s in self._spec_runs)

    @property
    def c(self) -> float:
        """Draft step time over target step time, both at this batch size (Leviathan's c)."""
        return self.draft_step_seconds / self.target_step_seconds

    def to_dict(self) -> dict[str, Any]:
        """The measurement as one flat row (`scylla.measure.rows`), plus its per-depth alpha_n list."""
        from scylla.measure.rows import flatten, from_speedup

        entry = from_speedup("", self, temperature=self.speculative.temperature, max_new_tokens=0)
        return {**flatten(entry), "alpha_n": self.speculative.alpha_n, "tau_definition": entry["tau_definition"]}


def measure_speedup(
    target: torch.nn.Module,
    draft: torch.nn.Module | None,
    prompts: Sequence[Sequence[int]],
    *,
    gamma: int | None = None,
    tree: str | None = None,
    batch_size: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_token_id: int | None = None,
    seed: int = 0,
    repeats: int = 1,
    warmup: bool = True,
) -> SpeedupMeasurement:
    """Decode ``prompts`` speculatively (a chain of ``gamma`` or a ``tree`` shape) and plainly at
    ``batch_size``; report speedup and c.

    Repeats are interleaved (plain, speculative, plain, ...) and summarised by the median
    tokens/s and median step times, so drifting machine load hits both sides alike. Counters come
    from the last repeat (they are identical across repeats at temperature 0 and for a fixed seed).
    A (plain, speculative) pair during which other processes took CPU time over
    `scylla.measure.probes.foreign_core_limit` is decoded again (at most ``repeats`` times in all), as
    cost probes are: foreign work slows the two sides unequally.
    """
    from scylla.measure.probes import uncontended_repeats

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
                  eos_token_id=eos_token_id, seed=seed)
    shape = dict(gamma=gamma, tree=tree)
    if warmup:
        few = list(prompts[: min(len(prompts), batch_size)])
        speculative_generate(target, None, few, gamma=0, **{**kwargs, "max_new_tokens": min(8, max_new_tokens)})
        speculative_generate(target, draft, few, **shape, **{**kwargs, "max_new_tokens": min(8, max_new_tokens)})
    def pair() -> tuple[DecodeStats, DecodeStats]:
        return (speculative_generate(target, None, prompts, gamma=0, **kwargs).stats,
                speculative_generate(target, draft, prompts, **shape, **kwargs).stats)

    runs = uncontended_repeats(pair, repeats)
    base_runs = [base for base, _ in runs.values]
    spec_runs = [spec for _, spec in runs.values]
    return SpeedupMeasurement(
        gamma=spec_runs[-1].gamma, batch_size=batch_size, speculative=spec_runs[-1], baseline=base_runs[-1],
        speculative_tps=statistics.median(s.tokens_per_second for s in spec_runs),
        baseline_tps=statistics.median(b.tokens_per_second for b in base_runs),
        speculative_runs=spec_runs, baseline_runs=base_runs, foreign_cores=runs.foreign_cores,
        pairs_retimed=runs.retimed,
    )
