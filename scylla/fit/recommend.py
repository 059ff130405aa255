"""Recommendation: which draft to train, with which gamma at each serving batch size.

Fitted acceptance alpha(tokens, params) is composed with the fitted cost model into the predicted
speedup of docs/design.md ("Speedup formulas", batch form),

    S(B) = tau(alpha, gamma) * T_t(B, 1) / (T_t(B, gamma + 1) + gamma * T_d(B, 1)),

for every candidate (draft shape x token budget) and gamma in 0..max_gamma (gamma = 0 is plain
decoding, S = 1). The chosen draft maximises the (weighted) mean over serving batch sizes of
ln max_gamma S, optionally among candidates within a training-compute budget 6 N D. The same is done
for every bootstrap draw (acceptance draws paired with cost-model draws), which gives the speedup
interval, the probability that the chosen draft is the best, and the regret of choosing by the
point estimate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scylla.measure.analytic import batch_speedup
from .checks import emit
from .core import FitError, FitResult, single_thread_blas
from .cost import CostModel

__all__ = ["acceptance_table", "candidate_drafts", "recommend", "Recommendation"]

_COUNTERS = ["drafted", "accepted", "steps"]


def token_acceptance_from_tau(accepted_per_step: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Per-token acceptance probability p that gives the measured accepted tokens per step under the
    i.i.d. chain model, E[accepted per step] = p (1 - p^gamma) / (1 - p). Vectorised bisection."""
    m = np.asarray(accepted_per_step, float)
    g = np.asarray(gamma, float)
    lo, hi = np.zeros_like(m), np.ones_like(m)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        val = mid * (1 - mid**g) / (1 - mid)
        lo = np.where(val < m, mid, lo)
        hi = np.where(val < m, hi, mid)
    return 0.5 * (lo + hi)


def _reached(frame: pd.DataFrame) -> np.ndarray:
    """Draft positions the target actually judged, per row (accepted + rejections). From the
    per-position counters `reached_1..k` when present, else by inverting the measured tau."""
    cols = [c for c in frame.columns if re.fullmatch(r"reached_\d+", str(c))]
    acc = frame["accepted"].to_numpy(float)
    steps = frame["steps"].to_numpy(float)
    est = acc / np.maximum(token_acceptance_from_tau(acc / np.maximum(steps, 1), frame["gamma"].to_numpy(float)), 1e-12)
    est = np.where(acc > 0, est, steps)
    if cols:
        measured = frame[cols].apply(pd.to_numeric, errors="coerce").sum(axis=1, min_count=1).to_numpy(float)
        est = np.where(np.isfinite(measured) & (measured > 0), measured, est)
    return np.maximum(est, acc)


def acceptance_table(frame: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """One row per draft configuration with counters summed over batch sizes and gammas.

    Per-token acceptance does not depend on batch size (docs/design.md, "Acceptance and batch size"),
    and the same configuration at several batch sizes is one measurement, not several: pooling keeps
    the bootstrap honest. Per-prompt
    lists are summed elementwise when they cover the same prompts (equal lengths), else concatenated.
    `alpha` and `tau` are recomputed from the pooled counters.

    `alpha_token` is the per-token acceptance probability of the i.i.d. chain model (Leviathan's
    alpha): accepted / reached, where `reached` counts the draft positions the target judged. It is
    what `expected_tau` and `batch_speedup` take. `alpha` = accepted / drafted counts the positions
    after a rejection as drafted too, so for gamma > 1 it is smaller than alpha_token and must not be
    plugged into those formulas.
    """
    missing = [c for c in _COUNTERS + ["gamma"] if c not in frame.columns]
    if missing:
        raise FitError(f"acceptance_table needs the raw counters {missing}")
    if len(frame) == 0:
        raise FitError("no separate-draft rows to pool (is the family column all 'mtp'?)")
    frame = frame.assign(reached=_reached(frame))
    if by is None:
        by = [c for c in ("family", "task", "temperature", "draft_name", "draft_params", "draft_tokens")
              if c in frame.columns]
    keep = [c for c in ("draft_params_non_embedding", "draft_n_layers", "draft_d_model", "draft_n_heads",
                        "draft_ffn_dim", "draft_val_loss", "target_val_loss", "target_params")
            if c in frame.columns and c not in by]
    rows = []
    for key, g in frame.groupby(by, dropna=False, sort=True):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for c in _COUNTERS + ["reached"]:
            row[c] = float(g[c].sum())
        for c in keep:
            row[c] = g[c].iloc[0]
        for c in ("prompt_accepted", "prompt_drafted", "prompt_steps"):
            if c in g.columns and g[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).all():
                arrs = [np.asarray(v, float) for v in g[c]]
                same = len({a.size for a in arrs}) == 1
                row[c] = list(np.sum(arrs, axis=0) if same else np.concatenate(arrs))
        if "prompt_accepted" in row and "prompt_steps" in row and len(row["prompt_accepted"]) == len(row["prompt_steps"]):
            # rejections per step of the configuration, spread over prompts by their step counts
            rej = (row["reached"] - row["accepted"]) / row["steps"]
            row["prompt_reached"] = list(np.asarray(row["prompt_accepted"]) + rej * np.asarray(row["prompt_steps"]))
        row["n_rows"] = len(g)
        rows.append(row)
    out = pd.DataFrame(rows)
    out["alpha"] = out["accepted"] / out["drafted"]
    out["alpha_token"] = out["accepted"] / out["reached"]
    out["tau"] = 1.0 + out["accepted"] / out["steps"]
    return out


def candidate_drafts(frame: pd.DataFrame) -> pd.DataFrame:
    """Distinct draft shapes in the table: name, d_model, n_layers, n_heads, ffn_dim, draft_params.

    n_heads comes from `draft_n_heads` when present, else d_model // 64 (at least 1).
    """
    need = ["draft_params", "draft_n_layers", "draft_d_model"]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise FitError(f"candidate drafts need column(s) {missing}; pass candidates= explicitly instead")
    src = frame[frame["family"] == "llama"] if "family" in frame.columns else frame
    rows = []
    for (d, L, n), g in src.groupby(["draft_d_model", "draft_n_layers", "draft_params"], sort=True):
        heads = g["draft_n_heads"].iloc[0] if "draft_n_heads" in g.columns else None
        ffn = g["draft_ffn_dim"].iloc[0] if "draft_ffn_dim" in g.columns else None
        rows.append({
            "draft_name": str(g["draft_name"].iloc[0]) if "draft_name" in g.columns else f"d{int(d)}_l{int(L)}",
            "d_model": int(d), "n_layers": int(L),
            "n_heads": int(heads) if heads is not None and pd.notna(heads) else max(int(d) // 64, 1),
            "ffn_dim": int(ffn) if ffn is not None and pd.notna(ffn) else None,
            "draft_params": float(n),
        })
    if not rows:
        raise FitError("no separate-draft (family 'llama') rows to take candidate shapes from")
    return pd.DataFrame(rows)


def _human(n: float) -> str:
    for unit, s in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= unit:
            v = n / unit
            return f"{v:.3g}{s}".replace(".", "p")
    return f"{n:.3g}"


@dataclass
class Recommendation:
    """The chosen draft, gamma per serving batch size, and the uncertainty of that choice."""

    draft: dict[str, Any]
    per_batch: list[dict[str, Any]]
    p_best: float
    regret: float
    expected_relative_loss: float
    candidates: pd.DataFrame
    level: float
    n_draws: int
    acceptance: dict[str, Any]
    cost: dict[str, Any]
    compute_budget: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"rec_d{self.draft['d_model']}_l{self.draft['n_layers']}_t{_human(self.draft['tokens'])}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "draft": self.draft, "per_batch": self.per_batch,
            "p_best": self.p_best, "regret_log_speedup": self.regret,
            "expected_relative_loss": self.expected_relative_loss, "level": self.level,
            "n_draws": self.n_draws, "compute_budget_flops": self.compute_budget,
            "objective": "weighted mean over serving batch sizes of ln(max over gamma of predicted speedup)",
            "tau_convention": "tau counts tokens per target forward including the bonus/correction token",
            "acceptance_law": self.acceptance, "cost_model": self.cost,
            "candidates": json.loads(self.candidates.to_json(orient="records")), "notes": self.notes,
        }

    def to_hydra_yaml(self) -> str:
        d = self.draft
        pct = int(round(100 * self.level))
        lines = [
            f"# Recommended draft (scylla-fit). Use as `draft={self.name}` (put this file in configs/draft/,",
            "# or add its parent folder to hydra.searchpath).",
            f"# Chosen among {len(self.candidates)} candidates; P(best over bootstrap draws) = {self.p_best:.2f};",
            f"# expected relative speedup lost vs the per-draw best = {self.expected_relative_loss:.3f}.",
            f"# Predicted speedup with {pct}% interval (tau includes the bonus token):",
        ]
        for r in self.per_batch:
            lines.append(f"#   batch_size={r['batch_size']:<5g} gamma={r['gamma']:<3d} speedup={r['speedup']:.3f} "
                         f"[{r['low']:.3f}, {r['high']:.3f}]  per-token acceptance={r['alpha_token']:.3f}")
        lines += [
            f"name: {self.name}",
            "family: llama",
            f"d_model: {d['d_model']}",
            f"n_layers: {d['n_layers']}",
            f"n_heads: {d['n_heads']}",
            f"ffn_dim: {'null' if d.get('ffn_dim') is None else d['ffn_dim']}",
            f"tokens: {int(d['tokens'])}",
        ]
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        d = self.draft
        pct = int(round(100 * self.level))
        out = [
            f"# Recommended draft: `{self.name}`", "",
            f"- shape: d_model={d['d_model']}, n_layers={d['n_layers']}, n_heads={d['n_heads']}, "
            f"params={d['draft_params']:.4g} (as measured draft `{d['draft_name']}`)",
            f"- pretraining tokens: {d['tokens']:.4g} (training compute 6ND = {6 * d['draft_params'] * d['tokens']:.3g} FLOP)",
            f"- probability it is the best candidate over {self.n_draws} bootstrap draws: "
            f"**{self.p_best:.2f}**",
            f"- regret of choosing by the point estimate: {self.regret:.4f} in mean ln-speedup "
            f"(expected relative speedup lost: {100 * self.expected_relative_loss:.2f}%)",
        ]
        if self.compute_budget:
            out.append(f"- training-compute budget: 6ND <= {self.compute_budget:.3g} FLOP")
        out += ["", f"| batch size | gamma | predicted speedup | {pct}% interval | per-token acceptance | P(best at this batch) |",
                "|---:|---:|---:|---|---:|---:|"]
        for r in self.per_batch:
            out.append(f"| {r['batch_size']:g} | {r['gamma']} | {r['speedup']:.3f} | [{r['low']:.3f}, {r['high']:.3f}] "
                       f"| {r['alpha_token']:.3f} | {r['p_best_at_batch']:.2f} |")
        top = self.candidates.head(10)
        out += ["", "## Candidates (best 10 by point estimate)", "",
                "| draft | params | tokens | score (mean ln S) | P(best) |", "|---|---:|---:|---:|---:|"]
        for _, r in top.iterrows():
            out.append(f"| {r['draft_name']} | {r['draft_params']:.3g} | {r['draft_tokens']:.3g} | "
                       f"{r['score']:.4f} | {r['p_best']:.2f} |")
        out += ["", "Speedup = tau * T_t(B,1) / (T_t(B,gamma+1) + gamma * T_d(B,1)) with fitted acceptance "
                "and fitted step times; tau includes the bonus token. Intervals are bootstrap percentile "
                "intervals of the prediction (law and cost-model uncertainty), not of a single run."]
        if self.notes:
            out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write `draft/<name>.yaml`, `recommendation.json` and `recommendation.md` under out_dir."""
        out = Path(out_dir)
        (out / "draft").mkdir(parents=True, exist_ok=True)
        paths = {"yaml": out / "draft" / f"{self.name}.yaml", "json": out / "recommendation.json",
                 "markdown": out / "recommendation.md"}
        paths["yaml"].write_text(self.to_hydra_yaml())
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        paths["markdown"].write_text(self.to_markdown())
        return paths


@single_thread_blas
def recommend(
    acceptance: FitResult,
    cost: CostModel,
    *,
    candidates: pd.DataFrame,
    token_budgets: list[float] | np.ndarray,
    batch_sizes: list[float] | np.ndarray,
    max_gamma: int = 8,
    compute_budget: float | None = None,
    batch_weights: list[float] | np.ndarray | None = None,
) -> Recommendation:
    """Choose draft shape x token budget (x gamma per batch size) maximising predicted speedup.

    `acceptance` must be a fit of `alpha_token` (see `acceptance_table`) whose x columns are among
    `draft_tokens` and `draft_params` and which has bootstrap draws; `cost` should have bootstrap draws too (else its point estimate is
    used in every draw). `candidates` is a frame like `candidate_drafts()` returns.
    """
    if acceptance.y != "alpha_token":
        raise FitError(f"the acceptance law must be fitted to 'alpha_token' (per-token acceptance probability, "
                       f"see acceptance_table), not {acceptance.y!r}: accepted/drafted understates it for gamma > 1")
    if not set(acceptance.x) <= {"draft_tokens", "draft_params"}:
        raise FitError(f"the acceptance law's x must be draft_tokens and/or draft_params, got {acceptance.x}")
    if acceptance.boot_raw is None:
        raise FitError("the acceptance fit has no bootstrap draws; refit with n_bootstrap >= 1000")
    if max_gamma < 1:
        raise FitError("max_gamma must be >= 1")
    B = np.asarray(sorted(set(float(b) for b in batch_sizes)), float)
    if B.size == 0 or np.any(B <= 0):
        raise FitError("batch_sizes must be positive")
    wts = np.ones(B.size) if batch_weights is None else np.asarray(batch_weights, float)
    if wts.shape != B.shape or np.any(wts < 0) or wts.sum() <= 0:
        raise FitError(f"batch_weights must be {B.size} non-negative numbers (one per batch size)")
    wts = wts / wts.sum()

    grid = candidates.merge(pd.DataFrame({"draft_tokens": np.asarray(sorted(set(map(float, token_budgets))))}),
                            how="cross")
    notes: list[str] = []
    if compute_budget is not None:
        within = 6.0 * grid["draft_params"] * grid["draft_tokens"] <= compute_budget
        if not within.any():
            raise FitError(f"no candidate fits the training-compute budget {compute_budget:.3g} FLOP (6ND); "
                           f"the smallest needs {(6 * grid['draft_params'] * grid['draft_tokens']).min():.3g}")
        grid = grid[within].reset_index(drop=True)
    cost.warn_range(B)

    # acceptance: point (M,) and draws (K, M); clip unbounded forms below 1 and say so
    alpha_pt = acceptance.predict(grid, warn=True).to_numpy(float)
    alpha_dr = acceptance.predict_draws(grid)
    if np.any(alpha_pt >= 1) or np.any(alpha_dr >= 1):
        notes.append("the acceptance law predicts alpha >= 1 for some candidates (unbounded form); clipped to 0.999")
    alpha_pt = np.clip(alpha_pt, 0.0, 0.999)
    alpha_dr = np.clip(alpha_dr, 0.0, 0.999)
    K = alpha_dr.shape[0]
    if cost.draft_draws is not None:
        K = min(K, len(cost.draft_draws))
    alpha_dr = alpha_dr[:K]

    g = np.arange(0, max_gamma + 1, dtype=float)
    N = grid["draft_params"].to_numpy(float)
    L = grid["n_layers"].to_numpy(float)

    def speedups(alpha: np.ndarray, draws: bool) -> np.ndarray:
        """(..., M, nB, nG) predicted speedup."""
        Bb = B[:, None]  # (nB, 1)
        if draws and cost.draft_draws is not None:
            td = cost.draft_time(N[:, None], L[:, None], B[None, :], draws=True)[:K]  # (K, M, nB)
            t1 = cost.target_time(B, 1.0, draws=True)[:K]  # (K, nB)
            tv = cost.target_time(Bb, g[None, :] + 1.0, draws=True)[:K]  # (K, nB, nG)
            return batch_speedup(alpha[:, :, None, None], g, t1[:, None, :, None], tv[:, None, :, :],
                                 td[..., None])
        td = cost.draft_time(N[:, None], L[:, None], B[None, :])  # (M, nB)
        t1 = cost.target_time(B, 1.0)  # (nB,)
        tv = cost.target_time(Bb, g[None, :] + 1.0)  # (nB, nG)
        return batch_speedup(alpha[..., :, None, None], g, t1[:, None], tv, td[..., None])

    S_pt = speedups(alpha_pt, False)  # (M, nB, nG)
    S_dr = speedups(alpha_dr, True)  # (K, M, nB, nG)
    best_pt = S_pt.max(axis=-1)  # (M, nB)
    best_dr = S_dr.max(axis=-1)  # (K, M, nB)
    score_pt = np.log(best_pt) @ wts  # (M,)
    score_dr = np.log(best_dr) @ wts  # (K, M)
    chosen = int(np.argmax(score_pt))
    winners = np.argmax(score_dr, axis=1)
    p_best_all = np.bincount(winners, minlength=len(grid)) / K
    regret_draws = score_dr.max(axis=1) - score_dr[:, chosen]
    q = 50 * (1 - acceptance.level)

    per_batch = []
    for j, b in enumerate(B):
        gi = int(np.argmax(S_pt[chosen, j]))
        s_draws = S_dr[:, chosen, j, gi]
        lo, hi = np.percentile(s_draws, [q, 100 - q])
        win_b = np.argmax(best_dr[:, :, j], axis=1)
        per_batch.append({
            "batch_size": float(b), "gamma": int(g[gi]), "speedup": float(S_pt[chosen, j, gi]),
            "low": float(lo), "high": float(hi), "alpha_token": float(alpha_pt[chosen]),
            "p_best_at_batch": float(np.mean(win_b == chosen)),
            "best_draft_at_batch": str(grid["draft_name"].iloc[int(np.argmax(best_pt[:, j]))]),
        })
        if gi == 0:
            notes.append(f"at batch size {b:g} no gamma beats plain decoding: serve without speculation there")

    table = grid.copy()
    table["alpha_pred"] = alpha_pt
    table["score"] = score_pt
    table["p_best"] = p_best_all
    table = table.sort_values("score", ascending=False).reset_index(drop=True)
    row = grid.iloc[chosen]
    draft = {
        "draft_name": str(row["draft_name"]), "d_model": int(row["d_model"]), "n_layers": int(row["n_layers"]),
        "n_heads": int(row["n_heads"]), "ffn_dim": None if pd.isna(row.get("ffn_dim")) else int(row["ffn_dim"]),
        "draft_params": float(row["draft_params"]), "tokens": float(row["draft_tokens"]),
    }
    for c in acceptance.x:
        lo, hi = acceptance.x_range[c]
        v = draft["tokens"] if c == "draft_tokens" else draft["draft_params"]
        if not lo <= v <= hi:
            notes.append(f"the chosen {c} = {v:.3g} lies outside the measured range [{lo:.3g}, {hi:.3g}]: extrapolated")
    emit([n for n in notes if "outside" in n])
    return Recommendation(
        draft=draft, per_batch=per_batch, p_best=float(p_best_all[chosen]), regret=float(np.mean(regret_draws)),
        expected_relative_loss=float(np.mean(1.0 - np.exp(-regret_draws))), candidates=table,
        level=acceptance.level, n_draws=K, acceptance=acceptance.to_dict(), cost=cost.to_dict(),
        compute_budget=compute_budget, notes=notes,
    )
