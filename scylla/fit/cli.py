"""`scylla-fit`: fit the laws on a results table and recommend a draft.

    scylla-fit outputs/results --out outputs/fit
    scylla-fit 'multirun/**/results.parquet' --out outputs/fit --batch-sizes 1,8,32
    scylla-fit --wandb-project scylla-sweep --out outputs/fit     (or: scylla-fit wandb:scylla-sweep)

Writes, per (task, temperature) group: fits.json, report.md, recommendation.json/.md,
draft/<name>.yaml (a Hydra `draft=` group file) and figures/*.png. When the results are job records with
oracle rows, also <out>/serving/: the measured-cell serving recommendation per serving batch size, the
deployed draft's Hydra config and exported folder, vLLM's speculative_config and SGLang's flags
(`scylla.fit.serving`, `scylla.fit.deploy`, docs/serving.md).
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .checks import FitWarning
from .core import compare_forms
from .core import FitError, FitResult, fit_law, single_thread_blas
from .cost import fit_cost_model
from .inputs import check_arguments, drop_non_finite
from .eagle3 import eagle3_rows, eagle3_table, headline_shape, training_vs_served
from .mtp import mtp_rows, mtp_summary, mtp_table
from .recommend import Recommendation, acceptance_table, candidate_drafts, recommend
from .shape import best_shape_per_batch

__all__ = ["load_table", "fit_results", "main"]

AXIS_FORMS = ["log_linear", "logit_linear", "saturating_power"]
JOINT_FORMS = ["joint_logit_linear", "joint_logit_linear_interaction"]
NONCONVEX_STARTS = 30  # grid points (best by objective) that start L-BFGS-B for non-convex forms
_READERS = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True),
            ".json": pd.read_json}


class InputError(FileNotFoundError):
    """The results could not be found or read."""


_TABLES = (".parquet", ".csv", ".jsonl")


def _table_files(spec: str) -> list[Path] | None:
    """Tidy-table files (parquet/csv/jsonl) named by spec, or None when spec names record files."""
    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in _READERS and not f.name.startswith("."))
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).suffix in _READERS)
    if not files:
        raise InputError(f"no results found at {spec!r} (a folder of records, a table file or a glob)")
    if all(f.suffix in _TABLES for f in files):
        return files
    return None


def load_table(path: str | None = None, wandb_project: str | None = None) -> pd.DataFrame:
    """The results table: tidy tables (.parquet/.csv/.jsonl) are read directly; a folder, file or glob
    of job records goes through `scylla.harness.results.load`, a wandb project through
    `scylla.harness.results.load_wandb` (also when path is `wandb:<project>` or `wandb:<entity>/<project>`,
    so `make fit RESULTS=wandb:...` works)."""
    from scylla.harness import results as _results

    if path is not None and path.startswith("wandb:") and not wandb_project:
        wandb_project = path.removeprefix("wandb:").strip("/")  # `make fit RESULTS=wandb:entity/project`
        if not wandb_project:
            raise InputError("'wandb:' needs a project name, e.g. wandb:scylla or wandb:my-team/scylla")
    if wandb_project:
        return _results.load_wandb(wandb_project)
    if path is None:
        raise InputError("give a results path (folder, file or glob) or --wandb-project")
    files = _table_files(path)
    if files is not None:
        return pd.concat([_READERS[f.suffix](f) for f in files], ignore_index=True)
    try:
        return _results.load(path)
    except ValueError as exc:  # ResultsError
        raise InputError(str(exc)) from None


def _slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def _fit_safe(frame: pd.DataFrame, form: str, x: Any, y: str, notes: list[str], **kw) -> FitResult | None:
    """fit_law, with its FitWarnings and a FitError recorded as notes of the report."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitWarning)
        try:
            return fit_law(frame, form, x, y, **kw)
        except FitError as exc:
            notes.append(f"{form} ({y} ~ {x}) skipped: {exc}")
            return None
        finally:
            notes.extend(str(w.message) for w in caught)


@single_thread_blas
def fit_results(
    table: pd.DataFrame,
    out: str | Path,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    batch_sizes: list[float] | None = None,
    token_budgets: list[float] | None = None,
    max_gamma: int = 8,
    compute_budget: float | None = None,
    full_grid: bool = False,
    plots: bool = True,
    checks: pd.DataFrame | None = None,
) -> dict[str, dict]:
    """The whole fitting step on a results table; returns {group: summary} and writes files under `out`.
    ``checks``: the records' engine checks (`scylla.harness.results.load_checks`), whose tau the EAGLE-3
    section sets beside the training-time and oracle tau."""
    out = Path(out)
    need = {"drafted", "accepted", "steps", "draft_params", "draft_tokens"}
    if missing := need - set(table.columns):
        raise FitError(f"the results table lacks column(s) {sorted(missing)}")
    if table.empty:
        raise FitError("the results hold no measurement rows (records with empty measurements?); "
                       "re-run their jobs, or point at records that finished")
    table, dropped = drop_non_finite(table)
    keys = [c for c in ("task", "temperature") if c in table.columns]
    groups = list(table.groupby(keys, dropna=False)) if keys else [((), table)]
    summaries = {}
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        name = _slug(*[f"{k}={v}" for k, v in zip(keys, key)]) or "all"
        gdir = out / name if len(groups) > 1 else out
        group_checks = None
        if checks is not None and len(checks) and all(k in checks.columns for k in keys):
            mask = np.ones(len(checks), dtype=bool)
            for k, v in zip(keys, key):
                mask &= (checks[k] == v).to_numpy()
            group_checks = checks[mask]
        summaries[name] = _fit_group(g, gdir, n_bootstrap=n_bootstrap, seed=seed, level=level,
                                     batch_sizes=batch_sizes, token_budgets=token_budgets, max_gamma=max_gamma,
                                     compute_budget=compute_budget, full_grid=full_grid, plots=plots,
                                     input_notes=[dropped] if dropped else [], checks=group_checks)
    return summaries


def _one_data_source(llama: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The separate drafts' laws pool configurations by draft and token budget, so drafts trained on
    different data (the data-source axis, ``data.source``) must not meet in one law: keep the corpus
    drafts (or the most common source) and say what was left out."""
    if "data_source" not in llama.columns or llama.empty:
        return llama
    sources = llama["data_source"].fillna("corpus").astype(str)
    if sources.nunique() <= 1:
        return llama
    main = "corpus" if (sources == "corpus").any() else str(sources.mode().iloc[0])
    others = sorted(set(sources) - {main})
    notes.append(f"data source: the separate-draft laws fit the drafts trained on {main!r} text; "
                 f"{int((sources != main).sum())} rows of drafts trained on {others} are left out "
                 "(one law per data source; compare the sources per draft)")
    return llama[sources == main]


def _fit_group(frame: pd.DataFrame, out: Path, *, n_bootstrap: int, seed: int, level: float,
               batch_sizes: list[float] | None, token_budgets: list[float] | None, max_gamma: int,
               compute_budget: float | None, full_grid: bool, plots: bool, input_notes: list[str],
               checks: pd.DataFrame | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = list(input_notes)
    kw = {"n_bootstrap": n_bootstrap, "seed": seed, "level": level}
    llama = frame[frame["family"] == "llama"] if "family" in frame.columns else frame
    llama = _one_data_source(llama, notes)
    mtp = mtp_rows(frame)
    eagle = eagle3_rows(frame)
    acc: pd.DataFrame | None = None
    mtp_acc: pd.DataFrame | None = None
    eagle_acc: pd.DataFrame | None = None
    try:
        acc = acceptance_table(llama)
    except FitError as exc:
        llama_error = exc
    if len(mtp):
        try:
            mtp_acc = mtp_table(mtp)
        except FitError as exc:
            notes.append(f"mtp: nothing to fit: {exc}")
    if len(eagle):
        try:
            eagle_acc = eagle3_table(eagle)
        except FitError as exc:
            notes.append(f"eagle3: nothing to fit: {exc}")
    if acc is None and mtp_acc is None and eagle_acc is None:
        summary = {"n_rows": len(frame), "n_configurations": 0, "fits": {}, "comparisons": {},
                   "recommendation": None, "mtp": None, "eagle3": None,
                   "notes": [f"nothing to fit: {llama_error}", *notes], "figures": []}
        (out / "fits.json").write_text(json.dumps(summary, indent=2))
        (out / "report.md").write_text(f"# Scylla fit report\n\nNothing to fit: {llama_error}\n")
        return summary
    if acc is None:
        notes.append("no separate-draft (family 'llama') rows: no acceptance laws and no recommendation"
                     if llama.empty else f"separate drafts: nothing to fit: {llama_error}")
    fits: dict[str, FitResult] = {}
    data_for: dict[str, pd.DataFrame] = {}
    comparisons: dict[str, list[dict]] = {}

    def compare(key: str, sub: pd.DataFrame, forms: list[str], x: Any, y: str) -> FitResult | None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FitWarning)
            table = compare_forms(sub, forms, x, y, max_starts=NONCONVEX_STARTS, **kw)
        notes.extend(str(w.message) for w in caught)
        rows = []
        for _, r in table.iterrows():
            if isinstance(r.get("result"), FitResult):
                fits[f"{key}/{r['form']}"] = r["result"]
                data_for[f"{key}/{r['form']}"] = sub
                rows.append({"form": r["form"], "aicc": r["aicc"], "delta_aicc": r["delta_aicc"],
                             "akaike_weight": r["akaike_weight"], "r2": r["r2"]})
            else:
                notes.append(f"{key}/{r['form']} skipped: {r['error']}")
        comparisons[key] = rows
        ok = table[table["result"].map(lambda v: isinstance(v, FitResult))] if "result" in table else table.iloc[:0]
        return ok["result"].iloc[0] if len(ok) else None

    rec: Recommendation | None = None
    if acc is not None:
        rec = _fit_llama(llama, acc, out, compare, fits, data_for, notes, kw, batch_sizes=batch_sizes,
                         token_budgets=token_budgets, max_gamma=max_gamma, compute_budget=compute_budget,
                         full_grid=full_grid, n_bootstrap=n_bootstrap, seed=seed)
    mtp_info = None
    if mtp_acc is not None:
        mtp_info = _fit_mtp(mtp, mtp_acc, compare, fits, data_for, notes, kw)
    eagle_info = None
    if eagle_acc is not None:
        eagle_info = _fit_eagle3(eagle, eagle_acc, compare, fits, data_for, notes, kw, checks)

    figures = []
    if plots:
        from . import plots as P

        for key, res in fits.items():
            slug = key.replace("/", "__")
            figures.append(P.save(P.plot_law(res, data_for[key]), out / "figures" / f"law_{slug}.png"))
            figures.append(P.save(P.plot_residuals(res, data_for[key]), out / "figures" / f"residuals_{slug}.png"))
        if rec is not None:
            figures.append(P.save(P.plot_speedup_vs_batch(rec, llama), out / "figures" / "speedup_vs_batch.png"))
        if mtp_acc is not None:
            figures.append(P.save(P.plot_mtp_tau_vs_k(mtp_acc, mtp), out / "figures" / "mtp_tau_vs_k.png"))

    summary = {
        "n_rows": len(frame), "n_configurations": 0 if acc is None else len(acc),
        "fits": {k: v.to_dict() for k, v in fits.items()}, "comparisons": comparisons,
        "recommendation": rec.to_dict() if rec is not None else None, "mtp": mtp_info, "eagle3": eagle_info,
        "notes": notes,
        "figures": [str(f.relative_to(out)) for f in figures],
        "conventions": {"tau": "tokens per target forward, bonus/correction token included",
                        "intervals": f"{int(round(100 * level))}% bootstrap percentile intervals, seed {seed}"},
    }
    (out / "fits.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "report.md").write_text(_report(summary, fits, rec))
    return summary


def _fit_llama(llama: pd.DataFrame, acc: pd.DataFrame, out: Path, compare: Any, fits: dict[str, FitResult],
               data_for: dict[str, pd.DataFrame], notes: list[str], kw: dict[str, Any], *,
               batch_sizes: list[float] | None, token_budgets: list[float] | None, max_gamma: int,
               compute_budget: float | None, full_grid: bool, n_bootstrap: int, seed: int) -> Recommendation | None:
    """Separate draft LMs: acceptance laws, the batch-size law, the loss laws and the recommendation."""
    # per-axis acceptance laws, each on the slice where the other axis is at its largest value
    for axis, other in (("draft_tokens", "draft_params"), ("draft_params", "draft_tokens")):
        sub = acc[acc[other] == acc[other].max()]
        if sub[axis].nunique() >= 3:
            compare(f"alpha_vs_{axis.removeprefix('draft_')}", sub, AXIS_FORMS, axis, "alpha")
        else:
            notes.append(f"alpha vs {axis}: fewer than 3 distinct values at the largest {other}; no axis law")
    joint = None
    if acc["draft_tokens"].nunique() >= 2 and acc["draft_params"].nunique() >= 2:
        compare("alpha_joint", acc, JOINT_FORMS, ["draft_tokens", "draft_params"], "alpha")
        # the per-token acceptance probability is what the speedup formulas take: the recommendation's law
        joint = compare("alpha_token_joint", acc, JOINT_FORMS, ["draft_tokens", "draft_params"], "alpha_token")
    # the batch-size law: measured speedup of the best measured draft, best gamma per batch size
    if ({"speedup", "batch_size"} <= set(llama.columns) and llama["batch_size"].nunique() >= 3
            and pd.to_numeric(llama["speedup"], errors="coerce").notna().any()):
        cfg = llama.groupby(["draft_name", "draft_tokens"])["speedup"].mean().idxmax()
        best = llama[(llama["draft_name"] == cfg[0]) & (llama["draft_tokens"] == cfg[1])]
        best = best.groupby("batch_size", as_index=False)["speedup"].max()
        res = _fit_safe(best, "log_linear", "batch_size", "speedup", notes, **kw)
        if res is not None:
            fits["speedup_vs_batch/log_linear"] = res
            data_for["speedup_vs_batch/log_linear"] = best
            notes.append(f"speedup_vs_batch: measured speedups of {cfg[0]} at {cfg[1]:.3g} tokens, best gamma per batch")
    if {"speedup", "batch_size", "gamma"} <= set(llama.columns) and llama["speedup"].notna().any():
        cfg = llama.groupby(["draft_name", "draft_tokens"])["speedup"].mean().idxmax()
        _fit_best_shape(llama[(llama["draft_name"] == cfg[0]) & (llama["draft_tokens"] == cfg[1])], out, fits,
                        data_for, notes, kw, f"{cfg[0]} at {cfg[1]:.3g} tokens")
    # drafts' own LM loss: Chinchilla law, and whether loss predicts acceptance
    if "draft_val_loss" in acc.columns and acc["draft_val_loss"].notna().all():
        res = _fit_safe(acc, "chinchilla", ["draft_params", "draft_tokens"], "draft_val_loss", notes,
                        **({"grid": "full"} if full_grid else {"grid": "reduced", "max_starts": NONCONVEX_STARTS}),
                        **kw)
        if res is not None:
            fits["loss/chinchilla"] = res
            data_for["loss/chinchilla"] = acc
        res = _fit_safe(acc, "logit_linear", "draft_val_loss", "alpha", notes, **kw)
        if res is not None:
            fits["alpha_vs_loss/logit_linear"] = res
            data_for["alpha_vs_loss/logit_linear"] = acc

    # recommendation (separate-draft rows only: MTP rows have their own "target" and step times)
    rec: Recommendation | None = None
    law = joint
    if law is None:  # one varying axis: a bounded per-axis law of the per-token acceptance
        for axis in ("draft_tokens", "draft_params"):
            if acc[axis].nunique() >= 3:
                law = _fit_safe(acc, "logit_linear", axis, "alpha_token", notes, **kw)
                if law is not None:
                    fits[f"alpha_token_vs_{axis.removeprefix('draft_')}/logit_linear"] = law
                    data_for[f"alpha_token_vs_{axis.removeprefix('draft_')}/logit_linear"] = acc
                    break
    try:
        if law is None:
            raise FitError("no acceptance law could be fitted (drafts must vary in size and/or tokens)")
        cost = fit_cost_model(llama, n_bootstrap=n_bootstrap, seed=seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FitWarning)
            rec = recommend(
                law, cost, candidates=candidate_drafts(llama),
                token_budgets=token_budgets or sorted(acc["draft_tokens"].unique()),
                batch_sizes=batch_sizes or sorted(llama["batch_size"].unique()),
                max_gamma=max_gamma, compute_budget=compute_budget,
            )
        rec.notes.extend(str(w.message) for w in caught if str(w.message) not in rec.notes)
        rec.write(out)
    except FitError as exc:
        notes.append(f"recommendation skipped: {exc}")
    return rec


def _fit_best_shape(rows: pd.DataFrame, out: Path, fits: dict[str, FitResult], data_for: dict[str, pd.DataFrame],
                    notes: list[str], kw: dict[str, Any], what: str) -> None:
    """The batch-size law of the draft's shape: best chain length and best verified tree size against
    ln batch size (`scylla.fit.shape`), with the per-batch table written beside the fits."""
    shapes = best_shape_per_batch(rows)
    shapes.to_csv(out / "best_shape_per_batch.csv", index=False)
    if len(shapes) < 3:
        notes.append(f"best shape vs batch: {len(shapes)} batch size(s) measured; a law needs 3 (table in "
                     "best_shape_per_batch.csv)")
        return
    for y in ("best_gamma", "best_nodes"):
        if shapes[y].nunique() < 2:
            notes.append(f"{y}_vs_batch: {y} = {int(shapes[y].iloc[0])} at every batch size ({what}); no law to fit")
            continue
        res = _fit_safe(shapes, "log_linear", "batch_size", y, notes, **kw)
        if res is not None:
            fits[f"{y}_vs_batch/log_linear"] = res
            data_for[f"{y}_vs_batch/log_linear"] = shapes
            notes.append(f"{y}_vs_batch: {what}; 0 means no shape beats plain decoding at that batch size")


def _fit_mtp(mtp: pd.DataFrame, table: pd.DataFrame, compare: Any, fits: dict[str, FitResult],
             data_for: dict[str, pd.DataFrame], notes: list[str], kw: dict[str, Any]) -> dict[str, Any]:
    """Multi-token prediction: tau vs draft tokens and vs draft params at the largest k measured (each on
    the slice where the other axis is at its largest value), and the tau / speedup vs k table."""
    k_max = int(table["k"].max())
    top = table[table["k"] == k_max]
    for axis, other in (("draft_tokens", "draft_params"), ("draft_params", "draft_tokens")):
        name = axis.removeprefix("draft_")
        sub = top[top[other] == top[other].max()]
        if sub[axis].nunique() < 3:
            notes.append(f"mtp tau vs {axis} (k = {k_max}): fewer than 3 distinct values at the largest {other}; "
                         "no axis law")
            continue
        res = _fit_safe(sub, "log_linear", axis, "tau", notes, **kw)  # the Scylla paper's form, in tau's units
        if res is not None:
            fits[f"mtp_tau_vs_{name}/log_linear"] = res
            data_for[f"mtp_tau_vs_{name}/log_linear"] = sub
        # (tau - 1) / (k - 1) in [0, 1]: log_linear (the same law as above) against the bounded forms
        compare(f"mtp_tau_fraction_vs_{name}", sub, AXIS_FORMS, axis, "tau_fraction")
    info = mtp_summary(mtp, table)
    info["laws_at_k"] = k_max
    return info


def _fit_eagle3(rows: pd.DataFrame, table: pd.DataFrame, compare: Any, fits: dict[str, FitResult],
                data_for: dict[str, pd.DataFrame], notes: list[str], kw: dict[str, Any],
                checks: pd.DataFrame | None = None) -> dict[str, Any]:
    """EAGLE-3 heads: tau and alpha against ln layers, ln params and ln tokens at the headline shape (each
    on the slice where the other axis is at its largest), the bounded alpha forms compared beside the
    log-linear one, and training-time tau against served tau (`scylla.fit.eagle3`)."""
    shape = headline_shape(table)
    top = table[table["tree"] == shape]
    for axis, other in (("draft_layers", "draft_tokens"), ("draft_params", "draft_tokens"),
                        ("draft_tokens", "draft_layers")):
        name = axis.removeprefix("draft_")
        sub = top[top[other] == top[other].max()]
        if sub[axis].nunique() < 3:
            notes.append(f"eagle3 tau/alpha vs {name} ({shape}): fewer than 3 distinct values at the largest "
                         f"{other.removeprefix('draft_')}; no axis law")
            continue
        res = _fit_safe(sub, "log_linear", axis, "tau", notes, **kw)
        if res is not None:
            fits[f"eagle3_tau_vs_{name}/log_linear"] = res
            data_for[f"eagle3_tau_vs_{name}/log_linear"] = sub
        compare(f"eagle3_alpha_vs_{name}", sub, AXIS_FORMS, axis, "alpha")
    return {"headline_shape": shape, "n_configurations": int(table[CONFIG_COLUMNS].drop_duplicates().shape[0]),
            "layers": sorted(float(x) for x in table["draft_layers"].unique()),
            "training_vs_served": training_vs_served(rows, checks),
            "conventions": {"tau": "1 + accepted / steps, bonus token included",
                            "train_tau": "1 + sum_k prod_{i<=k} acc_k from the checkpoint's per-step validation "
                                         "accuracies (SpecForge's simulated_acc_len + 1)",
                            "params": "the head's own parameters (the target's shared embedding excluded)"}}


CONFIG_COLUMNS = ["draft_name", "draft_params", "draft_tokens"]


def _report(summary: dict, fits: dict[str, FitResult], rec: Recommendation | None) -> str:
    lines = ["# Scylla fit report", "",
             f"{summary['n_rows']} result rows, {summary['n_configurations']} draft configurations "
             "(acceptance pooled over batch sizes and gammas). tau includes the bonus token.", ""]
    for key, rows in summary["comparisons"].items():
        if rows:
            lines += [f"## {key}: model comparison (AICc on the natural scale of y)", "",
                      "| form | AICc | dAICc | Akaike weight | R^2 |", "|---|---:|---:|---:|---:|"]
            for r in rows:
                if np.isfinite(r["aicc"]):
                    lines.append(f"| {r['form']} | {r['aicc']:.2f} | {r['delta_aicc']:.2f} | "
                                 f"{r['akaike_weight']:.2f} | {r['r2']:.4f} |")
                else:  # AICc needs n > k + 2 (k counts the error variance)
                    lines.append(f"| {r['form']} | n/a (too few points) | | | {r['r2']:.4f} |")
            lines.append("")
    lines += ["## Fitted laws", ""]
    for key, res in fits.items():
        lines += [f"### {key}", "", f"`{res.form.equation}` with x = {res.x}, y = `{res.y}`, n = {res.n}, "
                  f"R^2 = {res.r2:.4f}, converged = {res.converged}", "",
                  "| parameter | estimate | interval |", "|---|---:|---|"]
        for k, v in res.params.items():
            lo, hi = res.intervals.get(k, (float("nan"), float("nan")))
            lines.append(f"| {k} | {v:.6g} | [{lo:.6g}, {hi:.6g}] |")
        for axis, h in res.holdout.items():
            if "mean_abs_error" in h:
                err = (f"mean relative error {100 * h['mean_rel_error']:.2f}%" if "mean_rel_error" in h else
                       f"mean absolute error {h['mean_abs_error']:.3g} (true values 0: no relative error)")
                lines.append(f"\nLeave-largest-out along `{axis}` (x{h['extrapolation_factor']:.2g} beyond the "
                             f"training range): {err} on {h['n_heldout']} point(s).")
        lines += [f"\n> warning: {w}" for w in res.warnings]
        lines.append("")
    if rec is not None:
        lines += ["## Recommendation", "", rec.to_markdown().split("\n", 1)[1]]
    if summary.get("mtp"):
        lines += _mtp_report(summary["mtp"], rec)
    if summary.get("eagle3"):
        lines += _eagle3_report(summary["eagle3"])
    if summary["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def _eagle3_report(info: dict) -> list[str]:
    """The EAGLE-3 section: training-time tau against the tau the oracle and the engine measured."""
    def num(v: Any, fmt: str = ".2f") -> str:
        return "-" if v is None else format(v, fmt)

    lines = ["## EAGLE-3 heads", "",
             f"Axis laws at {info['headline_shape']} (layers {', '.join(f'{x:g}' for x in info['layers'])}); "
             "tau includes the bonus token.", "",
             "### Training-time metrics against served acceptance", "",
             "train tau = 1 + sum_k prod_{i<=k} acc_k (SpecForge's simulated_acc_len + 1) at the checkpoint; "
             "oracle / engine tau = 1 + accepted / steps on the evaluation prompts.", "",
             "| head | layers | tokens | shape | train tau | oracle tau | engine tau | served / train (tau - 1) |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in info["training_vs_served"]:
        lines.append(f"| {r['draft_name']} | {num(r['draft_layers'], 'g')} | {num(r['draft_tokens'], '.4g')} | "
                     f"{r['tree']} | {num(r['train_tau'])} | {num(r['oracle_tau'])} | {num(r['engine_tau'])} | "
                     f"{num(r['accepted_over_train'])} |")
    return lines + [""]


def _mtp_report(info: dict, rec: Recommendation | None) -> list[str]:
    """The multi-token-prediction section: tau and speedup vs k for the largest model, the best measured
    configuration per batch size (next to the separate-draft recommendation when there is one)."""
    head = info["headline"]
    rows = [r for r in info["tau_vs_k"] if r["draft_name"] == head["draft_name"]
            and r["draft_tokens"] == head["draft_tokens"] and r["draft_params"] == head["draft_params"]]
    batches = info["batch_sizes"]
    lines = ["## Multi-token prediction (self-speculative)", "",
             f"{info['n_rows']} result rows, {info['n_configurations']} MTP configuration(s), k' = 2..{info['k_max']} "
             "heads measured inside each job. tau = tokens per forward (bonus token included; k = 1 is tau = 1); "
             "speedup is wall clock over the same model's k = 1 decoding at the same batch size. "
             f"The `mtp_tau_vs_*` laws are fitted at k = {info['laws_at_k']}; `mtp_tau_fraction_vs_*` fit "
             "(tau - 1) / (k - 1).", "",
             f"### tau and speedup vs k: {head['draft_name']} ({head['draft_params']:.4g} parameters, "
             f"{head['draft_tokens']:.4g} tokens)", "",
             "| k | tau | tau / k | per-head acceptance | " + " | ".join(f"speedup B={b:g}" for b in batches) + " |",
             "|---:|---:|---:|---|" + "---:|" * len(batches)]
    lines.append("| 1 | 1.000 | 1.000 | - | " + " | ".join("1.00" for _ in batches) + " |")  # plain decoding
    for r in rows:
        heads = ", ".join(f"{h.replace('head_', 'head ')}: {a:.3f}" for h, a in r["alpha_per_head"].items()) or "-"
        sp = [r["speedup"].get(f"{b:g}") for b in batches]
        lines.append(f"| {r['k']} | {r['tau']:.3f} | {r['tau_over_k']:.3f} | {heads} | "
                     + " | ".join("n/a" if v is None else f"{v:.2f}" for v in sp) + " |")
    lines.append("")
    best = info.get("best_per_batch") or []
    if best:
        llama = {float(r["batch_size"]): r for r in (rec.per_batch if rec is not None else [])}
        lines += ["### Best measured MTP configuration per batch size", ""]
        if rec is not None:
            lines += [f"Next to the separate-draft recommendation ({rec.name}, predicted speedup with its interval).",
                      "", "| batch | MTP model | tokens | k | tau | measured speedup | separate draft: gamma "
                      "| predicted speedup |",
                      "|---:|---|---:|---:|---:|---:|---:|---|"]
        else:
            lines += ["| batch | MTP model | tokens | k | tau | measured speedup |", "|---:|---|---:|---:|---:|---:|"]
        for b in best:
            cells = (f"| {b['batch_size']:g} | {b['draft_name']} | {b['draft_tokens']:.4g} | {b['k']} | "
                     f"{b['tau']:.3f} | {b['speedup']:.2f} |")
            if rec is not None:
                r = llama.get(float(b["batch_size"]))
                cells += (f" {r['gamma']} | {r['speedup']:.2f} [{r['low']:.2f}, {r['high']:.2f}] |" if r is not None
                          else " - | not a serving batch size |")
            lines.append(cells)
        lines.append("")
    return lines


def _serving(args: argparse.Namespace, table: pd.DataFrame) -> tuple[str, bool] | None:
    """The measured-cell serving recommendation under <out>/serving: (a one-line summary, whether it was
    written), or None when the records hold no oracle rows and it was not asked for. When asked for
    (--serving or a --serving-* option), a problem raises `ServingError` (exit 2); otherwise it is
    reported and the law fits go on."""
    from .deploy import write_serving
    from .serving import ServingError, recommend_cells

    explicit = bool(args.serving or args.serving_batch_sizes or args.serving_task or args.serving_weights)
    if args.serving is False:
        return None
    has_oracle = "source" in table.columns and (table["source"] == "oracle").any()
    if not has_oracle and not explicit:
        return None
    if "record_path" not in table.columns:
        raise ServingError("the serving recommendation needs the job records (per-prompt traces and cost probes), "
                           "not a tidy table: pass the results folder of the records, or drop --serving")
    if not has_oracle:
        raise ServingError("the results hold no oracle rows (source 'oracle'), so there is nothing to price; "
                           "measure with decode.method=oracle (the default) and re-run the jobs, or drop --serving")
    tasks = args.serving_task or args.task
    try:
        rec = recommend_cells(table, batch_sizes=args.serving_batch_sizes, tasks=tasks, n_boot=args.n_bootstrap,
                              level=args.level, seed=args.seed, pooling=args.serving_pooling,
                              batch_weights=args.serving_weights)
    except ServingError as exc:
        if explicit:
            raise
        return f"[serving] not written: {exc}", False
    out = Path(args.out) / "serving"
    write_serving(rec, out, export=not args.no_export)
    parts = []
    for r in rec.per_batch:
        b = r["best"]
        what = "no speculation" if b["run_id"] is None else f"{b['draft_name']}@{b['draft_tokens']:.3g} {b['shape']}"
        parts.append(f"B={r['batch_size']}: {what} S={b['speedup']:.2f} [{b['low']:.2f}, {b['high']:.2f}] "
                     f"P(best)={r['p_best']:.2f}")
    v = rec.deploy["vllm"]
    vllm = (f"vLLM: {v['draft']['draft_name']} gamma={v['gamma']} disable_by_batch_size="
            f"{v.get('vllm_disable_by_batch_size')}" if v["speculation"] else "vLLM: no speculation")
    return f"[serving] {'; '.join(parts)}; {vllm}; wrote {out.resolve()}", True


def _ints(text: str) -> list[int]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v != int(v) or v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes are positive integers, got {text!r}")
    return [int(v) for v in values]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scylla-fit",
        description="Fit Scylla's scaling laws (acceptance vs draft tokens and size, speedup vs batch size, "
        "the drafts' Chinchilla loss law) with bootstrap intervals, and recommend a draft config with gamma "
        "per serving batch size. Writes fits.json, report.md, recommendation.json/.md, draft/<name>.yaml "
        "(usable as draft=<name>) and figures/*.png.",
        epilog="Examples:\n  scylla-fit outputs/results --out outputs/fit\n"
        "  scylla-fit 'multirun/**/*.parquet' --out outputs/fit --batch-sizes 1,8,32 --compute-budget 1e16\n"
        "  make fit RESULTS=outputs/results OUT=outputs/fit\n  make fit RESULTS=wandb:my-team/scylla\n"
        "See docs/fitting.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", nargs="?", help="results folder, file or glob (.parquet/.csv/.jsonl/.json), "
                   "or wandb:<project> / wandb:<entity>/<project>")
    p.add_argument("--out", default="outputs/fit", help="output folder (default: outputs/fit)")
    p.add_argument("--wandb-project", help="load the results from this wandb project instead of files")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--batch-sizes", type=_floats, help="serving batch sizes, e.g. 1,8,32 (default: those measured)")
    p.add_argument("--token-budgets", type=_floats, help="candidate draft token budgets (default: those measured)")
    p.add_argument("--max-gamma", type=int, default=8, help="largest gamma considered (default 8)")
    p.add_argument("--compute-budget", type=float, help="training-compute budget in FLOP: keep drafts with 6*N*D <= it")
    p.add_argument("--task", action="append", help="only these task(s) (repeatable)")
    p.add_argument("--full-grid", action="store_true", help="Chinchilla fit from the full 4,500-point start grid (slow)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    g = p.add_argument_group(
        "serving recommendation (job records with oracle rows; written to <out>/serving, see docs/serving.md)")
    g.add_argument("--serving", action=argparse.BooleanOptionalAction, default=None,
                   help="rank every measured cell per serving batch size and emit the deployed draft's Hydra "
                        "config, exported folder, vLLM speculative_config and SGLang flags (default: when the "
                        "records hold oracle rows; --serving makes it required, --no-serving skips it)")
    g.add_argument("--serving-batch-sizes", type=_ints, metavar="B,B,...",
                   help="serving batch sizes, each one the study measured (default: all measured)")
    g.add_argument("--serving-task", action="append", metavar="TASK",
                   help="task(s) pooled into the serving score (repeatable; default: --task, else the tasks "
                        "every job measured)")
    g.add_argument("--serving-weights", type=_floats, metavar="W,W,...",
                   help="weight of each serving batch size in the one-draft deploy choice (default: equal)")
    g.add_argument("--serving-pooling", choices=("time", "log"), default="time",
                   help="pool tasks by total plain time / total speculative time (default) or by mean ln S")
    g.add_argument("--no-export", action="store_true",
                   help="do not copy a llama draft's weights (the engine configs point at its checkpoint)")
    return p


def _load_checks(path: str | None) -> pd.DataFrame | None:
    """The engine checks of job records (None for tidy tables, wandb or unreadable input)."""
    if path is None or path.startswith("wandb:") or _table_files_or_none(path) is not None:
        return None
    from scylla.harness import results as _results

    try:
        return _results.load_checks(path)
    except (ValueError, OSError):
        return None


def _table_files_or_none(path: str) -> list[Path] | None:
    try:
        return _table_files(path)
    except InputError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_arguments(level=args.level, max_gamma=args.max_gamma, compute_budget=args.compute_budget,
                        n_bootstrap=args.n_bootstrap, batch_sizes=args.batch_sizes, token_budgets=args.token_budgets)
        _check_out(args.results, args.out)
        table = load_table(args.results, args.wandb_project)
        checks = _load_checks(args.results) if not args.wandb_project else None
        if args.task:
            table = table[table["task"].isin(args.task)]
            if table.empty:
                raise FitError(f"no rows for task(s) {args.task}")
        serving = _serving(args, table)  # first: a bad serving request stops before the long law fits
        summaries = fit_results(
            table, args.out, n_bootstrap=args.n_bootstrap, seed=args.seed, level=args.level,
            batch_sizes=args.batch_sizes, token_budgets=args.token_budgets, max_gamma=args.max_gamma,
            compute_budget=args.compute_budget, full_grid=args.full_grid, plots=not args.no_plots, checks=checks,
        )
    except (FitError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if serving:
        print(serving[0])
    for name, s in summaries.items():
        rec = s["recommendation"]
        head = f"[{name}] {len(s['fits'])} laws fitted"
        if rec:
            gam = ", ".join(f"B={r['batch_size']:g}: gamma={r['gamma']} S={r['speedup']:.2f} "
                            f"[{r['low']:.2f}, {r['high']:.2f}]" for r in rec["per_batch"])
            head += f"; recommended {rec['name']} (P(best)={rec['p_best']:.2f}); {gam}"
        print(head)
    if not (serving and serving[1]) and not any(s["fits"] or s["recommendation"] for s in summaries.values()):
        reasons = "; ".join(n for s in summaries.values() for n in s["notes"][:1]) or "no fittable rows"
        print(f"error: nothing was fitted ({reasons}); see {Path(args.out).resolve() / 'report.md'}", file=sys.stderr)
        return 1
    print(f"wrote {Path(args.out).resolve()}")
    return 0


def _check_out(results: str | None, out: str) -> None:
    """--out inside the results folder would mix the fit's JSON files with the records it reads next time."""
    if not results or results.startswith("wandb:"):
        return
    src, dst = Path(results).expanduser().resolve(), Path(out).expanduser().resolve()
    if src.is_dir() and (dst == src or src in dst.parents):
        raise InputError(f"--out {out} is inside the results folder {results}; its fits.json and "
                         "recommendation.json would be read as records by the next fit. Pick a folder outside it "
                         "(e.g. --out outputs/fit)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
