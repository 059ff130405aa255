"""Verify-and-accept: one function for chains and trees, greedy and sampling, ragged rows.

The target has scored the root (the row's last emitted token) and every tree node in one forward, so
``logits[b, s]`` is its distribution for the token after block slot ``s``. Starting at the root, a
row walks down the tree:

- **greedy** (temperature 0): descend to the child whose token is the target's argmax; stop when no
  child matches and emit the argmax (the correction), or at a leaf and emit the argmax there (the
  bonus token);
- **sampling**: multi-candidate speculative sampling with sequential sibling acceptance and residual
  renormalisation (SpecInfer's rule, as EAGLE applies it). At a node with target distribution ``p``
  the residual starts as ``r = p``; each child ``c`` in turn is accepted with probability
  ``min(1, r(x_c) / q_c(x_c))``, and on rejection ``r <- normalize(max(0, r - q_c))``. ``q_c`` is the
  distribution the child was sampled from (chains), or a point mass on ``x_c`` for deterministic
  candidates (top-k trees, n-gram lookup), for which the rule reads "accept with probability ``r(x_c)``,
  else remove ``x_c`` from ``r``". When no child is accepted the row emits a sample of ``r``; at a
  leaf (or the row's depth limit) it emits a bonus sample of ``p``.

Both rules are lossless: every emitted token is distributed exactly as the target's own sampling
(docs/decoding.md derives it; tests check it with an exact chi-square test). For a chain the
sampling rule is Leviathan et al.'s Algorithm 1, and the random numbers are drawn in the same order
(one uniform per depth and sibling, then one multinomial per row), so a chain verifies bit-identically
through this function whatever shape of tree the same code serves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scylla.decode.tree import TokenTree
from scylla.decode.vocab_ops import greedy_tokens

__all__ = ["Verdict", "verify", "pick", "probs"]


@dataclass
class Verdict:
    """Per row: how deep the accepted path goes, its block slots, and the token emitted after it.

    ``path`` [B, D + 1] holds block slots root first (slot 0), then the accepted nodes; entries past
    ``n_accepted`` are -1. ``reached`` counts the depths the path judged: ``n_accepted`` plus one when
    its last node had a judged child (the depth where a rejection happened)."""

    n_accepted: torch.Tensor
    path: torch.Tensor
    next_token: torch.Tensor
    reached: torch.Tensor

    @property
    def last_slot(self) -> torch.Tensor:
        """Block slot of each row's last kept token (the deepest accepted node, else the root)."""
        return self.path.gather(1, self.n_accepted[:, None]).squeeze(1)


def probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1)


def pick(logits: torch.Tensor, temperature: float,
         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token per row from logits [B, V]: argmax at temperature 0, else a sample (with its probs)."""
    if temperature == 0:
        return greedy_tokens(logits), None
    p = probs(logits, temperature)
    return torch.multinomial(p, 1, generator=generator).squeeze(1), p


def verify(tree: TokenTree | None, logits: torch.Tensor, limit: torch.Tensor, temperature: float,
           generator: torch.Generator | None) -> Verdict:
    """Accept a path through each row's tree (see the module doc); ``limit`` [B] caps its depth."""
    b = logits.shape[0]
    dev = logits.device
    rows = torch.arange(b, device=dev)
    if tree is None or tree.n_nodes == 0:
        nxt, _ = pick(logits[:, 0], temperature, generator)
        zero = torch.zeros(b, dtype=torch.long, device=dev)
        return Verdict(zero, zero[:, None].clone(), nxt, zero.clone())
    judged = tree.valid & (tree.depth <= limit[:, None])
    depth = tree.max_depth
    if temperature == 0:
        return _greedy(tree, logits, judged, depth, rows)
    return _sampled(tree, logits, judged, depth, rows, temperature, generator)


def _path_from(deepest: torch.Tensor, n_acc: torch.Tensor, parent_ext: torch.Tensor, depth: int) -> torch.Tensor:
    """Block slots root..deepest per row ([B, depth + 1], -1 past each row's end), from parent pointers
    (``parent_ext[b, s]`` is slot s's parent slot)."""
    rows = torch.arange(deepest.shape[0], device=deepest.device)
    path = torch.full((deepest.shape[0], depth + 1), -1, dtype=torch.long, device=deepest.device)
    path[:, 0] = 0
    slot = deepest
    for d in range(depth, 0, -1):
        on = n_acc >= d
        path[on, d] = slot[on]
        slot = torch.where(on, parent_ext[rows, slot], slot)
    return path


def _greedy(tree: TokenTree, logits: torch.Tensor, judged: torch.Tensor, depth: int,
            rows: torch.Tensor) -> Verdict:
    # The target's token after each slot that is the parent of a judged node: a prefix of the block
    # (parents precede children), so leaves past it are never reduced over the vocabulary.
    parents = tree.parent[judged]
    upto = int(parents.max()) + 1 if parents.numel() else 1
    best = greedy_tokens(logits[:, :upto])  # [B, upto]
    match = judged & (tree.tokens == best.gather(1, tree.parent.clamp_max(upto - 1)))
    if tree.is_chain:
        acc = match.long().cumprod(1).bool()
    else:
        acc = match.clone()
        ext = torch.ones(acc.shape[0], acc.shape[1] + 1, dtype=torch.bool, device=acc.device)
        for _ in range(depth - 1):  # an accepted node needs an accepted parent (BFS order: parents first)
            ext[:, 1:] = acc
            acc = match & ext.gather(1, tree.parent)
    score = torch.where(acc, tree.depth, torch.zeros_like(tree.depth))
    n_acc, idx = score.max(1)
    deepest = torch.where(n_acc > 0, idx + 1, torch.zeros_like(idx))
    parent_ext = torch.cat([torch.zeros_like(tree.parent[:, :1]), tree.parent], 1)
    path = _path_from(deepest, n_acc, parent_ext, depth)
    has_child = (judged & (tree.parent == deepest[:, None])).any(1)
    nxt = greedy_tokens(logits[rows, deepest])  # the correction or bonus token after the deepest slot
    return Verdict(n_acc, path, nxt, n_acc + has_child.long())


def _sampled(tree: TokenTree, logits: torch.Tensor, judged: torch.Tensor, depth: int, rows: torch.Tensor,
             temperature: float, generator: torch.Generator | None) -> Verdict:
    children = tree.children  # [B, 1+N, K]
    k = children.shape[2]
    b = logits.shape[0]
    u = torch.rand(b, depth, k, generator=generator, device=logits.device)
    cur = torch.zeros(b, dtype=torch.long, device=logits.device)
    n_acc = torch.zeros_like(cur)
    reached = torch.zeros_like(cur)
    done = torch.zeros(b, dtype=torch.bool, device=logits.device)
    path = torch.full((b, depth + 1), -1, dtype=torch.long, device=logits.device)
    path[:, 0] = 0
    residual = probs(logits[:, 0], temperature)
    judged_ext = torch.cat([torch.zeros_like(judged[:, :1]), judged], 1)
    for d in range(depth):
        advanced = torch.zeros_like(done)
        new_cur = cur.clone()
        tried = torch.zeros_like(done)
        for j in range(k):
            c = children[rows, cur, j]  # [B] block slot of the j-th child, -1 if none
            ok = (c >= 0) & ~done & ~advanced
            ok &= judged_ext[rows, c.clamp_min(0)]
            if not bool(ok.any()):
                continue
            tried |= ok
            node = (c - 1).clamp_min(0)
            x = tree.tokens[rows, node]
            r_x = residual.gather(1, x[:, None]).squeeze(1)
            if tree.q is not None:
                q_c = tree.q[rows, node]  # [B, V]
                q_x = q_c.gather(1, x[:, None]).squeeze(1)
            else:
                q_c = None
                q_x = torch.ones_like(r_x)
            accept = ok & (u[:, d, j] * q_x < r_x)  # probability min(1, r(x) / q(x))
            reject = ok & ~accept
            if bool(reject.any()):
                if q_c is None:
                    left = residual.scatter(1, x[:, None], 0.0)
                else:
                    left = (residual - q_c).clamp_min(0)
                mass = left.sum(-1, keepdim=True)
                left = torch.where(mass > 0, left / mass.clamp_min(1e-30), residual)
                residual = torch.where(reject[:, None], left, residual)
            new_cur = torch.where(accept, c, new_cur)
            advanced |= accept
        reached += tried.long()
        done |= ~advanced
        if not bool(advanced.any()):
            break
        cur = new_cur
        n_acc += advanced.long()
        path[advanced, d + 1] = cur[advanced]
        fresh = probs(logits[rows, cur], temperature)
        residual = torch.where(advanced[:, None], fresh, residual)
    nxt = torch.multinomial(residual, 1, generator=generator).squeeze(1)
    return Verdict(n_acc, path, nxt, reached)
