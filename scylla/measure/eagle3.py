"""The acceptance oracle for EAGLE-3 heads: exact at temperature 0, unbiased above it, per depth.

A head's prediction of a continuation token depends on how deep in a step it is drafted: at depth k
it reads its own output of depth k - 1 (docs/eagle3.md). Along the target's continuation ``y`` the
decoder's state at depth k of a step is a function of ``y`` alone when every earlier depth was
accepted (the only case in which depth k is judged): its cache holds the target-feature slots of every
position up to the step's root and the slots of its own chain, each fed the previous depth's output
with the accepted token. That is exactly what `Eagle3Draft.ttt` computes at every position at once,
given the target's hidden states of ``prompt + y`` (one teacher-forced target forward with
``output_hidden_states=True``). So one target forward plus one unrolled pass of ``max_depth`` steps
gives `TeacherForced.by_depth`, and the oracle's dynamic program prices every chain and static tree
as for any other draft (`scylla.measure.oracle`). `tests/test_eagle3.py` checks the counters against
the engine per prompt (ragged prompts, EOS, ``max_new_tokens``).
"""

from __future__ import annotations

import math

import torch

from scylla.decode.target import left_pad
from scylla.measure.continuations import Continuations
from scylla.measure.oracle import NOT_IN_VOCAB, OracleError, TeacherForced, register_teacher_forced
from scylla.models.eagle3 import Eagle3Draft, check_target, target_features

__all__ = ["eagle3_teacher_forced"]


@torch.inference_mode()
def eagle3_teacher_forced(draft: Eagle3Draft, cont: Continuations, temperature: float, *, max_depth: int = 1,
                          target: torch.nn.Module | None = None, max_floats: int = 40_000_000) -> TeacherForced:
    """Per depth 1..``max_depth``, the head's view of every continuation token y[t] (t >= 1): argmax hit,
    rank and log q at ``temperature`` (module doc). ``max_floats`` bounds one forward's activations
    (a memory bound: it only changes how the same work is batched)."""
    if target is None:
        raise OracleError("an EAGLE-3 head drafts from the target's hidden states: pass the target to the oracle")
    check_target(draft.config, target)
    device = next(draft.parameters()).device
    vocab = draft.draft_vocab
    t2d = vocab.target_to_draft().to(device) if not vocab.is_full else None
    seqs = [cont.prompts[cont.row_prompt[i]] + cont.tokens[i] for i in range(len(cont.tokens))]
    width = max(len(s) for s in seqs)
    tc = target.config
    per_row = width * (draft.config.draft_vocab_size * (max_depth + 1)
                       + int(tc.hidden_size) * (int(tc.num_hidden_layers) + 4 * max_depth + 4))
    rows_per_forward = max(1, max_floats // max(per_row, 1))
    views = [([], [], []) for _ in range(max_depth)]  # per depth: top1, rank, logq
    for start in range(0, len(seqs), rows_per_forward):
        chunk = seqs[start:start + rows_per_forward]
        ids, valid = left_pad(chunk, device)
        pos = (valid.long().cumsum(1) - 1).clamp_min(0)
        out = target(input_ids=ids, attention_mask=valid.long(), position_ids=pos, output_hidden_states=True,
                     logits_to_keep=1)
        aux = target_features(out, draft.layer_ids).to(draft.fc.weight.dtype)
        tt = draft.ttt(ids, aux, max_depth, valid=valid)
        w = ids.shape[1]
        for j, i in enumerate(range(start, start + len(chunk))):
            n, length = len(cont.prompts[cont.row_prompt[i]]), len(cont.tokens[i])
            offset = w - (n + length)
            y = torch.tensor(cont.tokens[i][1:], dtype=torch.long, device=device)  # y[1:]
            t = torch.arange(1, length, device=device)
            slot = offset + n + t - 2  # slot p predicts token p + 2 = y[t]
            if t2d is not None:
                yd = t2d[y]
                inside = yd >= 0
                yd = yd.clamp_min(0)
            else:
                yd, inside = y, torch.ones_like(y, dtype=torch.bool)
            for k in range(1, max_depth + 1):
                defined = inside & (t >= k)  # depth k judges y[t] only when its step starts at t - k + 1 >= 1
                lg = tt.logits[k - 1][j, slot].float()
                ly = lg.gather(1, yd[:, None]).squeeze(1)
                r = (lg > ly[:, None]).sum(1)
                top1, rank, logq = views[k - 1]
                top1.append((defined & (lg.argmax(1) == yd)).cpu().numpy())
                rank.append(torch.where(defined, r, torch.full_like(r, NOT_IN_VOCAB)).cpu().numpy())
                if temperature > 0:
                    lq = torch.log_softmax(lg / temperature, -1).gather(1, yd[:, None]).squeeze(1)
                    logq.append(torch.where(defined, lq, torch.full_like(lq, -math.inf)).cpu().numpy())
    by_depth = [TeacherForced(top1, rank, logq if temperature > 0 else None) for top1, rank, logq in views]
    first = by_depth[0]
    return TeacherForced(first.top1, first.rank, first.logq, by_depth=by_depth)


register_teacher_forced(lambda draft: isinstance(draft, Eagle3Draft), eagle3_teacher_forced)
