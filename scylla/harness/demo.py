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

__all__ = ["main", "grid_run_ids", "summary_table", "checks_table"]


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


def _shape_column(frame: pd.DataFrame) -> pd.Series:
    return frame["tree"].fillna("chain:" + frame["gamma"].astype("Int64").astype(str)) if "tree" in frame else (
        "chain:" + frame["gamma"].astype(str))


def job_labels(frame: pd.DataFrame) -> pd.Series:
    """The draft's name, with ``[responses]`` appended where it trained on the target's own responses
    (the data-source axis), so the two sources of one draft preset read as different rows."""
    names = frame["draft_name"].astype(str)
    if "data_source" not in frame:
        return names
    source = frame["data_source"].fillna("corpus").astype(str)
    return names.where(source == "corpus", names + "[" + source + "]")


def summary_table(frame: pd.DataFrame) -> str:
    """Per job (draft x tokens): size, loss, acceptance, tau and speedup at each batch size (the best draft
    shape there, means over tasks); then the best job and shape per batch size."""
    frame = frame.assign(shape=_shape_column(frame), label=job_labels(frame))
    batches = sorted(frame.batch_size.unique())
    name_w = max(5, int(frame.label.str.len().max()))
    head = (f"{'draft':{name_w}} {'params':>9} {'tokens':>9} {'loss':>5} {'alpha':>6} {'tau':>5}"
            + "".join(f" {'S@' + str(b):>6}" for b in batches))
    lines = [head, "-" * len(head)]
    jobs = frame.groupby(["draft_params_non_embedding", "label", "draft_tokens"], sort=True, dropna=False)
    best: dict[int, tuple[float, str]] = {}
    for (params, name, tokens), rows in jobs:
        per_shape = rows.groupby(["batch_size", "shape"]).agg(speedup=("speedup", "mean"), alpha=("alpha", "mean"),
                                                              tau=("tau", "mean"))
        top = per_shape.loc[per_shape.groupby(level=0).speedup.idxmax()]
        loss = rows.draft_val_loss.mean()
        params = 0 if pd.isna(params) else params
        line = (f"{name:{name_w}} {int(params):>9,} {int(tokens):>9,} {loss:5.2f} "
                f"{top.alpha.mean():6.3f} {top.tau.mean():5.2f}")
        for b in batches:
            hit = top[top.index.get_level_values(0) == b]
            s = float(hit.speedup.iloc[0]) if len(hit) else float("nan")
            line += f" {s:6.2f}"
            if not math.isnan(s) and s > best.get(b, (-1.0, ""))[0]:
                best[b] = (s, f"{name} @ {int(tokens):,} tokens, {hit.index[0][1]}")
        lines.append(line)
    lines.append("-" * len(head))
    for b in batches:
        if b in best:
            lines.append(f"best at batch {b:>3}: {best[b][1]} (speedup {best[b][0]:.2f}x)")
    tasks = frame.groupby("task").alpha.mean()
    lines.append("alpha by task: " + ", ".join(f"{t} {a:.3f}" for t, a in tasks.items()))
    sources = sorted(frame["source"].dropna().unique()) if "source" in frame else []
    kind = "predicted (oracle counters + cost probes)" if sources == ["oracle"] else "measured"
    lines.append("params = non-embedding; loss = draft validation loss; alpha, tau at the best shape; "
                 "tau = 1 + accepted/steps (bonus token included); S@B = wall-clock speedup over plain decoding at "
                 f"batch size B, {kind}, best draft shape")
    return "\n".join(lines)


def checks_table(checks: pd.DataFrame) -> str:
    """The engine checks: cells decoded for real beside the speedup predicted for the same prompts, and
    whether the engine's counters equal the oracle's."""
    if checks.empty:
        return "no engine checks in these records"
    checks = checks.assign(shape=_shape_column(checks))
    head = f"{'draft':>12} {'tokens':>9} {'B':>3} {'shape':>16} {'predicted':>9} {'measured':>8} {'ratio':>6} counters"
    lines = [head, "-" * len(head)]
    ratios = []
    for _, r in checks.sort_values(["draft_name", "draft_tokens", "batch_size", "shape"]).iterrows():
        pred = r.get("predicted_speedup")
        ratio = r.speedup / pred if pred is not None and pd.notna(pred) and pred > 0 else float("nan")
        if not math.isnan(ratio):
            ratios.append(ratio)
        match = {True: "equal", False: "DIFFER"}.get(r.get("oracle_match"), "-")
        lines.append(f"{r.draft_name:>12} {int(r.draft_tokens):>9,} {int(r.batch_size):>3} {r['shape']:>16} "
                     f"{pred if pd.notna(pred) else float('nan'):9.3f} {r.speedup:8.3f} {ratio:6.3f} {match}")
    lines.append("-" * len(head))
    if ratios:
        worst = max(abs(x - 1) for x in ratios)
        lines.append(f"measured / predicted: {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} cells "
                     f"(worst |ratio - 1| = {worst:.3f}); counters equal the oracle's in "
                     f"{int((checks.oracle_match == True).sum())} of {int(checks.oracle_match.notna().sum())}")  # noqa: E712
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
    from scylla.harness.pipeline import resolve_path

    results_dir = resolve_path(job.paths.results_dir)
    axes = job.axes
    if job.target.source == "preset":
        print(f"Scylla demo: target {job.target.name} ({job.target.d_model}x{job.target.n_layers}, "
              f"{job.target.tokens:,} tokens; trained once, then cached in {resolve_path(job.paths.cache_dir)})")
    else:
        print(f"Scylla demo: target {job.target.name} ({job.target.source} {job.target.gguf_file or job.target.path}; "
              f"converted once, then loaded from {resolve_path(job.paths.cache_dir)}/targets)")
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
    from scylla.harness.results import load_checks

    checks = load_checks(paths)
    if not checks.empty:
        print("\nEngine checks (decoded for real against the prediction for the same prompts):")
        print(checks_table(checks))
    print(f"\nrecords: {results_dir}  (one JSON per job)")
    print(f"  python -c \"import scylla.harness.results as r; print(r.load('{results_dir}'))\"")

    if not args.no_fit:
        out = resolve_path("outputs/fit") if args.experiment == "demo" else resolve_path(f"outputs/fit-{args.experiment}")
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
