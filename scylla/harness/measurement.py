"""The measurement stage of a job: acceptance by the oracle, cost by probes, a few cells by the engine.

``decode.method: oracle`` (default), per job:

1. per task, the target's continuations of the held-out prompts (generated once, cached and shared by
   every job of the target) and the oracle's counters for every chain and static tree of the job;
2. cost probes of the target and the draft at every batch size and width those shapes need, each
   model's prefill, and the engine's own per-step time (all cached by model shape and machine under
   ``<cache>/probes``: timing depends on shapes, not weights, so the jobs of a sweep share them);
3. one ``source: oracle`` row per (task, shape, batch size) with the predicted speedup and interval;
4. engine checks: at each checked batch size, the best predicted shape and ``check_cells - 1`` others
   (the worst first, so the check spans the prediction's range) are decoded for real on the first
   task's first prompts: ``source: engine`` entries with the measured speedup, the prediction for the same
   prompts, and whether the counters equal the oracle's. They go to the record's ``checks`` (read with
   `scylla.harness.results.load_checks`), so the measurement table keeps one row per cell.

``decode.method: engine`` (and families that measure themselves, MTP) decode every cell for real.
Dynamic trees cannot be priced and are decoded at the checked batch sizes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = ["measure", "check_cell", "task_prompts"]

log = logging.getLogger(__name__)

_COUNTERS = ("prompt_drafted", "prompt_accepted", "prompt_steps", "prompt_generated", "accepted_per_position",
             "reached_per_position")


def measure(ctx: Any, draft: Any) -> list[dict[str, Any]]:
    """Every measurement entry of the job (see the module doc); extras for the record go to
    ``ctx.record_extra`` (engine checks, probes, continuation keys)."""
    if draft.measure is not None or ctx.cfg.decode.method == "engine":
        return _measure_engine(ctx, draft)
    return _measure_oracle(ctx, draft)


def task_prompts(ctx: Any, task: str) -> list[list[int]]:
    """The job's held-out prompts of ``task`` (``eval.*``), as every measurement of the job uses them."""
    from scylla.data.tasks import eval_prompts

    e = ctx.cfg.eval
    return eval_prompts(task, ctx.tokenizer, e.n_prompts, e.prompt_tokens, seed=e.seed)


def _bar(ctx: Any, total: int, desc: str) -> Any:
    if not ctx.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="cell", dynamic_ncols=True, file=sys.stderr)


def _log(ctx: Any, out: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    out.append(entry)
    ctx.tracker.log_measurement(entry)


def _measure_engine(ctx: Any, draft: Any) -> list[dict[str, Any]]:
    """Speculative against plain decoding for every (task, shape, batch size), decoded for real."""
    from scylla.measure.rows import from_speedup
    from scylla.measure.speedup import measure_speedup

    cfg = ctx.cfg
    shapes = [None] if draft.measure is not None else cfg.decode.shapes
    cells = [(t, s, b) for t in cfg.eval.tasks for s in shapes for b in cfg.decode.batch_sizes]
    bar = _bar(ctx, len(cells), f"engine {cfg.draft.name}@{cfg.draft.tokens:,}")
    out: list[dict[str, Any]] = []
    try:
        for task in cfg.eval.tasks:
            prompts = task_prompts(ctx, task)
            for shape in shapes:
                for batch in cfg.decode.batch_sizes:
                    kwargs = dict(batch_size=batch, max_new_tokens=cfg.decode.max_new_tokens,
                                  temperature=cfg.decode.temperature, seed=cfg.seed, repeats=cfg.eval.repeats)
                    if draft.measure is not None:
                        result = draft.measure(ctx.target.model, draft.model, prompts, gamma=cfg.decode.gamma, **kwargs)
                    else:
                        result = measure_speedup(ctx.target.model, draft.model, prompts, tree=shape,
                                                 eos_token_id=ctx.eos_token_id, **kwargs)
                    for m in (result if isinstance(result, (list, tuple)) else [result]):
                        _log(ctx, out, from_speedup(task, m, temperature=cfg.decode.temperature,
                                                    max_new_tokens=cfg.decode.max_new_tokens))
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(task=task, B=batch, tau=f"{out[-1]['speculative']['tau']:.2f}",
                                        speedup=f"{out[-1]['speedup']:.2f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return out


# ---------------------------------------------------------------------------------------------------
# Oracle + probes + engine checks


def _shape_key(model: Any) -> str:
    """What a forward's cost depends on: the model's class, configuration and dtype (not its weights)."""
    import torch

    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    cfg = {k: v for k, v in cfg.items() if k not in ("transformers_version", "_name_or_path", "architectures")}
    dtype = str(next(model.parameters()).dtype)
    return hashlib.sha256(json.dumps([type(model).__qualname__, cfg, dtype, torch.get_num_threads()],
                                     sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached_json(ctx: Any, name: str, key_parts: list[Any], compute: Any, parse: Any) -> Any:
    """``parse(blob)`` of ``<cache>/probes/<name>-<key>.json``, or ``compute()`` (a list of probes) written
    there atomically first. Timing caches hold no results, so a damaged one is only re-measured, and so is
    one timed while other processes shared the CPU (`timed_while_contended`): one such probe would otherwise
    price every later job of the sweep."""
    from scylla.measure.probes import machine_info, timed_while_contended

    key = hashlib.sha256(json.dumps([*key_parts, machine_info()], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    folder = Path(ctx.cache_dir) / "probes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{key}.json"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                blob = json.loads(path.read_text())["probes"]
                if not any(timed_while_contended(p.get("machine") or {}) for p in blob):
                    return parse(blob)
                log.warning("cached probe %s was timed beside other processes: probing again", path.name)
            except (ValueError, KeyError, TypeError, AttributeError):
                pass
            path.unlink()
        probes = compute()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   "key": key_parts, "probes": [p.to_dict() for p in probes]}, default=str))
        tmp.replace(path)
    return probes


def _cached_probes(ctx: Any, model: Any, role: str, request: dict[str, Any]) -> list[Any]:
    """Forward and prefill probes of ``model`` (``request``: batch sizes, widths, tree widths, context,
    repeats), reused from ``<cache>/probes`` when the same shapes were probed on this machine."""
    from scylla.measure.probes import ForwardProbe, probe_forwards, probe_prefill

    forward = {k: v for k, v in request.items() if k != "prefill"}
    repeats = max(1, request["repeats"] // 2)

    def forwards() -> list[Any]:
        return probe_forwards(model, role=role, batch_sizes=forward["batch_sizes"], widths=forward["widths"],
                              tree_widths=forward["tree_widths"], context=forward["context"],
                              repeats=forward["repeats"])

    def prefills() -> list[Any]:
        return [p for b, c in request["prefill"].items()
                for p in probe_prefill(model, role=role, batch_sizes=[int(b)], context=int(c), repeats=repeats)]

    def parse(blob: list[dict[str, Any]]) -> list[Any]:
        return [ForwardProbe(**{k: v for k, v in p.items() if k not in ("median", "best")}) for p in blob]

    from scylla.measure.probes import PROBE_VERSION

    key = [_shape_key(model), PROBE_VERSION]  # forwards and prefills apart: prompt lengths change the second only
    return (_cached_json(ctx, role, [key, role, forward], forwards, parse)
            + _cached_json(ctx, f"{role}-prefill", [key, role, request["prefill"], repeats], prefills, parse))


def _cached_overheads(ctx: Any, target: Any, draft: Any, prompts: list[list[int]], shape: str,
                      repeats: int) -> list[Any]:
    """The engine's per-step time outside the forwards for ``shape`` (``chain:0``: plain decoding), reused
    across the jobs of a sweep: it depends on the models' shapes, the batch sizes and the machine."""
    from scylla.measure.probes import OverheadProbe, probe_overhead

    dec = ctx.cfg.decode
    draft_key = _shape_key(draft) if shape != "chain:0" and hasattr(draft, "parameters") else type(draft).__name__
    mean_prompt = round(sum(map(len, prompts)) / len(prompts))
    from scylla.measure.probes import PROBE_VERSION

    parts = ["overhead", _shape_key(target), draft_key, shape, sorted(dec.batch_sizes), repeats, dec.temperature,
             mean_prompt, PROBE_VERSION]

    def compute() -> list[Any]:
        return probe_overhead(target, draft if shape != "chain:0" else None, prompts, batch_sizes=dec.batch_sizes,
                              shape=shape, repeats=repeats, temperature=dec.temperature)

    def parse(blob: list[dict[str, Any]]) -> list[Any]:
        return [OverheadProbe(**{k: v for k, v in p.items() if k not in ("median", "best")}) for p in blob]

    return _cached_json(ctx, "overhead", parts, compute, parse)


def _measure_oracle(ctx: Any, draft: Any) -> list[dict[str, Any]]:
    from scylla.decode.proposers import Proposer
    from scylla.decode.tree import TreeSpec
    from scylla.measure.compose import predict_speedup, required_widths
    from scylla.measure.continuations import target_continuations
    from scylla.measure.oracle import acceptance_oracle
    from scylla.measure.rows import measurement

    cfg, dec = ctx.cfg, ctx.cfg.decode
    target = ctx.target.model
    proposer = draft.model  # a draft model, or a Proposer (n-gram lookup)
    has_model = not isinstance(proposer, Proposer)
    # An EAGLE-3 head re-processes the accepted tokens each step (its first forward is 1 + accepted wide)
    # and is probed through a view that feeds it target-shaped states.
    reprocess = bool(getattr(proposer, "reprocesses_accepted", False))
    probe_model = proposer.cost_view() if has_model and hasattr(proposer, "cost_view") else proposer
    specs = [TreeSpec.parse(s) for s in dec.shapes]
    priced = [s for s in specs if s.kind != "dynamic"]
    dynamic = [s for s in specs if s.kind == "dynamic"]
    t0 = time.perf_counter()
    target_key = ctx.target_key()
    # Pricing needs to know (the serving recommender reads it from the record).
    extra: dict[str, Any] = {"continuations": {}, "oracle_seconds": 0.0, "reprocess_accepted": reprocess}

    # 1. acceptance per task
    prompts_by_task, conts, oracles = {}, {}, {}
    for task in cfg.eval.tasks:
        prompts = prompts_by_task[task] = task_prompts(ctx, task)
        cont = conts[task] = target_continuations(
            target, prompts, max_new_tokens=dec.max_new_tokens, temperature=dec.temperature, seed=cfg.seed,
            eos_token_id=ctx.eos_token_id, samples_per_prompt=dec.samples_per_prompt, cache_dir=ctx.cache_dir,
            target_key=target_key)
        extra["continuations"][task] = {"key": cont.key, "seconds": cont.seconds, "batch_size": cont.batch_size}
        t1 = time.perf_counter()
        oracles[task] = acceptance_oracle(target, proposer, prompts, trees=[s.describe() for s in priced],
                                          max_new_tokens=dec.max_new_tokens, temperature=dec.temperature,
                                          eos_token_id=ctx.eos_token_id, continuations=cont) if priced else {}
        extra["oracle_seconds"] += time.perf_counter() - t1
    ctx.timings["acceptance_seconds"] = time.perf_counter() - t0

    # 2. cost
    t0 = time.perf_counter()
    first = prompts_by_task[cfg.eval.tasks[0]]
    mean_prompt = int(round(sum(map(len, first)) / len(first)))
    context = mean_prompt + dec.max_new_tokens // 2
    # a chunk's prefill runs on its prompts left-padded to the longest: probe that length per batch size
    prefill = {b: int(round(sum(max(map(len, first[i:i + b])) for i in range(0, len(first), b))
                            / len(range(0, len(first), b)))) for b in dec.batch_sizes}
    need = required_widths(priced, has_model, reprocess)
    # Forwards are probed at every row count up to the largest batch size, not only at the served ones: as
    # rows finish, a batch runs at every smaller count, and on a CPU the cost is far from linear in the
    # rows (a 7-row forward can cost more than an 8-row one), so interpolating would misprice those steps.
    request = {"batch_sizes": list(range(1, max(dec.batch_sizes) + 1)), "context": context,
               "prefill": {str(b): c for b, c in prefill.items()}, "repeats": dec.probe_repeats}
    probes = _cached_probes(ctx, target, "target", {**request, "widths": sorted(need["target"]["decode"]),
                                                    "tree_widths": sorted(need["target"]["tree"])})
    if has_model and priced:
        probes += _cached_probes(ctx, probe_model, "draft", {**request, "widths": sorted(need["draft"]["decode"]),
                                                          "tree_widths": sorted(need["draft"]["tree"])})
    overheads = _cached_overheads(ctx, target, None, first, "chain:0", max(1, dec.probe_repeats // 2))
    chains = [s for s in priced if s.is_chain]
    if chains:
        overheads += _cached_overheads(ctx, target, proposer, first, chains[-1].describe(),
                                       max(1, dec.probe_repeats // 2))
    ctx.timings["probe_seconds"] = time.perf_counter() - t0
    extra["probes"] = [p.to_dict() for p in probes]
    extra["overheads"] = [o.to_dict() for o in overheads]

    # 3. predicted rows
    out: list[dict[str, Any]] = []
    predictions: dict[tuple[str, str, int], float] = {}
    for task in cfg.eval.tasks:
        for spec in priced:
            stats = oracles[task][spec.describe()]
            for b in dec.batch_sizes:
                pred = predict_speedup(stats, b, probes, overheads, has_draft_model=has_model,
                                       reprocess_accepted=reprocess, seed=cfg.seed)
                predictions[(task, spec.describe(), b)] = pred["speedup"]
                _log(ctx, out, measurement(task, source="oracle", stats=stats.to_dict(), batch_size=b,
                                           temperature=dec.temperature, max_new_tokens=dec.max_new_tokens,
                                           prediction=pred))

    # 4. engine checks
    t0 = time.perf_counter()
    extra["checks"] = _engine_checks(ctx, proposer, priced, dynamic, predictions, prompts_by_task, conts, probes,
                                     overheads)
    ctx.timings["check_seconds"] = time.perf_counter() - t0
    ctx.record_extra.update(extra)
    return out


def _check_cells(ranked: list[str], n: int) -> list[str]:
    """The best predicted shape, then the worst, then the rest from the top (at most ``n``)."""
    if n <= 0 or not ranked:
        return []
    order = [ranked[0]] + ([ranked[-1]] if len(ranked) > 1 else []) + ranked[1:-1]
    return order[:n]


def check_cell(ctx: Any, proposer: Any, task: str, prompts: list[list[int]], continuations: Any, shape: str,
               batch: int, probes: list[Any], overheads: list[Any], *, n_prompts: int, repeats: int) -> dict[str, Any]:
    """One cell decoded for real against plain decoding on the first ``n_prompts`` prompts: the
    ``source: engine`` entry with the measured speedup beside the speedup predicted for the same prompts
    (oracle counters on their cached ``continuations``, composed with ``probes``; None: not priced) and
    whether the engine's counters equal the oracle's (temperature 0). A job's own checks and a study's
    validation of its recommendation (`scylla.harness.validation`) both decode cells this way."""
    from scylla.decode.proposers import Proposer
    from scylla.measure.compose import predict_speedup
    from scylla.measure.oracle import acceptance_oracle
    from scylla.measure.rows import from_speedup
    from scylla.measure.speedup import measure_speedup

    cfg, dec = ctx.cfg, ctx.cfg.decode
    sub = prompts[:n_prompts]
    m = measure_speedup(ctx.target.model, proposer, sub, tree=shape, batch_size=batch, max_new_tokens=dec.max_new_tokens,
                        temperature=dec.temperature, eos_token_id=ctx.eos_token_id, seed=cfg.seed, repeats=repeats)
    prediction, match = None, None
    if continuations is not None:
        oracle = acceptance_oracle(ctx.target.model, proposer, sub, trees=[shape], max_new_tokens=dec.max_new_tokens,
                                   temperature=dec.temperature, eos_token_id=ctx.eos_token_id,
                                   continuations=continuations.subset(range(len(sub))))[shape]
        prediction = predict_speedup(oracle, batch, probes, overheads, has_draft_model=not isinstance(proposer, Proposer),
                                     reprocess_accepted=bool(getattr(proposer, "reprocesses_accepted", False)),
                                     seed=cfg.seed)
        if dec.temperature == 0:
            match = all(getattr(m.speculative, k) == getattr(oracle, k) for k in _COUNTERS)
    return from_speedup(task, m, temperature=dec.temperature, max_new_tokens=dec.max_new_tokens, prediction=prediction,
                        oracle_match=match)


def _engine_checks(ctx: Any, proposer: Any, priced: list[Any], dynamic: list[Any], predictions: dict[tuple, float],
                   prompts_by_task: dict[str, list[list[int]]], conts: dict[str, Any], probes: list[Any],
                   overheads: list[Any]) -> list[dict[str, Any]]:
    cfg, dec = ctx.cfg, ctx.cfg.decode
    task = cfg.eval.tasks[0]
    prompts = prompts_by_task[task]
    batches = dec.check_batch_sizes if dec.check_batch_sizes is not None else list(dec.batch_sizes)
    plan: list[tuple[str, int]] = []
    for b in batches:
        ranked = sorted((s.describe() for s in priced), key=lambda s: -predictions[(task, s, b)])
        plan += [(s, b) for s in _check_cells(ranked, dec.check_cells)]
        plan += [(s.describe(), b) for s in dynamic]
    bar = _bar(ctx, len(plan), f"engine check {cfg.draft.name}@{cfg.draft.tokens:,}")
    out: list[dict[str, Any]] = []
    priced_names = {s.describe() for s in priced}
    try:
        for shape, b in plan:
            entry = check_cell(ctx, proposer, task, prompts, conts[task] if shape in priced_names else None, shape, b,
                               probes, overheads, n_prompts=min(len(prompts), max(dec.check_prompts, b)),
                               repeats=dec.check_repeats)
            _log(ctx, out, entry)
            if bar is not None:
                bar.update(1)
                pred = entry.get("predicted_speedup")
                bar.set_postfix(B=b, shape=shape, measured=f"{entry['speedup']:.2f}",
                                predicted=f"{pred:.2f}" if pred is not None else "-", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return out

