"""Batched, lossless speculative decoding with exact acceptance accounting: one loop for every family.

Each step, for every row still decoding:

1. the proposer drafts a token tree under the row's last emitted token (a chain is a tree of width 1;
   `scylla.decode.proposers`);
2. the target scores the root and every node in one forward (`scylla.decode.target`);
3. `scylla.decode.verify` walks each row down its tree: it keeps the longest accepted path and emits
   one target token after it (the correction, or the *bonus* token when the path reached a leaf).

Rows accept different numbers of tokens (ragged acceptance) and stop independently; finished rows
leave the batch. ``draft=None`` or ``gamma=0`` is plain decoding through the same loop, so baselines
are not flattered. Counters follow docs/design.md ("Metrics"): ``tau = 1 + accepted / steps`` includes the
bonus/correction token.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Any, Sequence

import torch

from scylla.decode.cache import supports_tree_masks
from scylla.decode.proposers import Proposer, make_proposer
from scylla.decode.stats import DecodeStats, SpeculativeOutput, record_row_step
from scylla.decode.target import TargetRunner, left_pad
from scylla.decode.tree import TreeSpec
from scylla.decode.verify import pick, verify

__all__ = ["DecodeStats", "SpeculativeOutput", "speculative_generate", "decode", "check_compatible",
           "validate_request", "is_int", "vocab_size"]


def is_int(x: Any) -> bool:
    """Python or numpy integers (Hydra and numpy sweeps hand both), but not bools."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def vocab_size(model: torch.nn.Module) -> int:
    """The vocabulary a model's token ids live in (its input embedding; config as a fallback)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def check_compatible(target: torch.nn.Module, draft: Any) -> None:
    """Raise if the draft cannot propose tokens for this target (token ids must mean the same)."""
    if draft is None:
        return
    vt = vocab_size(target)
    if isinstance(draft, Proposer):
        vd = draft.vocab_size
    else:
        draft_vocab = getattr(draft, "draft_vocab", None)
        vd = draft_vocab.target_size if draft_vocab is not None else vocab_size(draft)
    if vd is not None and vd != vt:
        raise ValueError(
            f"draft vocabulary size {vd} differs from target vocabulary size {vt}; "
            "train the draft with the target's tokenizer (they must share one vocabulary)"
        )


def _max_positions(model: Any) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def _spec(gamma: Any, tree: Any) -> TreeSpec:
    if tree is not None and gamma is not None:
        raise ValueError("pass gamma (a chain) or tree (any shape), not both")
    if tree is not None:
        return TreeSpec.parse(tree)
    if gamma is None:
        raise ValueError("pass gamma (draft tokens per step; 0 = plain decoding) or tree (e.g. 'static:2x2x1')")
    if not is_int(gamma) or gamma < 0:
        raise ValueError(f"gamma must be an integer >= 0 (0 = plain decoding), got {gamma!r}")
    return TreeSpec.chain(int(gamma))


def validate_request(target: torch.nn.Module, draft: Any, prompts: Sequence[Sequence[int]], spec: TreeSpec,
                     max_new_tokens: int, temperature: float, batch_size: int | None,
                     eos_token_id: int | None = None) -> None:
    """Reject bad arguments up front with one message each, before any forward runs."""
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 (or None for all prompts at once), got {batch_size!r}")
    if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty; pass at least one prompt (a list of token ids)")
    vocab = vocab_size(target)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token (e.g. a BOS token)")
        if min(p) < 0 or max(p) >= vocab:
            raise ValueError(f"prompt {i} has token ids outside the target vocabulary [0, {vocab})")
    if eos_token_id is not None and (not is_int(eos_token_id) or not 0 <= eos_token_id < vocab):
        raise ValueError(f"eos_token_id must be a token id in [0, {vocab}) or None, got {eos_token_id!r}")
    drafting = draft is not None and spec.depth > 0
    if drafting:
        check_compatible(target, draft)
    model_draft = draft if drafting and isinstance(draft, torch.nn.Module) else None
    if model_draft is not None:
        dev_t, dev_d = next(target.parameters()).device, next(model_draft.parameters()).device
        if dev_t != dev_d:
            raise ValueError(f"draft is on {dev_d} but target is on {dev_t}; move both to one device")
    if drafting and not spec.is_chain:
        for role, model in (("target", target), ("draft", model_draft)):
            if model is not None and not supports_tree_masks(model):
                impl = model.config._attn_implementation
                raise ValueError(f"tree drafting needs the {role}'s attention to honour a custom 4D mask; its "
                                 f"attn_implementation={impl!r} drops it. Load it with attn_implementation='sdpa' "
                                 "or 'eager', or draft a chain")
    longest = max(len(p) for p in prompts) + max_new_tokens + spec.depth
    for role, model in (("target", target), ("draft", model_draft)):
        limit = _max_positions(model)
        if limit is not None and longest > limit:
            raise ValueError(
                f"longest prompt + max_new_tokens + draft depth = {longest} exceeds the {role}'s "
                f"max_position_embeddings={limit}; shorten prompts or lower max_new_tokens"
            )


@torch.inference_mode()
def speculative_generate(
    target: torch.nn.Module,
    draft: Any,
    prompts: Sequence[Sequence[int]],
    *,
    gamma: int | None = None,
    tree: str | TreeSpec | None = None,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
) -> SpeculativeOutput:
    """Generate continuations of ``prompts`` with speculative decoding; lossless by construction.

    Args:
        target: the model whose output distribution is reproduced exactly.
        draft: the proposer: a draft model (same token ids; a reduced draft vocabulary is mapped), a
            `scylla.decode.proposers.Proposer` (e.g. `NgramProposer`), or ``None`` for plain decoding.
        prompts: token-id lists, lengths may differ.
        gamma: draft tokens per step for a chain (0 = plain decoding); or give ``tree`` instead.
        tree: a tree shape, e.g. ``"chain:4"``, ``"static:3x2x1"`` or ``"dynamic:4x4x16"`` (`TreeSpec`).
        max_new_tokens: per-row cap on generated tokens (EOS included when it stops a row).
        temperature: 0 is greedy verification; > 0 is lossless speculative sampling.
        batch_size: rows decoded together (``None``: all prompts at once).
        eos_token_id: a row stops after emitting it.
        seed: seeds the sampler (temperature > 0); ``None`` means seed 0, so runs are reproducible.

    Returns:
        ``.sequences`` (generated ids per prompt, prompt excluded, input order) and ``.stats``.
    """
    if isinstance(draft, Proposer) and gamma is None and tree is None:
        spec = draft.spec
    else:
        spec = _spec(gamma, tree)
        if isinstance(draft, Proposer) and spec.depth and spec != draft.spec:
            draft = draft.with_spec(spec)
    validate_request(target, draft, prompts, spec, max_new_tokens, temperature, batch_size, eos_token_id)
    proposer = make_proposer(draft, spec)
    runner = lambda n, device: TargetRunner(target, n, device, proposer.features if proposer else None)  # noqa: E731
    return decode(runner, proposer, prompts, spec=spec if proposer is not None else TreeSpec.chain(0),
                  max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                  batch_size=None if batch_size is None else int(batch_size), eos_token_id=eos_token_id,
                  seed=seed, device=next(target.parameters()).device)


def decode(runner_for: Any, proposer: Proposer | None, prompts: Sequence[Sequence[int]], *, spec: TreeSpec,
           max_new_tokens: int, temperature: float, batch_size: int | None, eos_token_id: int | None,
           seed: int | None, device: torch.device) -> SpeculativeOutput:
    """The loop behind `speculative_generate` (and `scylla.decode.mtp`): validated inputs, one
    ``runner_for(batch, device)`` target runner per chunk of ``batch_size`` prompts."""
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else int(seed))
    chunk = batch_size or len(prompts)
    stats = _new_stats(spec, proposer, temperature, chunk, len(prompts))
    sequences: list[list[int]] = []
    for start in range(0, len(prompts), chunk):
        part = [list(p) for p in prompts[start:start + chunk]]
        seqs, part_stats = _decode_chunk(runner_for(len(part), device), proposer, part, spec, max_new_tokens,
                                         temperature, eos_token_id, generator, device)
        sequences.extend(seqs)
        stats.merge(part_stats)
    return SpeculativeOutput(sequences=sequences, stats=stats)


def _new_stats(spec: TreeSpec, proposer: Proposer | None, temperature: float, batch: int, n: int,
               per_prompt: bool = False) -> DecodeStats:
    lists = {name: [0] * n for name in ("prompt_drafted", "prompt_accepted", "prompt_steps", "prompt_generated")}
    return DecodeStats(gamma=spec.depth, temperature=float(temperature), batch_size=batch, n_prompts=n,
                       tree=spec.describe(), proposer=proposer.name if proposer is not None else "none",
                       accepted_per_position=[0] * spec.depth, reached_per_position=[0] * spec.depth,
                       **(lists if per_prompt else {}))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_chunk(tgt: TargetRunner, proposer: Proposer | None, prompts: list[list[int]], spec: TreeSpec,
                  max_new_tokens: int, temperature: float, eos_token_id: int | None,
                  generator: torch.Generator | None, device: torch.device) -> tuple[list[list[int]], DecodeStats]:
    n = len(prompts)
    stats = _new_stats(spec, proposer, temperature, n, n, per_prompt=True)
    out: list[list[int]] = [[] for _ in range(n)]
    draft_fw0 = (proposer.forwards, proposer.forward_seconds) if proposer is not None else (0, 0.0)
    wall0 = time.perf_counter()

    tokens, valid = left_pad(prompts, device)  # prefill: every row's last prompt token in the last column
    logits, feats = tgt.prefill(tokens, valid)
    cur, _ = pick(logits, temperature, generator)
    if proposer is not None:
        proposer.start(tokens, valid, feats, temperature, generator)
    _sync(device)
    stats.prefill_seconds += time.perf_counter() - wall0
    stats.prefill_forwards += 1
    rows = list(range(n))  # original index of each active batch row
    for b, tok in enumerate(cur.tolist()):
        out[b].append(tok)
    contexts = [p + o for p, o in zip(prompts, out)]
    finished = [tok == eos_token_id or max_new_tokens == 1 for tok in cur.tolist()]

    while True:
        if any(finished):  # finished rows leave both caches: they would only cost compute
            keep = [b for b, f in enumerate(finished) if not f]
            if not keep:
                break
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            tgt.select_rows(idx)
            if proposer is not None:
                proposer.select_rows(idx)
            cur = cur[idx]
            rows, contexts = [rows[b] for b in keep], [contexts[b] for b in keep]
        # A row may still emit max_new_tokens - generated tokens: its tree is judged to one less.
        limit = torch.tensor([min(spec.depth, max_new_tokens - len(out[r]) - 1) for r in rows], device=device)

        t0 = time.perf_counter()  # ---- draft ------------------------------------------------------
        tree = proposer.propose(cur, limit, contexts, temperature, generator) if proposer is not None else None
        _sync(device)
        t1 = time.perf_counter()  # ---- verify -----------------------------------------------------
        logits, feats = tgt.verify(cur, tree)
        verdict = verify(tree, logits, limit, temperature, generator)
        tgt.keep(verdict, tree)
        if proposer is not None:
            proposer.accept(verdict, tree, feats)
        _sync(device)
        if proposer is not None and proposer.self_drafting:
            stats.verify_seconds += time.perf_counter() - t0
        else:
            stats.draft_seconds += t1 - t0
            stats.verify_seconds += time.perf_counter() - t1

        # ---- bookkeeping (per row, on host lists) ---------------------------------------------------
        n_acc, nxt, reached = verdict.n_accepted.tolist(), verdict.next_token.tolist(), verdict.reached.tolist()
        if tree is not None:
            path_tokens = tree.tokens.gather(1, (verdict.path[:, 1:] - 1).clamp_min(0)).tolist()
            per_depth = tree.nodes_per_depth(limit).tolist()
            scored = tree.valid.long().sum(1).tolist()
        finished = []
        for b, orig in enumerate(rows):
            path = path_tokens[b][:n_acc[b]] if tree is not None else []
            judged = per_depth[b][:max(int(limit[b]), 0)] if tree is not None else []
            emitted = record_row_step(stats, orig, path, nxt[b], judged, reached[b], eos_token_id)
            out[orig].extend(emitted)
            contexts[b].extend(emitted)
            stats.verified_tokens += 1 + (scored[b] if tree is not None else 0)
            finished.append(len(out[orig]) >= max_new_tokens
                            or (eos_token_id is not None and emitted[-1] == eos_token_id))
        cur = verdict.next_token
        tgt.maybe_compact()
        if proposer is not None:
            proposer.maybe_compact()

    _sync(device)
    stats.wall_seconds = time.perf_counter() - wall0
    stats.target_forwards = tgt.forwards
    stats.target_forward_seconds = tgt.forward_seconds
    if proposer is not None:
        stats.draft_forwards = proposer.forwards - draft_fw0[0]
        stats.draft_forward_seconds = proposer.forward_seconds - draft_fw0[1]
    stats.drafted = sum(stats.prompt_drafted)
    stats.accepted = sum(stats.prompt_accepted)
    stats.steps = sum(stats.prompt_steps)
    stats.prompt_generated = [len(o) for o in out]
    stats.generated_tokens = sum(stats.prompt_generated)
    return out, stats
