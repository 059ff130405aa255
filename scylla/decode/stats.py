"""Raw counters of a decoding run and the ratios derived from them (docs/design.md, "Metrics").

Every draft family and tree shape fills the same `DecodeStats`, so records share one schema:

- ``steps``: row-steps, one per row per verification forward (the prefill forward, which emits each
  row's first token, is not a step);
- ``drafted``: draft tokens the target judged (for a tree: its nodes within the row's depth limit);
- ``accepted``: draft tokens kept; ``tau = 1 + accepted / steps`` counts tokens per target forward,
  **the bonus/correction token included** (1.00 for plain decoding);
- ``accepted_per_position[d]`` / ``reached_per_position[d]``: steps whose accepted path reached depth
  ``d + 1`` / steps that judged some node at depth ``d + 1`` with every shallower depth accepted, so
  ``alpha_n`` is EAGLE's conditional per-position rate and ``alpha_n_unconditional`` vLLM's;
- ``verified_tokens``: tokens the target scored in verification forwards (root + tree nodes per row-step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

__all__ = ["DecodeStats", "SpeculativeOutput", "record_row_step", "TAU_DEFINITION"]

TAU_DEFINITION = "1 + accepted/steps (bonus/correction token included; 1.00 for plain decoding)"


@dataclass
class DecodeStats:
    """Raw counters of one decoding run, and the ratios derived from them.

    ``drafted`` counts the draft positions the target judged inside each row's sequence: a row near
    ``max_new_tokens`` judges fewer, and when an accepted draft token is the row's EOS the positions
    after it are past the sequence's end and not counted. So without EOS,
    ``generated_tokens == n_prompts + steps + accepted`` exactly (prefill token, then per step the
    accepted tokens plus one correction/bonus token); each row whose EOS is an accepted draft token
    emits one token fewer than that (no correction follows its EOS).
    """

    gamma: int
    temperature: float
    batch_size: int
    n_prompts: int
    tree: str = "chain"
    proposer: str = "none"
    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    verified_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    reached_per_position: list[int] = field(default_factory=list)
    target_forwards: int = 0
    draft_forwards: int = 0
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    wall_seconds: float = 0.0
    # Time spent inside model forward calls (synchronised): the rest of wall_seconds is the engine's own.
    target_forward_seconds: float = 0.0
    draft_forward_seconds: float = 0.0
    generated_tokens: int = 0
    prompt_drafted: list[int] = field(default_factory=list)
    prompt_accepted: list[int] = field(default_factory=list)
    prompt_steps: list[int] = field(default_factory=list)
    prompt_generated: list[int] = field(default_factory=list)
    prefill_forwards: int = 0

    @property
    def alpha(self) -> float:
        """Per-token acceptance rate, accepted / drafted (NaN when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def alpha_n(self) -> list[float]:
        """EAGLE's n-alpha: acceptance at depth n given every shallower depth was accepted."""
        return [a / r if r else float("nan") for a, r in zip(self.accepted_per_position, self.reached_per_position)]

    @property
    def alpha_n_unconditional(self) -> list[float]:
        """vLLM's per-position rate: the fraction of steps whose first n + 1 drafts were all accepted."""
        return [a / self.steps if self.steps else float("nan") for a in self.accepted_per_position]

    @property
    def tau(self) -> float:
        """Tokens emitted per target forward, bonus/correction token included: 1 + accepted/steps."""
        return 1.0 + self.accepted / self.steps if self.steps else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    @property
    def verify_forwards(self) -> int:
        """Target forwards after prefill (one per decoding step of the batch)."""
        return self.target_forwards - self.prefill_forwards

    @property
    def overhead_seconds(self) -> float:
        """Wall time outside the model forwards: sampling, acceptance, bookkeeping, Python."""
        return self.wall_seconds - self.target_forward_seconds - self.draft_forward_seconds

    def merge(self, other: "DecodeStats") -> None:
        """Add the counters of another chunk of prompts (same gamma, tree and temperature)."""
        if (other.gamma, other.temperature, other.tree) != (self.gamma, self.temperature, self.tree):
            raise ValueError(
                f"cannot merge stats of gamma={other.gamma}, tree={other.tree}, temperature={other.temperature} "
                f"into gamma={self.gamma}, tree={self.tree}, temperature={self.temperature}: per-position "
                "counters would not line up"
            )
        for name in ("drafted", "accepted", "steps", "verified_tokens", "target_forwards", "draft_forwards",
                     "generated_tokens", "prefill_forwards", "prefill_seconds", "draft_seconds", "verify_seconds",
                     "wall_seconds", "target_forward_seconds", "draft_forward_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("accepted_per_position", "reached_per_position"):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, [a + b for a, b in zip(mine, theirs)] if mine else list(theirs))
        for name in ("prompt_drafted", "prompt_accepted", "prompt_steps", "prompt_generated"):
            getattr(self, name).extend(getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        """Raw counters plus derived metrics, JSON-ready. ``tau`` includes the bonus token."""
        d = asdict(self)
        d.update(
            alpha=self.alpha,
            alpha_n=self.alpha_n,
            alpha_n_unconditional=self.alpha_n_unconditional,
            tau=self.tau,
            tokens_per_second=self.tokens_per_second,
            verify_forwards=self.verify_forwards,
            overhead_seconds=self.overhead_seconds,
            tau_definition=TAU_DEFINITION,
            alpha_n_definition="conditional: accepted at depth n / steps that reached depth n (EAGLE's n-alpha)",
            alpha_n_unconditional_definition="accepted at depth n / steps (vLLM's per-position acceptance rate)",
        )
        return d


@dataclass
class SpeculativeOutput:
    sequences: list[list[int]]
    stats: DecodeStats


def record_row_step(stats: DecodeStats, row: int, path_tokens: Sequence[int], next_token: int,
                    nodes_per_depth: Sequence[int], reached: int, eos_token_id: int | None) -> list[int]:
    """Add one row's verification step to the counters; return the tokens it emits (cut after EOS).

    ``path_tokens`` are the accepted draft tokens (the accepted path, shallowest first), then
    ``next_token`` (correction or bonus). ``nodes_per_depth[d]`` is how many draft nodes at depth d + 1
    the target judged for this row (a chain: one per position up to the row's limit), and ``reached``
    how many depths the accepted path reached (its length, plus one when its last node had a judged
    child). Shared by every family and tree shape so all count alike. When EOS is an accepted draft
    token the sequence ends there: deeper nodes lie past its end and count as neither drafted, reached
    nor accepted (as nodes past ``max_new_tokens`` do); counting them as rejected would bias alpha and
    alpha_n down.
    """
    n_accepted = len(path_tokens)
    emitted = list(path_tokens) + [next_token]
    depth_judged = len(nodes_per_depth)
    if eos_token_id is not None and eos_token_id in emitted:
        e = emitted.index(eos_token_id)
        emitted = emitted[: e + 1]
        if e < n_accepted:
            n_accepted = depth_judged = reached = e + 1
    stats.prompt_drafted[row] += sum(nodes_per_depth[:depth_judged])
    stats.prompt_accepted[row] += n_accepted
    stats.prompt_steps[row] += 1
    for d in range(reached):
        stats.reached_per_position[d] += 1
    for d in range(n_accepted):
        stats.accepted_per_position[d] += 1
    return emitted
