"""Proposers: how each draft family drafts a token tree from the accepted state of every row.

The engine (`scylla.decode.engine`) calls, per chunk of prompts: ``start`` once with the prompt block,
then per step ``propose`` (a `TokenTree`, or None for no drafting) and ``accept`` with the target's
`Verdict`; ``select_rows`` when finished rows leave the batch. Families:

- `DraftLMProposer`: a separate small causal LM (its own KV cache): chains, static top-k trees and
  EAGLE-2 dynamic trees; a reduced draft vocabulary (`scylla.models.vocab.DraftVocab`) is mapped to
  target ids here;
- `NgramProposer`: prompt lookup (vLLM's ``ngram``, HF's prompt lookup decoding): no model at all;
- MTP heads live in `scylla.decode.mtp` (the target drafts for itself) and EAGLE-3 heads in
  `scylla.decode.eagle3`; others plug in with `register_proposer`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from scylla.decode.cache import CachedLM
from scylla.decode.target import FeatureSpec, left_pad
from scylla.decode.tree import TokenTree, TreeSpec, select_dynamic
from scylla.decode.verify import Verdict, probs
from scylla.decode.vocab_ops import greedy_tokens, top_k_tokens
from scylla.models.vocab import DraftVocab

__all__ = ["Proposer", "DraftLMProposer", "NgramProposer", "register_proposer", "make_proposer", "ancestor_matrix",
           "pool_is_ancestor", "draft_pick", "draft_top_k"]


class Proposer:
    """Base class: a stateful drafter for one chunk of rows at a time (see the module doc)."""

    name = "proposer"
    features: FeatureSpec | None = None  # what it needs from each target forward (None: nothing)
    # True when the drafts come out of the target's own forward (MTP heads): there is no draft phase,
    # and the little work of assembling the tree is counted with verification.
    self_drafting = False
    # ``forwards`` counts draft steps (forwards after the prompt); ``forward_seconds`` is the time inside
    # every draft forward, the prompt's included, so wall time minus model time is the engine's own.

    def __init__(self, spec: TreeSpec) -> None:
        self.spec = spec
        self.forwards = 0
        self.forward_seconds = 0.0

    @property
    def vocab_size(self) -> int | None:
        """Target vocabulary size the proposer's token ids live in (None: any)."""
        return None

    def with_spec(self, spec: TreeSpec) -> "Proposer":
        """The same proposer drafting another shape (a fresh, unstarted one)."""
        raise ValueError(f"{self.name} drafts {self.spec.describe()} only, but {spec.describe()} was asked for")

    def start(self, tokens: torch.Tensor, valid: torch.Tensor, target_features: torch.Tensor | None,
              temperature: float, generator: torch.Generator | None) -> None:
        """A new chunk: the left-padded prompt block [B, L] (and the target's prompt features); called
        after the target picked each row's first token, so random draws keep the decoding order."""

    def propose(self, root: torch.Tensor, limit: torch.Tensor, contexts: Sequence[Sequence[int]],
                temperature: float, generator: torch.Generator | None) -> TokenTree | None:
        """Each row's tree under its last emitted token ``root`` [B]; depths past ``limit`` [B] are not
        judged. ``contexts[b]`` is row b's prompt plus everything it emitted (ending with the root)."""
        raise NotImplementedError

    def accept(self, verdict: Verdict, tree: TokenTree | None, target_features: torch.Tensor | None) -> None:
        """The target kept ``verdict.path`` of each row's tree, then emitted ``verdict.next_token``."""

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (finished rows left the batch)."""

    def maybe_compact(self) -> None:
        """Tidy caches between steps (optional)."""


# ---------------------------------------------------------------------------------------------------
# Draft logits to target ids (shared by every family with an LM head, reduced vocabulary or not)


def draft_pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
               vocab: DraftVocab | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target id per row from draft logits [B, V_d], and q over target ids when sampling (zero outside
    a reduced draft ``vocab``)."""
    if temperature == 0:
        tok, q = greedy_tokens(logits), None
    else:
        q = probs(logits.float(), temperature)
        tok = torch.multinomial(q, 1, generator=generator).squeeze(1)
    if vocab is not None:
        tok = vocab.to_target(tok)
        q = vocab.scatter_probs(q) if q is not None else None
    return tok, q


def draft_top_k(logits: torch.Tensor, k: int, vocab: DraftVocab | None,
                scores: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Top-k target ids from draft logits [..., V_d] (ranked on the logits, as the oracle ranks), and
    their draft log-probabilities when ``scores`` (dynamic trees rank nodes by them; static trees need
    none, and skip a log-softmax over the draft vocabulary)."""
    top, idx = top_k_tokens(logits, k)
    logp = top.float() - torch.logsumexp(logits.float(), -1, keepdim=True) if scores else None
    return (vocab.to_target(idx) if vocab is not None else idx), logp


# ---------------------------------------------------------------------------------------------------
# A separate draft LM


class DraftLMProposer(Proposer):
    """A small causal LM drafting chains, static top-k trees or EAGLE-2 dynamic trees.

    The draft keeps its own KV cache. Each step it first consumes the tokens emitted since it last ran
    (at most the unfed deepest accepted node, then the root), then drafts depth by depth: a chain
    feeds each sampled/argmax token back; a tree feeds each depth's frontier as one block whose slots
    see only their ancestors. After verification it keeps the accepted nodes it fed (gathered to the
    front of the block) and hides the rest.
    """

    name = "draft_lm"

    def __init__(self, model: torch.nn.Module, spec: TreeSpec) -> None:
        super().__init__(spec)
        self.model = model
        self.vocab = getattr(model, "draft_vocab", None)
        if self.vocab is not None and self.vocab.is_full:
            self.vocab = None
        self._static = None
        if spec.kind in ("chain", "static") and spec.depth:
            parents = spec.static_parents()
            n = len(parents)
            parent = torch.tensor(parents, dtype=torch.long)
            depth = torch.zeros(n, dtype=torch.long)
            for i, p in enumerate(parents):
                depth[i] = 1 + (depth[p - 1] if p > 0 else 0)
            self._static = (parent, depth)

    @property
    def vocab_size(self) -> int | None:
        if self.vocab is not None:
            return self.vocab.target_size
        return int(self.model.get_input_embeddings().weight.shape[0])

    # -- state -------------------------------------------------------------------------------------
    def start(self, tokens: torch.Tensor, valid: torch.Tensor, target_features: torch.Tensor | None,
              temperature: float, generator: torch.Generator | None) -> None:
        self.lm = CachedLM(self.model, tokens.shape[0], tokens.device)
        self.lm.append(tokens, valid, last_only=True)  # the prompt into the cache; logits unused
        self.forward_seconds += self.lm.forward_seconds  # a forward, but not a draft step
        self.pending: list[list[int]] = [[] for _ in range(tokens.shape[0])]
        self._fed: torch.Tensor | None = None  # [B, N] region slot of each tree node fed this step, -1 if not
        self._region = 0

    def select_rows(self, rows: torch.Tensor) -> None:
        self.lm.select_rows(rows)
        idx = rows.tolist()
        self.pending = [self.pending[i] for i in idx]

    def maybe_compact(self) -> None:
        self.lm.maybe_compact()

    def _append(self, tokens: torch.Tensor, valid: torch.Tensor, **kw: Any) -> torch.Tensor:
        t0 = self.lm.forward_seconds
        out = self.lm.append(tokens, valid, **kw)
        self.forwards += 1
        self.forward_seconds += self.lm.forward_seconds - t0
        return out.logits.float()

    # -- drafting ----------------------------------------------------------------------------------
    def propose(self, root: torch.Tensor, limit: torch.Tensor, contexts: Sequence[Sequence[int]],
                temperature: float, generator: torch.Generator | None) -> TokenTree | None:
        depth = min(self.spec.depth, int(limit.max()))
        root_list = root.tolist()
        if depth == 0:  # nothing may be drafted this step: the root waits for the next one
            self.pending = [p + [r] for p, r in zip(self.pending, root_list)]
            self._fed, self._region = None, 0
            return None
        block, bvalid = left_pad([p + [r] for p, r in zip(self.pending, root_list)], root.device)
        logits = self._append(block, bvalid, last_only=True)[:, -1]
        self.pending = [[] for _ in root_list]
        spec = self.spec.truncated(depth)
        if spec.kind == "chain":
            return self._chain(logits, depth, temperature, generator)
        if spec.kind == "static":
            return self._static_tree(logits, spec)
        return self._dynamic_tree(logits, spec)

    def _chain(self, logits: torch.Tensor, depth: int, temperature: float,
               generator: torch.Generator | None) -> TokenTree:
        b, dev = logits.shape[0], logits.device
        ones = torch.ones(b, 1, dtype=torch.bool, device=dev)
        tokens, qs = [], []
        for k in range(depth):
            tok, q = draft_pick(logits, temperature, generator, self.vocab)
            tokens.append(tok)
            if q is not None:
                qs.append(q)
            if k < depth - 1:
                logits = self._append(tok[:, None], ones)[:, -1]
        self._region = depth - 1
        fed = torch.arange(depth, device=dev).expand(b, depth).clone()
        fed[:, depth - 1] = -1
        self._fed = fed
        parent, node_depth = (x[:depth].to(dev) for x in self._static)
        return TokenTree(torch.stack(tokens, 1), parent.expand(b, depth).clone(), node_depth.expand(b, depth).clone(),
                         torch.ones(b, depth, dtype=torch.bool, device=dev), torch.stack(qs, 1) if qs else None)

    def _static_tree(self, logits: torch.Tensor, spec: TreeSpec) -> TokenTree:
        """Every node at depth d - 1 gets the draft's top-K_d tokens as children (deterministic)."""
        b, dev = logits.shape[0], logits.device
        parent_all, depth_all = (x.to(dev) for x in self._static)
        n = spec.size
        parent, node_depth = parent_all[:n], depth_all[:n]
        anc = ancestor_matrix(parent)  # [1+N, 1+N]
        base_len = self.lm.length
        root_pos = self.lm.next_pos - 1
        tokens = torch.zeros(b, n, dtype=torch.long, device=dev)
        start, frontier_logits = 0, logits[:, None]  # frontier: node ids [start, start + width)
        for d, k in enumerate(spec.branching):
            width = frontier_logits.shape[1]
            kids, _ = draft_top_k(frontier_logits, k, self.vocab, scores=False)  # [B, width, k]
            first = start + width if d else 0
            tokens[:, first:first + width * k] = kids.reshape(b, width * k)
            if d + 1 < spec.depth:  # feed this depth's new nodes to get their children
                ids = torch.arange(first, first + width * k, device=dev)
                fed_so_far = self.lm.length - base_len  # nodes 0..fed_so_far-1 already in the cache
                old = torch.ones(width * k, base_len, dtype=torch.bool, device=dev)
                seen = anc[ids + 1][:, 1:first + width * k + 1]  # over nodes 0..last new
                assert seen.shape[1] == fed_so_far + width * k
                visible = torch.cat([old, seen], 1).expand(b, -1, -1)
                positions = root_pos[:, None] + node_depth[ids][None, :]
                frontier_logits = self._append(tokens[:, ids], torch.ones(b, ids.numel(), dtype=torch.bool, device=dev),
                                               positions=positions, visible=visible)
            start = first
        fed_count = self.lm.length - base_len
        self._region = fed_count
        fed = torch.where(torch.arange(n, device=dev) < fed_count, torch.arange(n, device=dev), -1)
        self._fed = fed.expand(b, n).clone()
        tree = TokenTree(tokens, parent.expand(b, n).clone(), node_depth.expand(b, n).clone(),
                         torch.ones(b, n, dtype=torch.bool, device=dev))
        tree.ancestor_mask = anc.expand(b, -1, -1)
        return tree

    def _dynamic_tree(self, logits: torch.Tensor, spec: TreeSpec) -> TokenTree:
        """EAGLE-2: expand the top-K frontier by cumulative log-probability, keep the N best nodes."""
        b, dev = logits.shape[0], logits.device
        k, depth, n = spec.top_k, spec.depth, spec.total_tokens
        base_len = self.lm.length
        root_pos = self.lm.next_pos - 1
        kids, logp = draft_top_k(logits, k, self.vocab)  # depth 1: [B, K]
        pool_tok, pool_score = [kids], [logp]
        pool_parent = [torch.full((b, k), -1, dtype=torch.long, device=dev)]
        pool_depth = [torch.ones(b, k, dtype=torch.long, device=dev)]
        frontier = torch.arange(k, device=dev).expand(b, k)  # pool ids
        fed_pool: list[torch.Tensor] = []  # pool id of each fed slot, in order
        size = k
        for d in range(2, depth + 1):
            tok_all = torch.cat(pool_tok, 1)
            par_all = torch.cat(pool_parent, 1)
            # Frontier slots see the prompt, the fed ancestors of their node, and themselves.
            fed_ids = torch.cat(fed_pool, 1) if fed_pool else torch.zeros(b, 0, dtype=torch.long, device=dev)
            anc_f = pool_is_ancestor(par_all, frontier, fed_ids)  # [B, K, fed]
            old = torch.ones(b, k, base_len, dtype=torch.bool, device=dev)
            own = torch.eye(k, dtype=torch.bool, device=dev).expand(b, k, k)
            visible = torch.cat([old, anc_f, own], 2)
            positions = root_pos[:, None] + (d - 1)
            flog = self._append(tok_all.gather(1, frontier), torch.ones(b, k, dtype=torch.bool, device=dev),
                                positions=positions.expand(b, k), visible=visible)
            fed_pool.append(frontier)
            ctok, clogp = draft_top_k(flog, k, self.vocab)  # [B, K, K]
            score_all = torch.cat(pool_score, 1)
            cscore = score_all.gather(1, frontier)[:, :, None] + clogp
            pool_tok.append(ctok.reshape(b, k * k))
            pool_score.append(cscore.reshape(b, k * k))
            pool_parent.append(frontier[:, :, None].expand(b, k, k).reshape(b, k * k))
            pool_depth.append(torch.full((b, k * k), d, dtype=torch.long, device=dev))
            best = cscore.reshape(b, k * k).topk(k, dim=1).indices
            frontier = size + best
            size += k * k
        tree, chosen = select_dynamic(torch.cat(pool_tok, 1), torch.cat(pool_score, 1), torch.cat(pool_parent, 1),
                                      torch.cat(pool_depth, 1), n)
        fed_ids = torch.cat(fed_pool, 1) if fed_pool else torch.zeros(b, 0, dtype=torch.long, device=dev)
        slot_of = torch.full((b, size), -1, dtype=torch.long, device=dev)
        if fed_ids.numel():
            slot_of.scatter_(1, fed_ids, torch.arange(fed_ids.shape[1], device=dev).expand(b, -1))
        self._fed = slot_of.gather(1, chosen)
        self._region = fed_ids.shape[1]
        return tree

    # -- after verification ------------------------------------------------------------------------
    def accept(self, verdict: Verdict, tree: TokenTree | None, target_features: torch.Tensor | None) -> None:
        if tree is None or self._fed is None:
            return
        b = verdict.path.shape[0]
        nodes = (verdict.path[:, 1:] - 1)  # [B, D] accepted node ids, -1 past the path
        on_path = nodes >= 0
        fed = torch.where(on_path, self._fed.gather(1, nodes.clamp_min(0)), torch.full_like(nodes, -1))
        if self._region:
            keep = torch.zeros(b, self._region, dtype=torch.bool, device=nodes.device)
            keep.scatter_(1, fed.clamp_min(0), fed >= 0)
            # scatter of the "not fed" entries wrote False into slot 0: rewrite the real slot-0 entries
            keep[:, 0] = (fed == 0).any(1)
            self.lm.keep_block(self._region, keep)
        unfed = on_path & (fed < 0)  # accepted nodes the draft has not consumed (the deepest, at most)
        tokens = tree.tokens.gather(1, nodes.clamp_min(0))
        self.pending = [t[u].tolist() for t, u in zip(tokens, unfed)]
        self._fed, self._region = None, 0


def ancestor_matrix(parent: torch.Tensor) -> torch.Tensor:
    """bool [1+N, 1+N] ancestor-or-self matrix of one tree (block slots, root = 0)."""
    n = parent.numel()
    anc = torch.eye(n + 1, dtype=torch.bool, device=parent.device)
    for i in range(n):
        anc[i + 1] |= anc[int(parent[i])]
    return anc


def pool_is_ancestor(pool_parent: torch.Tensor, nodes: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """bool [B, M, C]: candidate pool id c is a strict ancestor of node m (parents: -1 = root)."""
    out = torch.zeros(nodes.shape[0], nodes.shape[1], candidates.shape[1], dtype=torch.bool, device=nodes.device)
    cur = nodes
    while True:
        cur = torch.where(cur >= 0, pool_parent.gather(1, cur.clamp_min(0)), cur)
        if not bool((cur >= 0).any()):
            return out
        out |= (cur[:, :, None] == candidates[:, None, :]) & (cur[:, :, None] >= 0)


# ---------------------------------------------------------------------------------------------------
# Prompt lookup


class NgramProposer(Proposer):
    """Prompt lookup: find the longest recent n-gram (``n_max`` down to ``n_min`` tokens) that ends the
    row's context and occurred before, and propose the tokens that followed its most recent earlier
    occurrence (vLLM's ``ngram`` method, HF's prompt lookup decoding). No model, no forward: the
    proposals are deterministic candidates, verified losslessly as point masses at temperature > 0."""

    name = "ngram"

    def __init__(self, gamma: int, n_max: int = 3, n_min: int = 1) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"ngram sizes need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        super().__init__(TreeSpec.chain(gamma))
        self.n_max, self.n_min = n_max, n_min

    def with_spec(self, spec: TreeSpec) -> "NgramProposer":
        if not spec.is_chain:
            raise ValueError(f"n-gram lookup drafts chains, not {spec.describe()}")
        return NgramProposer(spec.depth, self.n_max, self.n_min)

    @staticmethod
    def lookup(context: Sequence[int], n_max: int, n_min: int, count: int) -> list[int]:
        """Up to ``count`` tokens that followed the latest earlier occurrence of the context's longest
        suffix n-gram (``n_max`` .. ``n_min`` tokens); [] when none occurred."""
        if count <= 0:
            return []
        arr = np.asarray(context, dtype=np.int64)
        for n in range(min(n_max, len(arr) - 1), n_min - 1, -1):
            windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)
            hits = np.flatnonzero((windows == arr[-n:]).all(1))
            if hits.size:
                start = int(hits[-1]) + n
                return arr[start:start + count].tolist()
        return []

    def propose(self, root: torch.Tensor, limit: torch.Tensor, contexts: Sequence[Sequence[int]],
                temperature: float, generator: torch.Generator | None) -> TokenTree | None:
        depth = min(self.spec.depth, int(limit.max()))
        if depth == 0:
            return None
        found = [self.lookup(ctx, self.n_max, self.n_min, min(depth, int(lim)))
                 for ctx, lim in zip(contexts, limit.tolist())]
        b, dev = len(found), root.device
        tokens = torch.zeros(b, depth, dtype=torch.long, device=dev)
        valid = torch.zeros(b, depth, dtype=torch.bool, device=dev)
        for i, f in enumerate(found):
            if f:
                tokens[i, :len(f)] = torch.tensor(f, dtype=torch.long)
                valid[i, :len(f)] = True
        ar = torch.arange(depth, device=dev)
        return TokenTree(tokens, ar.expand(b, depth).clone(), (ar + 1).expand(b, depth).clone(), valid)


# ---------------------------------------------------------------------------------------------------
# Registry: which proposer drafts for a given draft object


_FACTORIES: list[tuple[Callable[[Any], bool], Callable[[Any, TreeSpec], Proposer]]] = []


def register_proposer(matches: Callable[[Any], bool], factory: Callable[[Any, TreeSpec], Proposer]) -> None:
    """Teach `make_proposer` a draft family: ``factory(draft, spec)`` for drafts where ``matches(draft)``.
    Later registrations win (a family subclassing a Llama is matched before the generic draft LM)."""
    _FACTORIES.insert(0, (matches, factory))


def make_proposer(draft: Any, spec: TreeSpec) -> Proposer | None:
    """The proposer for ``draft`` (a model, or a `Proposer` used as is) drafting ``spec``; None for
    plain decoding (no draft or a depth-0 spec)."""
    if draft is None or spec.depth == 0:
        return None
    if isinstance(draft, Proposer):
        return draft
    for matches, factory in _FACTORIES:
        if matches(draft):
            return factory(draft, spec)
    return DraftLMProposer(draft, spec)

