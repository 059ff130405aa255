"""Cost probes: the time of one cached forward per (model, batch size, query width), measured, not fitted.

Speedup is acceptance composed with cost (docs/oracle.md). The cost side needs, at each batch size,
the target's forward on 1 token (plain decoding) and on 1 + tree-size tokens (verification), the
draft's forwards on its block widths, each model's prefill, and the engine's own time per step outside
the forwards. `probe_forwards` times each forward against a cache holding ``context`` tokens (the
context length is stated in every record), over several interleaved repeats, and keeps every raw time
with the median and the best, the thread count, the precision and the CPU capability, so a record
says what machine state produced it. Each repeat also measures the CPU time other processes (and the
hypervisor's steal) took meanwhile (`CpuContention`): a round that shared the cores is timed again,
because a probe taken beside another job priced a whole study's batch-1 steps 25-34% wrong.
`probe_overhead` runs the engine itself for a few steps per batch size and keeps its wall time outside
the model forwards.

Probe every row count a prediction needs: a forward's cost on a CPU is not linear in its rows (the
matrix products' row count selects faster or slower kernels), so `CostTable`'s interpolation between
probed batch sizes is only a fallback (docs/oracle.md, "Cost probes").
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from scylla.decode.cache import CachedLM

# Bump when the way probes are taken changes, so cached probes of an older method are not reused.
# 3: rounds that shared the CPU with other processes are re-timed, and the contention is recorded.
# 4: each round visits its cells in a rotated order, after an untimed forward per batch size.
PROBE_VERSION = 4

__all__ = ["PROBE_VERSION", "MAX_FOREIGN_CORES", "foreign_core_limit", "CpuContention", "UncontendedRuns",
           "uncontended_repeats", "timed_while_contended", "ForwardProbe", "OverheadProbe", "CostTable",
           "CostDraws", "probe_forwards", "probe_prefill", "probe_overhead", "machine_info", "interp_weights",
           "resampled_summaries"]

# Cores' worth of CPU time other processes (and the hypervisor's steal) may take during a probe round,
# beyond the cores the probe leaves idle, before the round is re-timed. Not a speed figure of any machine:
# a quiet machine shows ~0.01 whatever its CPU. It is small because a forward's threads meet at a barrier
# after every operation, so a little foreign work on a core they use delays all of them: a probe with
# 0.12-0.20 foreign cores on 2 cores timed SmolLM2's forwards 40-70% slower than a quiet one (0.01).
MAX_FOREIGN_CORES = 0.05


def foreign_core_limit(threads: int | None = None) -> float:
    """`MAX_FOREIGN_CORES` plus the cores this process's threads leave idle (foreign work can run there)."""
    threads = torch.get_num_threads() if threads is None else threads
    return MAX_FOREIGN_CORES + max(0, (os.cpu_count() or 1) - threads)


log = logging.getLogger(__name__)


class CpuContention:
    """Cores' worth of CPU time taken by *other* processes (and stolen by the hypervisor) while the
    ``with`` block ran: all CPUs' busy time from ``/proc/stat`` minus this process's own CPU time, over
    the wall time. ``foreign_cores`` is None where ``/proc/stat`` is not there (non-Linux) or the block
    was too short for the kernel's tick to resolve (under 0.1 s)."""

    MIN_WALL = 0.1

    def __init__(self) -> None:
        self.foreign_cores: float | None = None

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat") as fh:
                fields = [int(x) for x in fh.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal: busy is everything but idle and iowait
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def __enter__(self) -> "CpuContention":
        self._start = (time.perf_counter(), self._busy_seconds(), self._own_seconds())
        return self

    def __exit__(self, *exc: Any) -> None:
        wall0, busy0, own0 = self._start
        wall, busy = time.perf_counter() - wall0, self._busy_seconds()
        if busy is None or busy0 is None or wall < self.MIN_WALL:
            return
        self.foreign_cores = max(0.0, (busy - busy0) - (self._own_seconds() - own0)) / wall


def _contended(foreign: float | None, limit: float) -> bool:
    return foreign is not None and foreign > limit


def timed_while_contended(machine: dict[str, Any]) -> bool:
    """Whether a probe's recorded ``machine`` (`UncontendedRuns.summary`) kept rounds that shared the CPU,
    by today's `foreign_core_limit`: a cached probe like that is taken again rather than reused."""
    return bool(machine.get("contended_rounds_kept")) or _contended(machine.get("foreign_cores_max"),
                                                                   foreign_core_limit())


def machine_info() -> dict[str, Any]:
    """What a timing depends on besides the model: threads, CPU capability, device, torch version."""
    info = {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


@dataclass
class ForwardProbe:
    """Raw times of one forward kind: ``kind`` is ``decode`` (``width`` new tokens on a cache of
    ``context``), ``tree`` (the same with a 4D tree mask) or ``prefill`` (``context`` prompt tokens)."""

    role: str
    kind: str
    batch_size: int
    width: int
    context: int
    times: list[float]
    dtype: str = ""
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(statistics.median(self.times))

    @property
    def best(self) -> float:
        return float(min(self.times))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "median": self.median, "best": self.best}


@dataclass
class OverheadProbe:
    """The engine's wall time per step outside the model forwards, at one batch size and shape."""

    batch_size: int
    shape: str
    per_step: list[float]
    draft_forwards_per_step: float
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(statistics.median(self.per_step))

    @property
    def best(self) -> float:
        return float(min(self.per_step))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "median": self.median, "best": self.best}


def _tokens(vocab: int, batch: int, width: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, width), generator=generator).to(device)


@torch.inference_mode()
def probe_forwards(model: torch.nn.Module, *, role: str, batch_sizes: Iterable[int], widths: Iterable[int],
                   context: int, repeats: int = 5, tree_widths: Iterable[int] = (), seed: int = 0,
                   max_foreign_cores: float | None = None, max_retimed: int | None = None) -> list[ForwardProbe]:
    """Time one cached forward of ``model`` per (batch size, width), every cell once per repeat.

    One cache per batch size is prefilled with ``context`` random tokens and kept for the whole probe; after
    each timed forward its slots are cropped away, so every forward sees the same context. Each repeat
    times every (batch size, kind, width) cell once, round-robin: this machine's speed drifts by 10-30%
    over seconds to minutes, and probing one batch size after another would fold that drift into the
    cost curve (a repeat-major order spreads it over every cell alike, so ratios between cells hold).
    Within a round, each batch size's cells follow one untimed forward on its cache, and round r starts
    at the r-th cell, so whatever slows a position in the round (the first forward after a change of
    batch size, say) is not charged to the same cell every round: with a fixed order a demo once probed
    SmolLM2's batch-1 plain step at 50 ms in two of three rounds against 35-39 ms for 1-3 draft tokens,
    and priced every batch-1 chain above its own tau.
    ``tree_widths`` are also timed with a 4D tree mask (siblings hidden from each other), the mask tree
    verification passes.

    A round during which other processes took more than ``max_foreign_cores`` of CPU (`CpuContention`;
    default `foreign_core_limit`) is discarded and timed again, at most ``max_retimed`` times (default:
    ``repeats``); each probe's
    ``machine`` records the contention of the rounds it kept and how many were re-timed, and a warning
    says when contended rounds had to be kept."""
    device = next(model.parameters()).device
    vocab = int(model.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(seed)
    widths, tree_widths = sorted(set(int(w) for w in widths)), sorted(set(int(w) for w in tree_widths))
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    info = machine_info()
    batches = sorted(set(int(x) for x in batch_sizes))
    kinds = [("decode", w) for w in widths] + [("tree", w) for w in tree_widths]
    caches = {}
    for b in batches:
        lm = CachedLM(model, b, device)
        lm.append(_tokens(vocab, b, context, g, device), torch.ones(b, context, dtype=torch.bool, device=device),
                  last_only=True)
        caches[b] = lm
    times: dict[tuple[int, str, int], list[float]] = {(b, k, w): [] for b in batches for k, w in kinds}

    rounds = iter(range(1 << 30))

    def one_round() -> dict[tuple[int, str, int], float]:
        round_times: dict[tuple[int, str, int], float] = {}
        _probe_round(caches, kinds, vocab, g, device, round_times, rotate=next(rounds))
        return round_times

    one_round()  # warm-up
    runs = uncontended_repeats(one_round, repeats, limit=max_foreign_cores, max_retimed=max_retimed)
    for round_times in runs.values:
        for cell, t in round_times.items():
            times[cell].append(t)
    info = {**info, **runs.summary(f"{role} forwards")}
    return [ForwardProbe(role, kind, b, w, context, ts, dtype, info) for (b, kind, w), ts in times.items()]


def _probe_round(caches: dict[int, CachedLM], kinds: Sequence[tuple[str, int]], vocab: int,
                 g: torch.Generator, device: torch.device, out: dict[tuple[int, str, int], float],
                 rotate: int = 0) -> None:
    """One forward per (batch size, kind, width), each on its batch size's cache, cropped back after;
    per batch size an untimed forward first, then the cells from the ``rotate``-th on (cyclically)."""
    for b, lm in caches.items():
        lm.append(_tokens(vocab, b, 1, g, device), torch.ones(b, 1, dtype=torch.bool, device=device))
        lm.keep_block(1, torch.zeros(b, 1, dtype=torch.bool, device=device))
        start = rotate % len(kinds) if kinds else 0
        for kind, w in list(kinds[start:]) + list(kinds[:start]):
            tok = _tokens(vocab, b, w, g, device)
            valid = torch.ones(b, w, dtype=torch.bool, device=device)
            visible = None
            if kind == "tree":  # root + w - 1 children of it: each child sees the root and itself
                vis = torch.eye(w, dtype=torch.bool, device=device)
                vis[:, 0] = True
                visible = torch.cat([torch.ones(w, lm.length, dtype=torch.bool, device=device), vis], 1)
                visible = visible.expand(b, -1, -1)
            before = lm.forward_seconds
            lm.append(tok, valid, visible=visible,
                      positions=None if kind == "decode" else lm.next_pos[:, None] + (torch.arange(w) > 0).long())
            out[(b, kind, w)] = lm.forward_seconds - before
            lm.keep_block(w, torch.zeros(b, w, dtype=torch.bool, device=device))


@torch.inference_mode()
def probe_prefill(model: torch.nn.Module, *, role: str, batch_sizes: Iterable[int], context: int,
                  repeats: int = 3, seed: int = 0) -> list[ForwardProbe]:
    """Time the prefill of ``context`` tokens per batch size (a fresh cache each repeat)."""
    device = next(model.parameters()).device
    vocab = int(model.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(seed)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    info = machine_info()
    out = []
    for b in sorted(set(int(x) for x in batch_sizes)):
        def one() -> float:
            lm = CachedLM(model, b, device)
            lm.append(_tokens(vocab, b, context, g, device), torch.ones(b, context, dtype=torch.bool, device=device),
                      last_only=True)
            return lm.forward_seconds

        one()  # warm-up
        runs = uncontended_repeats(one, repeats)
        contention = runs.summary(f"{role} prefill at batch {b}")
        out.append(ForwardProbe(role, "prefill", b, context, context, runs.values, dtype, {**info, **contention}))
    return out


@dataclass
class UncontendedRuns:
    """What `uncontended_repeats` kept: one value per repeat, the foreign cores during each (None where
    unmeasured), how many runs were discarded, and the limit they were held to."""

    values: list[Any]
    foreign_cores: list[float | None]
    retimed: int
    limit: float

    def summary(self, what: str) -> dict[str, Any]:
        """What a probe records about the CPU it shared; warns when contended runs had to be kept."""
        known = [f for f in self.foreign_cores if f is not None]
        kept_contended = sum(_contended(f, self.limit) for f in known)
        if kept_contended:
            warnings.warn(f"{what}: {kept_contended} of {len(self.foreign_cores)} timed rounds ran while other "
                          f"processes took up to {max(known):.2f} cores; their times are inflated. Probe on an "
                          f"idle machine (stop other jobs), then delete the cached probe under <cache>/probes to "
                          f"re-take it.", stacklevel=3)
        return {"foreign_cores_max": round(max(known), 3) if known else None,
                "foreign_cores_median": round(float(statistics.median(known)), 3) if known else None,
                "rounds_retimed": self.retimed, "contended_rounds_kept": kept_contended}


def uncontended_repeats(fn: Callable[[], Any], repeats: int, *, limit: float | None = None,
                        max_retimed: int | None = None) -> UncontendedRuns:
    """``repeats`` results of ``fn()``, timed work each. A run during which other processes took more than
    ``limit`` cores (`CpuContention`; default `foreign_core_limit`) is discarded and run again, at most
    ``max_retimed`` times in all (default ``repeats``), because foreign work slows timed work unequally;
    past that budget contended runs are kept and `UncontendedRuns.summary` says so."""
    limit = foreign_core_limit() if limit is None else float(limit)
    budget = repeats if max_retimed is None else max(0, int(max_retimed))
    kept: list[Any] = []
    foreign: list[float | None] = []
    retimed = 0
    while len(kept) < repeats:
        with CpuContention() as load:
            value = fn()
        if _contended(load.foreign_cores, limit) and retimed < budget:
            retimed += 1
            log.info("a timed run shared the CPU with other processes (%.2f cores); running it again",
                     load.foreign_cores)
            continue
        kept.append(value)
        foreign.append(load.foreign_cores)
    return UncontendedRuns(kept, foreign, retimed, limit)


def probe_overhead(target: torch.nn.Module, draft: Any, prompts: Sequence[Sequence[int]], *,
                   batch_sizes: Iterable[int], shape: str, new_tokens: int = 8, repeats: int = 3,
                   temperature: float = 0.0) -> list[OverheadProbe]:
    """The engine's time per step outside the forwards, from short real runs (``new_tokens`` per row)
    at each batch size, for one draft shape (``"chain:0"``, i.e. no draft, gives plain decoding's)."""
    from scylla.decode.engine import speculative_generate

    out = []
    for b in sorted(set(int(x) for x in batch_sizes)):
        rows = [list(prompts[i % len(prompts)]) for i in range(b)]
        seeds = iter(range(1 << 30))

        def one() -> Any:
            return speculative_generate(target, draft if shape != "chain:0" else None, rows, tree=shape,
                                        max_new_tokens=new_tokens, temperature=temperature, batch_size=b,
                                        seed=next(seeds)).stats

        one()  # warm-up
        kept = uncontended_repeats(one, repeats)
        runs = kept.values
        per_step = [s.overhead_seconds / max(s.verify_forwards, 1) for s in runs]
        fw = [s.draft_forwards / max(s.verify_forwards, 1) for s in runs]
        contention = kept.summary(f"engine overhead at batch {b}")
        out.append(OverheadProbe(b, shape, per_step, float(np.mean(fw)), contention))
    return out


def _curve_key(p: ForwardProbe) -> tuple[str, str, int]:
    """The curve a probe belongs to: (role, kind, width); a prefill's width is its prompt length, which
    may differ per batch size (a chunk is padded to its longest prompt), so prefills form one curve."""
    return (p.role, p.kind, 0 if p.kind == "prefill" else int(p.width))


class CostTable:
    """Probed times by (role, kind, width), linear in batch size between the probed batch sizes.

    Widths are never interpolated: a prediction needs every width it uses probed (a missing one is an
    error naming it). ``summary`` picks the median of each probe's repeats or the best."""

    def __init__(self, forwards: Sequence[ForwardProbe], overheads: Sequence[OverheadProbe] = (),
                 summary: str = "median") -> None:
        if summary not in ("median", "best"):
            raise ValueError(f"summary must be 'median' or 'best', got {summary!r}")
        self.summary = summary
        self._curves: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}
        groups: dict[tuple[str, str, int], list[ForwardProbe]] = {}
        for p in forwards:
            groups.setdefault(_curve_key(p), []).append(p)
        for key, ps in groups.items():
            ps = sorted(ps, key=lambda p: p.batch_size)
            self._curves[key] = (np.array([p.batch_size for p in ps], float),
                                 np.array([getattr(p, summary) for p in ps], float))
        self._overhead: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        ogroups: dict[str, list[OverheadProbe]] = {}
        for o in overheads:
            ogroups.setdefault(o.shape, []).append(o)
        for shape, os_ in ogroups.items():
            os_ = sorted(os_, key=lambda o: o.batch_size)
            self._overhead[shape] = (np.array([o.batch_size for o in os_], float),
                                     np.array([getattr(o, summary) for o in os_], float),
                                     np.array([o.draft_forwards_per_step for o in os_], float))

    def has(self, role: str, kind: str, width: int) -> bool:
        return (role, kind, int(width)) in self._curves

    def time(self, role: str, kind: str, width: int, batch: float) -> float:
        key = (role, kind, int(width))
        if key not in self._curves:
            raise KeyError(f"no {role} {kind} forward of width {width} was probed; probe it first")
        xs, ys = self._curves[key]
        return float(np.interp(batch, xs, ys))  # flat beyond the probed range

    def prefill(self, role: str, batch: float) -> float:
        """Prefill time of ``role`` at this batch size (0 when it was not probed)."""
        keys = [k for k in self._curves if k[0] == role and k[1] == "prefill"]
        return self.time(*keys[0], batch) if keys else 0.0

    def batch_range(self, role: str) -> tuple[float, float]:
        xs = [v[0] for k, v in self._curves.items() if k[0] == role]
        return (min(x.min() for x in xs), max(x.max() for x in xs)) if xs else (float("nan"), float("nan"))

    def overhead(self, batch: float, draft_forwards_per_step: float) -> float:
        """Engine time per step outside the forwards: plain decoding's (``chain:0``) plus, for drafting,
        the measured extra per draft forward, at this batch size (0 when nothing was probed)."""
        plain = self._overhead.get("chain:0")
        base = float(np.interp(batch, plain[0], plain[1])) if plain is not None else 0.0
        if draft_forwards_per_step <= 0:
            return base
        extras = []
        for shape, (xs, ys, fws) in self._overhead.items():
            if shape == "chain:0" or plain is None:
                continue
            per_fw = (ys - np.interp(xs, plain[0], plain[1])) / np.maximum(fws, 1e-9)
            extras.append(float(np.interp(batch, xs, np.maximum(per_fw, 0.0))))
        return base + (float(np.mean(extras)) * draft_forwards_per_step if extras else 0.0)



# ---------------------------------------------------------------------------------------------------
# The same costs with a leading draw axis, for bootstraps that price many shapes at once


def interp_weights(x: Sequence[float] | np.ndarray, xs: Sequence[float] | np.ndarray) -> np.ndarray:
    """``W`` with ``W @ ys == np.interp(x, xs, ys)`` for every ``ys``: the hat-function weights of linear
    interpolation on the grid ``xs`` (flat beyond it, as `CostTable` is). Shape ``(len(x), len(xs))``."""
    x = np.atleast_1d(np.asarray(x, float))
    xs = np.asarray(xs, float)
    eye = np.eye(xs.size)
    return np.stack([np.interp(x, xs, eye[j]) for j in range(xs.size)], axis=1)


def _interp_rows(xs: np.ndarray, ys: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.interp(q[d], xs, ys[d])`` for every row d at once (``ys`` [n, P], ``q`` [n, m]); flat beyond
    the ends, as `CostTable` is."""
    q = np.asarray(q, float)
    if xs.size == 1:
        return np.broadcast_to(ys[:, :1], q.shape).astype(float)
    qc = np.clip(q, xs[0], xs[-1])
    i = np.clip(np.searchsorted(xs, qc, side="right") - 1, 0, xs.size - 2)
    w = (qc - xs[i]) / (xs[i + 1] - xs[i])
    return np.take_along_axis(ys, i, axis=1) * (1 - w) + np.take_along_axis(ys, i + 1, axis=1) * w


def _content_seed(seed: int, parts: Sequence[Any]) -> int:
    import hashlib
    import json

    blob = json.dumps([seed, *parts], default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


def resampled_summaries(values: Sequence[float], n_boot: int, *, summary: str = "median", seed: int = 0,
                        key: Sequence[Any] = ()) -> np.ndarray:
    """``1 + n_boot`` summaries of one probe's repeats: row 0 the summary of the repeats themselves,
    then the summary of ``n_boot`` resamples with replacement. The resamples are seeded by ``seed`` and
    the probe's own content (``key`` and the values), so every job that carries the same (cached) probe
    draws the same resamples: candidates priced with one probe stay paired across jobs."""
    v = np.asarray(values, float)
    agg = np.median if summary == "median" else np.min
    point = np.array([float(agg(v))])
    if n_boot <= 0 or v.size == 0:
        return point
    rng = np.random.default_rng(_content_seed(seed, [*key, v.tolist()]))
    draws = agg(v[rng.integers(0, v.size, (n_boot, v.size))], axis=1)
    return np.concatenate([point, draws])


class CostDraws:
    """`CostTable` with a leading draw axis: row 0 holds each probe's summary (the point estimate,
    equal to `CostTable`'s), rows 1..n_boot the summaries of resampled repeats (`resampled_summaries`).
    Every method takes an array of batch sizes and returns ``(1 + n_boot, len(batches))``, so one
    call prices a shape at every batch size and every bootstrap draw."""

    def __init__(self, forwards: Sequence[ForwardProbe], overheads: Sequence[OverheadProbe] = (),
                 summary: str = "median", n_boot: int = 0, seed: int = 0,
                 cache: dict[Any, np.ndarray] | None = None) -> None:
        """``cache`` (any dict, shared between tables) keeps each probe's resamples, so the jobs of a sweep
        that carry the same cached probe resample it once."""
        if summary not in ("median", "best"):
            raise ValueError(f"summary must be 'median' or 'best', got {summary!r}")
        self.n_draws = 1 + max(int(n_boot), 0)
        cache = {} if cache is None else cache

        def draws(values: Sequence[float], key: list[Any]) -> np.ndarray:
            full = (summary, int(n_boot), seed, *key, tuple(values))
            if full not in cache:
                cache[full] = resampled_summaries(values, n_boot, summary=summary, seed=seed, key=key)
            return cache[full]

        self._curves: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}
        groups: dict[tuple[str, str, int], list[ForwardProbe]] = {}
        for p in forwards:
            groups.setdefault(_curve_key(p), []).append(p)
        for key, ps in groups.items():
            ps = sorted(ps, key=lambda p: p.batch_size)
            ys = np.stack([draws(p.times, [p.role, p.kind, p.batch_size, p.width, p.context]) for p in ps], axis=1)
            self._curves[key] = (np.array([p.batch_size for p in ps], float), ys)
        self._overhead: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        ogroups: dict[str, list[OverheadProbe]] = {}
        for o in overheads:
            ogroups.setdefault(o.shape, []).append(o)
        for shape, os_ in ogroups.items():
            os_ = sorted(os_, key=lambda o: o.batch_size)
            ys = np.stack([draws(o.per_step, ["overhead", o.shape, o.batch_size, o.draft_forwards_per_step])
                           for o in os_], axis=1)
            self._overhead[shape] = (np.array([o.batch_size for o in os_], float), ys,
                                     np.array([o.draft_forwards_per_step for o in os_], float))

    def has(self, role: str, kind: str, width: int) -> bool:
        return (role, kind, int(width)) in self._curves

    # -- per-draw batch sizes: query [n_draws, m], row d priced with draw d's costs ----------------------
    def time_per_draw(self, role: str, kind: str, width: int, q: np.ndarray) -> np.ndarray:
        """Like `time`, but each draw at its own batch sizes (``q`` [n_draws, m] -> [n_draws, m]): a
        bootstrap that also resamples prompts sees different active-row counts in each draw."""
        key = (role, kind, int(width))
        if key not in self._curves:
            raise KeyError(f"no {role} {kind} forward of width {width} was probed; probe it first")
        return _interp_rows(*self._curves[key], q)

    def overhead_per_draw(self, q: np.ndarray, draft_forwards_per_step: float) -> np.ndarray:
        """`overhead` with each draw at its own batch sizes (``q`` [n_draws, m])."""
        plain = self._overhead.get("chain:0")
        if plain is None:
            return np.zeros(q.shape)
        base = _interp_rows(plain[0], plain[1], q)
        if draft_forwards_per_step <= 0:
            return base
        extras = []
        for shape, (xs, ys, fws) in self._overhead.items():
            if shape == "chain:0":
                continue
            at = plain[1] @ interp_weights(xs, plain[0]).T
            extras.append(_interp_rows(xs, np.maximum((ys - at) / np.maximum(fws, 1e-9), 0.0), q))
        return base + (np.mean(extras, axis=0) * draft_forwards_per_step if extras else 0.0)

    def time(self, role: str, kind: str, width: int, batches: Sequence[float] | np.ndarray) -> np.ndarray:
        key = (role, kind, int(width))
        if key not in self._curves:
            raise KeyError(f"no {role} {kind} forward of width {width} was probed; probe it first")
        xs, ys = self._curves[key]
        return ys @ interp_weights(batches, xs).T

    def prefill(self, role: str, batches: Sequence[float] | np.ndarray) -> np.ndarray:
        """Prefill times of ``role`` (zeros when it was not probed), like `CostTable.prefill`."""
        keys = [k for k in self._curves if k[0] == role and k[1] == "prefill"]
        if not keys:
            return np.zeros((self.n_draws, np.atleast_1d(batches).size))
        return self.time(*keys[0], batches)

    def overhead(self, batches: Sequence[float] | np.ndarray, draft_forwards_per_step: float) -> np.ndarray:
        """`CostTable.overhead` per draw: plain decoding's per-step time plus, when drafting, the measured
        extra per draft forward (mean over the probed drafting shapes) times ``draft_forwards_per_step``."""
        n = np.atleast_1d(batches).size
        plain = self._overhead.get("chain:0")
        if plain is None:
            return np.zeros((self.n_draws, n))
        base = plain[1] @ interp_weights(batches, plain[0]).T
        if draft_forwards_per_step <= 0:
            return base
        extras = []
        for shape, (xs, ys, fws) in self._overhead.items():
            if shape == "chain:0":
                continue
            at = plain[1] @ interp_weights(xs, plain[0]).T  # plain overhead at this shape's batch sizes
            per_fw = np.maximum((ys - at) / np.maximum(fws, 1e-9), 0.0)
            extras.append(per_fw @ interp_weights(batches, xs).T)
        return base + (np.mean(extras, axis=0) * draft_forwards_per_step if extras else 0.0)
