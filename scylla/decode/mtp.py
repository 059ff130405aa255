"""Self-speculative decoding with a multi-token-prediction model (Gloeckle et al. 2024, section 3.2).

No second model: with ``k`` heads, one forward at the last accepted position gives head 1's next
token *and* heads 2..k's guesses for the tokens after it. The next forward feeds
``[next, d_2..d_k]`` and head 1 verifies the guesses at once; each row keeps the longest accepted
prefix plus head 1's token after it (correction, or bonus when all were accepted), and heads 2..k at
that position draft the next block. So every forward both verifies and drafts; ``k = 1`` is plain
decoding (one forward per token after the prefill).

Verification is lossless: greedy keeps a guess iff it equals head 1's argmax; at temperature > 0,
guess ``d_j`` was sampled from head j's distribution ``q_j`` independently of head 1's token and of
the other guesses, so given all verification has seen before position j it is still distributed as
``q_j``, and the rule of Leviathan et al. applies position by position: keep with probability
``min(1, p(d_j) / q_j(d_j))``, at the first rejection sample from ``normalize(max(0, p - q_j))``, and
the bonus from ``p``. The output is distributed exactly as head 1's own sampling (docs/mtp.md).

The loop mirrors `scylla.decode.engine.speculative_generate` (the same cache with per-slot validity, ragged
acceptance, per-row EOS and max_new_tokens, finished rows leaving the batch) and fills the same
`DecodeStats`, so records of both draft families share one schema:

- ``gamma = k - 1`` (guesses per step), ``drafted``: guesses offered (heads 2..k), ``accepted``: kept,
- ``accepted_per_position[j]`` / ``reached_per_position[j]``: head ``j + 2`` (chain acceptance),
- ``steps``: row-steps (one per row per verifying forward), ``tau = 1 + accepted / steps`` = tokens
  per forward, bonus/correction included,
- a row is offered only the guesses it may still emit; guesses after a kept EOS are past the
  sequence's end and count as neither drafted, reached nor accepted (as in the engine),
- ``target_forwards``: model forwards including the prefill; ``draft_forwards = 0`` and
  ``draft_seconds = 0`` (drafting has no forward of its own: its cost is inside ``verify_seconds``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from scylla.decode.engine import DecodeStats, SpeculativeOutput, _CachedLM, _is_int, _pick, _probs, _sync, _validate, record_row_step
from scylla.measure.speedup import SpeedupMeasurement
from scylla.models.mtp import FusedHeads, MTPForCausalLM

__all__ = ["self_speculative_generate", "measure_self_speculative", "measure_self_speculative_ks",
           "SelfSpeculativeMeasurement"]


class _CachedMTP(_CachedLM):
    """`_CachedLM` whose forward returns the k heads' normalised states [k, B, W, d] (fused path)."""

    def __init__(self, model: MTPForCausalLM, k: int, batch: int, device: torch.device) -> None:
        super().__init__(model, batch, device)
        self.fused: FusedHeads = model.fused_heads(k)

    def keep_block_prefix(self, width: int, n_keep: torch.Tensor, most: int) -> None:
        """Of the last ``width`` slots keep each row's first ``n_keep + 1``; ``most = max(n_keep)`` (a host
        int) lets the trailing slots rejected by every row be cropped without a device round trip."""
        self.valid[:, -width:] &= torch.arange(width, device=n_keep.device)[None, :] <= n_keep[:, None]
        self.next_pos = self.next_pos - (width - 1 - n_keep)
        drop = width - 1 - most
        if drop > 0:
            self.cache.crop(-drop)
            self.valid = self.valid[:, :-drop]

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        pos = (self.next_pos[:, None] + valid.long().cumsum(1) - 1).clamp_min(0)
        attention_mask = torch.cat([self.valid, valid], dim=1).long()
        h = self.model.fused_head_states(tokens, attention_mask, pos, self.cache, self.fused)
        self.valid = torch.cat([self.valid, valid], dim=1)
        self.next_pos = self.next_pos + valid.long().sum(1)
        self.forwards += 1
        return h


def _check_model(model: Any, k: int) -> None:
    """Reject a model without heads or a bad k before any forward runs (the rest: `engine._validate`)."""
    if not isinstance(model, MTPForCausalLM):
        raise TypeError(f"self-speculative decoding needs a scylla.models.mtp.MTPForCausalLM (a model with future-token "
                        f"heads), got {type(model).__name__}; for a separate draft model use "
                        "scylla.decode.engine.speculative_generate")
    if not _is_int(k) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (heads used; 1 = plain decoding), got {k!r}")
    if k > model.n_future:
        raise ValueError(f"k={k} exceeds the model's n_future={model.n_future} heads; use 1 <= k <= {model.n_future}")


@torch.inference_mode()
def self_speculative_generate(
    model: MTPForCausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    k: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
) -> SpeculativeOutput:
    """Generate continuations with the model drafting for itself through heads 2..k.

    Args:
        model: an `MTPForCausalLM` (its head 1 defines the output distribution).
        prompts: token-id lists, lengths may differ.
        k: heads used, ``1 <= k <= model.n_future``; ``k = 1`` is plain decoding.
        max_new_tokens: per-row cap on generated tokens (EOS included when it stops a row).
        temperature: 0 is greedy verification, > 0 lossless rejection sampling.
        batch_size: rows decoded together (``None``: all prompts at once).
        eos_token_id: a row stops after emitting it.
        seed: seeds the sampler (temperature > 0); ``None`` means seed 0, so runs are reproducible.

    Returns:
        ``.sequences`` (generated ids per prompt, input order) and ``.stats`` (`DecodeStats`, gamma=k-1).
    """
    _check_model(model, k)
    _validate(model, None, prompts, int(k) - 1, max_new_tokens, temperature, batch_size, eos_token_id)
    k, max_new_tokens = int(k), int(max_new_tokens)
    batch_size = None if batch_size is None else int(batch_size)
    device = next(model.parameters()).device
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else int(seed))
    chunk = batch_size or len(prompts)
    g_max = k - 1
    stats = DecodeStats(gamma=g_max, temperature=float(temperature), batch_size=chunk, n_prompts=len(prompts),
                        accepted_per_position=[0] * g_max, reached_per_position=[0] * g_max)
    sequences: list[list[int]] = []
    for start in range(0, len(prompts), chunk):
        seqs, part = _generate_chunk(model, prompts[start : start + chunk], k, max_new_tokens, temperature,
                                     eos_token_id, generator, device)
        sequences.extend(seqs)
        stats.merge(part)
    return SpeculativeOutput(sequences=sequences, stats=stats)


# Extra multiply-adds (over the whole batch) below which greedy steps unembed every head at every block
# position in one matmul: about what a handful of small CPU kernel launches cost.
_MERGE_UNEMBED_MACS = 1_000_000


def _unembed(model: MTPForCausalLM, h: torch.Tensor) -> torch.Tensor:
    return model.lm_head(h).float()


def _draft(model: MTPForCausalLM, h_rows: torch.Tensor, temperature: float,
           generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Guesses of heads 2..k from their states [B, k-1, d]: tokens [B, k-1] (+ their distributions)."""
    b, g = h_rows.shape[0], h_rows.shape[1]
    if g == 0:
        return torch.zeros(b, 0, dtype=torch.long, device=h_rows.device), None
    logits = _unembed(model, h_rows)  # [B, k-1, V]
    if temperature == 0:
        return logits.argmax(-1), None
    probs = _probs(logits, temperature)
    tokens = torch.multinomial(probs.reshape(b * g, -1), 1, generator=generator).view(b, g)
    return tokens, probs


def _generate_chunk(
    model: MTPForCausalLM,
    prompts: Sequence[Sequence[int]],
    k: int,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[list[list[int]], DecodeStats]:
    n = len(prompts)
    g_max = k - 1
    stats = DecodeStats(gamma=g_max, temperature=float(temperature), batch_size=n, n_prompts=n,
                        accepted_per_position=[0] * g_max, reached_per_position=[0] * g_max,
                        prompt_drafted=[0] * n, prompt_accepted=[0] * n, prompt_steps=[0] * n,
                        prompt_generated=[0] * n)
    out: list[list[int]] = [[] for _ in range(n)]
    wall0 = time.perf_counter()

    # Prefill, left-padded so every row's last prompt token sits in the last column.
    longest = max(len(p) for p in prompts)
    tokens = torch.zeros(n, longest, dtype=torch.long, device=device)
    valid = torch.zeros(n, longest, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        valid[i, longest - len(p) :] = True
    lm = _CachedMTP(model, k, n, device)
    unembed_macs = model.lm_head.weight.numel()
    t0 = time.perf_counter()
    h = lm.forward(tokens, valid)[:, :, -1]  # [k, n, d] at each row's last prompt token
    cur, _ = _pick(_unembed(model, h[0]), temperature, generator)
    drafts, draft_probs = _draft(model, h[1:].transpose(0, 1), temperature, generator)
    _sync(device)
    stats.prefill_seconds += time.perf_counter() - t0
    stats._prefill_forwards += 1

    rows = list(range(n))  # original index of each active batch row
    generated = [0] * n
    finished_mask: list[bool] = []
    for b, tok in enumerate(cur.tolist()):
        out[b].append(tok)
        generated[b] = 1
        finished_mask.append(tok == eos_token_id or max_new_tokens == 1)

    while True:
        if any(finished_mask):
            keep = [b for b, f in enumerate(finished_mask) if not f]
            if not keep:
                break
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            lm.select_rows(idx)
            cur, drafts = cur[idx], drafts[idx]
            draft_probs = draft_probs[idx] if draft_probs is not None else None
            rows = [rows[b] for b in keep]
        batch = len(rows)
        row_gamma = [min(g_max, max_new_tokens - generated[orig] - 1) for orig in rows]
        g = max(row_gamma)

        # ---- one forward: verify [cur, d_2..d_{g+1}] with head 1, draft the next block with heads 2..k
        t0 = time.perf_counter()
        block = torch.cat([cur[:, None], drafts[:, :g]], dim=1)
        h = lm.forward(block, torch.ones_like(block, dtype=torch.bool))  # [k, B, g+1, d]
        # Greedy with a small unembedding: one matmul + argmax for every head at every position beats
        # two rounds of small ops (head 1 everywhere, then heads 2..k at the kept position).
        merged = temperature == 0 and k > 1 and batch * (k - 1) * g * unembed_macs <= _MERGE_UNEMBED_MACS
        all_best = model.lm_head(h).argmax(-1) if merged else None  # [k, B, g+1]
        t_logits = _unembed(model, h[0]) if not merged else None  # [B, g+1, V]
        guess = drafts[:, :g]
        rows_idx = torch.arange(batch, device=device)
        # Rows near max_new_tokens are offered fewer guesses than the block holds.
        in_draft = None
        if g > 0 and min(row_gamma) < g:
            in_draft = torch.arange(g, device=device)[None, :] < torch.tensor(row_gamma, device=device)[:, None]
        if temperature == 0:
            best = all_best[0] if all_best is not None else t_logits.argmax(-1)  # head 1 after each position
            if g == 0:
                n_acc, nxt = torch.zeros(batch, dtype=torch.long, device=device), best[:, 0]
            else:
                match = guess == best[:, :g]
                if in_draft is not None:
                    match &= in_draft
                n_acc = match.long().cumprod(1).sum(1)
                nxt = best.gather(1, n_acc[:, None]).squeeze(1)
        else:
            if g == 0:
                n_acc = torch.zeros(batch, dtype=torch.long, device=device)
            else:
                assert draft_probs is not None
                p_d = _probs(t_logits[:, :g], temperature).gather(2, guess[:, :, None]).squeeze(2)
                q_d = draft_probs[:, :g].gather(2, guess[:, :, None]).squeeze(2)
                u = torch.rand(p_d.shape, generator=generator, device=device)
                match = u * q_d < p_d  # accept with probability min(1, p/q)
                if in_draft is not None:
                    match &= in_draft
                n_acc = match.long().cumprod(1).sum(1)
            p_after = _probs(t_logits[rows_idx, n_acc], temperature)  # head 1 after the accepted prefix
            rejected = n_acc < torch.tensor(row_gamma, device=device)
            if g > 0 and bool(rejected.any()):
                assert draft_probs is not None
                q_after = draft_probs[rows_idx, n_acc.clamp_max(g - 1)]
                residual = (p_after - q_after).clamp_min(0)
                mass = residual.sum(-1, keepdim=True)
                residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p_after)
                p_after = torch.where(rejected[:, None], residual, p_after)
            nxt = torch.multinomial(p_after, 1, generator=generator).squeeze(1)
        if all_best is not None:
            new_drafts, new_probs = all_best[1:, rows_idx, n_acc].T, None
        elif k > 1:
            # Heads 2..k at the last kept position guess the tokens after `nxt`.
            new_drafts, new_probs = _draft(model, h[1:, rows_idx, n_acc].transpose(0, 1), temperature, generator)
        else:
            new_drafts, new_probs = drafts, None
        n_list = n_acc.tolist()
        if g > 0:
            lm.keep_block_prefix(g + 1, n_acc, max(n_list))
        _sync(device)
        stats.verify_seconds += time.perf_counter() - t0

        # ---- bookkeeping (per row, on host lists) ------------------------------------------------
        nxt_list, d_list = nxt.tolist(), guess.tolist()
        finished_mask = []
        for b, orig in enumerate(rows):
            emitted = record_row_step(stats, orig, d_list[b], n_list[b], row_gamma[b], nxt_list[b], eos_token_id)
            out[orig].extend(emitted)
            generated[orig] += len(emitted)
            finished_mask.append(
                generated[orig] >= max_new_tokens or (eos_token_id is not None and emitted[-1] == eos_token_id))
        cur, drafts, draft_probs = nxt, new_drafts, new_probs
        lm.maybe_compact()

    _sync(device)
    stats.wall_seconds = time.perf_counter() - wall0
    stats.target_forwards = lm.forwards
    stats.draft_forwards = 0
    stats.drafted = sum(stats.prompt_drafted)
    stats.accepted = sum(stats.prompt_accepted)
    stats.steps = sum(stats.prompt_steps)
    stats.prompt_generated = [len(o) for o in out]
    stats.generated_tokens = sum(stats.prompt_generated)
    return out, stats


@dataclass
class SelfSpeculativeMeasurement(SpeedupMeasurement):
    """Self-speculative (k heads) vs plain decoding (k = 1) of the same MTP model, same batch size.

    Same ``to_dict`` keys as `SpeedupMeasurement` plus ``k``, ``n_future`` and ``draft_family``.
    There is no separate draft step: ``draft_step_seconds = 0`` and ``c = 0`` exactly, and the heads'
    cost is inside ``verify_step_seconds`` (one forward on k tokens running k heads), so the cost model
    ``S(B) = tau * T_t(B, 1) / (T_t(B, gamma + 1) + gamma * T_d)`` applies with ``T_d = 0``.
    """

    k: int = 1
    n_future: int = 1

    @property
    def draft_step_seconds(self) -> float:
        return 0.0

    @property
    def c(self) -> float:
        return 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "k": self.k, "n_future": self.n_future, "draft_family": "mtp"}


def measure_self_speculative(
    model: MTPForCausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    k: int,
    batch_size: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_token_id: int | None = None,
    seed: int = 0,
    repeats: int = 1,
    warmup: bool = True,
) -> SelfSpeculativeMeasurement:
    """Decode ``prompts`` with k heads and with k = 1 at ``batch_size``; report speedup (wall clock).

    The baseline is the same model's plain decoding through the same loop (k = 1 runs the trunk and
    head 1 only). Repeats are interleaved (plain, k heads, plain, ...) and summarised by the median
    tokens/s and step times, so drifting machine load hits both sides alike; counters come from the
    last repeat.
    """
    return measure_self_speculative_ks(model, prompts, ks=[k], batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       temperature=temperature, eos_token_id=eos_token_id, seed=seed,
                                       repeats=repeats, warmup=warmup)[0]


def measure_self_speculative_ks(
    model: MTPForCausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    ks: Sequence[int],
    batch_size: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_token_id: int | None = None,
    seed: int = 0,
    repeats: int = 1,
    warmup: bool = True,
) -> list[SelfSpeculativeMeasurement]:
    """`measure_self_speculative` for several head counts at once: one measurement per k in ``ks``.

    Every k shares one plain (k = 1) baseline: each repeat decodes plainly, then with every k in turn
    (interleaved, so drifting load hits all of them alike), and each k's speedup is the median of its
    tokens/s over the median plain tokens/s. This is how a pipeline job with a ``k``-head model reports
    tokens per forward against k' = 2..k without measuring the baseline k - 1 times.
    """
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks must list at least one head count")
    for k in ks:
        _check_model(model, k)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
                                  eos_token_id=eos_token_id, seed=seed)
    if warmup:
        few = list(prompts[: min(len(prompts), batch_size)])
        short = {**kwargs, "max_new_tokens": min(8, max_new_tokens)}
        self_speculative_generate(model, few, k=1, **short)
        for k in ks:
            self_speculative_generate(model, few, k=k, **short)
    base_runs: list[DecodeStats] = []
    spec_runs: dict[int, list[DecodeStats]] = {k: [] for k in ks}
    for _ in range(repeats):
        base_runs.append(self_speculative_generate(model, prompts, k=1, **kwargs).stats)
        for k in ks:
            spec_runs[k].append(self_speculative_generate(model, prompts, k=k, **kwargs).stats)
    base_tps = statistics.median(b.tokens_per_second for b in base_runs)
    return [SelfSpeculativeMeasurement(
        gamma=k - 1, batch_size=batch_size, speculative=spec_runs[k][-1], baseline=base_runs[-1],
        speculative_tps=statistics.median(s.tokens_per_second for s in spec_runs[k]), baseline_tps=base_tps,
        speculative_runs=spec_runs[k], baseline_runs=base_runs, k=k, n_future=model.n_future,
    ) for k in ks]
