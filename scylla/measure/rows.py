"""One measurement: the schema that records, the tidy results frame and wandb all share.

A measurement is one (task, draft shape, batch size) cell of a job. ``source`` says where its numbers
come from:

- ``oracle``: acceptance counters from `scylla.measure.oracle` (batch-independent), cost from probes,
  and ``speedup`` = the *predicted* speedup (`scylla.measure.compose`);
- ``engine``: decoded for real by the engine against plain decoding; ``speedup`` is *measured*, and
  ``predicted_speedup`` (when the job also priced the cell) sits beside it for comparison, with
  ``oracle_match`` saying whether the engine's counters equal the oracle's (temperature 0).

`measurement` builds the nested, JSON-ready dict stored in a record; `flatten` turns it into one row of
the frame (`MEASUREMENT_COLUMNS`, then per-depth ``alpha_n``/``accepted_n``/``reached_n``/``alpha_u_n``).
"""

from __future__ import annotations

import math
from typing import Any

from scylla.decode.stats import TAU_DEFINITION

__all__ = ["MEASUREMENT_COLUMNS", "TRACKED", "measurement", "flatten", "from_speedup"]

# Columns of the tidy frame that come from a measurement, in order.
MEASUREMENT_COLUMNS = [
    "task", "batch_size", "gamma", "tree", "source", "temperature", "n_prompts", "max_new_tokens",
    "drafted", "accepted", "steps", "generated_tokens", "verified_tokens", "target_forwards", "draft_forwards",
    "draft_seconds", "verify_seconds", "prefill_seconds", "wall_seconds", "overhead_seconds", "alpha", "tau",
    "tokens_per_second", "baseline_tokens_per_second", "baseline_wall_seconds", "baseline_generated_tokens",
    "speedup", "predicted_speedup", "predicted_low", "predicted_high", "predicted_steady_state", "c",
    "draft_step_seconds", "target_step_seconds", "verify_step_seconds", "overhead_step_seconds", "oracle_match",
    "prompt_accepted", "prompt_drafted", "prompt_steps",
]
# What a tracker logs per cell (scalars only).
TRACKED = ("speedup", "predicted_speedup", "c", "tokens_per_second", "baseline_tokens_per_second", "alpha", "tau")

_STATS = ("drafted", "accepted", "steps", "generated_tokens", "verified_tokens", "target_forwards", "draft_forwards",
          "draft_seconds", "verify_seconds", "prefill_seconds", "wall_seconds", "overhead_seconds")


def _num(value: Any) -> float:
    return float("nan") if value is None else value


def measurement(task: str, *, source: str, stats: dict[str, Any], batch_size: int, temperature: float,
                max_new_tokens: int, baseline: dict[str, Any] | None = None, timing: dict[str, Any] | None = None,
                prediction: dict[str, Any] | None = None, oracle_match: bool | None = None,
                k: int | None = None) -> dict[str, Any]:
    """The record entry of one cell. ``stats``/``baseline`` are `DecodeStats.to_dict()`; ``timing`` the
    measured rates and step times (engine rows) or the probed step times (oracle rows); ``prediction``
    a `predict_speedup` result."""
    if source not in ("oracle", "engine"):
        raise ValueError(f"measurement source must be 'oracle' or 'engine', got {source!r}")
    timing, prediction = dict(timing or {}), dict(prediction or {})
    predicted = prediction.get("speedup")
    entry = {
        "task": task, "batch_size": int(batch_size), "gamma": stats.get("gamma"), "tree": stats.get("tree"),
        "source": source, "temperature": float(temperature), "n_prompts": stats.get("n_prompts"),
        "max_new_tokens": int(max_new_tokens), "speculative": stats, "baseline": baseline,
        "tokens_per_second": timing.get("tokens_per_second"),
        "baseline_tokens_per_second": timing.get("baseline_tokens_per_second"),
        "speedup": timing.get("speedup") if source == "engine" else predicted,
        "predicted_speedup": predicted, "predicted_low": prediction.get("low"),
        # engine rows: tokens/s of every repeat (run order), so a measured speedup gets an interval
        "tokens_per_second_repeats": timing.get("tokens_per_second_repeats"),
        "baseline_tokens_per_second_repeats": timing.get("baseline_tokens_per_second_repeats"),
        "predicted_high": prediction.get("high"), "predicted_steady_state": prediction.get("steady_state"),
        "oracle_match": oracle_match,
        # engine rows: other processes' CPU use (cores) per kept repeat, and repeats decoded again for it
        "foreign_cores": timing.get("foreign_cores"), "pairs_retimed": timing.get("pairs_retimed"),
        "tau_definition": TAU_DEFINITION,
    }
    for name in ("target_step_seconds", "verify_step_seconds", "draft_step_seconds", "overhead_step_seconds"):
        entry[name] = timing.get(name, prediction.get(name))
    t, d = entry["target_step_seconds"], entry["draft_step_seconds"]
    entry["c"] = timing.get("c", d / t if t and d is not None and math.isfinite(d) else None)
    if k is not None:
        entry["k"] = int(k)
    return entry


def from_speedup(task: str, m: Any, *, temperature: float, max_new_tokens: int,
                 prediction: dict[str, Any] | None = None, oracle_match: bool | None = None) -> dict[str, Any]:
    """The record entry of a `SpeedupMeasurement` (or its MTP subclass): an engine row."""
    return measurement(
        task, source="engine", stats=m.speculative.to_dict(), baseline=m.baseline.to_dict(),
        batch_size=m.batch_size, temperature=temperature, max_new_tokens=max_new_tokens, prediction=prediction,
        oracle_match=oracle_match, k=getattr(m, "k", None),
        timing={"tokens_per_second": m.speculative_tps, "baseline_tokens_per_second": m.baseline_tps,
                "tokens_per_second_repeats": [s.tokens_per_second for s in (m.speculative_runs or [m.speculative])],
                "baseline_tokens_per_second_repeats": [b.tokens_per_second for b in (m.baseline_runs or [m.baseline])],
                "foreign_cores": list(getattr(m, "foreign_cores", [])), "pairs_retimed": getattr(m, "pairs_retimed", 0),
                "speedup": m.speedup, "c": m.c, "target_step_seconds": m.target_step_seconds,
                "verify_step_seconds": m.verify_step_seconds, "draft_step_seconds": m.draft_step_seconds,
                "overhead_step_seconds": m.speculative.overhead_seconds / max(m.speculative.verify_forwards, 1)})


def _per_position(prefix: str, values: list[Any] | None) -> dict[str, Any]:
    return {f"{prefix}_{i + 1}": _num(v) for i, v in enumerate(values or [])}


def flatten(entry: dict[str, Any]) -> dict[str, Any]:
    """One flat row of `MEASUREMENT_COLUMNS` (+ per-depth columns) from a record entry."""
    spec, base = entry.get("speculative") or {}, entry.get("baseline") or {}
    row: dict[str, Any] = {c: entry.get(c) for c in MEASUREMENT_COLUMNS}
    row.update({k: spec.get(k) for k in _STATS})
    row.update(alpha=_num(spec.get("alpha")), tau=_num(spec.get("tau")),
               prompt_accepted=spec.get("prompt_accepted"), prompt_drafted=spec.get("prompt_drafted"),
               prompt_steps=spec.get("prompt_steps"), n_prompts=entry.get("n_prompts", spec.get("n_prompts")),
               tree=entry.get("tree") or spec.get("tree") or f"chain:{entry.get('gamma')}",
               source=entry.get("source", "engine"),
               baseline_wall_seconds=base.get("wall_seconds"), baseline_generated_tokens=base.get("generated_tokens"))
    for name in ("tokens_per_second", "baseline_tokens_per_second", "speedup", "predicted_speedup", "predicted_low",
                 "predicted_high", "predicted_steady_state", "c", "draft_step_seconds", "target_step_seconds",
                 "verify_step_seconds", "overhead_step_seconds"):
        row[name] = _num(row[name])
    row.update(_per_position("alpha", spec.get("alpha_n")))
    row.update(_per_position("alpha_u", spec.get("alpha_n_unconditional")))
    row.update({k: v for k, v in _per_position("accepted", spec.get("accepted_per_position")).items()})
    row.update({k: v for k, v in _per_position("reached", spec.get("reached_per_position")).items()})
    if entry.get("k") is not None:
        row["k"] = entry["k"]
    return row
