"""Figures: each law with its points, fit, interval band and extrapolation region; residuals;
predicted speedup against batch size. matplotlib with the Agg backend (headless, CI-safe)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .core import FitResult  # noqa: E402
from .recommend import Recommendation  # noqa: E402

__all__ = ["plot_law", "plot_residuals", "plot_speedup_vs_batch", "plot_mtp_tau_vs_k", "save"]

EXTEND = 4.0  # the curve is drawn this factor beyond the fitted range on each side (log axis)


def _curve_frame(fit: FitResult, xs: np.ndarray, fixed: dict[str, float]) -> pd.DataFrame:
    cols = {fit.x[0]: xs}
    for name, v in fixed.items():
        cols[name] = np.full_like(xs, v)
    return pd.DataFrame(cols)


def plot_law(fit: FitResult, frame: pd.DataFrame, ax: plt.Axes | None = None) -> plt.Figure:
    """The law against its first axis (one curve per value of the second axis for joint laws), with the
    bootstrap band and the extrapolation region shaded."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4.2))
    x0 = fit.x[0]
    lo, hi = fit.x_range[x0]
    xs = np.geomspace(lo / EXTEND, hi * EXTEND, 200)
    groups: list[tuple[str, pd.DataFrame, dict[str, float]]]
    if len(fit.x) == 1:
        groups = [("", frame, {})]
    else:
        x1 = fit.x[1]
        groups = [(f"{x1}={v:.3g}", g, {x1: v}) for v, g in frame.groupby(x1)]
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(groups), 1)))
    for (label, g, fixed), color in zip(groups, colors):
        cf = _curve_frame(fit, xs, fixed)
        pred = fit.predict(cf, warn=False).to_numpy()
        ax.plot(xs, pred, color=color, lw=1.5, label=label or f"{fit.form.name} fit")
        if fit.boot_raw is not None:
            band = fit.predict(cf, interval=True, warn=False)
            ax.fill_between(xs, band["low"], band["high"], color=color, alpha=0.2, lw=0)
        ax.scatter(g[x0], g[fit.y], color=color, s=18, zorder=3, edgecolor="k", linewidth=0.3)
    ax.axvspan(xs[0], lo, color="0.85", alpha=0.5, lw=0)
    ax.axvspan(hi, xs[-1], color="0.85", alpha=0.5, lw=0, label="extrapolation")
    if fit.rate:
        ax.axhline(1.0, color="0.4", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(x0)
    ax.set_ylabel(fit.y)
    pct = int(round(100 * fit.level))
    ax.set_title(f"{fit.form.equation}   R²={fit.r2:.3f}" + (f", {pct}% band" if fit.boot_raw is not None else ""),
                 fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_residuals(fit: FitResult, frame: pd.DataFrame, ax: plt.Axes | None = None) -> plt.Figure:
    """Residuals on the fit's response scale against the first axis; the Huber threshold is marked."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.2))
    X = np.column_stack([frame[c].to_numpy(float) for c in fit.x])
    z = fit.form.transform.forward(frame[fit.y].to_numpy(float))
    r = z - fit.form.predict_z(fit.raw, np.log(X))
    ax.scatter(X[:, 0], r, s=16, edgecolor="k", linewidth=0.3)
    ax.axhline(0, color="k", lw=0.8)
    for s in (-1, 1):
        ax.axhline(s * fit.delta, color="C3", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(fit.x[0])
    ax.set_ylabel(f"residual ({fit.form.transform.name} scale)")
    ax.set_title(f"{fit.form.name}: residuals (dashed: Huber delta)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_speedup_vs_batch(rec: Recommendation, frame: pd.DataFrame | None = None,
                          ax: plt.Axes | None = None) -> plt.Figure:
    """Predicted speedup of the recommended draft (best gamma per batch size) with its interval, and the
    measured speedups of the same draft shape when the table has them."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    pb = pd.DataFrame(rec.per_batch)
    ax.plot(pb["batch_size"], pb["speedup"], "o-", color="C0", label=f"predicted ({rec.name})")
    ax.fill_between(pb["batch_size"], pb["low"], pb["high"], color="C0", alpha=0.2, lw=0)
    for _, r in pb.iterrows():
        ax.annotate(f"γ={r['gamma']}", (r["batch_size"], r["speedup"]), textcoords="offset points",
                    xytext=(4, 6), fontsize=7)
    if frame is not None and {"speedup", "batch_size", "draft_d_model", "draft_n_layers"} <= set(frame.columns):
        m = frame[(frame["draft_d_model"] == rec.draft["d_model"]) & (frame["draft_n_layers"] == rec.draft["n_layers"])]
        if "family" in m.columns:
            m = m[m["family"] == "llama"]
        if len(m):
            best = m.groupby(["batch_size", "draft_tokens"] if "draft_tokens" in m else ["batch_size"])["speedup"].max()
            best = best.reset_index()
            ax.scatter(best["batch_size"], best["speedup"], s=14, color="0.3", alpha=0.6,
                       label="measured, same shape (best gamma)")
    ax.axhline(1.0, color="0.4", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("serving batch size")
    ax.set_ylabel("speedup vs plain decoding")
    ax.set_title("predicted speedup of the recommended draft", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_mtp_tau_vs_k(table: pd.DataFrame, frame: pd.DataFrame | None = None) -> plt.Figure:
    """Multi-token prediction: tokens per forward (tau, bonus included) against heads used k, one line per
    configuration, with the ideal tau = k; and, for the largest model at its largest budget, the measured
    wall-clock speedup against k per batch size. ``table`` is `scylla.fit.mtp.mtp_table`."""
    from .mtp import headline_configuration, tau_vs_k

    with_speedup = frame is not None and "speedup" in frame.columns
    fig, axes = plt.subplots(1, 2 if with_speedup else 1, figsize=(11 if with_speedup else 6, 4.2), squeeze=False)
    ax = axes[0, 0]
    k_max = int(table["k"].max())
    ks = np.arange(1, k_max + 1)
    ax.plot(ks, ks, color="0.5", ls="--", lw=1, label="ideal: tau = k")
    # colour: token budget (log scale); marker: model (one per parameter count)
    tokens = np.log(table["draft_tokens"].to_numpy(float))
    t_lo, t_hi = float(tokens.min()), float(tokens.max())
    markers = "os^Dv<>ph*"
    cmap = matplotlib.colors.ListedColormap(plt.cm.viridis(np.linspace(0, 0.9, 256)))  # no pale yellow end
    by_size = table.sort_values("draft_params")
    models = list(dict.fromkeys(zip(by_size["draft_name"], by_size["draft_params"])))
    for (name, n, d), g in table.groupby(["draft_name", "draft_params", "draft_tokens"], sort=True):
        g = g.sort_values("k")
        shade = 0.5 if t_hi == t_lo else (np.log(d) - t_lo) / (t_hi - t_lo)
        marker = markers[models.index((name, n)) % len(markers)]
        ax.plot(np.r_[1, g["k"]], np.r_[1.0, g["tau"]], "-", marker=marker, color=cmap(shade), ms=4, lw=1.1)
    for i, (name, n) in enumerate(models[:12]):
        ax.plot([], [], markers[i % len(markers)], color="0.3", ms=4, label=f"{name} ({n:.3g} params)")
    if t_hi > t_lo:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.LogNorm(np.exp(t_lo), np.exp(t_hi)))
        fig.colorbar(sm, ax=ax, label="draft tokens", pad=0.01)
    ax.set_xticks(ks)
    ax.set_xlabel("heads used k (k = 1: plain decoding)")
    ax.set_ylabel("tau (tokens per forward, bonus included)")
    ax.set_title("MTP self-speculative decoding: tokens per forward vs k", fontsize=9)
    ax.legend(fontsize=6, loc="upper left")
    if with_speedup:
        ax = axes[0, 1]
        head = headline_configuration(table)
        t = tau_vs_k(frame)
        t = t[(t["draft_name"] == head["draft_name"]) & (t["draft_tokens"] == head["draft_tokens"])
              & (t["draft_params"] == head["draft_params"])]
        bs = sorted(t["batch_size"].unique())
        bcolors = plt.cm.plasma(np.linspace(0, 0.85, max(len(bs), 1)))
        for b, color in zip(bs, bcolors):
            g = t[t["batch_size"] == b].sort_values("k")
            ax.plot(np.r_[1, g["k"]], np.r_[1.0, g["speedup"]], "o-", color=color, ms=4, lw=1.2, label=f"B={b:g}")
        ax.axhline(1.0, color="0.4", ls=":", lw=1)
        ax.set_xticks(ks)
        ax.set_xlabel("heads used k")
        ax.set_ylabel("wall-clock speedup vs k = 1")
        ax.set_title(f"{head['draft_name']} @ {head['draft_tokens']:.3g} tokens: speedup vs k", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Save as PNG and close (figures otherwise accumulate in long CLI runs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
