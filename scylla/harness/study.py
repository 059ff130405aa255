"""`make study`: the reference study -- the three laws measured end to end, committed under experiments/.

1. sweep ``experiment=study`` (configs/experiment/study.yaml): every draft size x every token budget of
   both draft families as jobs, every batch size and task inside each job. Exactly
   ``scylla-run -m sweep=grid experiment=study``; finished jobs are skipped, so an interrupted study
   resumes where it stopped (training is cached per model size as well);
2. export the results table (one row per job x task x batch size [x k for MTP]) as CSV;
3. fit the laws per task and pooled over tasks (bootstrap intervals, held-out extrapolation errors,
   AICc between forms) and recommend a draft (`scylla.fit.cli.fit_results`);
4. write ``report.md``: the settings, the measured table, the fitted laws with their numbers, the
   recommendation and the figures.

    python -m scylla.harness.study                          # the whole study (about 1.5-2 h of CPU here)
    python -m scylla.harness.study --fit-only               # re-fit and re-write the report from the records
    python -m scylla.harness.study --name mine 'axes.drafts=[draft-w32,draft-w128]'   # a variant
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from scylla.config import ConfigError, compose, validate

__all__ = ["main", "export_table", "write_report", "headline_laws", "study_plan", "part_commands", "StudyJob"]

# Columns that are machine-local or bulky, left out of the committed table: paths, per-prompt lists, and
# the 64-character corpus hash repeated on every row (each record keeps it).
_DROP = ("record_path", "prompt_accepted", "prompt_drafted", "prompt_steps", "corpus_manifest_hash")
# The laws the report leads with (fit key -> what it says), in order.
HEADLINE = [
    ("alpha_vs_tokens/log_linear", "acceptance vs ln draft tokens (largest draft)"),
    ("alpha_vs_params/log_linear", "acceptance vs ln draft parameters (largest budget)"),
    ("alpha_joint/joint_logit_linear", "joint: logit(acceptance) vs ln tokens, ln params"),
    ("alpha_joint/joint_logit_linear_interaction", "joint with interaction"),
    ("speedup_vs_batch/log_linear", "speedup vs ln batch size (best measured draft)"),
    ("loss/chinchilla", "draft validation loss, Chinchilla form"),
    ("alpha_vs_loss/logit_linear", "acceptance vs draft validation loss"),
    ("mtp_tau_vs_tokens/log_linear", "MTP tokens per forward vs ln tokens (largest model, k = 4)"),
    ("mtp_tau_vs_params/log_linear", "MTP tokens per forward vs ln parameters (largest budget, k = 4)"),
]


def _log(msg: str) -> None:
    print(f"[scylla-study] {msg}", flush=True)


def export_table(frame: pd.DataFrame, path: Path) -> Path:
    """The tidy results as a small CSV, without machine-local paths or per-prompt lists."""
    keep = [c for c in frame.columns if c not in _DROP]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    frame[keep].sort_values(["family", "draft_params", "draft_tokens", "task", "batch_size", "gamma"]).to_csv(
        tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)
    return path


def _fmt(v: Optional[float], digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def headline_laws(fits: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per headline law present in a fits.json `fits` mapping: params, intervals, R^2, and
    the leave-largest-out relative error per axis."""
    rows = []
    for key, what in HEADLINE:
        res = fits.get(key)
        if res is None:
            continue
        held = {ax: h["mean_rel_error"] for ax, h in res.get("leave_largest_out", {}).items()
                if "mean_rel_error" in h}
        rows.append({"key": key, "what": what, "equation": res["equation"], "params": res["params"],
                     "intervals": res["intervals"], "r2": res["r2"], "n": res["n_points"], "heldout": held})
    return rows


def _law_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| law | equation | parameters (95% bootstrap interval) | R^2 | n | held-out rel. error |",
             "|---|---|---|---:|---:|---|"]
    for r in rows:
        params = "; ".join(f"{k} = {_fmt(v)} [{_fmt(r['intervals'].get(k, [None])[0])}, "
                           f"{_fmt(r['intervals'].get(k, [None, None])[1])}]" for k, v in r["params"].items())
        held = ", ".join(f"{ax.removeprefix('draft_')}: {100 * e:.1f}%" for ax, e in r["heldout"].items()) or "-"
        lines.append(f"| {r['what']} | `{r['equation']}` | {params} | {_fmt(r['r2'], 3)} | {r['n']} | {held} |")
    return lines


def _per_task_slopes(fit_dir: Path) -> list[str]:
    """Slope b of the per-axis log-linear laws for every task group (acceptance per task)."""
    lines = ["| group | b (alpha vs ln tokens) | R^2 | b (alpha vs ln params) | R^2 |", "|---|---|---:|---|---:|"]
    for fits_json in sorted(fit_dir.glob("*/fits.json")):
        fits = json.loads(fits_json.read_text())["fits"]
        cells = []
        for key in ("alpha_vs_tokens/log_linear", "alpha_vs_params/log_linear"):
            r = fits.get(key)
            if r is None:
                cells += ["-", "-"]
            else:
                lo, hi = r["intervals"].get("b", [None, None])
                cells += [f"{_fmt(r['params']['b'], 3)} [{_fmt(lo, 3)}, {_fmt(hi, 3)}]", _fmt(r["r2"], 3)]
        lines.append(f"| {fits_json.parent.name} | " + " | ".join(cells) + " |")
    return lines


def _mtp_table(frame: pd.DataFrame) -> list[str]:
    mtp = frame[frame["family"] == "mtp"]
    if mtp.empty:
        return []
    mtp = mtp.assign(k=mtp["gamma"] + 1)
    top = mtp[(mtp["draft_params"] == mtp["draft_params"].max()) & (mtp["draft_tokens"] == mtp["draft_tokens"].max())]
    tau = top.groupby("k")["tau"].mean()
    sp = top.pivot_table(index="k", columns="batch_size", values="speedup", aggfunc="mean")
    lines = [f"Largest MTP model ({top['draft_name'].iloc[0]}, {int(top['draft_tokens'].iloc[0]):,} tokens), mean over "
             "tasks: tokens per forward (tau, bonus included) and wall-clock speedup over its own k = 1 decoding.", "",
             "| k | tau | " + " | ".join(f"speedup B={int(b)}" for b in sp.columns) + " | speedup/tau at B=1 |",
             "|---:|---:|" + "---:|" * len(sp.columns) + "---:|"]
    for k in tau.index:
        ratio = sp.loc[k].iloc[0] / tau[k] if len(sp.columns) else float("nan")
        lines.append(f"| {int(k)} | {tau[k]:.3f} | " + " | ".join(f"{sp.loc[k, b]:.2f}" for b in sp.columns)
                     + f" | {ratio:.2f} |")
    return lines


def task_table(frame: pd.DataFrame, gamma: int = 4) -> list[str]:
    """Markdown: tau of a ``gamma``-token chain per task, for each draft at its largest token budget
    (acceptance does not depend on batch size, so batch-1 rows stand for all)."""
    from scylla.harness.demo import job_labels

    chain = frame[(frame["tree"] == f"chain:{gamma}") & (frame["batch_size"] == frame["batch_size"].min())]
    if chain.empty:
        return []
    chain = chain.assign(label=job_labels(chain))
    largest = chain.groupby("label")["draft_tokens"].transform("max")
    top = chain[chain["draft_tokens"] == largest]
    table = top.pivot_table(index=["label", "draft_tokens"], columns="task", values="tau", aggfunc="mean")
    tasks = list(table.columns)
    lines = [f"tau of a {gamma}-token chain (1 + accepted / steps, bonus token included) per task, each draft at "
             "its largest token budget:", "", "| draft | tokens | " + " | ".join(tasks) + " |",
             "|---|---:|" + "---:|" * len(tasks)]
    for (label, tokens), row in table.iterrows():
        lines.append(f"| {label} | {int(tokens):,} | " + " | ".join(f"{row[t]:.2f}" for t in tasks) + " |")
    return lines


def _serve_and_validate(paths: list[Path], staging: Path, args: argparse.Namespace) -> list[tuple[str, str]]:
    """The measured-cell serving recommendation (`scylla.fit.serving`, written to ``serving/``) and its
    check by real decoding (`scylla.harness.validation`, ``validation/``): report sections."""
    from scylla.fit.deploy import write_serving
    from scylla.fit.serving import ServingError, recommend_cells
    from scylla.harness.results import load_records

    records = load_records(paths)
    try:
        rec = recommend_cells(records, n_boot=args.n_bootstrap)
    except ServingError as exc:
        _log(f"no serving recommendation: {exc}")
        return [("Serving recommendation", f"Not made: {exc}")]
    write_serving(rec, staging / "serving")
    body = (staging / "serving" / "serving.md").read_text().split("\n", 1)[1]
    sections = [("Serving recommendation (measured cells)",
                 body.replace("](", "](serving/") + "\nFiles: [serving/](serving/) (Hydra draft config, exported "
                 "draft, vLLM speculative_config, SGLang flags).")]
    if args.no_validate:
        return sections
    from scylla.harness.validation import validate_recommendation

    _log("checking the recommendation: decoding the recommended cells and others with the engine")
    table, passed = validate_recommendation(rec, records, staging / "validation", max_prompts=args.validate_prompts,
                                            repeats=args.validate_repeats)
    worst = float((table["ratio"] - 1).abs().max()) if len(table) else float("nan")
    _log(f"validation: {len(table)} cells, worst |measured / predicted - 1| = {worst:.3f} "
         f"({'all within 0.10' if passed else 'NOT all within 0.10'})")
    sections.append(("Recommendation checked by measurement",
                     (staging / "validation" / "checks.md").read_text()))
    return sections


def write_report(frame: pd.DataFrame, out: Path, fit_dir: Path, *, command: str, settings: dict[str, Any],
                 sweep_seconds: Optional[float], name: Optional[str] = None,
                 sections: Sequence[tuple[str, str]] = ()) -> Path:
    """report.md of a study folder (relative links, so it renders on GitHub). ``name``: the study's
    name when ``out`` is a staging folder that is renamed afterwards."""
    from scylla.harness.demo import summary_table

    pooled_dir = next(iter(sorted(fit_dir.glob("task-all*"))), fit_dir)
    pooled = json.loads((pooled_dir / "fits.json").read_text())
    lines = [f"# Scylla reference study: `{name or out.name}`", "",
             f"Produced by `{command}` (resumable; `--fit-only` re-fits from the records).", "",
             "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += [f"- rows: {len(frame)} (jobs: {frame['run_id'].nunique()}, tasks: {sorted(frame['task'].unique())})",
              f"- machine: {platform.machine()}, {os.cpu_count()} cores, torch threads per job: "
              f"{sorted(frame['threads'].dropna().unique().tolist())}"]
    if sweep_seconds is not None:
        lines.append(f"- wall time of the last sweep call: {sweep_seconds / 60:.1f} min (finished jobs are skipped)")
    lines += ["", "Conventions: alpha = accepted / drafted; tau = 1 + accepted / steps (tokens per target forward, "
              "bonus/correction token included; 1.00 for plain decoding); speedup = wall-clock tokens/s of "
              "speculative over plain decoding at the same batch size on the same prompts; params = total "
              "parameters (non-embedding in the table below).", ""]
    lines += ["## Measured (every draft, mean over tasks)", "", "```", summary_table(frame), "```", "",
              "`[responses]`: trained on the target's own answers to training-split chat requests "
              "(`data.source=responses`); the rest on corpus text. params 0: n-gram prompt lookup.", ""]
    lines += task_table(frame) + [""]
    lines += ["## Fitted laws (pooled over tasks)", ""]
    lines += _law_table(headline_laws(pooled["fits"]))
    lines += ["", "Held-out error: the law refitted without the largest value of that axis, predicting it "
              "(leave-largest-out extrapolation). Full details, AICc comparisons and notes: "
              f"[{pooled_dir.relative_to(out)}/report.md]({pooled_dir.relative_to(out)}/report.md).", ""]
    lines += ["## Acceptance per task", ""] + _per_task_slopes(fit_dir) + [""]
    mtp = _mtp_table(frame)
    if mtp:
        lines += ["## Multi-token prediction (self-speculative)", ""] + mtp + [""]
    rec = pooled.get("recommendation")
    if rec:
        lines += ["## Recommendation (pooled over tasks)", "",
                  f"Draft `{rec['name']}` (P(best over bootstrap draws) = {rec['p_best']:.2f}); "
                  f"config: [{pooled_dir.relative_to(out)}/draft/]({pooled_dir.relative_to(out)}/draft/).", "",
                  "| serving batch | gamma | predicted speedup | interval |", "|---:|---:|---:|---|"]
        for r in rec["per_batch"]:
            lines.append(f"| {r['batch_size']:g} | {r['gamma']} | {r['speedup']:.2f} | [{r['low']:.2f}, {r['high']:.2f}] |")
        lines.append("")
    for title, body in sections:
        lines += [f"## {title}", "", body.rstrip(), ""]
    figs = sorted((pooled_dir / "figures").glob("*.png")) if (pooled_dir / "figures").is_dir() else []
    shown = [f for f in figs if f.name.startswith("law_") and "residuals" not in f.name] + \
            [f for f in figs if f.name in ("speedup_vs_batch.png", "mtp_tau_vs_k.png")]
    if shown:
        lines += ["## Figures", ""]
        lines += [f"![{f.stem}]({f.relative_to(out)})" for f in shown]
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class StudyJob:
    """One job of a study: its part, draft preset, budget, the overrides that make it, and its record key."""

    part: str
    draft: str
    tokens: int
    budgets: tuple[int, ...]
    overrides: tuple[str, ...]
    run_id: str


def study_plan(experiment: str, overrides: list[str]) -> list[StudyJob]:
    """Every job of a study, part by part: ``study.parts`` of the experiment, or one part over
    ``axes.drafts`` x ``axes.tokens`` when it lists none. Each job is composed and validated here, so a
    bad value anywhere stops the study before anything runs."""
    from scylla.config import StudyPart, config_hash
    from scylla.harness.pipeline import resolve_device

    base = validate(compose([f"experiment={experiment}", *overrides]))
    parts = list(base.study.parts) or [StudyPart("grid", list(base.axes.drafts), list(base.axes.tokens))]
    device = resolve_device(base.runtime.device)
    jobs = []
    for part in parts:
        budgets = tuple(sorted(int(t) for t in part.tokens))
        for draft in part.drafts:
            for tokens in budgets:
                extra = (f"draft={draft}", f"draft.tokens={tokens}",
                         "draft.token_budgets=[" + ",".join(map(str, budgets)) + "]", *part.overrides)
                cfg = compose([f"experiment={experiment}", *overrides, *extra])
                jobs.append(StudyJob(part.name, draft, tokens, budgets, tuple(extra), config_hash(cfg, device)))
    return jobs


def part_commands(jobs: list[StudyJob], *, parallel: bool) -> list[list[str]]:
    """The Hydra multirun overrides that run a part's jobs. With a parallel launcher, every draft first
    trains all its budgets in one job at its largest budget (so workers train different sizes instead of
    waiting on one size's lock), then the rest only load checkpoints and measure."""
    drafts = list(dict.fromkeys(j.draft for j in jobs))
    budgets = jobs[0].budgets
    common = ["draft=" + ",".join(drafts), "draft.token_budgets=[" + ",".join(map(str, budgets)) + "]",
              *jobs[0].overrides[3:]]
    stages = []
    if parallel and len(budgets) > 1:
        stages.append([*common, f"draft.tokens={max(budgets)}"])
    stages.append([*common, "draft.tokens=" + ",".join(map(str, budgets))])
    return stages


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scylla-study", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--name", default="reference", help="study name: outputs go to experiments/<name>/")
    parser.add_argument("--out", help="output folder (default: experiments/<name>)")
    parser.add_argument("--experiment", default="study", help="experiment preset (default: study)")
    parser.add_argument("--launcher", default="basic", choices=["basic", "joblib", "submitit_local", "local", "slurm"],
                        help="Hydra launcher for the sweep (default: basic, one job after another; "
                             "joblib: one job per core, each with its share of the threads)")
    parser.add_argument("--fit-only", action="store_true", help="skip the sweep; fit and report the records there are")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--no-validate", action="store_true",
                        help="skip decoding the recommended cells and >= 3 others with the engine")
    parser.add_argument("--validate-prompts", type=int, default=16,
                        help="prompts per checked cell (at least its batch size; default 16)")
    parser.add_argument("--validate-repeats", type=int, default=3,
                        help="interleaved engine repeats per checked cell, median (default 3)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every job")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")

    from scylla.harness.pipeline import resolve_path

    try:
        cfg = compose([f"experiment={args.experiment}", *args.overrides])
        job = validate(cfg)
        plan = study_plan(args.experiment, args.overrides)
    except ConfigError as err:
        print(f"scylla-study: error: {err}", file=sys.stderr)
        return 2
    expected = {j.run_id: j for j in plan}
    results_dir = resolve_path(job.paths.results_dir)
    out = Path(args.out) if args.out else resolve_path(f"experiments/{args.name}")
    done = [rid for rid in expected if (results_dir / f"{rid}.json").is_file()]
    parts = list(dict.fromkeys(j.part for j in plan))
    _log(f"{len(expected)} jobs in {len(parts)} part(s) {parts}, batch sizes {list(job.decode.batch_sizes)}, "
         f"tasks {list(job.eval.tasks)}; {len(done)} already done in {results_dir}")

    sweep_seconds = None
    if not args.fit_only and len(done) < len(expected):
        launcher = [f"hydra/launcher={args.launcher}"] if args.launcher != "basic" else []
        t0 = time.perf_counter()
        for part in parts:
            jobs = [j for j in plan if j.part == part]
            if all((results_dir / f"{j.run_id}.json").is_file() for j in jobs):
                _log(f"part {part}: all {len(jobs)} jobs done")
                continue
            for stage in part_commands(jobs, parallel=args.launcher != "basic"):
                cmd = [sys.executable, "-m", "scylla.harness.run", "-m", f"experiment={args.experiment}", *stage,
                       *args.overrides, *launcher]
                _log(f"part {part}: $ " + " ".join(cmd))
                code = subprocess.call(cmd)
                if code != 0:
                    print(f"scylla-study: error: part {part} failed (exit {code}); re-run the same command to "
                          "resume it (finished jobs are kept and skipped)", file=sys.stderr)
                    return code
        sweep_seconds = time.perf_counter() - t0

    from scylla.fit.cli import fit_results
    from scylla.fit.core import FitError
    from scylla.harness.results import load

    paths = [results_dir / f"{rid}.json" for rid in expected if (results_dir / f"{rid}.json").is_file()]
    missing = len(expected) - len(paths)
    if not paths:
        print(f"scylla-study: error: no records of this study in {results_dir}; run it without --fit-only",
              file=sys.stderr)
        return 1
    if missing:
        _log(f"warning: {missing} of {len(expected)} jobs have no record yet; fitting the {len(paths)} there are")
    frame = load(paths)

    # Write into a fresh folder next to the old one, then swap: a failed fit loses no earlier study.
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    export_table(frame, staging / "results.csv")
    from scylla.harness.demo import checks_table
    from scylla.harness.results import load_checks

    checks = load_checks(paths)  # each job's engine-decoded cells, beside the prediction for the same prompts
    if len(checks):
        export_table(checks, staging / "checks.csv")
    pooled = frame.assign(task="all")
    _log(f"fitting {len(frame)} rows per task and pooled ({args.n_bootstrap} bootstrap resamples)")
    try:
        fit_results(pd.concat([frame, pooled], ignore_index=True), staging / "fit", n_bootstrap=args.n_bootstrap)
    except FitError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"scylla-study: error: the fit failed: {exc}", file=sys.stderr)
        return 2
    command = "make study" if args.name == "reference" and not args.overrides else \
        "python -m scylla.harness.study " + " ".join([f"--name {args.name}", *args.overrides])
    target = (f"{job.target.name} ({job.target.source}: {job.target.gguf_file or job.target.path})"
              if job.target.source != "preset" else
              f"{job.target.name} (d_model {job.target.d_model}, {job.target.n_layers} layers, {job.target.tokens:,} tokens)")
    settings = {"target": target}
    for part in parts:
        jobs = [j for j in plan if j.part == part]
        extra = " ".join(jobs[0].overrides[3:])
        settings[f"part {part}"] = (f"drafts {', '.join(dict.fromkeys(j.draft for j in jobs))} x token budgets "
                                    f"{', '.join(f'{t:,}' for t in jobs[0].budgets)}" + (f" ({extra})" if extra else ""))
    shapes = [f"chain:{g}" for g in (job.decode.gammas or [job.decode.gamma])] + list(job.decode.trees)
    settings.update({
        "draft shapes (every job)": ", ".join(shapes), "batch sizes": ", ".join(map(str, job.decode.batch_sizes)),
        "tasks": ", ".join(job.eval.tasks), "prompts per task": job.eval.n_prompts,
        "prompt tokens": job.eval.prompt_tokens, "new tokens per prompt": job.decode.max_new_tokens,
        "temperature": job.decode.temperature, "acceptance": job.decode.method,
        "jobs with records": f"{len(paths)} of {len(expected)}",
    })
    sections = _serve_and_validate(paths, staging, args)
    if len(checks):
        sections = [("Engine checks per job ([checks.csv](checks.csv))", "```\n" + checks_table(checks) + "\n```"),
                    *sections]
    write_report(frame, staging, staging / "fit", command=command, settings=settings, sweep_seconds=sweep_seconds,
                 name=out.name, sections=sections)
    if out.exists():
        # Keep what the study does not write (notes, analysis scripts beside the report), then swap.
        for entry in out.iterdir():
            if not (staging / entry.name).exists():
                shutil.move(str(entry), str(staging / entry.name))
        shutil.rmtree(out)
    staging.rename(out)
    from scylla.harness.demo import summary_table

    print(summary_table(frame))
    _log(f"wrote {out}/report.md, results.csv and fit/ (per task, and task-all pooled over tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
