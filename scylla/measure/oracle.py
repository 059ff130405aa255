"""The acceptance oracle: the engine's counters for every gamma and static tree, without decoding.

Along the target's continuation ``y`` of a prompt (`scylla.measure.continuations`), a step that starts
after ``s`` emitted tokens drafts depth ``j`` (0-based) for token ``y[s + j]``, and the draft's
context there is the prompt plus ``y[:s + j]``: exactly a teacher-forced prefix. So one
teacher-forced draft pass along ``y`` prices every draft length and every static tree shape:

- temperature 0, chain: depth j is accepted iff the draft's argmax at ``s + j`` is ``y[s + j]``;
- temperature 0, static tree (top-K_d per depth): accepted iff the rank of ``y[s + j]`` in the draft's
  distribution is below ``K_{j+1}``;
- temperature > 0 along a target *sample* ``y``: a sampled chain draft at ``s + j`` was accepted with
  probability ``min(1, q(y) / p(y))`` given the emitted token (docs/oracle.md derives it); a tree of
  deterministic candidates accepts iff ``y[s + j]`` is a candidate (the rank rule again);
- n-gram lookup: the proposal is a function of the context, so it is replayed along ``y``;
- EAGLE-3 heads predict ``y[t]`` differently at each depth (they feed back their own states): their
  scorer returns one view per depth (`TeacherForced.by_depth`, `scylla.measure.eagle3`).

A small dynamic program over step starts then gives the *expected* counters given ``y``: exact (0/1
probabilities) at temperature 0, and unbiased estimates of the engine's expected counters at
temperature > 0 (averaged over target samples). Conventions are the engine's: the prefill emits the
first token, a row drafts at most its remaining tokens minus one, an accepted EOS ends the row (deeper
positions count as neither drafted nor reached). Acceptance of a chain does not depend on the batch
size, so one pass serves every batch size; cost is measured separately (`scylla.measure.probes`).
Dynamic trees depend on the draft's scores at every node and go through the engine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from scylla.decode.proposers import NgramProposer
from scylla.decode.stats import DecodeStats
from scylla.decode.tree import TreeSpec
from scylla.measure.continuations import Continuations, target_continuations

__all__ = ["acceptance_oracle", "TeacherForced", "teacher_forced", "register_teacher_forced", "expected_counters",
           "OracleError"]

NOT_IN_VOCAB = 1 << 30  # rank of a token the draft cannot propose


class OracleError(ValueError):
    """An oracle request that cannot be priced without decoding (the message says what to do)."""


@dataclass
class TeacherForced:
    """The draft's view of each continuation token ``y[t]`` (t >= 1) given the prompt and ``y[:t]``:
    whether its argmax is ``y[t]``, the rank of ``y[t]`` (0 = argmax) and ``log q(y[t])`` at the temperature."""

    top1: list[np.ndarray]
    rank: list[np.ndarray]
    logq: list[np.ndarray] | None
    # Drafts whose prediction of y[t] depends on how deep in a step it is drafted (EAGLE-3 heads feed
    # back their own states): ``by_depth[j]`` is the view at depth j + 1; None when it does not.
    by_depth: list["TeacherForced"] | None = None


@torch.inference_mode()
def _teacher_forced_lm(draft: torch.nn.Module, cont: Continuations, temperature: float,
                       max_logits: int = 40_000_000) -> TeacherForced:
    """One batched forward of a causal-LM draft over prompt + continuation per row."""
    from scylla.decode.target import left_pad

    device = next(draft.parameters()).device
    vocab = getattr(draft, "draft_vocab", None)
    vocab = None if vocab is None or vocab.is_full else vocab
    t2d = vocab.target_to_draft().to(device) if vocab is not None else None
    seqs = [cont.prompts[cont.row_prompt[i]] + cont.tokens[i] for i in range(len(cont.tokens))]
    width = max(len(s) for s in seqs)
    v = int(draft.get_output_embeddings().weight.shape[0])
    rows_per_forward = max(1, max_logits // max(width * v, 1))
    top1, rank, logq = [], [], []
    for start in range(0, len(seqs), rows_per_forward):
        chunk = seqs[start:start + rows_per_forward]
        ids, valid = left_pad(chunk, device)
        pos = (valid.long().cumsum(1) - 1).clamp_min(0)
        logits = draft(input_ids=ids, attention_mask=valid.long(), position_ids=pos).logits.float()
        for j, i in enumerate(range(start, start + len(chunk))):
            y = torch.tensor(cont.tokens[i][1:], dtype=torch.long, device=device)  # tokens y[1:]
            w = ids.shape[1]
            n = len(cont.tokens[i])
            lg = logits[j, w - n: w - 1]  # predicts y[1:], [n - 1, V_d]
            if t2d is not None:
                yd = t2d[y]
                inside = yd >= 0
                yd = yd.clamp_min(0)
            else:
                yd, inside = y, torch.ones_like(y, dtype=torch.bool)
            ly = lg.gather(1, yd[:, None]).squeeze(1)
            r = (lg > ly[:, None]).sum(1)
            top1.append((inside & (lg.argmax(1) == yd)).cpu().numpy())
            rank.append(torch.where(inside, r, torch.full_like(r, NOT_IN_VOCAB)).cpu().numpy())
            if temperature > 0:
                lq = torch.log_softmax(lg / temperature, -1).gather(1, yd[:, None]).squeeze(1)
                logq.append(torch.where(inside, lq, torch.full_like(lq, -math.inf)).cpu().numpy())
    return TeacherForced(top1, rank, logq if temperature > 0 else None)


_SCORERS: list[tuple[Callable[[Any], bool], Callable[[Any, Continuations, float], TeacherForced]]] = []


def register_teacher_forced(matches: Callable[[Any], bool],
                            scorer: Callable[..., TeacherForced]) -> None:
    """Teach the oracle a draft family: ``scorer(draft, continuations, temperature)`` for drafts where
    ``matches(draft)``. A scorer that declares the keywords ``max_depth`` (the deepest draft position
    the oracle prices) and ``target`` (the target model) receives them: EAGLE-3 heads need the target's
    hidden states and return one view per depth (`TeacherForced.by_depth`)."""
    _SCORERS.insert(0, (matches, scorer))


def teacher_forced(draft: Any, cont: Continuations, temperature: float, *, max_depth: int = 1,
                   target: torch.nn.Module | None = None) -> TeacherForced:
    """The draft's teacher-forced view of the continuations (see `TeacherForced`)."""
    import inspect

    for matches, scorer in _SCORERS:
        if matches(draft):
            params = inspect.signature(scorer).parameters
            extra = {k: v for k, v in (("max_depth", max_depth), ("target", target)) if k in params}
            return scorer(draft, cont, temperature, **extra)
    if not isinstance(draft, torch.nn.Module):
        raise OracleError(f"the oracle cannot price a {type(draft).__name__}; decode it with the engine")
    return _teacher_forced_lm(draft, cont, temperature)


# ---------------------------------------------------------------------------------------------------
# The dynamic program


def expected_counters(depths: Callable[[int], list[tuple[float, int]]], length: int, max_new_tokens: int,
                      ends_with_eos: bool, gamma: int) -> dict[str, Any]:
    """Expected engine counters of one row whose emitted tokens are ``y[0..length-1]``.

    ``depths(s)`` lists, for a step that starts with ``s`` tokens emitted, each depth the row may draft
    (at most ``min(gamma, max_new_tokens - s - 1)``): ``(P(accept | depth reached), nodes judged)``.
    Returns steps, drafted, accepted and the per-depth accepted/reached expectations."""
    start = np.zeros(length + gamma + 2)
    if length > 1:
        start[1] = 1.0
    steps = drafted = accepted = 0.0
    acc_pos, reach_pos = np.zeros(gamma), np.zeros(gamma)
    last = length - 1
    for s in range(1, length):
        w = start[s]
        if w == 0.0:
            continue
        steps += w
        levels = depths(s)[: max(0, min(gamma, max_new_tokens - s - 1))]
        judged_total = float(sum(n for _, n in levels))
        reach = 1.0  # P(this depth is reached | step starts at s)
        judged_so_far = 0.0
        for j, (a, n) in enumerate(levels):
            pos = s + j
            judged_so_far += n
            reach_pos[j] += w * reach
            acc = reach * a
            acc_pos[j] += w * acc
            if ends_with_eos and pos == last:
                drafted += w * (acc * judged_so_far + (reach - acc) * judged_total)
                reach = 0.0  # accepted EOS ends the row; a rejected one is emitted as the correction
                break
            rej = reach - acc
            start[pos + 1] += w * rej
            drafted += w * rej * judged_total
            reach = acc
        if reach > 0.0:  # every listed depth accepted: the bonus token follows
            start[s + len(levels) + 1] += w * reach
            drafted += w * reach * judged_total
    accepted = float(acc_pos.sum())
    return {"steps": steps, "drafted": drafted, "accepted": accepted, "accepted_per_position": acc_pos,
            "reached_per_position": reach_pos}


def _depth_fn(spec: TreeSpec, tf: TeacherForced | None, i: int, cont: Continuations, temperature: float,
              ngram: NgramProposer | None) -> Callable[[int], list[tuple[float, int]]]:
    y = cont.tokens[i]
    if ngram is not None:
        context = cont.prompts[cont.row_prompt[i]]

        def ngram_depths(s: int) -> list[tuple[float, int]]:
            prop = ngram.lookup(context + y[:s], ngram.n_max, ngram.n_min, spec.depth)
            return [(1.0 if s + j < len(y) and tok == y[s + j] else 0.0, 1) for j, tok in enumerate(prop)]

        return ngram_depths
    assert tf is not None
    views = tf.by_depth if tf.by_depth is not None else [tf] * spec.depth
    if len(views) < spec.depth:
        raise OracleError(f"the draft's teacher-forced view covers {len(views)} depths, {spec.describe()} needs "
                          f"{spec.depth}")
    if spec.is_chain:
        oks = []
        for view in views[:spec.depth]:
            if temperature == 0:
                a = view.top1[i].astype(float)
            else:
                logp = np.asarray(cont.logprobs[i][1:], float)
                a = np.minimum(1.0, np.exp(view.logq[i] - logp))
            # Indexed by position t >= 1; past the continuation's end (only behind an accepted EOS,
            # which ends the row first) a position is judged but can never be accepted.
            oks.append(np.concatenate([[0.0], a, np.zeros(spec.depth)]))

        def chain_depths(s: int) -> list[tuple[float, int]]:
            return [(float(oks[t - s][t]), 1) for t in range(s, s + spec.depth)]

        return chain_depths
    ranks = [np.concatenate([[NOT_IN_VOCAB], view.rank[i], np.full(spec.depth, NOT_IN_VOCAB)])
             for view in views[:spec.depth]]
    nodes = [math.prod(spec.branching[: d + 1]) for d in range(spec.depth)]

    def tree_depths(s: int) -> list[tuple[float, int]]:
        return [(1.0 if ranks[t - s][t] < spec.branching[t - s] else 0.0, nodes[t - s])
                for t in range(s, s + spec.depth)]

    return tree_depths


def _check_specs(specs: list[TreeSpec], draft: Any) -> None:
    for spec in specs:
        if spec.kind == "dynamic":
            raise OracleError(f"{spec.describe()}: a dynamic tree depends on the draft's scores at every node; "
                              "decode it with the engine (scylla.decode.engine.speculative_generate)")
        if isinstance(draft, NgramProposer) and not spec.is_chain:
            raise OracleError("n-gram lookup drafts chains only")


def acceptance_oracle(
    target: torch.nn.Module,
    draft: Any,
    prompts: Sequence[Sequence[int]],
    *,
    gammas: Sequence[int] = (),
    trees: Sequence[str | TreeSpec] = (),
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    eos_token_id: int | None = None,
    continuations: Continuations | None = None,
    samples_per_prompt: int = 1,
    cache_dir: str | None = None,
) -> dict[str, DecodeStats]:
    """The counters `speculative_generate(target, draft, prompts, ...)` would report, for every chain
    length in ``gammas`` and every static tree in ``trees``, from one teacher-forced draft pass.

    ``draft`` is a draft model (a reduced draft vocabulary is handled) or an `NgramProposer`.
    Returns ``{shape: DecodeStats}`` keyed by ``TreeSpec.describe()`` (``chain:4``, ``static:3x2x1``);
    counters are exact at temperature 0 and expectations (floats) at temperature > 0, where the
    continuations are target samples (``samples_per_prompt`` each). Timing fields are zero except
    ``wall_seconds`` (the oracle's own time); ``batch_size`` is 0: acceptance does not depend on it.
    ``continuations`` reuses a `target_continuations` result (else it is generated, and cached under
    ``cache_dir``)."""
    specs = [TreeSpec.chain(int(g)) for g in gammas] + [TreeSpec.parse(t) for t in trees]
    if not specs:
        raise OracleError("pass at least one gamma or tree shape to price")
    if any(s.depth < 1 for s in specs):
        raise OracleError("gamma 0 is plain decoding: nothing to accept")
    _check_specs(specs, draft)
    t0 = time.perf_counter()
    cont = continuations or target_continuations(target, prompts, max_new_tokens=max_new_tokens,
                                                 temperature=temperature, seed=seed, eos_token_id=eos_token_id,
                                                 samples_per_prompt=samples_per_prompt, cache_dir=cache_dir)
    if (cont.max_new_tokens, cont.temperature, cont.eos_token_id) != (max_new_tokens, float(temperature), eos_token_id):
        raise OracleError(f"the continuations were made with max_new_tokens={cont.max_new_tokens}, temperature="
                          f"{cont.temperature}, eos={cont.eos_token_id}; generate them for this request")
    if [list(p) for p in prompts] != cont.prompts:
        raise OracleError("the continuations belong to other prompts; generate them for these prompts")
    ngram = draft if isinstance(draft, NgramProposer) else None
    tf = None if ngram is not None else teacher_forced(draft, cont, temperature,
                                                      max_depth=max(s.depth for s in specs), target=target)
    n = len(cont.prompts)
    out: dict[str, DecodeStats] = {}
    for spec in specs:
        stats = DecodeStats(gamma=spec.depth, temperature=float(temperature), batch_size=0, n_prompts=n,
                            tree=spec.describe(), proposer="oracle", accepted_per_position=[0.0] * spec.depth,
                            reached_per_position=[0.0] * spec.depth, prompt_drafted=[0.0] * n,
                            prompt_accepted=[0.0] * n, prompt_steps=[0.0] * n, prompt_generated=[0.0] * n)
        share = 1.0 / cont.samples_per_prompt
        acc_pos, reach_pos = np.zeros(spec.depth), np.zeros(spec.depth)
        for i, y in enumerate(cont.tokens):
            ends = eos_token_id is not None and len(y) > 0 and y[-1] == eos_token_id
            c = expected_counters(_depth_fn(spec, tf, i, cont, temperature, ngram), len(y), max_new_tokens, ends,
                                  spec.depth)
            p = cont.row_prompt[i]
            stats.prompt_drafted[p] += share * c["drafted"]
            stats.prompt_accepted[p] += share * c["accepted"]
            stats.prompt_steps[p] += share * c["steps"]
            stats.prompt_generated[p] += share * len(y)
            acc_pos += share * c["accepted_per_position"]
            reach_pos += share * c["reached_per_position"]
        if temperature == 0:  # exact: keep integers, as the engine reports them
            for name in ("prompt_drafted", "prompt_accepted", "prompt_steps", "prompt_generated"):
                setattr(stats, name, [int(round(v)) for v in getattr(stats, name)])
            acc_pos, reach_pos = np.rint(acc_pos).astype(int), np.rint(reach_pos).astype(int)
        stats.accepted_per_position = acc_pos.tolist()
        stats.reached_per_position = reach_pos.tolist()
        stats.drafted = sum(stats.prompt_drafted)
        stats.accepted = sum(stats.prompt_accepted)
        stats.steps = sum(stats.prompt_steps)
        stats.generated_tokens = sum(stats.prompt_generated)
        stats.wall_seconds = time.perf_counter() - t0
        out[spec.describe()] = stats
    return out
