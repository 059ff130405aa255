"""The results store: one immutable JSON record per finished job, and loading records as a tidy frame.

A record is named by the hash of its job's identity (`scylla.config.config_hash`), so re-running a
sweep finds finished jobs and skips them. It is written to a temporary file in the same folder and
published with a hard link (``os.link`` fails if the name exists): the first finisher wins, readers
never see half a file, a killed job leaves only a ``.tmp`` file that loaders ignore, and two workers
finishing the same job at once corrupt nothing.

`load` flattens records to one row per (job, task, batch size) with the columns of `COLUMNS`
(the contract with `scylla.fit`); `load_wandb` rebuilds the same frame from wandb run summaries.
"""

from __future__ import annotations

import glob
import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from scylla.measure.rows import MEASUREMENT_COLUMNS, flatten

__all__ = ["SCHEMA_VERSION", "COLUMNS", "ResultStore", "ResultsError", "load", "load_checks", "load_records",
           "load_wandb", "records_to_frame", "read_record", "json_safe"]

SCHEMA_VERSION = 1
RECORD_SUFFIX = ".json"

# The tidy frame, in order: job columns, the measurement's (`scylla.measure.rows`, the one schema of a
# measurement), then provenance. Per-depth acceptance adds alpha_1..alpha_k, alpha_u_1..k (vLLM's
# unconditional rate) and accepted_/reached_ counts.
JOB_COLUMNS = [
    "run_id", "experiment", "family", "draft_name", "draft_params", "draft_params_non_embedding",
    "draft_n_layers", "draft_d_model", "draft_n_heads", "draft_ffn_dim", "draft_tokens", "target_name",
    "target_params", "target_params_non_embedding", "draft_val_loss", "target_val_loss", "data_source",
]
PROVENANCE_COLUMNS = ["corpus_manifest_hash", "code_version", "device", "threads", "created_at", "record_path"]
COLUMNS = JOB_COLUMNS + MEASUREMENT_COLUMNS + PROVENANCE_COLUMNS


class ResultsError(ValueError):
    """A results path that holds no records, or a record file that is not one."""


def json_safe(obj: Any) -> Any:
    """Plain JSON: NaN/inf become null (strict JSON readers reject NaN), tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return json_safe(obj.item())
    return obj


class ResultStore:
    """A folder of ``<run_id>.json`` records; see the module docstring for the guarantees."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, run_id: str) -> Path:
        return self.root / f"{run_id}{RECORD_SUFFIX}"

    def has(self, run_id: str) -> bool:
        return self.path(run_id).is_file()

    def read(self, run_id: str) -> dict[str, Any]:
        return read_record(self.path(run_id))

    def lock(self, run_id: str) -> FileLock:
        """A per-job lock: an identical job started elsewhere waits, then finds the record and skips.
        OS-level (fcntl) locks die with their process, so a killed job never blocks a re-run."""
        folder = self.root / ".locks"
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(folder / f"{run_id}.lock"))

    def write(self, record: dict[str, Any], *, replace: bool = False) -> Path:
        """Publish ``record`` atomically under its ``run_id``. An existing record is kept as is, unless
        ``replace`` (a deliberate re-run, or repairing an unreadable record): then it is swapped for the
        new one by an atomic rename, so readers see the old or the new record, never a mix."""
        run_id = record.get("run_id")
        if not run_id:
            raise ResultsError("record has no run_id; build records with scylla.harness.pipeline")
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(run_id)
        tmp = self.root / f".{run_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        blob = json.dumps(json_safe(record), indent=1, sort_keys=True, allow_nan=False)
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, final)
                return final
            try:
                os.link(tmp, final)  # atomic and exclusive: never replaces a finished record
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links: atomic replace instead
                if not final.exists():
                    os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def readable(self, run_id: str) -> tuple[bool, str]:
        """(whether the record exists and reads as a record, why not): a truncated or hand-edited file
        must be re-measured, not counted as done."""
        if not self.has(run_id):
            return False, "no record"
        try:
            self.read(run_id)
        except (OSError, UnicodeDecodeError, ResultsError) as err:
            return False, str(err)
        return True, ""

    def run_ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob(f"*{RECORD_SUFFIX}"))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for run_id in self.run_ids():
            yield self.read(run_id)

    def __len__(self) -> int:
        return len(self.run_ids())


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path} is not valid JSON ({err}); records are written atomically, so this file "
                           "was changed by hand or copied partially: delete it and re-run its job") from None
    if not isinstance(record, dict) or "run_id" not in record or "measurements" not in record:
        raise ResultsError(f"{path} is not a scylla result record (no run_id/measurements)")
    record.setdefault("record_path", str(path))
    return record


def _record_paths(path_or_glob: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if not isinstance(path_or_glob, (str, os.PathLike)):
        paths: list[Path] = []
        for item in path_or_glob:
            paths.extend(_record_paths(item))
        return paths
    text = os.fspath(path_or_glob)
    path = Path(text).expanduser()
    if path.is_dir():
        return sorted(p for p in path.rglob(f"*{RECORD_SUFFIX}") if not p.name.startswith("."))
    if path.is_file():
        return [path]
    if glob.has_magic(text):
        return sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                      if p.endswith(RECORD_SUFFIX) and not Path(p).name.startswith("."))
    raise ResultsError(f"no results at {text}: not a file, folder or glob; run a sweep first "
                       "(scylla-run -m sweep=grid) or point at its paths.results_dir")


def _nan(value: Any) -> Any:
    return float("nan") if value is None else value


def record_rows(record: dict[str, Any], part: str = "measurements") -> list[dict[str, Any]]:
    """One flat row per measurement (task x shape x batch size) of a record; ``part="checks"`` gives
    its engine checks (cells decoded for real to check the oracle's predictions) instead."""
    cfg = record.get("config", {})
    target, draft, prov = record.get("target", {}), record.get("draft", {}), record.get("provenance", {})
    common = {
        "run_id": record["run_id"],
        "experiment": cfg.get("experiment"),
        "family": draft.get("family"),
        "draft_name": draft.get("name"),
        "draft_params": draft.get("params"),
        "draft_params_non_embedding": draft.get("params_non_embedding"),
        "draft_n_layers": draft.get("n_layers"),
        "draft_d_model": draft.get("d_model"),
        "draft_n_heads": draft.get("n_heads"),
        "draft_ffn_dim": draft.get("ffn_dim"),
        "draft_tokens": draft.get("tokens"),
        "draft_val_loss": _nan(draft.get("val_loss")),
        "target_name": target.get("name"),
        "target_params": target.get("params"),
        "target_params_non_embedding": target.get("params_non_embedding"),
        "target_val_loss": _nan(target.get("val_loss")),
        "data_source": draft.get("data_source", "corpus"),
        "corpus_manifest_hash": prov.get("corpus_manifest_hash"),
        "code_version": prov.get("code_version"),
        "device": prov.get("device"),
        "threads": prov.get("threads"),
        "created_at": record.get("created_at"),
        "record_path": record.get("record_path"),
    }
    rows = [{**common, **flatten(m)} for m in record.get(part) or []]
    acc = draft.get("train_acc_per_step")
    if acc:  # an EAGLE-3 head: its training-time prediction of tau beside the served one
        for row in rows:
            row["draft_train_simulated_acc_len"] = _nan(draft.get("train_simulated_acc_len"))
            row["draft_train_tau"] = _train_tau(acc, row.get("tree"))
    return rows


def _train_tau(acc: list[float], tree: Any) -> float:
    """tau (bonus token included) that per-step training accuracies predict for a chain of the row's
    depth: ``1 + sum_k prod_{i<=k} acc_i`` (steps past those trained repeat the last one); NaN for trees."""
    if not isinstance(tree, str) or not tree.startswith("chain:"):
        return float("nan")
    gamma = int(tree.split(":", 1)[1])
    acc = list(acc) + [acc[-1]] * max(0, gamma - len(acc))
    total, run = 1.0, 1.0
    for a in acc[:gamma]:
        run *= float(a)
        total += run
    return total


def records_to_frame(records: Iterable[dict[str, Any]], part: str = "measurements") -> pd.DataFrame:
    """The tidy frame of `load` from record dicts (duplicates of one run_id collapse to one)."""
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for record in records:
        if record["run_id"] in seen:
            continue
        seen.add(record["run_id"])
        rows.extend(record_rows(record, part))
    frame = pd.DataFrame(rows)
    def order(column: str) -> tuple[str, int]:  # alpha_1, alpha_2, ..., alpha_10 in numeric order
        stem, _, num = column.rpartition("_")
        return (stem, int(num)) if stem and num.isdigit() else (column, 0)

    extra = sorted((c for c in frame.columns if c not in COLUMNS), key=order)
    frame = frame.reindex(columns=COLUMNS + extra)
    if len(frame):
        frame = frame.sort_values(["experiment", "draft_name", "draft_tokens", "source", "tree", "task", "batch_size"],
                                  kind="stable", na_position="last").reset_index(drop=True)
    return frame


def load(path_or_glob: str | os.PathLike | Iterable[str | os.PathLike] = "outputs/results") -> pd.DataFrame:
    """All records under a results folder, file, glob or list of them, as a tidy DataFrame.

    One row per (job, task, batch size); columns `COLUMNS` plus ``alpha_1..alpha_k`` (acceptance at
    draft position n given all earlier ones were accepted) and their raw ``accepted_n``/``reached_n``
    counts. ``tau`` includes the bonus/correction token (1 + accepted/steps)."""
    paths = _record_paths(path_or_glob)
    return records_to_frame(read_record(p) for p in paths)


def load_records(path_or_glob: str | os.PathLike | Iterable[str | os.PathLike] = "outputs/results") -> list[dict[str, Any]]:
    """The records themselves (one dict per job, duplicates of a run_id dropped), for what the tidy frame
    leaves out: per-prompt traces, cost probes and engine overheads (`scylla.fit.serving` prices from them)."""
    seen: set[str] = set()
    out = []
    for path in _record_paths(path_or_glob):
        record = read_record(path)
        if record["run_id"] not in seen:
            seen.add(record["run_id"])
            out.append(record)
    return out


def load_checks(path_or_glob: str | os.PathLike | Iterable[str | os.PathLike] = "outputs/results") -> pd.DataFrame:
    """The engine checks of the records (same columns as `load`): cells decoded for real, each with its
    measured ``speedup``, the oracle's ``predicted_speedup`` for the same prompts and ``oracle_match``."""
    return records_to_frame((read_record(p) for p in _record_paths(path_or_glob)), part="checks")


def load_wandb(project: str, entity: str | None = None, *, filters: dict[str, Any] | None = None,
               api: Any = None) -> pd.DataFrame:
    """The `load` frame rebuilt from the run summaries of a wandb project (for fitting from wandb).

    Every finished Scylla job stores its full record as JSON in its summary (``scylla/record``).
    ``api`` defaults to ``wandb.Api()`` (needs a network and a login); pass another object with the
    same ``runs(path, filters=...)`` method to read elsewhere."""
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    records = []
    for run in api.runs(path, filters=filters or {}):
        blob = run.summary.get("scylla/record")
        if not blob:
            continue
        record = json.loads(blob) if isinstance(blob, str) else dict(blob)
        record["record_path"] = f"wandb:{path}/{getattr(run, 'id', '?')}"
        records.append(record)
    return records_to_frame(records)
