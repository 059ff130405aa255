"""Batched, lossless speculative decoding with exact acceptance accounting.

One loop serves speculative and plain decoding (``gamma=0`` or ``draft=None``), so the baseline
of every speedup runs through the same machinery. Each step:

1. the draft proposes ``gamma`` tokens per row from its own KV cache;
2. the target scores ``[cur, d_1..d_gamma]`` in one forward;
3. each row keeps the longest accepted prefix plus one target token (the correction, or the
   *bonus* token when every draft token was accepted).

Rows accept different numbers of tokens (ragged acceptance). Instead of re-running or re-padding
the prefix, each KV cache keeps a per-slot validity mask: rejected slots stay in the cache but are
hidden by the attention mask (the gpt-fast idea, expressed through the public ``transformers``
forward API: ``input_ids``, ``attention_mask``, ``position_ids`` and the KV cache, see `scylla.models.hf_compat`). Trailing
slots invalid for every row are cropped, and the cache is compacted when holes pile up.

Counters follow docs/design.md; ``tau = 1 + accepted / steps`` includes the bonus/correction token.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from scylla.models.hf_compat import cache_kwarg, forward_accepts, output_cache

__all__ = ["DecodeStats", "SpeculativeOutput", "speculative_generate", "check_compatible", "record_row_step"]


@dataclass
class DecodeStats:
    """Raw counters of one decoding run, and the ratios derived from them.

    ``steps`` counts row-steps: one per row per verification forward in which the row took part,
    so ``tau = 1 + accepted / steps`` is the tokens a row gains per target forward (bonus token
    included; 1.0 for plain decoding). The prefill forward, which emits each row's first token, is
    counted in ``target_forwards`` but is not a step.

    ``drafted`` counts the draft positions the target judged inside each row's sequence: a row near
    ``max_new_tokens`` judges fewer than ``gamma``, and when an accepted draft token is the row's EOS,
    the positions after it are past the sequence's end and not counted. So without EOS,
    ``generated_tokens == n_prompts + steps + accepted`` exactly (prefill token, then per step the
    accepted tokens plus one correction/bonus token); each row whose EOS is an accepted draft token
    emits one token fewer than that (no correction follows its EOS).
    """

    gamma: int
    temperature: float
    batch_size: int
    n_prompts: int
    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    reached_per_position: list[int] = field(default_factory=list)
    target_forwards: int = 0
    draft_forwards: int = 0
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    wall_seconds: float = 0.0
    generated_tokens: int = 0
    prompt_drafted: list[int] = field(default_factory=list)
    prompt_accepted: list[int] = field(default_factory=list)
    prompt_steps: list[int] = field(default_factory=list)
    prompt_generated: list[int] = field(default_factory=list)

    @property
    def alpha(self) -> float:
        """Per-token acceptance rate, accepted / drafted (NaN when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def alpha_n(self) -> list[float]:
        """Acceptance at draft position n given every earlier position was accepted."""
        return [a / r if r else float("nan") for a, r in zip(self.accepted_per_position, self.reached_per_position)]

    @property
    def tau(self) -> float:
        """Tokens emitted per target forward, bonus/correction token included: 1 + accepted/steps."""
        return 1.0 + self.accepted / self.steps if self.steps else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    @property
    def verify_forwards(self) -> int:
        """Target forwards after prefill (one per decoding step of the batch)."""
        return self.target_forwards - self._prefill_forwards

    _prefill_forwards: int = 0

    def merge(self, other: "DecodeStats") -> None:
        """Add the counters of another chunk of prompts (same gamma and temperature)."""
        if (other.gamma, other.temperature) != (self.gamma, self.temperature):
            raise ValueError(
                f"cannot merge stats of gamma={other.gamma}, temperature={other.temperature} into "
                f"gamma={self.gamma}, temperature={self.temperature}: per-position counters would not line up"
            )
        for name in ("drafted", "accepted", "steps", "target_forwards", "draft_forwards", "generated_tokens",
                     "_prefill_forwards"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("prefill_seconds", "draft_seconds", "verify_seconds", "wall_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("accepted_per_position", "reached_per_position"):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, [a + b for a, b in zip(mine, theirs)] if mine else list(theirs))
        for name in ("prompt_drafted", "prompt_accepted", "prompt_steps", "prompt_generated"):
            getattr(self, name).extend(getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        """Raw counters plus derived metrics, JSON-ready. ``tau`` includes the bonus token."""
        d = asdict(self)
        d.pop("_prefill_forwards", None)
        d.update(
            alpha=self.alpha,
            alpha_n=self.alpha_n,
            tau=self.tau,
            tokens_per_second=self.tokens_per_second,
            verify_forwards=self.verify_forwards,
            tau_definition="1 + accepted/steps (bonus/correction token included)",
        )
        return d


@dataclass
class SpeculativeOutput:
    sequences: list[list[int]]
    stats: DecodeStats


def _vocab_size(model: torch.nn.Module) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def check_compatible(target: torch.nn.Module, draft: torch.nn.Module | None) -> None:
    """Raise if the draft cannot propose tokens for this target (vocabularies must match)."""
    if draft is None:
        return
    vt, vd = _vocab_size(target), _vocab_size(draft)
    if vt != vd:
        raise ValueError(
            f"draft vocabulary size {vd} differs from target vocabulary size {vt}; "
            "train the draft with the target's tokenizer (they must share one vocabulary)"
        )


class _CachedLM:
    """A causal LM plus its KV cache, with per-slot validity so ragged rows share one cache.

    Slot ``j`` of row ``b`` holds a real token iff ``valid[b, j]``; positions of real tokens are
    consecutive per row, so a row's next position is its count of valid slots.
    """

    def __init__(self, model: torch.nn.Module, batch: int, device: torch.device) -> None:
        self.model = model
        self.cache = DynamicCache()
        self.valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.forwards = 0

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Append ``tokens`` [B, W] (``valid`` marks real ones) and return float logits [B, W, V]
        (``[B, 1, V]`` with ``last_only``: a long prefill then never materialises W x V logits)."""
        pos = self.next_pos[:, None] + valid.long().cumsum(1) - 1
        pos = pos.clamp_min(0)
        attention_mask = torch.cat([self.valid, valid], dim=1).long()
        # logits_to_keep (where the model takes it) skips the unembedding of all but the last position.
        extra = {"logits_to_keep": 1} if last_only and forward_accepts(self.model, "logits_to_keep") else {}
        out = self.model(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=pos,
            use_cache=True,
            **cache_kwarg(self.model, self.cache),
            **extra,
        )
        returned = output_cache(out)
        if returned is not None:
            self.cache = returned
        self.valid = torch.cat([self.valid, valid], dim=1)
        self.next_pos = self.next_pos + valid.long().sum(1)
        self.forwards += 1
        logits = out.logits
        return (logits[:, -1:] if last_only else logits).float()

    def keep_last(self, width: int, keep: torch.Tensor) -> None:
        """Of the last ``width`` slots, keep those where ``keep`` [B, width] is set; hide the rest."""
        self.valid[:, -width:] &= keep
        self.next_pos = self.valid.long().sum(1)
        self._crop_trailing()

    def _crop_trailing(self) -> None:
        any_valid = self.valid.any(0)
        length = int(any_valid.nonzero().max()) + 1 if bool(any_valid.any()) else 0
        if length < self.valid.shape[1]:
            # A negative argument removes that many trailing slots in every transformers release.
            self.cache.crop(length - self.valid.shape[1])
            self.valid = self.valid[:, :length]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (finished rows leave the batch)."""
        self.cache.batch_select_indices(rows)
        self.valid = self.valid[rows]
        self.next_pos = self.next_pos[rows]
        self.maybe_compact()

    def maybe_compact(self, min_len: int = 32, max_hole_fraction: float = 0.25) -> None:
        """Gather each row's valid slots to the right when more than a quarter are holes.

        Keys carry their rotary position already, and attention ignores slot order, so moving slots
        is exact. Skipped for cache types that do not expose per-layer tensors.
        """
        batch, length = self.valid.shape
        if length < min_len or batch == 0:
            return
        new_len = int(self.valid.long().sum(1).max())
        # Only worth a gather when it shortens the cache substantially (ragged rows keep some holes).
        if length - new_len <= max_hole_fraction * length or not hasattr(self.cache, "layers"):
            return
        # Right-align: stable sort puts invalid slots (False) first and keeps valid ones in order.
        order = torch.sort(self.valid.long(), dim=1, stable=True).indices[:, length - new_len :]
        for layer in self.cache.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if keys is None or values is None:
                return
        for layer in self.cache.layers:
            idx = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, idx)
            layer.values = layer.values.gather(2, idx.expand(-1, layer.values.shape[1], -1, layer.values.shape[3]))
        self.valid = self.valid.gather(1, order)


def _is_int(x: Any) -> bool:
    """Python or numpy integers (Hydra and numpy sweeps hand both), but not bools."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _max_positions(model: torch.nn.Module | None) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def _validate(
    target: torch.nn.Module,
    draft: torch.nn.Module | None,
    prompts: Sequence[Sequence[int]],
    gamma: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int | None,
    eos_token_id: int | None = None,
) -> None:
    """Reject bad arguments up front with one message each, before any forward runs."""
    if not _is_int(gamma) or gamma < 0:
        raise ValueError(f"gamma must be an integer >= 0 (0 = plain decoding), got {gamma!r}")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 (or None for all prompts at once), got {batch_size!r}")
    if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty; pass at least one prompt (a list of token ids)")
    vocab = _vocab_size(target)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token (e.g. a BOS token)")
        if min(p) < 0 or max(p) >= vocab:
            raise ValueError(f"prompt {i} has token ids outside the target vocabulary [0, {vocab})")
    if eos_token_id is not None and (not _is_int(eos_token_id) or not 0 <= eos_token_id < vocab):
        raise ValueError(f"eos_token_id must be a token id in [0, {vocab}) or None, got {eos_token_id!r}")
    check_compatible(target, draft)
    if draft is not None and gamma > 0:
        dev_t, dev_d = next(target.parameters()).device, next(draft.parameters()).device
        if dev_t != dev_d:
            raise ValueError(f"draft is on {dev_d} but target is on {dev_t}; move both to one device")
    longest = max(len(p) for p in prompts) + max_new_tokens + gamma
    for role, model in (("target", target), ("draft", draft if gamma > 0 else None)):
        limit = _max_positions(model)
        if limit is not None and longest > limit:
            raise ValueError(
                f"longest prompt + max_new_tokens + gamma = {longest} exceeds the {role}'s "
                f"max_position_embeddings={limit}; shorten prompts or lower max_new_tokens"
            )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def speculative_generate(
    target: torch.nn.Module,
    draft: torch.nn.Module | None,
    prompts: Sequence[Sequence[int]],
    *,
    gamma: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
) -> SpeculativeOutput:
    """Generate continuations of ``prompts`` with speculative decoding; lossless by construction.

    Args:
        target: the model whose output distribution is reproduced exactly.
        draft: the proposer (same vocabulary); ``None`` or ``gamma=0`` gives plain decoding.
        prompts: token-id lists, lengths may differ.
        gamma: draft tokens proposed per step.
        max_new_tokens: per-row cap on generated tokens (EOS included when it stops a row).
        temperature: 0 is greedy verification; > 0 is rejection-sampling verification.
        batch_size: rows decoded together (``None``: all prompts at once).
        eos_token_id: a row stops after emitting it.
        seed: seeds the sampler (temperature > 0); ``None`` means seed 0, so runs are reproducible.

    Returns:
        ``.sequences`` (generated ids per prompt, prompt excluded, input order) and ``.stats``.
    """
    _validate(target, draft, prompts, gamma, max_new_tokens, temperature, batch_size, eos_token_id)
    gamma, max_new_tokens = int(gamma), int(max_new_tokens)
    batch_size = None if batch_size is None else int(batch_size)
    if draft is None:
        gamma = 0
    device = next(target.parameters()).device
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else int(seed))
    chunk = batch_size or len(prompts)
    stats = DecodeStats(gamma=gamma, temperature=float(temperature), batch_size=chunk, n_prompts=len(prompts),
                        accepted_per_position=[0] * gamma, reached_per_position=[0] * gamma)
    sequences: list[list[int]] = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        seqs, part_stats = _generate_chunk(
            target, draft if gamma > 0 else None, part, gamma, max_new_tokens, temperature, eos_token_id,
            generator, device,
        )
        sequences.extend(seqs)
        stats.merge(part_stats)
    return SpeculativeOutput(sequences=sequences, stats=stats)


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1)


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token per row from logits [B, V]: argmax at temperature 0, else a sample (with probs)."""
    if temperature == 0:
        return logits.argmax(-1), None
    probs = _probs(logits, temperature)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1), probs


def record_row_step(stats: DecodeStats, row: int, guesses: Sequence[int], n_accepted: int, n_judged: int,
                    next_token: int, eos_token_id: int | None) -> list[int]:
    """Add one row's verification step to the counters; return the tokens it emits (cut after EOS).

    ``guesses`` are the row's draft tokens (only the first ``n_judged`` were judged: none past
    ``max_new_tokens``), ``n_accepted`` of them were kept, then ``next_token`` (correction or bonus).
    Shared by the two-model engine and self-speculative decoding so both count alike. When EOS is an
    accepted draft token the sequence ends there: later positions lie past its end and count as neither
    drafted, reached nor accepted (as positions past ``max_new_tokens`` do); counting them as rejected
    would bias alpha and alpha_n down.
    """
    emitted = list(guesses[:n_accepted]) + [next_token]
    counted, judged = n_accepted, n_judged
    if eos_token_id is not None and eos_token_id in emitted:
        e = emitted.index(eos_token_id)
        emitted = emitted[: e + 1]
        if e < n_accepted:
            counted = judged = e + 1
    stats.prompt_drafted[row] += judged
    stats.prompt_accepted[row] += counted
    stats.prompt_steps[row] += 1
    for j in range(min(counted + 1, judged)):
        stats.reached_per_position[j] += 1
    for j in range(counted):
        stats.accepted_per_position[j] += 1
    return emitted


def _generate_chunk(
    target: torch.nn.Module,
    draft: torch.nn.Module | None,
    prompts: Sequence[Sequence[int]],
    gamma: int,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[list[list[int]], DecodeStats]:
    n = len(prompts)
    stats = DecodeStats(gamma=gamma, temperature=float(temperature), batch_size=n, n_prompts=n,
                        accepted_per_position=[0] * gamma, reached_per_position=[0] * gamma,
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
    tgt = _CachedLM(target, n, device)
    drf = _CachedLM(draft, n, device) if draft is not None else None
    t0 = time.perf_counter()
    logits = tgt.forward(tokens, valid, last_only=True)[:, -1]
    if drf is not None:
        drf.forward(tokens, valid, last_only=True)  # the draft needs the prompt in its cache; logits unused
    cur, _ = _pick(logits, temperature, generator)
    _sync(device)
    stats.prefill_seconds += time.perf_counter() - t0
    stats._prefill_forwards += 1

    rows = list(range(n))  # original index of each active batch row
    generated = [0] * n
    # Tokens a row has emitted that its draft has not yet seen (fed at the start of the next draft).
    pending: list[list[int]] = [[] for _ in range(n)]
    cur_list = cur.tolist()
    finished_mask: list[bool] = []
    for b, orig in enumerate(rows):
        tok = cur_list[b]
        out[orig].append(tok)
        generated[orig] = 1
        pending[b] = [tok]
        finished_mask.append(tok == eos_token_id or max_new_tokens == 1)

    while True:
        # Drop finished rows from both caches: they would only cost compute.
        if any(finished_mask):
            keep = [b for b, f in enumerate(finished_mask) if not f]
            if not keep:
                break
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            tgt.select_rows(idx)
            if drf is not None:
                drf.select_rows(idx)
            cur = cur[idx]
            rows = [rows[b] for b in keep]
            pending = [pending[b] for b in keep]
        batch = len(rows)
        remaining = [max_new_tokens - generated[orig] for orig in rows]
        row_gamma = [min(gamma, r - 1) for r in remaining]
        g = max(row_gamma)

        # ---- draft: g autoregressive proposals per row -------------------------------------------
        draft_tokens = torch.zeros(batch, 0, dtype=torch.long, device=device)
        draft_probs: list[torch.Tensor] = []
        if g > 0 and drf is not None:
            t0 = time.perf_counter()
            width = max(len(p) for p in pending)
            block = torch.zeros(batch, width, dtype=torch.long, device=device)
            bvalid = torch.zeros(batch, width, dtype=torch.bool, device=device)
            for b, p in enumerate(pending):
                block[b, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                bvalid[b, width - len(p) :] = True
            d_logits = drf.forward(block, bvalid, last_only=True)[:, -1]
            proposals = []
            ones = torch.ones(batch, 1, dtype=torch.bool, device=device)
            for k in range(g):
                tok, probs = _pick(d_logits, temperature, generator)
                proposals.append(tok)
                if probs is not None:
                    draft_probs.append(probs)
                if k < g - 1:
                    d_logits = drf.forward(tok[:, None], ones)[:, -1]
            draft_tokens = torch.stack(proposals, dim=1)
            _sync(device)
            stats.draft_seconds += time.perf_counter() - t0

        # ---- verify: one target forward on [cur, d_1..d_g] ---------------------------------------
        t0 = time.perf_counter()
        block = torch.cat([cur[:, None], draft_tokens], dim=1)
        t_logits = tgt.forward(block, torch.ones_like(block, dtype=torch.bool))  # [B, g+1, V]
        limit = torch.tensor(row_gamma, device=device)[:, None]
        positions = torch.arange(g, device=device)[None, :]
        in_draft = positions < limit
        if g == 0:
            n_acc = torch.zeros(batch, dtype=torch.long, device=device)
        elif temperature == 0:
            match = (draft_tokens == t_logits[:, :g].argmax(-1)) & in_draft
            n_acc = match.long().cumprod(1).sum(1)
        else:
            p = _probs(t_logits[:, :g], temperature)
            q = torch.stack(draft_probs, dim=1)
            p_d = p.gather(2, draft_tokens[:, :, None]).squeeze(2)
            q_d = q.gather(2, draft_tokens[:, :, None]).squeeze(2)
            u = torch.rand(p_d.shape, generator=generator, device=device)
            match = (u * q_d < p_d) & in_draft  # accept with probability min(1, p/q)
            n_acc = match.long().cumprod(1).sum(1)
        # The token after the accepted prefix: argmax / residual sample / bonus sample.
        after = t_logits.gather(1, n_acc[:, None, None].expand(-1, 1, t_logits.shape[-1])).squeeze(1)
        if temperature == 0:
            nxt = after.argmax(-1)
        else:
            p_after = _probs(after, temperature)
            rejected = n_acc < limit.squeeze(1)
            if g > 0 and bool(rejected.any()):
                q_after = torch.stack(draft_probs, dim=1).gather(
                    1, n_acc.clamp_max(g - 1)[:, None, None].expand(-1, 1, p_after.shape[-1])
                ).squeeze(1)
                residual = (p_after - q_after).clamp_min(0)
                mass = residual.sum(-1, keepdim=True)
                residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p_after)
                p_after = torch.where(rejected[:, None], residual, p_after)
            nxt = torch.multinomial(p_after, 1, generator=generator).squeeze(1)
        tgt.keep_last(g + 1, torch.arange(g + 1, device=device)[None, :] <= n_acc[:, None])
        _sync(device)
        stats.verify_seconds += time.perf_counter() - t0

        # ---- bookkeeping (per row, on host lists) ------------------------------------------------
        n_list = n_acc.tolist()
        nxt_list = nxt.tolist()
        d_list = draft_tokens.tolist()
        new_pending: list[list[int]] = []
        finished_mask = []
        for b, orig in enumerate(rows):
            n_b = n_list[b]
            emitted = record_row_step(stats, orig, d_list[b], n_b, row_gamma[b], nxt_list[b], eos_token_id)
            out[orig].extend(emitted)
            generated[orig] += len(emitted)
            if g > 0:
                new_pending.append(([d_list[b][g - 1]] if n_b == g else []) + [nxt_list[b]])
            elif drf is not None:
                new_pending.append(pending[b] + [nxt_list[b]])
            else:
                new_pending.append([])  # plain decoding: no draft to feed (avoids a list growing per step)
            finished_mask.append(
                generated[orig] >= max_new_tokens or (eos_token_id is not None and emitted[-1] == eos_token_id)
            )
        if drf is not None and g > 0:
            # The draft fed pending + d_1..d_{g-1}; keep the accepted ones.
            width = g - 1
            if width > 0:
                drf.keep_last(width, torch.arange(width, device=device)[None, :] < n_acc[:, None])
        pending = new_pending
        cur = nxt
        tgt.maybe_compact()
        if drf is not None:
            drf.maybe_compact()

    _sync(device)
    stats.wall_seconds = time.perf_counter() - wall0
    stats.target_forwards = tgt.forwards
    stats.draft_forwards = drf.forwards - 1 if drf is not None else 0  # prefill is not a draft step
    stats.drafted = sum(stats.prompt_drafted)
    stats.accepted = sum(stats.prompt_accepted)
    stats.steps = sum(stats.prompt_steps)
    stats.prompt_generated = [len(o) for o in out]
    stats.generated_tokens = sum(stats.prompt_generated)
    return out, stats
