"""Experiment tracking with wandb: the view of a job, never its source of truth.

Every call is guarded: a wandb failure (no login, a full disk, a crashed service) logs one warning,
turns the tracker off, and the job goes on to write its local record. ``finish`` always calls
``wandb.finish()``. Offline by default: runs land under ``<dir>/wandb/offline-run-*`` and upload
later with ``wandb sync``. The config is logged as a plain dict with secrets stripped.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any, Callable, Optional

from scylla.config import LoggerConfig, scrub_secrets
from scylla.harness.results import json_safe

log = logging.getLogger(__name__)

__all__ = ["Tracker", "NullTracker", "WandbTracker", "make_tracker", "resolve_mode"]


def resolve_mode(cfg: LoggerConfig) -> str:
    """The configured mode, else ``$WANDB_MODE``, else offline (never the network by accident)."""
    mode = cfg.mode or os.environ.get("WANDB_MODE") or "offline"
    return {"dryrun": "offline", "run": "online"}.get(mode, mode)


class Tracker:
    """The interface the pipeline logs through; the base class logs nothing."""

    url: Optional[str] = None
    run_dir: Optional[str] = None

    def log_train(self, role: str, event: dict[str, Any]) -> None:
        """One training log event (loss, lr, tokens) of the ``target`` or ``draft`` run."""

    def log_measurement(self, measurement: dict[str, Any]) -> None:
        """One (task, batch size) measurement, as soon as it exists."""

    def log_record(self, record: dict[str, Any]) -> None:
        """The finished record: tables, summary, and the record itself for `load_wandb`."""

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; always called, also when the job failed."""


NullTracker = Tracker


class WandbTracker(Tracker):
    """A wandb run for one job; see the module docstring for the failure policy."""

    def __init__(self, cfg: LoggerConfig, *, run_id: str, config: dict[str, Any], name: str,
                 group: Optional[str] = None, job_type: str = "eval", wandb_dir: Optional[str] = None) -> None:
        self._run: Any = None
        self._wandb: Any = None
        try:
            import wandb

            self._wandb = wandb
            folder = wandb_dir or cfg.dir or os.environ.get("WANDB_DIR")
            if folder:
                os.makedirs(folder, exist_ok=True)
            # No metadata (it holds sys.argv, i.e. every override verbatim), no code, no git, no job.
            settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True,
                                      save_code=False, disable_code=True, disable_job_creation=True,
                                      x_disable_meta=True)
            # Every string that reaches wandb is scrubbed, not only the config (a tag or a group could
            # be interpolated from the environment).
            self._run = wandb.init(
                project=scrub_secrets(cfg.project), entity=scrub_secrets(cfg.entity),
                group=scrub_secrets(group or cfg.group), tags=scrub_secrets(list(cfg.tags)) or None,
                name=scrub_secrets(name), id=f"{run_id}-{uuid.uuid4().hex[:6]}", job_type=job_type, dir=folder,
                mode=resolve_mode(cfg), config=scrub_secrets(json_safe({**config, "run_id": run_id})),
                settings=settings, reinit="finish_previous",
            )
            self.url = getattr(self._run, "url", None)
            self.run_dir = getattr(self._run, "dir", None)
        except Exception as err:  # noqa: BLE001 - tracking must never stop a job
            self._fail("wandb.init", err)

    def _fail(self, what: str, err: BaseException) -> None:
        log.warning("wandb disabled for this job: %s failed (%s: %s); the local record is unaffected",
                    what, type(err).__name__, scrub_secrets(str(err)))
        if self._run is not None:
            try:
                self._run.finish(exit_code=1)
            except Exception:  # noqa: BLE001
                pass
        self._run = None

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        if self._run is None:
            return
        try:
            fn()
        except Exception as err:  # noqa: BLE001
            self._fail(what, err)

    def log_train(self, role: str, event: dict[str, Any]) -> None:
        def go() -> None:
            scalars = {f"train/{role}/{k}": v for k, v in event.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if scalars:
                self._run.log(scalars)

        self._guard("log(train)", go)

    def log_measurement(self, measurement: dict[str, Any]) -> None:
        def go() -> None:
            from scylla.measure.rows import TRACKED, flatten

            row = flatten(measurement)
            cell = f"{row['task']}/{row['source']}/{row['tree']}/b{row['batch_size']}" + (
                f"/k{row['k']}" if row.get("k") is not None else "")
            data = {f"{cell}/{k}": row[k] for k in TRACKED
                    if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
                    and row[k] == row[k]}
            data.update({f"{cell}/{k}": v for k, v in row.items() if k.startswith("alpha_") and v == v})
            self._run.log(data)

        self._guard("log(measurement)", go)

    def log_record(self, record: dict[str, Any]) -> None:
        def go() -> None:
            from scylla.harness.results import record_rows

            wandb = self._wandb
            rows = record_rows(record)
            scalar_cols = [k for k, v in rows[0].items() if isinstance(v, (int, float, str, bool)) or v is None]
            table = wandb.Table(columns=scalar_cols, data=[[json_safe(r.get(c)) for c in scalar_cols] for r in rows])
            per_task = {}
            for task in dict.fromkeys(r["task"] for r in rows):  # one table per task, in task order
                per_task[f"tasks/{task}"] = wandb.Table(
                    columns=scalar_cols, data=[[json_safe(r.get(c)) for c in scalar_cols] for r in rows
                                               if r["task"] == task])
            positions = wandb.Table(columns=["task", "batch_size", "gamma", "position", "alpha_n", "accepted",
                                             "reached"])
            for m in record["measurements"]:
                spec = m["speculative"]
                for i, (a, acc, reach) in enumerate(zip(spec.get("alpha_n") or [], spec["accepted_per_position"],
                                                        spec["reached_per_position"])):
                    positions.add_data(m["task"], m["batch_size"], m.get("gamma"), i + 1, a, acc, reach)
            self._run.log({"results": table, "acceptance_per_position": positions, **per_task})
            summary = self._run.summary
            for r in rows:
                key = f"{r['task']}/b{r['batch_size']}"
                if r.get("family") == "mtp":  # one row per head count k' = gamma + 1
                    key += f"/k{int(r['gamma']) + 1}"
                for col in ("alpha", "tau", "speedup", "c"):
                    if r.get(col) is not None:
                        summary[f"{key}/{col}"] = json_safe(r[col])
            summary["draft_val_loss"] = json_safe(record["draft"].get("val_loss"))
            summary["target_val_loss"] = json_safe(record["target"].get("val_loss"))
            summary["run_id"] = record["run_id"]
            summary["scylla/record"] = json.dumps(scrub_secrets(json_safe(record)), sort_keys=True)

        self._guard("log(record)", go)

    def summary(self) -> dict[str, Any]:
        """A plain copy of the run summary as wandb will store it (what `load_wandb` reads back)."""
        if self._run is None:
            return {}
        try:
            return json.loads(json.dumps(self._run.summary._as_dict(), default=str))
        except Exception:  # noqa: BLE001
            return {}

    def finish(self, exit_code: int = 0) -> None:
        if self._run is None:
            return
        try:
            self._run.finish(exit_code=exit_code)
        except Exception as err:  # noqa: BLE001
            log.warning("wandb.finish failed (%s: %s); the local record is unaffected", type(err).__name__,
                        scrub_secrets(str(err)))
        finally:
            self._run = None


def make_tracker(cfg: LoggerConfig, **kwargs: Any) -> Tracker:
    """The tracker ``logger.backend`` asks for (``none`` logs nothing)."""
    if cfg.backend == "wandb" and resolve_mode(cfg) != "disabled":
        return WandbTracker(cfg, **kwargs)
    return Tracker()
