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
from scylla.measure.probes import CostTable, ForwardProbe, OverheadProbe

__all__ = ["StepPlan", "step_plan", "predict_seconds", "predict_seconds_draws", "predict_speedup",
           "steady_state_speedup", "required_widths", "CostDraws"]


@dataclass(frozen=True)
class StepPlan:
    """The forwards one decoding step runs: the target's verification block and the draft's blocks
    (the first of which also feeds the unfed deepest accepted token: width 2 after a full acceptance)."""

    target_width: int
    target_kind: str
    draft_blocks: tuple[tuple[int, str], ...]  # (width, kind) after the first block
    has_draft: bool

    @property
    def draft_forwards(self) -> int:
        return (1 + len(self.draft_blocks)) if self.has_draft else 0


def step_plan(spec: TreeSpec, has_draft_model: bool) -> StepPlan:
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
    return StepPlan(1 + spec.size, kind, tuple(blocks), has_draft_model)


def required_widths(specs: Sequence[TreeSpec], has_draft_model: bool) -> dict[str, dict[str, set[int]]]:
    """The (role -> kind -> widths) a set of shapes needs probed."""
    need: dict[str, dict[str, set[int]]] = {"target": {"decode": {1}, "tree": set()}, "draft": {"decode": set(), "tree": set()}}
    for spec in specs:
        plan = step_plan(spec, has_draft_model)
        need["target"][plan.target_kind].add(plan.target_width)
        if plan.has_draft:
            need["draft"]["decode"].update({1, 2})
            for w, kind in plan.draft_blocks:
                need["draft"][kind].add(w)
    return need


def predict_seconds(steps: Sequence[float], batch: int, table: CostTable, plan: StepPlan,
                    full_accept_rate: float = 0.0) -> float:
    """Wall time of decoding prompts whose step counts are ``steps`` (input order) ``batch`` at a time."""
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
                first = ((1 - full_accept_rate) * table.time("draft", "decode", 1, b)
                         + full_accept_rate * table.time("draft", "decode", 2, b))
                t += first + sum(table.time("draft", kind, w, b) for w, kind in plan.draft_blocks)
            t += table.overhead(b, plan.draft_forwards)
            total += t * min(active, 1.0)  # a fractional expected last step costs its share
    return total


def _full_accept_rate(stats: DecodeStats) -> float:
    if not stats.steps or not stats.accepted_per_position:
        return 0.0
    return float(stats.accepted_per_position[-1]) / float(stats.steps)


def steady_state_speedup(stats: DecodeStats, batch: int, table: CostTable, plan: StepPlan) -> float:
    """The issue-form S(B) = tau T_t(B,1) / (T_t(B, width) + draft forwards + overhead(B)), full batches."""
    f = _full_accept_rate(stats)
    t_spec = table.time("target", plan.target_kind, plan.target_width, batch) + table.overhead(batch, plan.draft_forwards)
    if plan.has_draft:
        t_spec += ((1 - f) * table.time("draft", "decode", 1, batch) + f * table.time("draft", "decode", 2, batch)
                   + sum(table.time("draft", k, w, batch) for w, k in plan.draft_blocks))
    t_plain = table.time("target", "decode", 1, batch) + table.overhead(batch, 0)
    return float(stats.tau * t_plain / t_spec)


def _interp(xs: np.ndarray, ys: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.interp`` for K curves at once: ``ys`` [K, P] over shared ``xs`` [P], queries ``q`` [K, m];
    flat beyond the ends, as `CostTable` is."""
    if xs.size == 1:
        return np.broadcast_to(ys[:, :1], q.shape).astype(float)
    qc = np.clip(q, xs[0], xs[-1])
    i = np.clip(np.searchsorted(xs, qc, side="right") - 1, 0, xs.size - 2)
    w = (qc - xs[i]) / (xs[i + 1] - xs[i])
    return np.take_along_axis(ys, i, axis=1) * (1 - w) + np.take_along_axis(ys, i + 1, axis=1) * w


class CostDraws:
    """`CostTable`'s step times for K bootstrap draws of the probes at once (each probe's repeats
    resampled with replacement per draw, then summarised), so a prediction's interval costs a few array
    operations instead of K Python replays. ``n_draws=0`` (or no ``rng``) keeps the measured times: one
    draw equal to `CostTable`'s."""

    def __init__(self, forwards: Sequence[ForwardProbe], overheads: Sequence[OverheadProbe] = (), *,
                 summary: str = "median", rng: np.random.Generator | None = None, n_draws: int = 0) -> None:
        if summary not in ("median", "best"):
            raise ValueError(f"summary must be 'median' or 'best', got {summary!r}")
        reduce = np.median if summary == "median" else np.min
        self.k = n_draws if rng is not None and n_draws > 0 else 1

        def summarised(times: Sequence[float]) -> np.ndarray:
            t = np.asarray(times, float)
            if rng is None or n_draws <= 0:
                return np.full(1, reduce(t))
            return reduce(t[rng.integers(0, t.size, (self.k, t.size))], axis=1)

        def curves(groups: dict[Any, list[Any]], value: Any) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
            out = {}
            for key, ps in groups.items():
                ps = sorted(ps, key=lambda p: p.batch_size)
                out[key] = (np.array([p.batch_size for p in ps], float), np.stack([value(p) for p in ps], axis=1))
            return out

        groups: dict[tuple[str, str, int], list[ForwardProbe]] = {}
        for p in forwards:
            groups.setdefault((p.role, p.kind, p.width), []).append(p)
        self._curves = curves(groups, lambda p: summarised(p.times))
        ogroups: dict[str, list[OverheadProbe]] = {}
        for o in overheads:
            ogroups.setdefault(o.shape, []).append(o)
        ocurves = curves(ogroups, lambda o: summarised(o.per_step))
        self._plain = ocurves.get("chain:0")
        self._extras = []  # per draft shape: the measured extra per draft forward, clipped at 0 as CostTable does
        for shape, (xs, ys) in ocurves.items():
            if shape == "chain:0" or self._plain is None:
                continue
            fws = np.array([o.draft_forwards_per_step for o in sorted(ogroups[shape], key=lambda o: o.batch_size)])
            base = _interp(self._plain[0], self._plain[1], np.broadcast_to(xs, ys.shape))
            self._extras.append((xs, np.maximum((ys - base) / np.maximum(fws, 1e-9), 0.0)))

    def _q(self, batch: Any) -> np.ndarray:
        q = np.asarray(batch, float)
        return np.broadcast_to(q, (self.k, 1) if q.ndim == 0 else q.shape).astype(float)

    def time(self, role: str, kind: str, width: int, batch: Any) -> np.ndarray:
        key = (role, kind, int(width))
        if key not in self._curves:
            raise KeyError(f"no {role} {kind} forward of width {width} was probed; probe it first")
        return _interp(*self._curves[key], self._q(batch))

    def prefill(self, role: str, batch: Any) -> np.ndarray:
        keys = [k for k in self._curves if k[0] == role and k[1] == "prefill"]
        return self.time(*keys[0], batch) if keys else np.zeros(self._q(batch).shape)

    def overhead(self, batch: Any, draft_forwards_per_step: float) -> np.ndarray:
        q = self._q(batch)
        base = _interp(*self._plain, q) if self._plain is not None else np.zeros(q.shape)
        if draft_forwards_per_step <= 0 or not self._extras:
            return base
        extra = np.mean([_interp(xs, per_fw, q) for xs, per_fw in self._extras], axis=0)
        return base + extra * draft_forwards_per_step


def predict_seconds_draws(steps: np.ndarray, batch: int, costs: CostDraws, plan: StepPlan,
                          full_accept_rate: float = 0.0) -> np.ndarray:
    """`predict_seconds` for K draws at once: ``steps`` [K, n] (one resample of the prompts per draw,
    input order), ``costs`` the matching K draws of the probes; returns [K] seconds."""
    steps = np.asarray(steps, float)
    k, n = steps.shape
    if n == 0:
        return np.zeros(k)
    f = full_accept_rate
    chunks = -(-n // batch)
    rows = [min(batch, n - c * batch) for c in range(chunks)]
    total = np.zeros(k)
    for r in set(rows):  # every chunk pays the prefills of its rows
        pre = costs.prefill("target", r)[:, 0] + (costs.prefill("draft", r)[:, 0] if plan.has_draft else 0.0)
        total += rows.count(r) * pre
    padded = np.zeros((k, chunks * batch))
    padded[:, :n] = steps  # padding rows need no steps and add nothing below
    kmax = int(math.ceil(padded.max()))
    if kmax <= 0:
        return total
    per_chunk = padded.reshape(k, chunks, batch)
    active = np.clip(per_chunk[..., None] - np.arange(kmax), 0.0, 1.0).sum(axis=2).reshape(k, chunks * kmax)
    b = np.maximum(active, 1.0)
    t = costs.time("target", plan.target_kind, plan.target_width, b)
    if plan.has_draft:
        t = t + (1 - f) * costs.time("draft", "decode", 1, b) + f * costs.time("draft", "decode", 2, b)
        for w, kind in plan.draft_blocks:
            t = t + costs.time("draft", kind, w, b)
    t = t + costs.overhead(b, plan.draft_forwards)
    return total + (t * np.minimum(active, 1.0) * (active > 0)).sum(axis=1)


def predict_speedup(stats: DecodeStats, batch: int, probes: Sequence[ForwardProbe],
                    overheads: Sequence[OverheadProbe] = (), *, has_draft_model: bool = True,
                    summary: str = "median", n_boot: int = 200, level: float = 0.9, seed: int = 0) -> dict[str, Any]:
    """Predicted speedup of ``stats``'s shape at ``batch`` (trace composition, with an interval), and the
    steady-state form beside it. ``stats`` are oracle (or engine) counters with per-prompt lists."""
    spec = TreeSpec.parse(stats.tree)
    plan = step_plan(spec, has_draft_model)
    plain_plan = step_plan(TreeSpec.chain(0), False)
    table = CostTable(probes, overheads, summary)
    steps = np.asarray(stats.prompt_steps, float)
    plain_steps = np.asarray(stats.prompt_generated, float) - 1.0
    f = _full_accept_rate(stats)

    measured = CostDraws(probes, overheads, summary=summary)  # one draw: the measured times, as `table`
    t_spec = float(predict_seconds_draws(steps[None], batch, measured, plan, f)[0])
    t_plain = float(predict_seconds_draws(plain_steps[None], batch, measured, plain_plan)[0])
    point = t_plain / t_spec
    lo, hi = point, point
    if n_boot > 0 and len(steps):
        rng = np.random.default_rng(seed)
        costs = CostDraws(probes, overheads, summary=summary, rng=rng, n_draws=n_boot)
        idx = rng.integers(0, len(steps), (n_boot, len(steps)))
        draws = (predict_seconds_draws(plain_steps[idx], batch, costs, plain_plan)
                 / predict_seconds_draws(steps[idx], batch, costs, plan, f))
        lo, hi = np.percentile(draws, [50 * (1 - level), 100 - 50 * (1 - level)])
    return {"speedup": point, "low": float(lo), "high": float(hi), "level": level,
            "steady_state": steady_state_speedup(stats, batch, table, plan),
            "predicted_seconds": t_spec, "predicted_plain_seconds": t_plain, "summary": summary,
            "target_step_seconds": table.time("target", "decode", 1, batch),
            "verify_step_seconds": table.time("target", plan.target_kind, plan.target_width, batch),
            "draft_step_seconds": table.time("draft", "decode", 1, batch) if plan.has_draft else 0.0,
            "overhead_step_seconds": table.overhead(batch, plan.draft_forwards)}
