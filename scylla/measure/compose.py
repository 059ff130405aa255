"""Predicted speedup: oracle acceptance composed with probed costs, with an interval.

The steady-state form (docs/oracle.md),

    S(B, gamma) = tau(gamma) * T_t(B, 1) / (T_t(B, gamma + 1) + gamma * T_d(B, 1) + overhead(B)),

assumes every step runs a full batch. A real batch does not: rows finish at different steps and leave,
so the last forwards run few rows, and each chunk pays a prefill. `predict_seconds` therefore replays
the batch: per chunk of ``B`` prompts it takes each prompt's step count from the oracle (plain
decoding: generated tokens - 1), counts the rows still active at every forward, and adds up the probed
forward times at those active counts, the draft's forwards per step, the engine's measured per-step
overhead and both prefills. The predicted speedup is plain time over speculative time for the same
tokens. Its interval resamples prompts (acceptance) and each probe's repeats (timing spread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from scylla.decode.stats import DecodeStats
from scylla.decode.tree import TreeSpec
from scylla.measure.probes import CostDraws, CostTable, ForwardProbe, OverheadProbe

__all__ = ["StepPlan", "step_plan", "predict_seconds", "predict_seconds_draws", "predict_speedup",
           "steady_state_speedup", "required_widths", "first_block_widths", "full_accept_rate", "step_cost_terms"]


@dataclass(frozen=True)
class StepPlan:
    """The forwards one decoding step runs: the target's verification block and the draft's blocks
    (the first of which also feeds the unfed deepest accepted token: width 2 after a full acceptance;
    for a draft that re-processes the accepted tokens, EAGLE-3, it is 1 + the tokens accepted last step)."""

    target_width: int
    target_kind: str
    draft_blocks: tuple[tuple[int, str], ...]  # (width, kind) after the first block
    has_draft: bool
    reprocess_accepted: bool = False

    @property
    def draft_forwards(self) -> int:
        return (1 + len(self.draft_blocks)) if self.has_draft else 0


def step_plan(spec: TreeSpec, has_draft_model: bool, reprocess_accepted: bool = False) -> StepPlan:
    """Forward widths per step for a shape: a chain of gamma runs the target on gamma + 1 tokens and the
    draft gamma times (first block, then gamma - 1 single tokens); a static tree runs the target on
    1 + size tokens (tree mask) and the draft on each depth's frontier."""
    if spec.depth == 0:
        return StepPlan(1, "decode", (), False)
    if spec.kind == "dynamic":
        raise ValueError("dynamic trees are measured with the engine, not composed")
    kind = "decode" if spec.is_chain else "tree"
    blocks: list[tuple[int, str]] = []
    width = 1
    for k in spec.branching[:-1]:
        width *= k
        blocks.append((width, kind))
    return StepPlan(1 + spec.size, kind, tuple(blocks), has_draft_model, reprocess_accepted and has_draft_model)


def required_widths(specs: Sequence[TreeSpec], has_draft_model: bool,
                    reprocess_accepted: bool = False) -> dict[str, dict[str, set[int]]]:
    """The (role -> kind -> widths) a set of shapes needs probed."""
    need: dict[str, dict[str, set[int]]] = {"target": {"decode": {1}, "tree": set()}, "draft": {"decode": set(), "tree": set()}}
    for spec in specs:
        plan = step_plan(spec, has_draft_model, reprocess_accepted)
        need["target"][plan.target_kind].add(plan.target_width)
        if plan.has_draft:
            need["draft"]["decode"].update(range(1, spec.depth + 2) if plan.reprocess_accepted else {1, 2})
            for w, kind in plan.draft_blocks:
                need["draft"][kind].add(w)
    return need


def first_block_widths(stats: DecodeStats, plan: StepPlan) -> dict[int, float]:
    """Width -> share of steps of the draft's first forward: 1, or 2 after a fully accepted step; for a
    draft that re-processes the accepted tokens, 1 + the tokens accepted (their distribution is the
    counters' ``P(n >= j) = accepted_per_position[j - 1] / steps``)."""
    if not plan.reprocess_accepted:
        f = _full_accept_rate(stats)
        return {1: 1.0 - f, 2: f}
    steps = float(stats.steps) if stats.steps else 0.0
    at_least = [1.0] + [float(a) / steps if steps else 0.0 for a in stats.accepted_per_position] + [0.0]
    return {j + 1: max(0.0, at_least[j] - at_least[j + 1]) for j in range(len(at_least) - 1)}


def _first_block(table: CostTable, widths: dict[int, float], b: float) -> float:
    return sum(share * table.time("draft", "decode", w, b) for w, share in widths.items() if share > 0)


def predict_seconds(steps: Sequence[float], batch: int, table: CostTable, plan: StepPlan,
                    full_accept_rate: float = 0.0, first_widths: dict[int, float] | None = None) -> float:
    """Wall time of decoding prompts whose step counts are ``steps`` (input order) ``batch`` at a time.
    ``first_widths`` (width -> share of steps, `first_block_widths`) prices the draft's first forward;
    default: width 2 after a full acceptance (``full_accept_rate``), else 1."""
    if first_widths is None:
        first_widths = {1: 1.0 - full_accept_rate, 2: full_accept_rate}
    total = 0.0
    for start in range(0, len(steps), batch):
        chunk = np.asarray(steps[start:start + batch], float)
        n = len(chunk)
        total += table.prefill("target", n) + (table.prefill("draft", n) if plan.has_draft else 0.0)
        for k in range(int(math.ceil(chunk.max())) if n else 0):
            active = float(np.clip(chunk - k, 0.0, 1.0).sum())  # fractional last steps at temperature > 0
            if active <= 0:
                break
            b = max(active, 1.0)
            t = table.time("target", plan.target_kind, plan.target_width, b)
            if plan.has_draft:
                t += _first_block(table, first_widths, b) + sum(table.time("draft", kind, w, b)
                                                                for w, kind in plan.draft_blocks)
            t += table.overhead(b, plan.draft_forwards)
            total += t * min(active, 1.0)  # a fractional expected last step costs its share
    return total


def _full_accept_rate(stats: DecodeStats) -> float:
    if not stats.steps or not stats.accepted_per_position:
        return 0.0
    return float(stats.accepted_per_position[-1]) / float(stats.steps)


def steady_state_speedup(stats: DecodeStats, batch: int, table: CostTable, plan: StepPlan) -> float:
    """The issue-form S(B) = tau T_t(B,1) / (T_t(B, width) + draft forwards + overhead(B)), full batches."""
    t_spec = table.time("target", plan.target_kind, plan.target_width, batch) + table.overhead(batch, plan.draft_forwards)
    if plan.has_draft:
        t_spec += (_first_block(table, first_block_widths(stats, plan), batch)
                   + sum(table.time("draft", k, w, batch) for w, k in plan.draft_blocks))
    t_plain = table.time("target", "decode", 1, batch) + table.overhead(batch, 0)
    return float(stats.tau * t_plain / t_spec)


def predict_seconds_draws(steps: np.ndarray, batch: int, costs: CostDraws, plan: StepPlan,
                          first_widths: dict[int, float] | float = 0.0) -> np.ndarray:
    """`predict_seconds` for every draw of ``costs`` at once: ``steps`` [n_draws, n] (one resample of the
    prompts per draw, input order; row d priced with draw d's probe times); returns [n_draws] seconds.
    ``first_widths`` prices the draft's first forward as in `predict_seconds` (a number: the full-accept rate)."""
    steps = np.asarray(steps, float)
    k, n = steps.shape
    if n == 0:
        return np.zeros(k)
    chunks = -(-n // batch)
    rows = [min(batch, n - c * batch) for c in range(chunks)]
    total = np.zeros(k)
    for r in set(rows):  # every chunk pays the prefills of its rows
        pre = costs.prefill("target", [r])[:, 0] + (costs.prefill("draft", [r])[:, 0] if plan.has_draft else 0.0)
        total += rows.count(r) * pre
    padded = np.zeros((k, chunks * batch))
    padded[:, :n] = steps  # padding rows need no steps and add nothing below
    kmax = int(math.ceil(padded.max()))
    if kmax <= 0:
        return total
    per_chunk = padded.reshape(k, chunks, batch)
    active = np.clip(per_chunk[..., None] - np.arange(kmax), 0.0, 1.0).sum(axis=2).reshape(k, chunks * kmax)
    b = np.maximum(active, 1.0)
    t = costs.overhead_per_draw(b, plan.draft_forwards)
    for role, kind, width, weight in step_cost_terms(plan, first_widths):
        t = t + weight * costs.time_per_draw(role, kind, width, b)
    return total + (t * np.minimum(active, 1.0) * (active > 0)).sum(axis=1)


def predict_speedup(stats: DecodeStats, batch: int, probes: Sequence[ForwardProbe],
                    overheads: Sequence[OverheadProbe] = (), *, has_draft_model: bool = True,
                    reprocess_accepted: bool = False, summary: str = "median", n_boot: int = 200, level: float = 0.9,
                    seed: int = 0) -> dict[str, Any]:
    """Predicted speedup of ``stats``'s shape at ``batch`` (trace composition, with an interval), and the
    steady-state form beside it. ``stats`` are oracle (or engine) counters with per-prompt lists.
    ``reprocess_accepted``: the draft's first forward of a step is 1 + accepted tokens wide (EAGLE-3)."""
    spec = TreeSpec.parse(stats.tree)
    plan = step_plan(spec, has_draft_model, reprocess_accepted)
    plain_plan = step_plan(TreeSpec.chain(0), False)
    table = CostTable(probes, overheads, summary)
    steps = np.asarray(stats.prompt_steps, float)
    plain_steps = np.asarray(stats.prompt_generated, float) - 1.0
    widths = first_block_widths(stats, plan)

    n_boot = max(int(n_boot), 0) if len(steps) else 0
    costs = CostDraws(probes, overheads, summary, n_boot=n_boot, seed=seed)  # row 0: the measured times
    rng = np.random.default_rng(seed)
    idx = np.concatenate([np.arange(len(steps))[None], rng.integers(0, len(steps), (n_boot, len(steps)))])
    t_specs = predict_seconds_draws(steps[idx], batch, costs, plan, widths)
    t_plains = predict_seconds_draws(plain_steps[idx], batch, costs, plain_plan)
    t_spec, t_plain = float(t_specs[0]), float(t_plains[0])
    point = t_plain / t_spec
    draws = t_plains[1:] / t_specs[1:]
    lo, hi = np.percentile(draws, [50 * (1 - level), 100 - 50 * (1 - level)]) if n_boot else (point, point)
    return {"speedup": point, "low": float(lo), "high": float(hi), "level": level,
            "steady_state": steady_state_speedup(stats, batch, table, plan),
            "predicted_seconds": t_spec, "predicted_plain_seconds": t_plain, "summary": summary,
            "target_step_seconds": table.time("target", "decode", 1, batch),
            "verify_step_seconds": table.time("target", plan.target_kind, plan.target_width, batch),
            "draft_step_seconds": table.time("draft", "decode", 1, batch) if plan.has_draft else 0.0,
            "overhead_step_seconds": table.overhead(batch, plan.draft_forwards)}


def full_accept_rate(stats: DecodeStats) -> float:
    """Share of steps whose whole draft was accepted: the draft's next first forward is then two tokens
    wide (it also feeds the unfed deepest accepted token)."""
    return _full_accept_rate(stats)


def step_cost_terms(plan: StepPlan, first_widths: dict[int, float] | float = 0.0) -> list[tuple[str, str, int, float]]:
    """The forwards one step of ``plan`` runs, as ``(role, kind, width, weight)``: the per-step time is
    ``sum(weight * time(role, kind, width, b)) + overhead(b, plan.draft_forwards)``, exactly what
    `predict_seconds` adds up per step. ``first_widths`` is the draft's first-forward width distribution
    (`first_block_widths`), or a number: the full-accept rate of a draft that does not re-process its
    accepted tokens. Vectorised pricing (many draws, shapes and batch sizes at once, `scylla.fit.serving`)
    builds on it so both price a step the same way."""
    if not isinstance(first_widths, dict):
        first_widths = {1: 1.0 - float(first_widths), 2: float(first_widths)}
    terms = [("target", plan.target_kind, plan.target_width, 1.0)]
    if plan.has_draft:
        terms += [("draft", "decode", int(w), float(share)) for w, share in sorted(first_widths.items())]
        terms += [("draft", kind, w, 1.0) for w, kind in plan.draft_blocks]
    return [t for t in terms if t[3] != 0.0]
