"""Checking a study's serving recommendation by measurement: the chosen cells decoded for real.

The recommender (`scylla.fit.serving`) ranks cells by *predicted* speedup: oracle acceptance composed
with cost probes. Whether those predictions hold is a measurement, not an assumption, so a study ends
by decoding the recommended cell at every serving batch size and at least three others
(`scylla.fit.serving.validation_cells`) with the engine, against plain decoding on the same prompts,
and comparing measured with predicted speedup (`|measured / predicted - 1| <= 0.10` passes).

Each (job, shape, batch size) is decoded on one task's prompts (the tasks rotate over the cells, so every
task is checked), at most ``max_prompts`` of them (at least the batch size, so batches are full); the
prediction is recomputed for exactly those prompts (`scylla.harness.measurement.check_cell`), with the
cost probes the job recorded. The job's models come back from the checkpoint cache through the
pipeline's own `prepare_job` (nothing is retrained: a record's checkpoints exist).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

__all__ = ["ValidationError", "job_config", "decode_checks", "validate_recommendation"]


class ValidationError(ValueError):
    """A record the validation cannot rebuild its job from (the message says why)."""


def job_config(record: Mapping[str, Any]) -> Any:
    """The validated config of the job behind ``record``, rebuilt from its Hydra overrides and checked
    against its run id (paths come from this machine's environment, as for any job)."""
    from scylla.config import compose, config_hash, validate
    from scylla.harness.pipeline import resolve_device

    overrides = [o for o in record.get("overrides") or [] if not o.startswith(("sweep=", "hydra/", "hydra."))]
    job = validate(compose(overrides))
    if config_hash(job, resolve_device(job.runtime.device)) != record["run_id"]:
        raise ValidationError(f"record {record['run_id']}: its overrides {overrides} no longer compose to the same "
                              "job (the configs changed since it ran); re-run the study's sweep first")
    return job


def decode_checks(records: Mapping[str, Mapping[str, Any]], cells: Sequence[tuple[str, str, str, int]], *,
                  max_prompts: int = 16, repeats: int = 3, progress: bool = True) -> pd.DataFrame:
    """Decode every (run_id, task, shape, batch size) cell for real: one row per cell with the measured and
    the predicted speedup for the same prompts, the number of prompts and whether the engine's counters
    equal the oracle's."""
    import torch

    from scylla.harness.measurement import check_cell, task_prompts
    from scylla.harness.pipeline import prepare_job, resolve_device, resolve_threads
    from scylla.harness.tracking import Tracker
    from scylla.measure.continuations import target_continuations
    from scylla.measure.probes import ForwardProbe, OverheadProbe

    rows: list[dict[str, Any]] = []
    by_run: dict[str, list[tuple[str, str, int]]] = {}
    for run_id, task, shape, batch in cells:
        by_run.setdefault(run_id, []).append((task, shape, int(batch)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), desc="validation (engine)", unit="cell", dynamic_ncols=True, file=sys.stderr)
    try:
        for run_id, todo in by_run.items():
            if run_id not in records:
                raise ValidationError(f"no record for run {run_id}; pass the study's records")
            record = records[run_id]
            job = job_config(record)
            device = resolve_device(job.runtime.device)
            # the job's own thread count: its cost probes (the prediction) were timed with it
            threads = int((record.get("provenance") or {}).get("threads") or resolve_threads(job.runtime.threads))
            torch.set_num_threads(threads)
            ctx, draft = prepare_job(job, device=device, threads=threads, tracker=Tracker())
            probes = [ForwardProbe(**{k: v for k, v in p.items() if k not in ("median", "best")})
                      for p in record.get("probes") or []]
            overheads = [OverheadProbe(**{k: v for k, v in o.items() if k not in ("median", "best")})
                         for o in record.get("overheads") or []]
            dec = job.decode
            for task, shape, batch in todo:
                prompts = task_prompts(ctx, task)
                cont = target_continuations(ctx.target.model, prompts, max_new_tokens=dec.max_new_tokens,
                                            temperature=dec.temperature, seed=job.seed, eos_token_id=ctx.eos_token_id,
                                            samples_per_prompt=dec.samples_per_prompt, cache_dir=ctx.cache_dir,
                                            target_key=ctx.target_key())
                n = min(len(prompts), max(max_prompts, batch))
                t0 = time.perf_counter()
                entry = check_cell(ctx, draft.model, task, prompts, cont, shape, batch, probes, overheads,
                                   n_prompts=n, repeats=repeats)
                rows.append({"run_id": run_id, "task": task, "shape": shape, "batch_size": batch, "n_prompts": n,
                             "draft_name": record["draft"].get("name"), "family": record["draft"].get("family"),
                             "draft_tokens": record["draft"].get("tokens"), "measured_speedup": entry["speedup"],
                             "predicted_speedup": entry.get("predicted_speedup"),
                             "predicted_low": entry.get("predicted_low"), "predicted_high": entry.get("predicted_high"),
                             "tau": entry.get("tau"), "oracle_match": entry.get("oracle_match"),
                             "seconds": time.perf_counter() - t0})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(B=batch, shape=shape, measured=f"{entry['speedup']:.2f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return pd.DataFrame(rows)


def validate_recommendation(rec: Any, records: Sequence[Mapping[str, Any]], out: str | Path, *, n_others: int = 3,
                            max_prompts: int = 16, repeats: int = 3, tolerance: float = 0.10,
                            progress: bool = True) -> tuple[pd.DataFrame, bool]:
    """Decode the cells `validation_cells` picks for ``rec`` (one task each, rotating) and write
    ``checks.csv`` and ``checks.md`` into ``out``: measured against predicted speedup per cell, the ratio,
    and whether every ``|ratio - 1| <= tolerance``."""
    from scylla.fit.serving import validation_cells

    chosen = validation_cells(rec, n_others=n_others)
    tasks = list(dict.fromkeys(c.task for c in chosen))
    cells: list[tuple[tuple[str, str, str, int], str]] = []
    seen: list[tuple[str, str, int]] = []
    for c in chosen:
        key = (c.run_id, c.shape, int(c.batch_size))
        if key in seen:
            continue
        task = tasks[len(seen) % len(tasks)]
        seen.append(key)
        cells.append(((c.run_id, task, c.shape, int(c.batch_size)), c.role))
    table = decode_checks({r["run_id"]: r for r in records}, [c for c, _ in cells], max_prompts=max_prompts,
                          repeats=repeats, progress=progress)
    table.insert(4, "role", [role for _, role in cells])
    table["ratio"] = table["measured_speedup"] / table["predicted_speedup"]
    table["ok"] = (table["ratio"] - 1).abs() <= tolerance
    passed = bool(len(table)) and bool(table["ok"].all())
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "checks.csv", index=False, float_format="%.6g")
    (folder / "checks.md").write_text(checks_markdown(table, tolerance, passed))
    return table, passed


def checks_markdown(table: pd.DataFrame, tolerance: float, passed: bool) -> str:
    """The validation table as Markdown (what the study report includes)."""
    lines = ["| role | draft | tokens | shape | B | task | prompts | predicted | interval | measured | ratio | counters |",
             "|---|---|---:|---|---:|---|---:|---:|---|---:|---:|---|"]
    for _, r in table.iterrows():
        match = {True: "equal", False: "DIFFER"}.get(r["oracle_match"], "-")
        lines.append(f"| {r['role']} | {r['draft_name']} | {int(r['draft_tokens']):,} | {r['shape']} | {r['batch_size']} | "
                     f"{r['task']} | {r['n_prompts']} | {r['predicted_speedup']:.3f} | [{r['predicted_low']:.2f}, "
                     f"{r['predicted_high']:.2f}] | {r['measured_speedup']:.3f} | {r['ratio']:.3f} | {match} |")
    worst = float((table["ratio"] - 1).abs().max()) if len(table) else float("nan")
    lines += ["", f"{len(table)} cells; worst |measured / predicted - 1| = {worst:.3f} (goal <= {tolerance:.2f}): "
              f"{'every cell passes' if passed else 'NOT every cell passes'}. Speedup = tokens/s of speculative "
              "over plain decoding, same prompts and batch size; predicted from the oracle's counters for those prompts "
              "and the job's cost probes."]
    return "\n".join(lines) + "\n"
