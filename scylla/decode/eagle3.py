"""EAGLE-3 heads in the decode core: chains, static trees and EAGLE-2 dynamic trees, batched.

The proposer asks the target for its hidden states through the public forward API
(``output_hidden_states=True``, read by `scylla.models.eagle3.target_features`: a `FeatureSpec`, so the
engine, the verification and the target's cache are the same as for every other family).

The head's KV cache holds one *committed* slot per target position t: the target's fused state at t
paired with token t + 1. Each step:

1. the slots still pending are appended in one forward: the target states of the positions verified
   last step (the root and the accepted nodes), each paired with the token that followed it (the
   accepted nodes' tokens, then the new root). The last slot's output drafts depth 1;
2. deeper depths feed the head its own pre-norm output of the parent slot with the parent's token
   (a chain: one slot per depth; a tree: each depth's frontier as one block under a tree mask);
3. after verification every slot fed in 2. is hidden again: the accepted tokens are re-processed with
   the target's states at the next step (1.), as EAGLE-3 does.

So the first forward of a step is 1 + accepted tokens wide (`Eagle3Draft.reprocesses_accepted`, which
the cost composition prices). Losslessness is the core's: chains sample from the head's distribution
over its draft vocabulary (zero elsewhere), trees are deterministic top-k candidates.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch

from scylla.decode.cache import CachedLM
from scylla.decode.proposers import (Proposer, ancestor_matrix, draft_pick, draft_top_k, pool_is_ancestor,
                                     register_proposer)
from scylla.decode.target import FeatureSpec
from scylla.decode.tree import TokenTree, TreeSpec, select_dynamic
from scylla.decode.verify import Verdict
from scylla.models.eagle3 import Eagle3Draft, target_features

__all__ = ["Eagle3Proposer"]


class Eagle3Proposer(Proposer):
    """Drafts with an `Eagle3Draft` from the target's hidden states (see the module doc)."""

    name = "eagle3"

    def __init__(self, model: Eagle3Draft, spec: TreeSpec) -> None:
        super().__init__(spec)
        self.model = model
        vocab = model.draft_vocab
        self.vocab = None if vocab.is_full else vocab
        self.features = FeatureSpec(forward_kwargs={"output_hidden_states": True},
                                    read=functools.partial(target_features, layer_ids=model.layer_ids))
        self._static = None
        if spec.kind in ("chain", "static") and spec.depth:
            parents = spec.static_parents()
            parent = torch.tensor(parents, dtype=torch.long)
            depth = torch.zeros(len(parents), dtype=torch.long)
            for i, p in enumerate(parents):
                depth[i] = 1 + (depth[p - 1] if p > 0 else 0)
            self._static = (parent, depth)

    @property
    def vocab_size(self) -> int | None:
        return int(self.model.config.vocab_size)

    def with_spec(self, spec: TreeSpec) -> "Eagle3Proposer":
        return Eagle3Proposer(self.model, spec)

    # -- state -------------------------------------------------------------------------------------
    def start(self, tokens: torch.Tensor, valid: torch.Tensor, target_features: torch.Tensor | None,
              temperature: float, generator: torch.Generator | None) -> None:
        if target_features is None:
            raise RuntimeError("the EAGLE-3 proposer needs the target's hidden states (its FeatureSpec was not used)")
        b, width = tokens.shape
        self.lm = CachedLM(self.model, b, tokens.device)
        feats = target_features.to(self.model.fc.weight.dtype)
        if width > 1:  # prompt slots t = 0..n-2: the target's state at t with token t + 1
            pairs = valid[:, :-1] & valid[:, 1:]
            if bool(pairs.any()):
                self.lm.append(tokens[:, 1:], pairs, aux_hidden_states=feats[:, :-1], last_only=True)
                self.forward_seconds += self.lm.forward_seconds  # a forward, but not a draft step
        self.pend_feats: list[list[torch.Tensor]] = [[feats[i, -1]] for i in range(b)]
        self.pend_tokens: list[list[int]] = [[] for _ in range(b)]
        self._region = 0

    def select_rows(self, rows: torch.Tensor) -> None:
        self.lm.select_rows(rows)
        idx = rows.tolist()
        self.pend_feats = [self.pend_feats[i] for i in idx]
        self.pend_tokens = [self.pend_tokens[i] for i in idx]

    def maybe_compact(self) -> None:
        self.lm.maybe_compact()

    def _forward(self, tokens: torch.Tensor, valid: torch.Tensor, **kw: Any) -> Any:
        t0 = self.lm.forward_seconds
        out = self.lm.append(tokens, valid, **kw)
        self.forwards += 1
        self.forward_seconds += self.lm.forward_seconds - t0
        return out

    # -- drafting ----------------------------------------------------------------------------------
    def propose(self, root: torch.Tensor, limit: torch.Tensor, contexts: Sequence[Sequence[int]],
                temperature: float, generator: torch.Generator | None) -> TokenTree | None:
        for pend, r in zip(self.pend_tokens, root.tolist()):
            pend.append(r)
        depth = min(self.spec.depth, int(limit.max()))
        self._region = 0
        if depth == 0:  # nothing is drafted: the pending slots wait for the next step
            return None
        b, dev = root.shape[0], root.device
        width = max(len(p) for p in self.pend_tokens)
        tokens = torch.zeros(b, width, dtype=torch.long, device=dev)
        valid = torch.zeros(b, width, dtype=torch.bool, device=dev)
        aux = self.pend_feats[0][0].new_zeros(b, width, self.pend_feats[0][0].shape[-1])
        for i, (toks, feats) in enumerate(zip(self.pend_tokens, self.pend_feats)):
            n = len(toks)
            tokens[i, width - n:] = torch.tensor(toks, dtype=torch.long, device=dev)
            valid[i, width - n:] = True
            aux[i, width - n:] = torch.stack(feats)
        out = self._forward(tokens, valid, aux_hidden_states=aux, last_only=True)
        self.pend_tokens = [[] for _ in range(b)]
        self.pend_feats = [[] for _ in range(b)]
        logits, h_root = out.logits[:, -1], out.last_hidden_state[:, -1]
        spec = self.spec.truncated(depth)
        if spec.kind == "chain":
            return self._chain(logits, h_root, depth, temperature, generator)
        if spec.kind == "static":
            return self._static_tree(logits, h_root, spec)
        return self._dynamic_tree(logits, h_root, spec)

    def _chain(self, logits: torch.Tensor, h: torch.Tensor, depth: int, temperature: float,
               generator: torch.Generator | None) -> TokenTree:
        b, dev = logits.shape[0], logits.device
        ones = torch.ones(b, 1, dtype=torch.bool, device=dev)
        tokens, qs = [], []
        for k in range(depth):
            tok, q = draft_pick(logits, temperature, generator, self.vocab)
            tokens.append(tok)
            if q is not None:
                qs.append(q)
            if k < depth - 1:  # depth k + 2 reads this slot's own output, with its token
                out = self._forward(tok[:, None], ones, hidden_states=h[:, None])
                logits, h = out.logits[:, -1], out.last_hidden_state[:, -1]
        self._region = depth - 1
        parent, node_depth = (x[:depth].to(dev) for x in self._static)
        return TokenTree(torch.stack(tokens, 1), parent.expand(b, depth).clone(), node_depth.expand(b, depth).clone(),
                         torch.ones(b, depth, dtype=torch.bool, device=dev), torch.stack(qs, 1) if qs else None)

    def _static_tree(self, logits: torch.Tensor, h_root: torch.Tensor, spec: TreeSpec) -> TokenTree:
        """Every node at depth d - 1 gets the head's top-K_d tokens as children; a fed node reads its
        parent's output (the root slot's for depth 1)."""
        b, dev = logits.shape[0], logits.device
        parent_all, depth_all = (x.to(dev) for x in self._static)
        n = spec.size
        parent, node_depth = parent_all[:n], depth_all[:n]
        anc = ancestor_matrix(parent)
        base_len = self.lm.length
        root_pos = self.lm.next_pos - 1
        tokens = torch.zeros(b, n, dtype=torch.long, device=dev)
        out_h = h_root.new_zeros(b, n, h_root.shape[-1])  # output of each fed node's slot
        start, frontier_logits = 0, logits[:, None]
        for d, k in enumerate(spec.branching):
            width = frontier_logits.shape[1]
            kids, _ = draft_top_k(frontier_logits, k, self.vocab, scores=False)
            first = start + width if d else 0
            tokens[:, first:first + width * k] = kids.reshape(b, width * k)
            if d + 1 < spec.depth:
                ids = torch.arange(first, first + width * k, device=dev)
                par = parent[ids]  # block index of each new node's parent (0 = root)
                hidden = torch.where((par == 0)[None, :, None], h_root[:, None, :],
                                     out_h[:, (par - 1).clamp_min(0)])
                old = torch.ones(width * k, base_len, dtype=torch.bool, device=dev)
                seen = anc[ids + 1][:, 1:first + width * k + 1]
                visible = torch.cat([old, seen], 1).expand(b, -1, -1)
                positions = root_pos[:, None] + node_depth[ids][None, :]
                out = self._forward(tokens[:, ids], torch.ones(b, ids.numel(), dtype=torch.bool, device=dev),
                                    positions=positions, visible=visible, hidden_states=hidden)
                out_h[:, ids] = out.last_hidden_state
                frontier_logits = out.logits
            start = first
        self._region = self.lm.length - base_len
        tree = TokenTree(tokens, parent.expand(b, n).clone(), node_depth.expand(b, n).clone(),
                         torch.ones(b, n, dtype=torch.bool, device=dev))
        tree.ancestor_mask = anc.expand(b, -1, -1)
        return tree

    def _dynamic_tree(self, logits: torch.Tensor, h_root: torch.Tensor, spec: TreeSpec) -> TokenTree:
        """EAGLE-2: expand the K best frontier nodes by cumulative log-probability, keep the N best nodes;
        a frontier node reads its parent's output."""
        b, dev = logits.shape[0], logits.device
        k, depth, n = spec.top_k, spec.depth, spec.total_tokens
        base_len = self.lm.length
        root_pos = self.lm.next_pos - 1
        kids, logp = draft_top_k(logits, k, self.vocab)
        pool_tok, pool_score = [kids], [logp]
        pool_parent = [torch.full((b, k), -1, dtype=torch.long, device=dev)]
        pool_depth = [torch.ones(b, k, dtype=torch.long, device=dev)]
        pool_h = [h_root.new_zeros(b, k, h_root.shape[-1])]  # output of each pool node's slot once fed
        frontier = torch.arange(k, device=dev).expand(b, k)
        fed_pool: list[torch.Tensor] = []
        size = k
        for d in range(2, depth + 1):
            tok_all = torch.cat(pool_tok, 1)
            par_all = torch.cat(pool_parent, 1)
            h_all = torch.cat(pool_h, 1)
            fed_ids = torch.cat(fed_pool, 1) if fed_pool else torch.zeros(b, 0, dtype=torch.long, device=dev)
            anc_f = pool_is_ancestor(par_all, frontier, fed_ids)
            old = torch.ones(b, k, base_len, dtype=torch.bool, device=dev)
            own = torch.eye(k, dtype=torch.bool, device=dev).expand(b, k, k)
            visible = torch.cat([old, anc_f, own], 2)
            positions = root_pos[:, None] + (d - 1)
            par = par_all.gather(1, frontier)
            hidden = torch.where((par < 0)[:, :, None], h_root[:, None, :],
                                 h_all.gather(1, par.clamp_min(0)[:, :, None].expand(-1, -1, h_all.shape[-1])))
            out = self._forward(tok_all.gather(1, frontier), torch.ones(b, k, dtype=torch.bool, device=dev),
                                positions=positions.expand(b, k), visible=visible, hidden_states=hidden)
            h_all = h_all.scatter(1, frontier[:, :, None].expand(-1, -1, h_all.shape[-1]), out.last_hidden_state)
            pool_h = [h_all]
            fed_pool.append(frontier)
            ctok, clogp = draft_top_k(out.logits, k, self.vocab)
            score_all = torch.cat(pool_score, 1)
            cscore = score_all.gather(1, frontier)[:, :, None] + clogp
            pool_tok.append(ctok.reshape(b, k * k))
            pool_score.append(cscore.reshape(b, k * k))
            pool_parent.append(frontier[:, :, None].expand(b, k, k).reshape(b, k * k))
            pool_depth.append(torch.full((b, k * k), d, dtype=torch.long, device=dev))
            pool_h.append(h_root.new_zeros(b, k * k, h_root.shape[-1]))
            best = cscore.reshape(b, k * k).topk(k, dim=1).indices
            frontier = size + best
            size += k * k
        tree, _ = select_dynamic(torch.cat(pool_tok, 1), torch.cat(pool_score, 1), torch.cat(pool_parent, 1),
                                 torch.cat(pool_depth, 1), n)
        self._region = self.lm.length - base_len
        return tree

    # -- after verification ------------------------------------------------------------------------
    def accept(self, verdict: Verdict, tree: TokenTree | None, target_features: torch.Tensor | None) -> None:
        """Hide every slot drafting fed; queue the target's states of the root and the accepted nodes,
        each with the token after it (the accepted nodes' tokens now, the next root at `propose`)."""
        if self._region:
            b = verdict.path.shape[0]
            self.lm.keep_block(self._region, torch.zeros(b, self._region, dtype=torch.bool, device=verdict.path.device))
            self._region = 0
        if target_features is None:
            raise RuntimeError("the EAGLE-3 proposer needs the target's hidden states of every verified slot")
        feats = target_features.to(self.model.fc.weight.dtype)
        n_acc = verdict.n_accepted.tolist()
        path = verdict.path
        node_tokens = tree.tokens.gather(1, (path[:, 1:] - 1).clamp_min(0)) if tree is not None else None
        for i, n in enumerate(n_acc):
            slots = path[i, :n + 1]
            self.pend_feats[i].extend(feats[i, slots].unbind(0))
            if n:
                self.pend_tokens[i].extend(node_tokens[i, :n].tolist())


register_proposer(lambda draft: isinstance(draft, Eagle3Draft), Eagle3Proposer)
