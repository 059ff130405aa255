"""Serving recommendation from measured cells: per serving batch size, the best measured draft, shape and
data source, with a paired-bootstrap interval, P(best) and the regret of the choice.

The law-based recommender (`scylla.fit.recommend`) extrapolates fitted laws to drafts nobody trained.
This one only ranks what a study measured: every cell of every oracle job (family, draft, token budget,
data source, and shape: chain:gamma, static tree, n-gram lookup), every engine-measured cell (MTP
self-speculation, dynamic trees: measured, not predicted), and "no speculation" (speedup exactly 1).

**Score.** A candidate's score at serving batch size B is its speedup pooled over the chosen tasks.
The default pooling is ``time``: total plain-decoding time over total speculative time, summed over the
tasks, i.e. the speedup of serving all the tasks' prompts as one workload (every task emits the same
tokens either way, so this is a ratio of tokens/s). ``log`` (the mean over tasks of ln S) weights every
task equally whatever its length; use it when tasks stand for equally important traffic of different
lengths. Times are composed from the oracle's per-prompt step counts and the job's cost probes exactly
as `scylla.measure.compose.predict_seconds` composes them (a test holds them equal).

**Paired bootstrap.** Each draw resamples (1) the prompts of every prompt set once: one set of indices
per (task, target continuations key), used by every candidate decoded on those prompts, so candidates
that share prompts stay paired; (2) every cost probe's repeats once: the resample is seeded by the
probe's content, so jobs that carry the same cached probe (the target's, shared by a sweep) see the
same draw. Every candidate is repriced with the same draw. Row 0 of every array is the point estimate
(no resampling). From the draws: the interval of the chosen candidate, P(best) (the share of draws it
wins; ties split), and the regret (mean over draws of best score minus chosen score, in ln S).

**One draft to deploy.** vLLM and SGLang serve one draft. Three profiles pick one draft for all serving
batch sizes, maximising the weighted mean of ln S over them: ``any`` (the shape may change per batch
size and speculation may be off, as Scylla's engine allows), ``vllm`` (one chain gamma, with speculation
disabled from some batch size on: vLLM's ``disable_by_batch_size``) and ``sglang`` (one shape for every
batch size). See docs/serving.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from scylla.decode.stats import DecodeStats
from scylla.decode.tree import TreeError, TreeSpec
from scylla.measure.compose import first_block_widths, step_cost_terms, step_plan
from scylla.measure.probes import CostDraws, ForwardProbe, OverheadProbe

from .core import FitError

__all__ = ["NO_SPECULATION", "MODEL_FREE_FAMILIES", "PROFILES", "ServingError", "ServingRecommendation",
           "CheckCell", "recommend_cells", "validation_cells", "compare_checks", "activity_histogram",
           "as_records"]

NO_SPECULATION = "no speculation"
MODEL_FREE_FAMILIES = frozenset({"ngram"})  # proposers without a draft model: no draft forwards or prefill
DEFAULT_DATA_SOURCE = "corpus"
PROFILES = ("any", "vllm", "sglang")
_TIE = 1e-12  # ln-speedups closer than this count as a tie (P(best) is split between them)


class ServingError(FitError):
    """Records that cannot give a serving recommendation; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------------
# Reading the records


def as_records(source: Any) -> list[dict[str, Any]]:
    """Job records from a results folder/file/glob (or a list of them), a list of record dicts, or the
    tidy frame of `scylla.harness.results.load` (its ``record_path`` column names the records: the frame
    itself drops the per-prompt traces and the cost probes this recommender needs)."""
    from scylla.harness import results

    if isinstance(source, pd.DataFrame):
        if "record_path" not in source.columns:
            raise ServingError("the results table has no record_path column, so its job records (per-prompt "
                               "traces and cost probes) cannot be found; pass the results folder of the records")
        paths = [p for p in source["record_path"].dropna().unique() if not str(p).startswith("wandb:")]
        if not paths:
            raise ServingError("the table's rows come from wandb or have no record files; the serving "
                               "recommendation needs the job records: pass their results folder")
        return results.load_records(paths)
    if isinstance(source, (str, os.PathLike)):
        try:
            return results.load_records(source)
        except results.ResultsError as exc:
            raise ServingError(str(exc)) from None
    items = list(source)
    if items and all(isinstance(r, Mapping) for r in items):
        return [dict(r) for r in items]
    try:
        return results.load_records(items)
    except results.ResultsError as exc:
        raise ServingError(str(exc)) from None


def _stats(d: Mapping[str, Any]) -> DecodeStats:
    names = {f.name for f in dataclasses.fields(DecodeStats)}
    return DecodeStats(**{k: v for k, v in d.items() if k in names})


@functools.lru_cache(maxsize=4096)
def _shape_name(text: Any) -> str:
    try:
        return TreeSpec.parse(text).describe()
    except TreeError:
        return str(text)


@dataclass
class _Trace:
    """One (task, shape) of an oracle job: per-prompt step counts; batch-independent, like acceptance."""

    steps: np.ndarray
    plain: np.ndarray  # plain decoding's step counts: generated tokens - 1
    first_widths: tuple[tuple[int, float], ...]  # the draft's first-forward widths and their shares
    batches: set[int] = field(default_factory=set)


@dataclass
class _Job:
    run_id: str
    record: dict[str, Any]
    family: str
    has_model: bool
    data_source: str
    reprocess: bool  # the draft re-processes its accepted tokens (EAGLE-3): a wider first forward
    cont_keys: dict[str, str]
    oracle: dict[tuple[str, str], _Trace]
    engine: dict[tuple[str, str], dict[int, dict[str, Any]]]
    probes: list[ForwardProbe]
    overheads: list[OverheadProbe]
    skipped: int = 0  # oracle rows without per-prompt traces

    @property
    def draft(self) -> dict[str, Any]:
        return self.record.get("draft") or {}

    def tasks(self) -> set[str]:
        return {t for t, _ in self.oracle} | {t for t, _ in self.engine}

    def batches(self) -> set[int]:
        out = {b for tr in self.oracle.values() for b in tr.batches}
        return out | {b for cells in self.engine.values() for b in cells}


def _parse(record: Mapping[str, Any]) -> _Job:
    draft = record.get("draft") or {}
    cfg_draft = (record.get("config") or {}).get("draft") or {}
    family = str(draft.get("family") or cfg_draft.get("family") or "llama")
    source = draft.get("data_source") or cfg_draft.get("data_source") or DEFAULT_DATA_SOURCE
    cont = {t: str(v.get("key")) for t, v in (record.get("continuations") or {}).items()
            if isinstance(v, Mapping) and v.get("key")}
    reprocess = bool(record.get("reprocess_accepted", False))  # written by the measurement stage
    job = _Job(str(record["run_id"]), dict(record), family, family not in MODEL_FREE_FAMILIES, str(source), reprocess,
               cont, {}, {}, [], [])
    for m in record.get("measurements") or []:
        spec = m.get("speculative") or {}
        task, batch = str(m.get("task")), int(m.get("batch_size"))
        shape = _shape_name(m.get("tree") or spec.get("tree") or f"chain:{m.get('gamma')}")
        if m.get("source", "engine") == "oracle":
            key = (task, shape)
            if key not in job.oracle:
                if not spec.get("prompt_steps") or not spec.get("prompt_generated"):
                    job.skipped += 1
                    continue
                plan = step_plan(TreeSpec.parse(shape), job.has_model, reprocess)
                widths = first_block_widths(_stats(spec), plan)
                job.oracle[key] = _Trace(np.asarray(spec["prompt_steps"], float),
                                         np.asarray(spec["prompt_generated"], float) - 1.0,
                                         tuple(sorted((int(w), float(x)) for w, x in widths.items() if x > 0)))
            job.oracle[key].batches.add(batch)
        elif m.get("speedup") is not None and math.isfinite(float(m["speedup"])):
            job.engine.setdefault((task, shape), {})[batch] = m
    job.probes = [ForwardProbe(**{k: v for k, v in p.items() if k not in ("median", "best")})
                  for p in record.get("probes") or []]
    job.overheads = [OverheadProbe(**{k: v for k, v in o.items() if k not in ("median", "best")})
                     for o in record.get("overheads") or []]
    return job


# ---------------------------------------------------------------------------------------------------
# Vectorised trace composition


def _seed(seed: int, *parts: Any) -> int:
    blob = json.dumps([seed, *parts], default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


def activity_histogram(steps: np.ndarray, batch: int) -> np.ndarray:
    """How many decoding forwards run with m rows active, when prompts with ``steps`` step counts (last
    axis, in order) are decoded ``batch`` at a time: ``H[..., m]`` for m = 0..batch (``H[..., 0] == 0``).

    `predict_seconds` walks each chunk of ``batch`` prompts step by step and prices a forward at its
    active row count; the total is ``sum_m H[m] * step_cost(m)``. With integer counts (temperature 0)
    the forwards at m active rows of a chunk number ``s_(n-m+1) - s_(n-m)`` (order statistics), so a sort
    gives H. Expected (fractional) counts run a fractional last step; because probed costs are linear
    between integer batch sizes, its share is spread over the two neighbouring integers."""
    x = np.asarray(steps, float)
    lead, n = x.shape[:-1], x.shape[-1]
    chunks = max(1, math.ceil(n / batch))
    pad = chunks * batch - n
    x = np.concatenate([x, np.zeros((*lead, pad))], axis=-1).reshape(*lead, chunks, batch)
    if np.all(x == np.round(x)):
        return _sorted_histogram(x.astype(np.int32), batch)
    k = np.arange(int(math.ceil(x.max(initial=0.0))), dtype=float)
    rows = int(np.prod(lead)) if lead else 1
    flat = x.reshape(rows, chunks, batch)
    out = np.zeros((rows, batch + 2))
    block = max(1, 2_000_000 // max(1, chunks * batch * k.size))  # bound the (rows, chunks, batch, steps) array
    for start in range(0, rows, block):
        part = flat[start:start + block]
        a = np.clip(part[..., None] - k, 0.0, 1.0).sum(axis=-2).reshape(part.shape[0], -1)  # active rows per forward
        low = np.floor(np.maximum(a, 1.0)).astype(int)
        frac = np.where(a >= 1.0, a - low, 0.0)
        w_low = np.where(a >= 1.0, 1.0 - frac, a)  # a < 1: the step costs its share a of a 1-row forward
        offset = (np.arange(part.shape[0]) * (batch + 2))[:, None]
        size = part.shape[0] * (batch + 2)
        hist = np.bincount((offset + low).ravel(), w_low.ravel(), minlength=size)
        hist += np.bincount((offset + np.minimum(low + 1, batch + 1)).ravel(), frac.ravel(), minlength=size)
        out[start:start + part.shape[0]] = hist.reshape(part.shape[0], batch + 2)
    out[:, 0] = 0.0  # forwards with no active row (a = 0) cost nothing
    return out[:, : batch + 1].reshape(*lead, batch + 1)


def _sorted_histogram(chunked: np.ndarray, batch: int) -> np.ndarray:
    """`activity_histogram` of integer step counts already cut into chunks: (..., chunks, batch)."""
    if batch == 1:
        srt = chunked
    elif batch == 2:
        srt = np.stack([np.minimum(chunked[..., 0], chunked[..., 1]), np.maximum(chunked[..., 0], chunked[..., 1])], -1)
    else:  # short rows: introsort on int32 beats the radix and float sorts here
        srt = np.sort(chunked, axis=-1)
    order_stats = srt.sum(axis=-2, dtype=np.float64)  # sum over chunks of each order statistic
    d = order_stats.copy()  # sorted position r: batch - r rows active
    d[..., 1:] -= order_stats[..., :-1]
    out = np.zeros((*d.shape[:-1], batch + 1))
    out[..., 1:] = d[..., ::-1]
    return out


def _padded(idx: np.ndarray, n: int, batch: int) -> np.ndarray:
    """Resampled prompt indices (draws, n) with the last chunk padded by index ``n`` (a zero step count)."""
    pad = max(1, math.ceil(n / batch)) * batch - n
    return np.concatenate([idx, np.full((idx.shape[0], pad), n)], axis=1) if pad else idx


class _Pricer:
    """One job's per-draw costs, cached per (forward, batch size): the pieces every shape shares."""

    def __init__(self, job: _Job, n_boot: int, seed: int, summary: str, cache: dict[Any, np.ndarray]) -> None:
        self.job = job
        self.cost = CostDraws(job.probes, job.overheads, summary, n_boot, seed, cache=cache)
        self._terms: dict[tuple[Any, ...], np.ndarray] = {}

    def _grid(self, batch: int) -> np.ndarray:
        m = np.arange(batch + 1, dtype=float)
        m[0] = 1.0  # H[..., 0] is always 0
        return m

    def _cached(self, key: tuple[Any, ...], make: Any) -> np.ndarray:
        if key not in self._terms:
            self._terms[key] = make()
        return self._terms[key]

    def plan(self, shape: str) -> Any:
        return self._cached(("plan", shape),
                            lambda: step_plan(TreeSpec.parse(shape), self.job.has_model, self.job.reprocess))

    def step_cost(self, shape: str, first_widths: tuple[tuple[int, float], ...], batch: int) -> np.ndarray:
        """(draws, batch + 1): one step's time at m active rows, m = 0..batch. It is linear in the shares
        of the draft's first-forward widths (2 tokens after a full acceptance; 1 + accepted tokens for a
        draft that re-processes them), so the rest of the step and each width's forward are cached and
        mixed."""
        plan = self.plan(shape)
        grid = self._grid(batch)

        def rest() -> np.ndarray:
            g = self._cached(("overhead", plan.draft_forwards, batch),
                             lambda: self.cost.overhead(grid, plan.draft_forwards)).copy()
            for role, kind, width, weight in step_cost_terms(plan, {}):
                g += weight * self._cached((role, kind, width, batch), lambda: self.cost.time(role, kind, width, grid))
            return g

        g = self._cached(("step", shape, batch), rest)
        if not plan.has_draft:
            return g
        for width, share in first_widths:
            g = g + share * self._cached(("draft", "decode", width, batch),
                                         lambda: self.cost.time("draft", "decode", width, grid))
        return g

    def prefill(self, n: int, batch: int, draft: bool) -> np.ndarray:
        """(draws,): the prefills of ``n`` prompts decoded ``batch`` at a time."""
        def make() -> np.ndarray:
            sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
            out = self.cost.prefill("target", sizes).sum(axis=1)
            return out + (self.cost.prefill("draft", sizes).sum(axis=1) if draft else 0.0)
        return self._cached(("prefill", n, batch, draft), make)

    def seconds(self, hist: np.ndarray, n_prompts: int, shape: str, first_widths: tuple[tuple[int, float], ...],
                batch: int) -> np.ndarray:
        """(draws,) seconds of one shape from its `activity_histogram` (draws, batch + 1)."""
        return ((hist * self.step_cost(shape, first_widths, batch)).sum(axis=-1)
                + self.prefill(n_prompts, batch, self.plan(shape).has_draft))


def _engine_seconds(entry: Mapping[str, Any], n_boot: int, seed: int,
                    key: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(plain, speculative) seconds per draw of an engine-measured cell: its tokens over its tokens/s, the
    repeats resampled (jointly: they were interleaved) when the record kept them, else constant."""
    spec, base = entry.get("speculative") or {}, entry.get("baseline") or {}
    gen_s = float(spec.get("generated_tokens") or 1.0)
    gen_b = float(base.get("generated_tokens") or gen_s)
    tps_s = entry.get("tokens_per_second") or spec.get("tokens_per_second")
    tps_b = entry.get("baseline_tokens_per_second") or base.get("tokens_per_second")
    if not tps_s or not tps_b:  # only the ratio is known: a unit plain time
        t_b, t_s = np.array([1.0]), np.array([1.0 / float(entry["speedup"])])
    else:
        t_b, t_s = np.array([gen_b / float(tps_b)]), np.array([gen_s / float(tps_s)])
    reps_s = entry.get("tokens_per_second_repeats") or []
    reps_b = entry.get("baseline_tokens_per_second_repeats") or []
    if n_boot > 0 and len(reps_s) >= 2 and len(reps_s) == len(reps_b):
        rs, rb = np.asarray(reps_s, float), np.asarray(reps_b, float)
        idx = np.random.default_rng(_seed(seed, "engine", *key)).integers(0, rs.size, (n_boot, rs.size))
        t_s = np.concatenate([t_s, gen_s / np.median(rs[idx], axis=1)])
        t_b = np.concatenate([t_b, gen_b / np.median(rb[idx], axis=1)])
    else:
        t_s, t_b = np.repeat(t_s, 1 + max(n_boot, 0)), np.repeat(t_b, 1 + max(n_boot, 0))
    return t_b, t_s


# ---------------------------------------------------------------------------------------------------
# The recommendation


@dataclass(frozen=True)
class CheckCell:
    """A cell the study driver should decode with the engine to check a prediction."""

    run_id: str
    task: str
    shape: str
    batch_size: int
    role: str
    predicted_speedup: float

    def as_tuple(self) -> tuple[str, str, str, int]:
        return (self.run_id, self.task, self.shape, self.batch_size)


@dataclass
class ServingRecommendation:
    """Per serving batch size the best measured cell, and one draft per deployment profile.

    ``speedup`` holds every candidate's pooled speedup, shape ``(1 + n_boot, candidates, batch sizes)``:
    row 0 the point estimate, then one row per paired bootstrap draw (NaN where a candidate was not
    measured). ``candidates`` describes its columns; ``task_speedups`` the point estimate per task."""

    batch_sizes: list[int]
    tasks: list[str]
    pooling: str
    level: float
    n_boot: int
    seed: int
    weights: list[float]
    candidates: pd.DataFrame
    speedup: np.ndarray
    task_speedups: pd.DataFrame
    per_batch: list[dict[str, Any]]
    deploy: dict[str, dict[str, Any]]
    records: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def cells(self) -> pd.DataFrame:
        """One row per candidate and batch size: point speedup, interval, P(best) there and rank."""
        q = 50 * (1 - self.level)
        parts = []
        for j, b in enumerate(self.batch_sizes):
            point = self.speedup[0, :, j]
            frame = self.candidates.assign(batch_size=b, speedup=point)
            if self.n_boot:
                draws = self.speedup[1:, :, j]
                with np.errstate(all="ignore"):
                    lo, hi = np.nanpercentile(np.where(np.isfinite(draws), draws, np.nan), [q, 100 - q], axis=0)
                frame = frame.assign(low=lo, high=hi, p_best=_win_shares(np.log(draws)))
            else:
                frame = frame.assign(low=point, high=point, p_best=np.nan)
            order = np.argsort(-_finite(np.log(point)), kind="stable")
            rank = np.empty(order.size, dtype=int)
            rank[order] = np.arange(1, order.size + 1)
            parts.append(frame.assign(rank=rank)[np.isfinite(point)])
        return pd.concat(parts, ignore_index=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_sizes": self.batch_sizes, "tasks": self.tasks, "pooling": self.pooling,
            "pooling_definition": _POOLING[self.pooling], "level": self.level, "n_boot": self.n_boot,
            "seed": self.seed, "batch_weights": self.weights, "per_batch": self.per_batch, "deploy": self.deploy,
            "n_candidates": int(len(self.candidates)), "notes": self.notes,
            "bootstrap": "paired: per draw, one resample of each prompt set (shared by every candidate decoded "
                         "on it) and one of each cost probe's repeats (shared by every job carrying that probe)",
            "tau_convention": "tau counts tokens per target forward including the bonus/correction token",
        }

    def to_markdown(self) -> str:
        pct = int(round(100 * self.level))
        out = ["# Serving recommendation (measured cells)", "",
               f"Tasks: {', '.join(self.tasks)}; pooled by {_POOLING[self.pooling]}. "
               f"{self.n_boot} paired bootstrap draws (prompts and probe repeats), {pct}% intervals. "
               f"{len(self.candidates) - 1} measured candidates and no speculation.", "",
               "## Best cell per serving batch size", "",
               f"| batch | best | shape | speedup | {pct}% interval | P(best) | regret (ln S) | runner-up "
               "| speculation pays |",
               "|---:|---|---|---:|---|---:|---:|---|---|"]
        for r in self.per_batch:
            best, ru = r["best"], r.get("runner_up")
            runner = f"{_label(ru)} {ru['shape'] or ''} ({ru['speedup']:.3f})" if ru else "-"
            measured = " (measured)" if best["source"] == "engine" else ""
            pays = "yes" if r["speculation_pays"] else "no: serve without speculation"
            out.append(f"| {r['batch_size']} | {_label(best)} | {best['shape'] or '-'} "
                       f"| {best['speedup']:.3f}{measured} | [{best['low']:.3f}, {best['high']:.3f}] "
                       f"| {_fmt(r['p_best'])} | {_fmt(r['regret_log'], 4)} | {runner} | {pays} |")
        out += ["", "## One draft to deploy", "",
                "Weighted mean of ln S over the serving batch sizes (weights "
                + ", ".join(f"{w:.3g}" for w in self.weights) + ").", ""]
        for name in PROFILES:
            d = self.deploy[name]
            out.append(f"### {name}: {_PROFILE_TEXT[name]}")
            out.append("")
            if not d["speculation"]:
                out += [f"No speculation: no {name}-servable draft beats plain decoding on this objective "
                        f"(P(best) {_fmt(d['p_best'])}).", ""]
                continue
            out.append(f"- draft: {_label(d['draft'])} (run `{d['draft']['run_id']}`), score {d['score']:.4f}, "
                       f"P(best) {_fmt(d['p_best'])}, regret {_fmt(d['regret_log'], 4)}")
            if name == "vllm":
                off = d["disable_by_batch_size"]
                out.append(f"- num_speculative_tokens {d['gamma']}; " + (
                    f"speculation off from batch size {off} (vLLM disable_by_batch_size="
                    f"{d['vllm_disable_by_batch_size']}: on while at most that many requests run)" if off
                    else "speculation on at every serving batch size (no disable_by_batch_size)"))
            elif d["disable_by_batch_size"]:
                out.append(f"- speculation off from batch size {d['disable_by_batch_size']}")
            out += ["", f"| batch | shape | speedup | {pct}% interval |", "|---:|---|---:|---|"]
            for p in d["per_batch"]:
                out.append(f"| {p['batch_size']} | {p['shape'] or 'off'} | {p['speedup']:.3f} | "
                           f"[{p['low']:.3f}, {p['high']:.3f}] |")
            out += [""] + [f"- {n}" for n in d.get("notes", [])] + [""]
        out += ["Speedup = plain-decoding time / speculative time for the same tokens; predicted cells compose "
                "the oracle's per-prompt step counts with the job's cost probes (docs/oracle.md), measured cells "
                "(source engine) were decoded for real. tau includes the bonus token."]
        if self.notes:
            out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


_POOLING = {"time": "total plain time / total speculative time over the tasks (speedup of the pooled workload)",
            "log": "mean over tasks of ln S (every task weighted equally)"}
_PROFILE_TEXT = {"any": "one draft, shape free per batch size, speculation off where it does not pay",
                 "vllm": "one draft, one chain gamma, speculation disabled from some batch size on",
                 "sglang": "one draft, one shape at every batch size"}


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _label(c: Mapping[str, Any] | None) -> str:
    if not c:
        return "-"
    if c["family"] == NO_SPECULATION:
        return NO_SPECULATION
    src = "" if c.get("data_source", DEFAULT_DATA_SOURCE) == DEFAULT_DATA_SOURCE else f", {c['data_source']}"
    return f"{c['family']} {c['draft_name']} @{float(c['draft_tokens']):.3g} tokens{src}"


def _interval(draws: np.ndarray, q: float) -> tuple[float, float]:
    ok = draws[np.isfinite(draws)]
    if not ok.size:
        return float("nan"), float("nan")
    lo, hi = np.percentile(ok, [q, 100 - q])
    return float(lo), float(hi)


def _win_shares(vals: np.ndarray) -> np.ndarray:
    """Share of draws (rows) each option (column) wins; ties split; NaN/-inf never win."""
    v = np.where(np.isfinite(vals), vals, -np.inf)
    mx = v.max(axis=1, keepdims=True)
    win = (v >= mx - _TIE) & np.isfinite(v)
    return (win / np.maximum(win.sum(axis=1, keepdims=True), 1)).mean(axis=0)


def _choice_stats(values: np.ndarray, chosen: int) -> dict[str, float]:
    """P(best) and regret of option ``chosen`` from (1 + n_boot, options) scores in ln S."""
    draws = values[1:]
    if not draws.shape[0]:
        return {"p_best": float("nan"), "regret_log": float("nan"), "expected_relative_loss": float("nan")}
    v = np.where(np.isfinite(draws), draws, -np.inf)
    regret = v.max(axis=1) - v[:, chosen]
    return {"p_best": float(_win_shares(draws)[chosen]), "regret_log": float(np.mean(regret)),
            "expected_relative_loss": float(np.mean(1.0 - np.exp(-regret)))}


def _finite(x: np.ndarray) -> np.ndarray:
    """NaN (not measured) as -inf: an option needing it can never win."""
    return np.where(np.isfinite(x), x, -np.inf)


def _argmax(point: np.ndarray) -> int:
    """First index of the maximum, NaN never chosen."""
    return int(np.argmax(np.where(np.isfinite(point), point, -np.inf)))


def _engine_families() -> dict[str, set[str]]:
    from .deploy import engine_families

    return engine_families()


@dataclass
class _Cand:
    run_id: str | None
    family: str
    draft_name: str
    draft_tokens: float
    data_source: str
    shape: str | None
    source: str  # oracle (predicted), engine (measured), none

    @property
    def key(self) -> str:
        return NO_SPECULATION if self.run_id is None else f"{self.run_id}|{self.shape}|{self.source}"

    def row(self) -> dict[str, Any]:
        return {"key": self.key, "run_id": self.run_id, "family": self.family, "draft_name": self.draft_name,
                "draft_tokens": self.draft_tokens, "data_source": self.data_source, "shape": self.shape,
                "source": self.source}


def recommend_cells(
    records_or_frame: Any,
    *,
    batch_sizes: Sequence[int] | None = None,
    tasks: Sequence[str] | None = None,
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    pooling: Literal["time", "log"] = "time",
    batch_weights: Sequence[float] | None = None,
    summary: Literal["median", "best"] = "median",
    engine_families: Mapping[str, Iterable[str]] | None = None,
) -> ServingRecommendation:
    """Rank every measured cell (and no speculation) at each serving batch size; pick one draft per
    deployment profile. ``records_or_frame``: see `as_records`. ``batch_sizes``: serving batch sizes,
    each must have been measured (default: every measured one); ``tasks``: default the tasks every job
    measured. ``engine_families``: profile -> families it can serve (default: those with an exporter,
    `scylla.fit.deploy.engine_families`)."""
    if not 0 < level < 1:
        raise ServingError(f"level must lie strictly between 0 and 1, got {level}")
    if n_boot < 0 or n_boot == 1:
        raise ServingError("n_boot must be 0 or >= 2 (use >= 1000 for reported intervals)")
    if pooling not in _POOLING:
        raise ServingError(f"pooling must be one of {sorted(_POOLING)}, got {pooling!r}")
    records = as_records(records_or_frame)
    if not records:
        raise ServingError("no job records found; run a sweep first (scylla-run -m sweep=grid)")
    notes: list[str] = []
    jobs = [_parse(r) for r in records]
    if not any(j.oracle or j.engine for j in jobs):
        raise ServingError("the records hold no oracle rows (nor engine-measured ones) with per-prompt traces; "
                           "measure with decode.method=oracle (the default) and re-run the jobs")
    for j in jobs:
        if j.oracle and not j.probes:
            notes.append(f"run {j.run_id}: oracle rows but no cost probes in the record; left out (re-run it)")
            j.oracle = {}
        if j.skipped:
            notes.append(f"run {j.run_id}: {j.skipped} oracle row(s) without per-prompt step counts left out")
    jobs = [j for j in jobs if j.oracle or j.engine]
    if not jobs:
        raise ServingError("the records hold oracle rows but no cost probes (record key 'probes'), so nothing "
                           "can be priced; re-run the jobs with the current code (probes are stored since the "
                           "oracle was introduced)")

    # tasks and serving batch sizes
    every = sorted(set().union(*(j.tasks() for j in jobs)))
    if tasks is None:
        tasks = sorted(set.intersection(*(j.tasks() for j in jobs)))
        if not tasks:
            raise ServingError(f"no task was measured by every job ({', '.join(every)}); choose tasks explicitly "
                               "(scylla-fit --serving-task NAME)")
        if missing := sorted(set(every) - set(tasks)):
            notes.append(f"tasks not measured by every job, left out of the pooled score: {', '.join(missing)} "
                         "(choose tasks with --serving-task)")
    else:
        tasks = list(dict.fromkeys(str(t) for t in tasks))
        if unknown := [t for t in tasks if t not in every]:
            raise ServingError(f"task(s) {unknown} were never measured; measured tasks: {every}")
    measured = sorted(set().union(*(j.batches() for j in jobs)))
    if batch_sizes is None:
        batch_sizes = measured
    else:
        bad = [b for b in batch_sizes if float(b) != int(float(b)) or int(float(b)) not in measured]
        if bad:
            raise ServingError(f"serving batch size(s) {', '.join(f'{b:g}' for b in map(float, bad))} were never "
                               f"measured (measured: {', '.join(map(str, measured))}); pick measured ones, or add "
                               "them to decode.batch_sizes and re-run the jobs")
        batch_sizes = sorted({int(float(b)) for b in batch_sizes})
    B = list(batch_sizes)
    w = np.ones(len(B)) if batch_weights is None else np.asarray(batch_weights, float)
    if w.shape != (len(B),) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ServingError(f"batch weights must be {len(B)} non-negative numbers (one per serving batch size)")
    w = w / w.sum()
    D = 1 + n_boot

    # paired prompt resamples: one per (task, continuations key)
    groups: dict[tuple[str, str], int] = {}
    for j in jobs:
        for (task, _), tr in j.oracle.items():
            groups.setdefault((task, j.cont_keys.get(task, f"n={tr.steps.size}")), tr.steps.size)
    index: dict[tuple[str, str], np.ndarray] = {}
    for key, n in groups.items():
        rng = np.random.default_rng(_seed(seed, "prompts", *key))
        index[key] = np.vstack([np.arange(n)[None, :], rng.integers(0, n, (n_boot, n))])

    cands: list[_Cand] = [_Cand(None, NO_SPECULATION, NO_SPECULATION, 0.0, "-", None, "none")]
    pooled: list[np.ndarray] = [np.ones((D, len(B)))]
    task_rows: list[dict[str, Any]] = []
    plain_hist: dict[tuple[Any, ...], np.ndarray] = {}
    padded: dict[tuple[Any, ...], np.ndarray] = {}
    probe_cache: dict[Any, np.ndarray] = {}
    dropped = 0
    for j in jobs:
        info = (j.draft.get("name") or "?", float(j.draft.get("tokens") or 0.0))
        pricer = _Pricer(j, n_boot, seed, summary, probe_cache) if j.oracle else None
        shapes = sorted({s for _, s in j.oracle})
        plain = np.full((len(tasks), D, len(B)), np.nan)
        spec = {shape: np.full((len(tasks), D, len(B)), np.nan) for shape in shapes}
        for ti, task in enumerate(tasks):
            here = [sh for sh in shapes if (task, sh) in j.oracle]
            if not here:
                continue
            first = j.oracle[(task, here[0])]
            n = first.steps.size
            gkey = (task, j.cont_keys.get(task, f"n={n}"))
            idx = index[gkey]
            if idx.shape[1] != n or any(j.oracle[(task, sh)].steps.size != n for sh in here):
                raise ServingError(f"run {j.run_id}, task {task}: the oracle rows hold different prompt counts for "
                                   "one prompt set; the record is inconsistent: re-run the job")
            traces = np.stack([j.oracle[(task, sh)].steps for sh in here])  # (shapes, prompts)
            integral = bool(np.all(traces == np.round(traces)) and np.all(first.plain == np.round(first.plain)))
            if integral:  # a zero column for the padding of the last chunk
                traces_ext = np.concatenate([traces, np.zeros((len(here), 1))], axis=1).astype(np.int32)
                plain_ext = np.append(first.plain, 0.0).astype(np.int32)
            for bi, b in enumerate(B):
                have = [k for k, sh in enumerate(here) if b in j.oracle[(task, sh)].batches]
                if not have:
                    continue
                if integral:
                    pkey = (*gkey, b)
                    if pkey not in padded:
                        padded[pkey] = _padded(idx, n, b)
                    pidx = padded[pkey]
                    chunk = (D, pidx.shape[1] // b, b)
                hkey = (*gkey, b, first.plain.tobytes())
                if hkey not in plain_hist:  # plain decoding of one prompt set: shared by every job
                    plain_hist[hkey] = (_sorted_histogram(plain_ext[pidx].reshape(chunk), b) if integral
                                        else activity_histogram(first.plain[idx], b))
                plain[ti, :, bi] = pricer.seconds(plain_hist[hkey], n, "chain:0", 0.0, b)
                hist = (_sorted_histogram(traces_ext[have][:, pidx].reshape(len(have), *chunk), b) if integral
                        else activity_histogram(traces[have][:, idx], b))
                for h, k in enumerate(have):
                    tr = j.oracle[(task, here[k])]
                    spec[here[k]][ti, :, bi] = pricer.seconds(hist[h], n, here[k], tr.first_widths, b)
                    task_rows.append({"run_id": j.run_id, "shape": here[k], "source": "oracle", "task": task,
                                      "batch_size": b,
                                      "speedup": float(plain[ti, 0, bi] / spec[here[k]][ti, 0, bi])})
        for shape in shapes:
            s = _pool(plain, spec[shape], pooling)
            if np.isnan(s[0]).all():
                dropped += 1
                continue
            cands.append(_Cand(j.run_id, j.family, info[0], info[1], j.data_source, shape, "oracle"))
            pooled.append(s)
        for shape in sorted({s for _, s in j.engine}):
            plain, spec = np.full((len(tasks), D, len(B)), np.nan), np.full((len(tasks), D, len(B)), np.nan)
            for ti, task in enumerate(tasks):
                for bi, b in enumerate(B):
                    entry = j.engine.get((task, shape), {}).get(b)
                    if entry is None:
                        continue
                    plain[ti, :, bi], spec[ti, :, bi] = _engine_seconds(entry, n_boot, seed, [j.run_id, task, shape, b])
                    task_rows.append({"run_id": j.run_id, "shape": shape, "source": "engine", "task": task,
                                      "batch_size": b, "speedup": float(plain[ti, 0, bi] / spec[ti, 0, bi])})
            s = _pool(plain, spec, pooling)
            if np.isnan(s[0]).all():
                dropped += 1
                continue
            cands.append(_Cand(j.run_id, j.family, info[0], info[1], j.data_source, shape, "engine"))
            pooled.append(s)
    if dropped:
        notes.append(f"{dropped} candidate(s) left out: not measured on every chosen task at any serving batch size")
    if len(cands) == 1:
        raise ServingError(f"no candidate was measured on all of the tasks {tasks} at any of the batch sizes {B}; "
                           "choose fewer tasks (--serving-task) or other batch sizes")
    S = np.stack(pooled, axis=1)  # (D, C, nB)
    frame = pd.DataFrame([c.row() for c in cands])
    if (frame["source"] == "engine").any():
        notes.append("cells with source 'engine' are measured speedups (decoded for real), not predictions; "
                     "their intervals come from timing repeats only (no prompt resampling), or are a single "
                     "value when the record kept no repeats")
    per_batch = _per_batch(S, cands, B, level, n_boot)
    fams = {k: set(v) for k, v in (engine_families or _engine_families()).items()}
    deploy = {name: _deploy(name, S, cands, B, w, level, n_boot, fams.get(name)) for name in PROFILES}
    records_info = {j.run_id: j.record for j in jobs}
    return ServingRecommendation(
        batch_sizes=B, tasks=list(tasks), pooling=pooling, level=level, n_boot=n_boot, seed=seed,
        weights=[float(x) for x in w], candidates=frame, speedup=S, task_speedups=pd.DataFrame(task_rows),
        per_batch=per_batch, deploy=deploy, records=records_info, notes=notes)


def _pool(plain: np.ndarray, spec: np.ndarray, pooling: str) -> np.ndarray:
    """(tasks, D, nB) seconds -> (D, nB) pooled speedup; NaN where a task is missing."""
    if pooling == "time":
        return plain.sum(axis=0) / spec.sum(axis=0)  # NaN propagates: every task needed
    return np.exp(np.log(plain / spec).mean(axis=0))


def _summary(c: _Cand, S: np.ndarray, ci: int, j: int, q: float, n_boot: int) -> dict[str, Any]:
    point = float(S[0, ci, j])
    lo, hi = _interval(S[1:, ci, j], q) if n_boot else (point, point)
    return {**c.row(), "speedup": point, "low": lo, "high": hi, "measured": c.source == "engine"}


def _per_batch(S: np.ndarray, cands: list[_Cand], B: list[int], level: float, n_boot: int) -> list[dict[str, Any]]:
    q = 50 * (1 - level)
    L = np.log(S)
    out = []
    for j, b in enumerate(B):
        vals = L[:, :, j]
        order = np.argsort(-np.where(np.isfinite(vals[0]), vals[0], -np.inf), kind="stable")
        best = int(order[0])
        ru = int(order[1]) if order.size > 1 and np.isfinite(vals[0, order[1]]) else None
        stats = _choice_stats(vals, best)
        shares = _win_shares(vals[1:]) if n_boot else np.full(len(cands), np.nan)
        row = {"batch_size": b, "best": {**_summary(cands[best], S, best, j, q, n_boot), "p_best": stats["p_best"]},
               "runner_up": None if ru is None else {**_summary(cands[ru], S, ru, j, q, n_boot),
                                                       "p_best": float(shares[ru])},
               "speculation_pays": cands[best].run_id is not None, "p_no_speculation_best": float(shares[0]),
               **stats}
        out.append(row)
    return out


def _deploy(profile: str, S: np.ndarray, cands: list[_Cand], B: list[int], w: np.ndarray, level: float,
            n_boot: int, families: set[str] | None) -> dict[str, Any]:
    """One draft for every serving batch size under ``profile``'s engine rules (module doc)."""
    q = 50 * (1 - level)
    L = np.log(S)  # (D, C, nB)
    D = L.shape[0]
    notes: list[str] = []
    ok = [i for i, c in enumerate(cands) if c.run_id is not None and (families is None or c.family in families)]
    if profile == "vllm":
        ok = [i for i in ok if _kind(cands[i].shape) == "chain"]
    if families is not None:
        left = sorted({c.family for c in cands[1:]} - families)
        if left:
            notes.append(f"families without a {profile} exporter left out: {', '.join(left)}")
    # options -> value per draw (D,), and how to read each option's policy
    labels: list[Any] = [None]  # option 0: no speculation
    values = [np.zeros(D)]
    if profile == "any":
        runs: dict[str, list[int]] = {}
        for i in ok:
            runs.setdefault(cands[i].run_id, []).append(i)
        for run, idx in runs.items():
            best = _finite(L[:, idx, :]).max(axis=1)  # (D, nB): its best shape per batch size
            on = np.maximum(best, 0.0) @ w  # off where it does not pay
            # a draft that pays nowhere is not "no speculation" (that option exists): it is on where it hurts least
            values.append(np.where((best > 0).any(axis=1), on, (best * w).max(axis=1)))
            labels.append(("run", run, idx))
    elif profile == "vllm":
        for i in ok:
            ln = np.where(np.isfinite(L[:, i, :]), L[:, i, :] * w, -np.inf)  # cannot stay on past an unmeasured size
            labels.append(("cell", i))
            values.append(np.cumsum(ln, axis=1).max(axis=1))  # on for the first k sizes, k >= 1 (k = 0: option 0)
    else:
        for i in ok:
            labels.append(("cell", i))
            values.append(np.where(np.isfinite(L[:, i, :]), L[:, i, :] * w, -np.inf).sum(axis=1))
    V = np.stack(values, axis=1)  # (D, options)
    chosen = _argmax(V[0])
    stats = _choice_stats(V, chosen)
    out: dict[str, Any] = {"profile": profile, "speculation": chosen != 0, "score": float(V[0, chosen]), **stats,
                           "n_options": int(V.shape[1]), "notes": notes, "draft": None, "per_batch": [],
                           "disable_by_batch_size": None}
    if chosen == 0:
        out["per_batch"] = [{"batch_size": b, "shape": None, "speedup": 1.0, "low": 1.0, "high": 1.0, "on": False}
                            for b in B]
        return out
    label = labels[chosen]
    per_b: list[dict[str, Any]] = []
    if label[0] == "run":
        idx = label[2]
        c0 = cands[idx[0]]
        for j, b in enumerate(B):
            pick = idx[_argmax(L[0, idx, j])]
            on = bool(np.isfinite(L[0, pick, j]) and L[0, pick, j] > 0)
            per_b.append(_policy_point(cands, S, pick if on else None, j, b, q, n_boot))
        out["shapes"] = {p["batch_size"]: p["shape"] for p in per_b}
    else:
        i = label[1]
        c0 = cands[i]
        ln = np.where(np.isfinite(L[0, i, :]), L[0, i, :] * w, -np.inf)
        k = 1 + int(np.argmax(np.cumsum(ln))) if profile == "vllm" else len(B)
        for j, b in enumerate(B):
            per_b.append(_policy_point(cands, S, i if j < k else None, j, b, q, n_boot))
        out["shape"] = c0.shape
        out["gamma"] = TreeSpec.parse(c0.shape).depth if _kind(c0.shape) == "chain" else None
        if profile == "sglang":
            slow = [p["batch_size"] for p in per_b if p["speedup"] < 1]
            if slow:
                notes.append(f"SGLang has no batch-size switch: speculation also runs at batch size(s) "
                             f"{', '.join(map(str, slow))}, where it is predicted to slow decoding down")
        if profile == "vllm":
            out["per_batch_gamma"] = _per_batch_gamma(cands, L, c0.run_id, B)
    out["per_batch"] = per_b
    out["draft"] = {k: v for k, v in c0.row().items() if k not in ("key", "shape", "source")}
    out["draft"]["source"] = c0.source
    out["disable_by_batch_size"] = None if profile == "sglang" else _disable_from(per_b)  # SGLang: no switch
    if profile == "vllm" and out["disable_by_batch_size"] is not None:
        on = [p["batch_size"] for p in per_b if p["on"]]
        off = out["disable_by_batch_size"]
        value = max(max(on), 2)  # vLLM: speculation stops when more than this many requests run; >= 2
        out["vllm_disable_by_batch_size"] = value
        if value >= off:
            notes.append(f"vLLM's disable_by_batch_size must be >= 2, so speculation also runs at batch size {off}, "
                         "where it was predicted not to pay")
        elif value > max(on):
            notes.append(f"vLLM's disable_by_batch_size must be >= 2: speculation pays at batch size {max(on)} and "
                         f"stays on up to {value} requests, a size that was not measured")
        elif value + 1 < off:
            notes.append(f"disable_by_batch_size={value}: speculation stays on up to {value} requests (the largest "
                         f"serving batch size where it pays); between {value + 1} and {off - 1} nothing was measured")
    elif profile == "vllm":
        out["vllm_disable_by_batch_size"] = None
    return out


def _kind(shape: str | None) -> str:
    try:
        return TreeSpec.parse(shape).kind if shape else ""
    except TreeError:
        return ""


def _policy_point(cands: list[_Cand], S: np.ndarray, ci: int | None, j: int, b: int, q: float,
                  n_boot: int) -> dict[str, Any]:
    if ci is None:
        return {"batch_size": b, "shape": None, "speedup": 1.0, "low": 1.0, "high": 1.0, "on": False}
    s = _summary(cands[ci], S, ci, j, q, n_boot)
    return {"batch_size": b, "shape": s["shape"], "speedup": s["speedup"], "low": s["low"], "high": s["high"],
            "on": True, "measured": s["measured"]}


def _disable_from(per_b: list[dict[str, Any]]) -> int | None:
    """The smallest serving batch size from which speculation is off at every larger one too."""
    cut = None
    for p in reversed(per_b):
        if p["on"] and p["speedup"] > 1.0:
            break
        cut = p["batch_size"]
    return cut


def _per_batch_gamma(cands: list[_Cand], L: np.ndarray, run: str | None, B: list[int]) -> dict[int, int]:
    """The best chain gamma of one draft at each serving batch size (0 where none pays), for engines that
    take a batch-size schedule (vLLM's num_speculative_tokens_per_batch_size)."""
    idx = [i for i, c in enumerate(cands) if c.run_id == run and _kind(c.shape) == "chain"]
    out = {}
    for j, b in enumerate(B):
        i = idx[_argmax(L[0, idx, j])]
        out[b] = TreeSpec.parse(cands[i].shape).depth if np.isfinite(L[0, i, j]) and L[0, i, j] > 0 else 0
    return out


# ---------------------------------------------------------------------------------------------------
# Checking the recommendation with the engine


def validation_cells(rec: ServingRecommendation, n_others: int = 3) -> list[CheckCell]:
    """The cells to decode for real: at every serving batch size the best predicted cell (the
    recommendation, or the best speculative cell where no speculation or a measured cell wins), plus at
    least ``n_others`` others spanning the ranking: the runner-up at the smallest batch size, a
    mid-ranked cell at the middle one, the worst at the largest, then more from the ranking if these
    coincide. One `CheckCell` per task, with the point prediction for that task."""
    cells = rec.cells()
    pred = cells[cells["source"] == "oracle"]
    if pred.empty:
        raise ServingError("no predicted (oracle) cell to check: every candidate was measured by the engine")
    chosen: list[tuple[str, str, int, str]] = []

    def add(row: pd.Series, role: str) -> bool:
        key = (row["run_id"], row["shape"], int(row["batch_size"]))
        if any(k[:3] == key for k in chosen):
            return False
        chosen.append((*key, role))
        return True

    for r in rec.per_batch:
        at = pred[pred["batch_size"] == r["batch_size"]].sort_values("speedup", ascending=False)
        if at.empty:
            continue
        best = r["best"]
        if best["source"] == "oracle" and best["key"] == at.iloc[0]["key"]:
            role = "recommended"
        else:
            role = f"best predicted (recommended: {NO_SPECULATION if best['run_id'] is None else 'measured cell'})"
        add(at.iloc[0], role)
    B = rec.batch_sizes
    plan = [(B[0], "runner-up", lambda at: at.iloc[1:2]),
            (B[len(B) // 2], "mid-ranked", lambda at: at.iloc[[len(at) // 2]]),
            (B[-1], "worst", lambda at: at.iloc[[-1]])]
    others = 0
    for b, role, pick in plan:
        at = pred[pred["batch_size"] == b].sort_values("speedup", ascending=False)
        if len(at) and len(pick(at)) and add(pick(at).iloc[0], role):
            others += 1
    ranked = pred.sort_values("speedup", ascending=False)
    for _, row in ranked.iloc[::max(1, len(ranked) // (n_others + 1))].iterrows():
        if others >= n_others:
            break
        others += add(row, "ranking")
    for _, row in ranked.iterrows():  # few cells: take whatever is left
        if others >= n_others:
            break
        others += add(row, "ranking")
    ts = rec.task_speedups.set_index(["run_id", "shape", "source", "task", "batch_size"])["speedup"]
    out = []
    for run, shape, b, role in chosen:
        for task in rec.tasks:
            out.append(CheckCell(run, task, shape, b, role, float(ts.loc[(run, shape, "oracle", task, b)])))
    return out


def compare_checks(cells: Sequence[CheckCell], measured: Mapping[tuple[str, str, str, int], float] | pd.DataFrame,
                   tolerance: float = 0.10) -> tuple[pd.DataFrame, bool]:
    """Measured against predicted speedup at every checked cell: the table (``ratio`` = measured /
    predicted, ``ok`` = |ratio - 1| <= tolerance) and whether every cell passed. ``measured`` maps
    (run_id, task, shape, batch_size) to the engine's speedup, or is a frame with those columns and
    ``speedup``."""
    if isinstance(measured, pd.DataFrame):
        shape_col = "shape" if "shape" in measured.columns else "tree"
        need = {"run_id", "task", shape_col, "batch_size", "speedup"}
        if missing := need - set(measured.columns):
            raise ServingError(f"the measured table lacks column(s) {sorted(missing)}")
        measured = {(str(r["run_id"]), str(r["task"]), _shape_name(r[shape_col]), int(r["batch_size"])):
                    float(r["speedup"]) for _, r in measured.iterrows()}
    lookup = {(k[0], k[1], _shape_name(k[2]), int(k[3])): float(v) for k, v in measured.items()}
    missing = [c.as_tuple() for c in cells if c.as_tuple() not in lookup]
    if missing:
        raise ServingError(f"{len(missing)} checked cell(s) have no measured speedup, e.g. {missing[0]}; decode "
                           "every cell validation_cells lists")
    rows = []
    for c in cells:
        m = lookup[c.as_tuple()]
        ratio = m / c.predicted_speedup
        rows.append({**dataclasses.asdict(c), "measured_speedup": m, "ratio": ratio,
                     "ok": bool(abs(ratio - 1.0) <= tolerance)})
    table = pd.DataFrame(rows)
    return table, bool(table["ok"].all()) if len(table) else False
