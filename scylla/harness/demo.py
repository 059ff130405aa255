"""`make demo`: the main job on the embedded default, end to end.

1. train or reuse the default target (``target=demo``, cached under ``paths.cache_dir``);
2. sweep a small grid over all three axes -- exactly ``scylla-run -m sweep=grid experiment=demo``
   (draft widths x token budgets as jobs, every batch size inside each job; finished jobs are skipped,
   so a second ``make demo`` takes seconds);
3. print a summary table of acceptance and speedup, and where the records are;
4. fit the laws and recommend a draft with ``scylla-fit`` (skipped with ``--no-fit``).

    python -m scylla.harness.demo                                   # the demo grid
    python -m scylla.harness.demo --launcher joblib                 # two jobs at a time
    python -m scylla.harness.demo --experiment smoke                # seconds: tiny models
    python -m scylla.harness.demo 'axes.tokens=[100000,400000]'     # any override, passed to every job
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pandas as pd

from scylla.config import ConfigError, compose, config_hash, validate

__all__ = ["main", "grid_run_ids", "summary_table"]


def grid_run_ids(experiment: str, overrides: list[str]) -> dict[str, tuple[str, int]]:
    """``run_id -> (draft, tokens)`` of every job `sweep=grid` launches for this experiment."""
    from scylla.harness.pipeline import resolve_device

    base = compose([f"experiment={experiment}", *overrides])
    axes = base.axes
    budgets = "[" + ",".join(str(t) for t in axes.tokens) + "]"
    batches = "[" + ",".join(str(b) for b in axes.batch_sizes) + "]"
    device = resolve_device(base.runtime.device)
    ids = {}
    for draft, tokens in itertools.product(axes.drafts, axes.tokens):
        cfg = compose([f"experiment={experiment}", *overrides, f"draft={draft}", f"draft.tokens={tokens}",
                       f"draft.token_budgets={budgets}", f"decode.batch_sizes={batches}"])
        ids[config_hash(cfg, device)] = (draft, int(tokens))
    return ids


def summary_table(frame: pd.DataFrame) -> str:
    """Per job (draft x tokens): size, loss, acceptance, tau and speedup at each batch size; then the
    best job per batch size. Means over tasks."""
    batches = sorted(frame.batch_size.unique())
    name_w = max(5, int(frame.draft_name.str.len().max()))
    head = (f"{'draft':{name_w}} {'params':>9} {'tokens':>9} {'loss':>5} {'alpha':>6} {'tau':>5}"
            + "".join(f" {'S@' + str(b):>6}" for b in batches))
    lines = [head, "-" * len(head)]
    jobs = frame.groupby(["draft_params_non_embedding", "draft_name", "draft_tokens"], sort=True)
    best: dict[int, tuple[float, str]] = {}
    for (params, name, tokens), rows in jobs:
        line = (f"{name:{name_w}} {int(params):>9,} {int(tokens):>9,} {rows.draft_val_loss.mean():5.2f} "
                f"{rows.alpha.mean():6.3f} {rows.tau.mean():5.2f}")
        for b in batches:
            s = rows[rows.batch_size == b].speedup.mean()
            line += f" {s:6.2f}"
            if not math.isnan(s) and s > best.get(b, (-1.0, ""))[0]:
                best[b] = (s, f"{name} @ {int(tokens):,} tokens")
        lines.append(line)
    lines.append("-" * len(head))
    for b in batches:
        if b in best:
            lines.append(f"best at batch {b:>3}: {best[b][1]} (speedup {best[b][0]:.2f}x)")
    tasks = frame.groupby("task").alpha.mean()
    lines.append("alpha by task: " + ", ".join(f"{t} {a:.3f}" for t, a in tasks.items()))
    lines.append("params = non-embedding; loss = draft validation loss; tau = 1 + accepted/steps "
                 "(bonus token included); S@B = wall-clock speedup over plain decoding at batch size B")
    return "\n".join(lines)


def _run(cmd: list[str]) -> int:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scylla-demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="demo", help="experiment preset (default: demo; smoke = seconds)")
    parser.add_argument("--launcher", default="basic", choices=["basic", "joblib", "submitit_local"],
                        help="Hydra launcher for the sweep (default: basic, one job after another)")
    parser.add_argument("--no-fit", action="store_true", help="skip fitting the laws after the sweep")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every job, e.g. draft.tokens=...")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")

    try:
        cfg = compose([f"experiment={args.experiment}", *args.overrides])
        job = validate(cfg)
        expected = grid_run_ids(args.experiment, args.overrides)
    except ConfigError as err:
        print(f"scylla-demo: error: {err}", file=sys.stderr)
        return 2
    from scylla.harness.pipeline import _abs

    results_dir = _abs(job.paths.results_dir)
    axes = job.axes
    if job.target.source == "preset":
        print(f"Scylla demo: target {job.target.name} ({job.target.d_model}x{job.target.n_layers}, "
              f"{job.target.tokens:,} tokens; trained once, then cached in {_abs(job.paths.cache_dir)})")
    else:
        print(f"Scylla demo: target {job.target.name} ({job.target.source} {job.target.gguf_file or job.target.path}; "
              f"converted once, then loaded from {_abs(job.paths.cache_dir)}/targets)")
    if job.draft.vocab_size:
        print(f"  drafts predict the {job.draft.vocab_size:,} most frequent target tokens (draft.vocab_size)")
    print(f"  grid: drafts {list(axes.drafts)} x token budgets {list(axes.tokens)} = {len(expected)} jobs, "
          f"batch sizes {list(axes.batch_sizes)} and tasks {list(job.eval.tasks)} inside each job; "
          f"gamma {job.decode.gamma}", flush=True)
    done_before = sum((results_dir / f"{rid}.json").is_file() for rid in expected)
    if done_before:
        print(f"  {done_before} of {len(expected)} jobs already have records in {results_dir}: they are skipped")

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "scylla.harness.run", "-m", "sweep=grid", f"experiment={args.experiment}",
           *args.overrides]
    if args.launcher != "basic":
        cmd.append(f"hydra/launcher={args.launcher}")
    code = _run(cmd)
    if code != 0:
        print(f"scylla-demo: error: the sweep failed (exit {code}); re-run `make demo` to resume it", file=sys.stderr)
        return code

    from scylla.harness.results import load

    paths = [results_dir / f"{rid}.json" for rid in expected if (results_dir / f"{rid}.json").is_file()]
    if not paths:
        print(f"scylla-demo: error: no records of this grid in {results_dir}", file=sys.stderr)
        return 1
    frame = load(paths)
    print()
    print(f"Scylla demo results ({len(paths)} jobs, {len(frame)} measurements, sweep took "
          f"{time.perf_counter() - t0:.0f}s)")
    print(summary_table(frame))
    print(f"\nrecords: {results_dir}  (one JSON per job)")
    print(f"  python -c \"import scylla.harness.results as r; print(r.load('{results_dir}'))\"")

    if not args.no_fit:
        out = _abs("outputs/fit") if args.experiment == "demo" else _abs(f"outputs/fit-{args.experiment}")
        print(f"\nFitting the laws and recommending a draft (scylla-fit -> {out})", flush=True)
        # Only this grid's records: the store may hold other experiments.
        grid_glob = str(results_dir / "*.json") if len(paths) == len(list(results_dir.glob("*.json"))) else None
        source = grid_glob or _write_table(frame, out)
        fit_code = _run([sys.executable, "-m", "scylla.fit", source, "--out", str(out), "--n-bootstrap", "200"])
        if fit_code != 0:
            print(f"scylla-demo: the fit did not finish (exit {fit_code}); the records above are complete",
                  file=sys.stderr)
    return 0


def _write_table(frame: pd.DataFrame, out: Path) -> str:
    """The grid's rows as one parquet table (what scylla-fit reads besides record folders)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo_results.parquet"
    frame.to_parquet(path)
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
