"""Synthetic results tables from known laws: for tests, the benchmark and trying the CLI before any
sweep exists. Every column of the results-table contract is filled, per-prompt counters included,
and acceptance is simulated token by token (chain drafts, i.i.d. per prompt), so the fitter sees the
same kind of noise a real sweep has."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scylla.measure.analytic import expected_tau

__all__ = ["TRUTH", "MTP_TRUTH", "draft_params", "synthetic_results", "synthetic_mtp_results", "simulate_oracle_stats",
           "synthetic_probes", "oracle_record", "synthetic_serving_study"]

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


# ---------------------------------------------------------------------------------------------------
# Oracle job records (per-prompt traces + cost probes), for the measured-cell serving recommender


def simulate_oracle_stats(p: np.ndarray, shape: str, lengths: np.ndarray, rng: np.random.Generator,
                          *, temperature: float = 0.0) -> dict:
    """The oracle's counters (`DecodeStats.to_dict()`) of one shape on prompts whose continuations have
    ``lengths`` tokens, each draft position accepted with probability ``p`` per prompt (a static tree's
    depth d with its K_d candidates: 1 - (1 - p)^K_d), simulated step by step with the engine's rules
    (the prefill emits the first token; a row with r tokens left drafts at most r - 1)."""
    from scylla.decode.stats import DecodeStats
    from scylla.decode.tree import TreeSpec

    spec = TreeSpec.parse(shape)
    p = np.asarray(p, float)
    n, G = p.size, spec.depth
    q = 1.0 - (1.0 - p[:, None]) ** np.asarray(spec.branching or (1,), float)[None, :G] if G else np.zeros((n, 0))
    left = np.asarray(lengths, int) - 1
    steps, acc = np.zeros(n, int), np.zeros(n, int)
    acc_pos, reach_pos = np.zeros(G, int), np.zeros(G, int)
    drafted = np.zeros(n, int)
    nodes = [int(np.prod(spec.branching[: d + 1])) for d in range(G)]
    while (left > 0).any():
        active = left > 0
        limit = np.clip(left - 1, 0, G)
        a = np.cumprod(rng.random((n, G)) < q, axis=1).sum(axis=1) if G else np.zeros(n, int)
        a = np.minimum(a, limit)
        steps += active
        acc += active * a
        for d in range(G):
            reach_pos[d] += int(np.sum(active & (d < limit) & (a >= d)))
            acc_pos[d] += int(np.sum(active & (a > d)))
        drafted += active * np.array([sum(nodes[: int(m)]) for m in limit])
        left = left - active * (1 + a)
    stats = DecodeStats(gamma=G, temperature=temperature, batch_size=0, n_prompts=n, tree=spec.describe(),
                        drafted=int(drafted.sum()), accepted=int(acc.sum()), steps=int(steps.sum()),
                        accepted_per_position=acc_pos.tolist(), reached_per_position=reach_pos.tolist(),
                        generated_tokens=int(np.sum(lengths)), prompt_drafted=drafted.tolist(),
                        prompt_accepted=acc.tolist(), prompt_steps=steps.tolist(),
                        prompt_generated=np.asarray(lengths, int).tolist())
    return stats.to_dict()


def synthetic_probes(shapes: list[str], batch_sizes: list[int], *, has_draft: bool = True,
                     target: tuple[float, float] = (1e-2, 1e-3), draft: tuple[float, float] = (2e-3, 1e-4),
                     prefill: tuple[float, float] = (5e-3, 1e-3),
                     overhead: tuple[float, float, float] = (5e-4, 2e-5, 1e-4),
                     repeats: int = 3, noise: float = 0.05, context: int = 48,
                     rng: np.random.Generator | None = None) -> tuple[list[dict], list[dict]]:
    """Cost probes (record ``probes`` and ``overheads``) for ``shapes``: a forward of w tokens per row at
    batch b takes ``a + c * b * w`` (target and draft), a prefill ``a + c * b``, the engine's own time per
    step ``o0 + o1 * b (+ o2 per draft forward)``; each repeat is multiplied by exp(noise * N(0, 1))."""
    from scylla.decode.tree import TreeSpec
    from scylla.measure.compose import required_widths
    from scylla.measure.probes import ForwardProbe, OverheadProbe

    rng = rng or np.random.default_rng(0)
    need = required_widths([TreeSpec.parse(s) for s in shapes], has_draft)

    def times(base: float) -> list[float]:
        return (base * np.exp(noise * rng.standard_normal(repeats))).tolist()

    probes = []
    for b in batch_sizes:
        for role, (a, c) in (("target", target), ("draft", draft)):
            if role == "draft" and not has_draft:
                continue
            for kind in ("decode", "tree"):
                for wd in sorted(need[role][kind]):
                    probes.append(ForwardProbe(role, kind, b, wd, context, times(a + c * b * wd)))
            probes.append(ForwardProbe(role, "prefill", b, context, context, times(prefill[0] + prefill[1] * b)))
    o0, o1, o2 = overhead
    overheads = [OverheadProbe(b, "chain:0", times(o0 + o1 * b), 0.0) for b in batch_sizes]
    chains = [TreeSpec.parse(s) for s in shapes if TreeSpec.parse(s).is_chain and TreeSpec.parse(s).depth]
    if chains and has_draft:
        g = max(c.depth for c in chains)
        overheads += [OverheadProbe(b, f"chain:{g}", times(o0 + o1 * b + o2 * g), float(g)) for b in batch_sizes]
    return [p.to_dict() for p in probes], [o.to_dict() for o in overheads]


def oracle_record(run_id: str, *, draft: dict, stats: dict[str, dict[str, dict]], batch_sizes: list[int],
                  probes: list[dict], overheads: list[dict], continuation_keys: dict[str, str] | None = None,
                  max_new_tokens: int = 32, temperature: float = 0.0, engine: list[dict] | None = None) -> dict:
    """A job record as `scylla.harness.pipeline` writes it for ``decode.method: oracle``: one oracle row
    per (task, shape, batch size) from ``stats[task][shape]`` (counters with per-prompt lists), the
    cost probes and overheads, the continuations keys, and ``engine`` rows if given. ``draft`` is the
    record's draft info (name, family, tokens, ...); its Hydra node is derived from it."""
    from scylla.measure.rows import measurement

    rows = [measurement(task, source="oracle", stats=st, batch_size=b, temperature=temperature,
                        max_new_tokens=max_new_tokens)
            for task, by_shape in stats.items() for st in by_shape.values() for b in batch_sizes]
    cfg_draft = {k: v for k, v in draft.items() if k in ("name", "family", "d_model", "n_layers", "n_heads", "ffn_dim",
                                                          "tokens", "k", "ngram_max", "ngram_min", "vocab_size")}
    keys = continuation_keys or {t: f"cont-{t}" for t in stats}
    return {"schema_version": 1, "run_id": run_id, "created_at": "2026-01-01T00:00:00Z",
            "config": {"draft": cfg_draft, "decode": {"batch_sizes": list(batch_sizes), "temperature": temperature,
                                                      "max_new_tokens": max_new_tokens},
                       "eval": {"tasks": list(stats)}},
            "target": {"name": "synthetic-target"}, "draft": dict(draft),
            "measurements": rows + list(engine or []), "probes": probes, "overheads": overheads,
            "continuations": {t: {"key": keys[t]} for t in stats}, "checks": [],
            "provenance": {}, "tau_definition": "1 + accepted/steps"}


def synthetic_serving_study(n_jobs: int = 100, *,
                            tasks: tuple[str, ...] = ("code", "prose", "chat-qa", "chat-code", "qa"),
                            shapes: tuple[str, ...] = ("chain:1", "chain:2", "chain:3", "chain:4", "chain:6",
                                                       "static:2x1", "static:2x2x1", "static:3x2x1x1"),
                            batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32), n_prompts: int = 32,
                            max_new_tokens: int = 32, seed: int = 0) -> list[dict]:
    """A study of ``n_jobs`` oracle jobs (draft sizes x token budgets, the last one n-gram lookup),
    every task, shape and batch size: the size the serving recommender must handle quickly. Drafts are
    accepted more the larger and longer trained they are, and cost more the larger they are; the
    target's probes are shared by every job, as a sweep's cache makes them."""
    rng = np.random.default_rng(seed)
    lengths = {t: rng.integers(max_new_tokens // 2, max_new_tokens + 1, n_prompts) for t in tasks}
    target_probes, plain_overheads = synthetic_probes(list(shapes), list(batch_sizes), has_draft=False, rng=rng)
    records = []
    widths = (32, 64, 128, 256)
    for i in range(n_jobs):
        ngram = i == n_jobs - 1
        width, budget = widths[i % len(widths)], float(np.geomspace(1e5, 1e8, 25)[(i // len(widths)) % 25])
        base_p = 0.35 if ngram else 1 / (1 + np.exp(-(-6.0 + 0.25 * np.log(budget) + 0.5 * np.log(width))))
        stats = {}
        for t in tasks:
            p = np.clip(base_p + rng.normal(0, 0.1, n_prompts), 0.01, 0.95)
            stats[t] = {s: simulate_oracle_stats(p, s, lengths[t], rng) for s in shapes}
        if ngram:
            probes, overheads = target_probes, plain_overheads
            info = {"name": "ngram", "family": "ngram", "tokens": 1, "ngram_max": 3, "ngram_min": 1, "params": 0}
        else:
            draft_probes, draft_overheads = synthetic_probes(list(shapes), list(batch_sizes), rng=rng,
                                                             draft=(5e-4 * width / 32, 2e-5 * width / 32))
            probes = target_probes + [p for p in draft_probes if p["role"] == "draft"]
            overheads = plain_overheads + [o for o in draft_overheads if o["shape"] != "chain:0"]
            info = {"name": f"draft-w{width}", "family": "llama", "d_model": width, "n_layers": 2,
                    "n_heads": max(1, width // 32), "ffn_dim": 3 * width, "tokens": int(budget)}
        records.append(oracle_record(f"job{i:03d}", draft=info, stats=stats, batch_sizes=list(batch_sizes),
                                     probes=probes, overheads=overheads, max_new_tokens=max_new_tokens))
    return records
