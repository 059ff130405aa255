"""Synthetic results tables from known laws: for tests, the benchmark and trying the CLI before any
sweep exists. Every column of the results-table contract is filled, per-prompt counters included,
and acceptance is simulated token by token (chain drafts, i.i.d. per prompt), so the fitter sees the
same kind of noise a real sweep has."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scylla.measure.analytic import expected_tau

__all__ = ["TRUTH", "MTP_TRUTH", "draft_params", "synthetic_results", "synthetic_mtp_results"]

TRUTH = {
    # logit(alpha) = a + b1 ln(tokens) + b2 ln(params)
    "a": -5.0, "b1": 0.16, "b2": 0.20,
    # T_d = d0 + d1 * n_layers + d2 * params * batch; T_t(B, k) = t0 + t1 * B + t2 * B * k
    "draft": (4e-4, 3e-4, 2e-11), "target": (2e-2, 4e-4, 6e-4),
    # draft validation loss: E + A / N^alpha + B / D^beta
    "loss": {"E": 2.0, "A": 300.0, "alpha": 0.35, "B": 900.0, "beta": 0.32},
}

SHAPES = ((64, 2), (128, 2), (128, 4), (256, 4), (256, 8))


def draft_params(d_model: int, n_layers: int, vocab: int = 4096) -> float:
    """Approximate total parameters of a Llama-style decoder with tied embeddings."""
    return 12.0 * n_layers * d_model**2 + vocab * d_model


def synthetic_results(
    seed: int = 0,
    *,
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    tokens: tuple[float, ...] = (2e6, 6e6, 2e7, 6e7, 2e8),
    batch_sizes: tuple[int, ...] = (1, 4, 16),
    gammas: tuple[int, ...] = (2, 4),
    n_prompts: int = 16,
    steps_per_prompt: int = 12,
    prompt_sd: float = 0.3,
    time_noise: float = 0.03,
    truth: dict | None = None,
) -> pd.DataFrame:
    """A results table with one row per (draft shape, token budget, batch size, gamma)."""
    t = dict(TRUTH if truth is None else truth)
    rng = np.random.default_rng(seed)
    d0, d1, d2 = t["draft"]
    t0, t1, t2 = t["target"]
    lo = t["loss"]
    rows = []
    for d_model, n_layers in shapes:
        N = draft_params(d_model, n_layers)
        for T in tokens:
            logit = t["a"] + t["b1"] * np.log(T) + t["b2"] * np.log(N)
            loss = (lo["E"] + lo["A"] / N ** lo["alpha"] + lo["B"] / T ** lo["beta"]) * np.exp(rng.normal(0, 0.005))
            for B in batch_sizes:
                for g in gammas:
                    p_alpha = 1.0 / (1.0 + np.exp(-(logit + rng.normal(0, prompt_sd, n_prompts))))
                    u = rng.random((n_prompts, steps_per_prompt, g)) < p_alpha[:, None, None]
                    acc = np.cumprod(u, axis=2).sum(axis=2)  # accepted prefix length per step
                    prompt_acc = acc.sum(axis=1).astype(int)
                    prompt_steps = np.full(n_prompts, steps_per_prompt)
                    prompt_drafted = prompt_steps * g
                    accepted, drafted, steps = prompt_acc.sum(), prompt_drafted.sum(), prompt_steps.sum()
                    noise = lambda: np.exp(rng.normal(0, time_noise))  # noqa: E731
                    td = (d0 + d1 * n_layers + d2 * N * B) * noise()
                    tt = (t0 + t1 * B + t2 * B) * noise()
                    tv = (t0 + t1 * B + t2 * B * (g + 1)) * noise()
                    tau = 1.0 + accepted / steps
                    gen = B * (accepted + steps)
                    wall = steps * (tv + g * td) / n_prompts * B
                    base_tps = B / tt
                    tps = tau * B / (tv + g * td)
                    rows.append({
                        "run_id": f"syn{seed}", "family": "llama", "task": "prose",
                        "draft_name": f"d{d_model}_l{n_layers}", "draft_params": N,
                        "draft_params_non_embedding": 12.0 * n_layers * d_model**2, "draft_n_layers": n_layers,
                        "draft_d_model": d_model, "draft_tokens": T, "batch_size": B, "gamma": g,
                        "temperature": 0.0, "target_params": 2.5e7,
                        "drafted": int(drafted), "accepted": int(accepted), "steps": int(steps),
                        "generated_tokens": int(gen), "target_forwards": int(steps), "draft_forwards": int(steps * g),
                        "draft_seconds": steps * g * td, "verify_seconds": steps * tv, "wall_seconds": wall,
                        "alpha": accepted / drafted, "tau": tau, "tokens_per_second": tps,
                        "baseline_tokens_per_second": base_tps, "speedup": tps / base_tps, "c": td / tt,
                        "draft_step_seconds": td, "target_step_seconds": tt, "verify_step_seconds": tv,
                        "draft_val_loss": loss,
                        "prompt_accepted": prompt_acc.tolist(), "prompt_drafted": prompt_drafted.tolist(),
                        "prompt_steps": prompt_steps.tolist(),
                        "expected_tau_iid": float(expected_tau(accepted / drafted, g)),
                        # per-position counters of a chain draft: position k was judged when the
                        # first k - 1 tokens were accepted
                        **{f"accepted_{k}": int(np.sum(acc >= k)) for k in range(1, max(gammas) + 1) if k <= g},
                        **{f"reached_{k}": int(np.sum(acc >= k - 1)) for k in range(1, max(gammas) + 1) if k <= g},
                    })
    return pd.DataFrame(rows)


MTP_TRUTH = {
    # tau at k = k_max heads (tokens per forward, bonus included) = a + b1 ln(tokens) + b2 ln(params)
    "a": -1.9, "b1": 0.15, "b2": 0.10,
    # plain step T(B) = t0 + t1 * B + t2 * B; a forward on k tokens with k heads t0 + t1 * B + t2 * B * k
    "target": (2e-3, 2e-4, 3e-4),
}

MTP_SHAPES = ((64, 2), (128, 2), (256, 2))


def synthetic_mtp_results(
    seed: int = 0,
    *,
    shapes: tuple[tuple[int, int], ...] = MTP_SHAPES,
    tokens: tuple[float, ...] = (2e6, 6e6, 2e7, 6e7, 2e8),
    k: int = 4,
    batch_sizes: tuple[int, ...] = (1, 4, 16),
    n_prompts: int = 16,
    steps_per_prompt: int = 12,
    prompt_sd: float = 0.1,
    time_noise: float = 0.03,
    truth: dict | None = None,
) -> pd.DataFrame:
    """Multi-token-prediction rows (family ``mtp``), as a k-head job writes them: one row per (model
    shape, token budget, batch size, k' in 2..k) with ``gamma = k' - 1``.

    Each prompt has its own tau at k heads, ``MTP_TRUTH`` plus Gaussian noise (``prompt_sd``), turned
    into an i.i.d. per-head acceptance probability by inverting the chain model at gamma = k - 1; the
    same probability drives k' < k. So E[tau at k] is exactly log-linear in ln tokens and ln params."""
    from .recommend import token_acceptance_from_tau

    t = dict(MTP_TRUTH if truth is None else truth)
    rng = np.random.default_rng(seed)
    t0, t1, t2 = t["target"]
    g_max = k - 1
    rows = []
    for d_model, n_layers in shapes:
        N = draft_params(d_model, n_layers) + (k - 1) * 12.0 * d_model**2  # + one layer per extra head
        name = f"mtp_d{d_model}_l{n_layers}_k{k}"
        for T in tokens:
            tau_k = t["a"] + t["b1"] * np.log(T) + t["b2"] * np.log(N)
            tau_p = np.clip(tau_k + rng.normal(0, prompt_sd, n_prompts), 1.02, k - 0.02)
            p = token_acceptance_from_tau(tau_p - 1.0, np.full(n_prompts, float(g_max)))
            for B in batch_sizes:
                noise = lambda: np.exp(rng.normal(0, time_noise))  # noqa: E731
                tt = (t0 + t1 * B + t2 * B) * noise()
                for kk in range(2, k + 1):
                    g = kk - 1
                    u = rng.random((n_prompts, steps_per_prompt, g)) < p[:, None, None]
                    acc = np.cumprod(u, axis=2).sum(axis=2)  # accepted prefix per step
                    prompt_acc = acc.sum(axis=1).astype(int)
                    prompt_steps = np.full(n_prompts, steps_per_prompt)
                    accepted, steps = int(prompt_acc.sum()), int(prompt_steps.sum())
                    drafted = steps * g
                    tv = (t0 + t1 * B + t2 * B * kk) * noise()
                    tau = 1.0 + accepted / steps
                    base_tps, tps = B / tt, tau * B / tv
                    acc_n = {f"accepted_{j}": int(np.sum(acc >= j)) for j in range(1, g + 1)}
                    reach_n = {f"reached_{j}": int(np.sum(acc >= j - 1)) for j in range(1, g + 1)}
                    rows.append({
                        "run_id": f"synmtp{seed}", "family": "mtp", "task": "prose", "draft_name": name,
                        "draft_params": N, "draft_params_non_embedding": N - 4096 * d_model,
                        "draft_n_layers": n_layers, "draft_d_model": d_model, "draft_tokens": T, "batch_size": B,
                        "gamma": g, "temperature": 0.0, "target_name": name, "target_params": N,
                        "drafted": drafted, "accepted": accepted, "steps": steps,
                        "generated_tokens": int(accepted + steps), "target_forwards": steps + n_prompts,
                        "draft_forwards": 0, "draft_seconds": 0.0, "verify_seconds": steps * tv / B,
                        "wall_seconds": steps * tv / B, "alpha": accepted / drafted, "tau": tau,
                        "tokens_per_second": tps, "baseline_tokens_per_second": base_tps, "speedup": tps / base_tps,
                        "c": 0.0, "draft_step_seconds": 0.0, "target_step_seconds": tt, "verify_step_seconds": tv,
                        "prompt_accepted": prompt_acc.tolist(), "prompt_drafted": (prompt_steps * g).tolist(),
                        "prompt_steps": prompt_steps.tolist(),
                        **acc_n, **reach_n,
                        **{f"alpha_{j}": acc_n[f"accepted_{j}"] / reach_n[f"reached_{j}"] if reach_n[f"reached_{j}"]
                           else float("nan") for j in range(1, g + 1)},
                    })
    return pd.DataFrame(rows)
