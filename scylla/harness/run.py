"""``scylla-run`` (also ``python -m scylla.harness.run``): one Hydra job per call, or a sweep with ``-m``.

    scylla-run                                       one job with the defaults of configs/config.yaml
    scylla-run draft=draft-w128 decode.gamma=2       presets and overrides
    scylla-run -m sweep=tokens|capacity|batch|grid   a sweep (hydra/launcher=joblib|local|slurm)

Each job validates its config, runs `scylla.harness.pipeline.run_job` and leaves ``scylla_job.json`` (run id,
status, record path) in its Hydra output folder, which the sweep summary reads at the end.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from scylla.config import ConfigError, config_dir, scrub_secrets, secret_overrides
from scylla.harness.sweep_summary import JOB_FILE, SWEEP_JOBS_ENV, SWEEP_START_ENV


def _fail(message: str, code: int = 2) -> None:
    """Print a user error (secrets scrubbed: it may quote a value) and exit without a traceback."""
    try:  # a failed job's Hydra dumps hold the same overrides
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        _scrub_hydra_dumps(Path(hc.runtime.output_dir), Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None)
    except Exception:  # noqa: BLE001 - outside a Hydra job there is nothing dumped
        pass
    print(f"scylla-run: error: {scrub_secrets(message)}", file=sys.stderr, flush=True)
    sys.exit(code)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "fix your config or inputs" (printed without a traceback), not bugs."""
    from scylla.training.checkpoints import CheckpointError
    from scylla.data.corpora import CorpusError
    from scylla.data.tokenizer import TokenizerError
    from scylla.training.trainer import TrainError

    return (ConfigError, CorpusError, TokenizerError, TrainError, CheckpointError)


def _task(cfg: DictConfig) -> Optional[dict[str, Any]]:
    """The Hydra task function: one job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from scylla.config import validate

    hc = HydraConfig.get()
    launcher = OmegaConf.to_container(hc.launcher, resolve=True) if "launcher" in hc else None
    sweep_jobs = int(os.environ.get(SWEEP_JOBS_ENV, "0")) or None
    overrides = scrub_secrets(list(hc.overrides.task))
    multirun = hc.mode == RunMode.MULTIRUN
    try:  # range checks first: a bad value fails in a second, before torch is even imported
        validate(cfg)
    except ConfigError as err:
        _fail(f"{err}\n(job overrides: {' '.join(overrides) or 'none'})")
        return None
    from scylla.harness.pipeline import run_job

    try:
        outcome = run_job(cfg, launcher=launcher, sweep_jobs=sweep_jobs, overrides=overrides)
    except _user_errors() as err:  # a setting that cannot work: the message says which and how to fix it
        _fail(f"{err}\n(job overrides: {' '.join(overrides) or 'none'})")
        return None
    out_dir = Path(hc.runtime.output_dir)
    _scrub_hydra_dumps(out_dir, Path(hc.sweep.dir) if multirun else None)
    info = {"run_id": outcome.run_id, "status": outcome.status, "record": str(outcome.record_path),
            "seconds": round(outcome.seconds, 2), "overrides": overrides,
            "sweep_id": os.environ.get(SWEEP_START_ENV) if multirun else None}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{JOB_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, out_dir / JOB_FILE)  # the sweep summary never reads half a job file
    prefix = f"[scylla] job {hc.job.num}" if multirun else "[scylla] job"
    line = f"{prefix} {outcome.status}: {outcome.run_id} ({outcome.seconds:.1f}s) -> {outcome.record_path}"
    print(line, flush=True)
    if not multirun and outcome.record is not None:
        print(_job_table(outcome.record), flush=True)
    if multirun:  # the sweep's progress, whichever process or node this job ran in
        from tqdm import tqdm

        from scylla.harness.sweep_summary import sweep_job_files

        finished = len(sweep_job_files(hc.sweep.dir, info["sweep_id"]))
        start = float(os.environ.get(SWEEP_START_ENV, "0")) or None
        elapsed = time.time() - start if start else 0.0
        print("[scylla] " + tqdm.format_meter(finished, sweep_jobs, elapsed, prefix="sweep", unit="job",
                                              ncols=100), flush=True)
    return info


def _scrub_hydra_dumps(out_dir: Path, sweep_dir: Optional[Path]) -> None:
    """Rewrite what Hydra dumped verbatim (.hydra/*.yaml, multirun.yaml, its job log) with secrets
    scrubbed (URL passwords, env secret values): Hydra writes them before any job code runs."""
    from scylla.config import scrub_text_file

    paths = list((out_dir / ".hydra").glob("*.yaml")) + list(out_dir.glob("*.log"))
    if sweep_dir is not None:
        paths.append(sweep_dir / "multirun.yaml")
    for path in paths:
        scrub_text_file(path)


def _job_table(record: dict[str, Any]) -> str:
    """One line per (task, batch size) of a finished single job."""
    from scylla.harness.results import record_rows

    rows = record_rows(record)
    lines = [f"  {'task':12} {'batch':>5} {'alpha':>6} {'tau':>5} {'speedup':>7} {'c':>5}"]
    for r in rows:
        lines.append(f"  {r['task']:12} {r['batch_size']:>5} {r['alpha']:6.3f} {r['tau']:5.2f} {r['speedup']:7.2f} "
                     f"{r['c']:5.2f}")
    lines.append("  (tau = 1 + accepted/steps, bonus token included; speedup = wall-clock over plain decoding)")
    return "\n".join(lines)


def main() -> None:
    """Entry point of ``scylla-run``: Hydra composes, validates and launches; user errors exit 2."""
    import hydra

    try:
        path = config_dir()
    except ConfigError as err:
        _fail(str(err))
        return
    empty = [a.split("=", 1)[0].lstrip("+~") for a in sys.argv[1:]
             if re.fullmatch(r"[+~]*axes\.\w+=\[\s*\]", a)]
    if empty:  # a sweep over an empty axis: Hydra would fail on '' with a traceback naming no key
        _fail(f"{empty[0]}: list at least one value, e.g. {empty[0]}=[2,4]")
        return
    bad = secret_overrides(sys.argv[1:])
    if bad:  # refused before Hydra copies the overrides into .hydra/, multirun.yaml and its logs
        _fail("credentials are not accepted on the command line: " + ", ".join(bad) + ". Export them as "
              "environment variables instead (wandb reads WANDB_API_KEY or `wandb login`, the hub HF_TOKEN); "
              "jobs inherit the environment under every launcher.")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = hydra.main(config_path=str(path), config_name="config", version_base="1.3")(_task)
    app()


if __name__ == "__main__":
    main()
