"""Sweep-level machinery (a Hydra callback): every job validated before any starts, progress, and
the one-screen summary at the end.

``on_multirun_start`` composes every job of the sweep and runs Scylla's range checks on it, so a bad
value in job 7 of a SLURM array stops the sweep at submission with one clear message instead of
failing on a node an hour later; it also counts the jobs, so each job can print "k/N finished" and
size its torch threads under launchers that run every job at once. ``on_multirun_end`` reads the
``scylla_job.json`` files the jobs left and prints one line per job (done / skipped / failed) with
acceptance and speedup, and where the records are.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = ["SweepSummary", "sweep_job_files", "sweep_jobs", "count_jobs", "validate_jobs", "summarize", "format_summary",
           "best_shapes"]

JOB_FILE = "scylla_job.json"
SWEEP_JOBS_ENV = "SCYLLA_SWEEP_JOBS"
SWEEP_START_ENV = "SCYLLA_SWEEP_START"
MAX_LINES = 40
LAUNCHER_LOGGERS = ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher._core",
                    "hydra_plugins.hydra_joblib_launcher.joblib_launcher",
                    "hydra_plugins.hydra_submitit_launcher.submitit_launcher", "hydra.core.utils")


def sweep_jobs(config: DictConfig) -> Optional[list[list[str]]]:
    """The override lists of every job the basic sweeper will launch, in order (None for other
    sweepers). Uses the sweeper's own expansion, so command-line values replace preset ones."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def count_jobs(config: DictConfig) -> Optional[int]:
    """Number of jobs the basic sweeper will launch (None for other sweepers)."""
    jobs = sweep_jobs(config)
    return None if jobs is None else len(jobs)


def validate_jobs(config: DictConfig, jobs: list[list[str]]) -> None:
    """Compose every job and run Scylla's checks; raise `ConfigError` naming the first bad job."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from scylla.config import ConfigError, hydra_error_message, validate

    loader = GlobalHydra.instance().config_loader()
    for overrides in jobs:
        try:  # an unknown preset or key in a swept value fails here, before any job starts
            cfg = loader.load_sweep_config(master_config=config, sweep_overrides=list(overrides))
            validate(cfg)
        except (ConfigError, HydraException, OmegaConfBaseException) as err:
            msg = str(err) if isinstance(err, ConfigError) else hydra_error_message(err)
            raise ConfigError(f"sweep job [{' '.join(overrides)}] is invalid; nothing was launched.\n{msg}") from None


def sweep_job_files(sweep_dir: str | Path, sweep_id: Optional[str] = None) -> list[Path]:
    """The job files of one sweep: two sweeps sharing a folder (same ``hydra.sweep.dir``) each count
    only the jobs stamped with their own ``sweep_id`` (`SWEEP_START_ENV`); None counts every file."""
    out = []
    for path in sorted(Path(sweep_dir).glob(f"*/{JOB_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name)):
        if sweep_id is not None:
            try:
                if json.loads(path.read_text()).get("sweep_id") != sweep_id:
                    continue
            except (OSError, ValueError):
                continue  # a job file being written or broken: not this sweep's finished job
        out.append(path)
    return out


def summarize(sweep_dir: str | Path, total: Optional[int] = None, sweep_id: Optional[str] = None) -> dict[str, Any]:
    """Jobs of a sweep folder (of sweep ``sweep_id`` only, when given) with their status and headline metrics."""
    from scylla.harness.results import ResultsError, read_record, record_rows

    jobs = []
    for path in sweep_job_files(sweep_dir, sweep_id):
        info = json.loads(path.read_text())
        info["num"] = path.parent.name
        try:
            rows = record_rows(read_record(info["record"]))
        except (OSError, ResultsError, KeyError):
            rows = []
        info["rows"] = rows
        jobs.append(info)
    done = sum(j["status"] in ("done", "replaced") for j in jobs)
    replaced = sum(j["status"] == "replaced" for j in jobs)
    skipped = sum(j["status"] == "skipped" for j in jobs)
    missing = (total - len(jobs)) if total is not None else 0
    return {"jobs": jobs, "done": done, "replaced": replaced, "skipped": skipped, "failed": max(0, missing),
            "total": total}


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _mean(col: str, rows: list[dict[str, Any]]) -> float:
    vals = [r[col] for r in rows if r.get(col) is not None and not (isinstance(r[col], float) and math.isnan(r[col]))]
    return sum(vals) / len(vals) if vals else float("nan")


def _shape(row: dict[str, Any]) -> str:
    tree = row.get("tree")
    return str(tree) if tree else f"chain:{row.get('gamma')}"


def best_shapes(rows: list[dict[str, Any]]) -> dict[int, tuple[str, float]]:
    """Per batch size, the draft shape with the highest speedup (mean over tasks) and that speedup."""
    out: dict[int, tuple[str, float]] = {}
    for b in sorted({r["batch_size"] for r in rows}):
        at_b = [r for r in rows if r["batch_size"] == b]
        scored = [(_mean("speedup", [r for r in at_b if _shape(r) == s]), s) for s in sorted({_shape(r) for r in at_b})]
        scored = [x for x in scored if not math.isnan(x[0])]
        if scored:
            speed, shape = max(scored)
            out[b] = (shape, speed)
    return out


def format_summary(summary: dict[str, Any], results_dir: str | Path) -> str:
    """The one-screen table: one line per job; speedup per batch size at that batch size's best draft
    shape, acceptance at the best shape of the smallest batch size; means over tasks."""
    jobs = summary["jobs"]
    batches = sorted({r["batch_size"] for j in jobs for r in j["rows"]})
    width = max([5] + [len(str(j["rows"][0]["draft_name"])) for j in jobs if j["rows"]])
    head = (f"{'job':>4} {'status':8} {'draft':{width}} {'params':>10} {'tokens':>10} {'shape':>14} {'alpha':>6} "
            f"{'tau':>5}")
    head += "".join(f" {'S@' + str(b):>6}" for b in batches)
    lines = ["", "=" * len(head), "Scylla sweep summary (params: non-embedding; shape, alpha, tau: the best shape at the "
             "smallest batch size; S@B: wall-clock speedup at B's best shape; tau includes the bonus token; "
             "means over tasks)", head, "-" * len(head)]
    for j in jobs[:MAX_LINES]:
        rows = j["rows"]
        if not rows:
            lines.append(f"{j['num']:>4} {j['status']:8} (record unreadable: {j['record']})")
            continue
        r0 = rows[0]
        best = best_shapes(rows)
        shape = best[min(best)][0] if best else _shape(r0)
        at_shape = [r for r in rows if _shape(r) == shape]
        params = r0.get("draft_params_non_embedding", r0.get("draft_params"))
        line = (f"{j['num']:>4} {j['status']:8} {str(r0['draft_name']):{width}} {_fmt(params, ',d'):>10} "
                f"{_fmt(r0['draft_tokens'], ',d'):>10} {shape:>14} {_mean('alpha', at_shape):6.3f} "
                f"{_mean('tau', at_shape):5.2f}")
        for b in batches:
            line += f" {best[b][1] if b in best else float('nan'):6.2f}"
        lines.append(line)
    if len(jobs) > MAX_LINES:
        lines.append(f"... {len(jobs) - MAX_LINES} more jobs (see the records)")
    total = summary["total"] if summary["total"] is not None else len(jobs)
    lines.append("-" * len(head))
    run = f"{summary['done']} run" + (f" ({summary['replaced']} replacing an old record)" if summary.get("replaced") else "")
    lines.append(f"{total} jobs: {run}, {summary['skipped']} skipped (record existed), "
                 f"{summary['failed']} failed or missing (re-run the same command to redo them)")
    lines.append(f"records: {results_dir}   ->   scylla.harness.results.load({str(results_dir)!r})")
    lines.append("=" * len(head))
    return "\n".join(lines)


class ScrubFilter(logging.Filter):
    """Scrubs secrets (URL passwords, env secret values) from every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        from scylla.config import scrub_secrets

        message = record.getMessage()
        clean = scrub_secrets(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


class SweepSummary(Callback):
    """Registered in configs/config.yaml under ``hydra.callbacks``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The launchers log every job's overrides verbatim; they reconfigure the handlers, so the filter
        # sits on their loggers.
        for name in LAUNCHER_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, ScrubFilter) for f in logger.filters):
                logger.addFilter(ScrubFilter())
        try:
            jobs = sweep_jobs(config)
        except Exception as err:  # noqa: BLE001 - the sweeper itself reports unparsable overrides
            log.debug("could not expand the sweep: %s", err)
            jobs = None
        if jobs:
            from scylla.config import ConfigError

            try:
                validate_jobs(config, jobs)
            except ConfigError as err:
                # Hydra turns callback exceptions into warnings; a bad sweep must not launch at all.
                from scylla.config import scrub_secrets

                print(f"scylla-run: error: {scrub_secrets(str(err))}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
        n = len(jobs) if jobs else None
        os.environ[SWEEP_START_ENV] = str(time.time())  # inherited by joblib / submitit worker processes
        if n:
            os.environ[SWEEP_JOBS_ENV] = str(n)
            print(f"[scylla] sweep of {n} jobs -> {config.hydra.sweep.dir}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from scylla.harness.pipeline import resolve_path

        total = int(os.environ.get(SWEEP_JOBS_ENV, "0")) or None
        results_dir = resolve_path(str(OmegaConf.select(config, "paths.results_dir")))
        try:
            sweep_id = os.environ.get(SWEEP_START_ENV) or None
            print(format_summary(summarize(config.hydra.sweep.dir, total, sweep_id), results_dir), flush=True)
        except Exception as err:  # noqa: BLE001
            log.warning("could not print the sweep summary: %s", err)
        os.environ.pop(SWEEP_JOBS_ENV, None)
        os.environ.pop(SWEEP_START_ENV, None)
