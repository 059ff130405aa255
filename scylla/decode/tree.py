"""Token trees: what a proposer hands the target to verify in one forward.

A step's tree hangs from the *root*, the row's last emitted token (block index 0); draft node ``i``
(0-based) sits at block index ``i + 1``. Nodes are in breadth-first order, so a parent always precedes
its children. A chain of gamma tokens is the tree of width 1 (``parent[i] = i``, ``depth[i] = i + 1``).

Shapes (`TreeSpec`):

- ``chain:G``         gamma = G draft tokens, one per depth (sampled from the draft at temperature > 0);
- ``static:K1xK2x..`` every node at depth d - 1 has the draft's top-K_d tokens as children (the full
  product tree of Medusa/SpecInfer-style static trees), ``K1 + K1 K2 + ...`` nodes;
- ``dynamic:DxKxN``   EAGLE-2's dynamic tree: D depths, top-K expansion of the K best frontier nodes by
  cumulative draft log-probability at each depth, then the N best nodes overall (ancestor-closed).

Tree nodes are deterministic candidates (top-k), except chains at temperature > 0, whose tokens are
samples of the draft distribution ``q`` (kept in `TokenTree.q`); `scylla.decode.verify` treats the two
kinds with the matching lossless rule.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = ["TreeSpec", "TokenTree", "TreeError", "select_dynamic"]


class TreeError(ValueError):
    """A tree shape that cannot be used (the message says how to write one)."""


_FORMS = "chain:G (e.g. chain:4), static:K1xK2x... (e.g. static:3x2x1x1) or dynamic:DxKxN (e.g. dynamic:4x4x16)"


@dataclass(frozen=True)
class TreeSpec:
    """The shape of the token tree a proposer drafts each step."""

    kind: str  # "chain" | "static" | "dynamic"
    branching: tuple[int, ...] = ()  # chain: (1,)*G; static: top-K per depth
    top_k: int = 0  # dynamic
    total_tokens: int = 0  # dynamic

    def __post_init__(self) -> None:
        if self.kind not in ("chain", "static", "dynamic"):
            raise TreeError(f"unknown tree kind {self.kind!r}; use {_FORMS}")
        if self.kind in ("chain", "static"):
            if not self.branching or any(not isinstance(k, int) or k < 1 for k in self.branching):
                if self.kind == "chain" and self.branching == ():
                    return  # gamma 0: plain decoding
                raise TreeError(f"{self.kind} tree needs positive integer branching factors, got {self.branching}")
            if self.kind == "chain" and any(k != 1 for k in self.branching):
                raise TreeError("a chain has one node per depth; use static:... for wider trees")
        else:
            if len(self.branching) < 1 or self.top_k < 1 or self.total_tokens < 1:
                raise TreeError(f"dynamic tree needs depth, top_k and total_tokens >= 1; use {_FORMS}")
            if self.total_tokens > self.pool_size:
                raise TreeError(f"dynamic tree total_tokens={self.total_tokens} exceeds the {self.pool_size} "
                                f"candidates depth {self.depth} x top-k {self.top_k} generates; lower it")

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def chain(cls, gamma: int) -> "TreeSpec":
        if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 0:
            raise TreeError(f"gamma must be an integer >= 0, got {gamma!r}")
        return cls("chain", (1,) * gamma)

    @classmethod
    def static(cls, branching: tuple[int, ...] | list[int]) -> "TreeSpec":
        return cls("static", tuple(int(k) for k in branching))

    @classmethod
    def dynamic(cls, depth: int, top_k: int, total_tokens: int) -> "TreeSpec":
        return cls("dynamic", (top_k,) * int(depth), int(top_k), int(total_tokens))

    @classmethod
    def parse(cls, text: "str | int | TreeSpec") -> "TreeSpec":
        """``chain:4``, ``4`` (a chain), ``static:3x2x1``, ``dynamic:4x4x16``."""
        if isinstance(text, TreeSpec):
            return text
        if isinstance(text, int) and not isinstance(text, bool):
            return cls.chain(text)
        s = str(text).strip().lower()
        if re.fullmatch(r"\d+", s):
            return cls.chain(int(s))
        kind, _, args = s.partition(":")
        nums = [int(x) for x in args.split("x")] if re.fullmatch(r"\d+(x\d+)*", args) else None
        if nums is None:
            raise TreeError(f"cannot read tree shape {text!r}; use {_FORMS}")
        if kind == "chain" and len(nums) == 1:
            return cls.chain(nums[0])
        if kind == "static":
            return cls.static(nums)
        if kind == "dynamic" and len(nums) == 3:
            return cls.dynamic(*nums)
        raise TreeError(f"cannot read tree shape {text!r}; use {_FORMS}")

    # -- properties ----------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.branching)

    @property
    def is_chain(self) -> bool:
        return self.kind == "chain"

    @property
    def pool_size(self) -> int:
        """Dynamic trees: candidates generated (K at depth 1, then K*K per further depth)."""
        return self.top_k + (self.depth - 1) * self.top_k * self.top_k

    @property
    def size(self) -> int:
        """Draft nodes per step (tokens verified per row-step, the root excluded)."""
        if self.kind == "dynamic":
            return self.total_tokens
        return sum(math.prod(self.branching[: d + 1]) for d in range(self.depth))

    def describe(self) -> str:
        if self.kind == "chain":
            return f"chain:{self.depth}"
        if self.kind == "static":
            return "static:" + "x".join(map(str, self.branching))
        return f"dynamic:{self.depth}x{self.top_k}x{self.total_tokens}"

    def truncated(self, depth: int) -> "TreeSpec":
        """The same shape cut to at most ``depth`` levels (rows near max_new_tokens)."""
        if depth >= self.depth:
            return self
        if self.kind == "dynamic":
            if depth < 1:
                return TreeSpec.chain(0)
            cut = TreeSpec.dynamic(depth, self.top_k, 1)
            return TreeSpec.dynamic(depth, self.top_k, min(self.total_tokens, cut.pool_size))
        return TreeSpec(self.kind, self.branching[:depth]) if depth > 0 else TreeSpec.chain(0)

    def static_parents(self) -> list[int]:
        """Parent block index of each node of a chain/static tree (breadth-first order)."""
        if self.kind == "dynamic":
            raise TreeError("a dynamic tree's structure is only known after drafting")
        parents: list[int] = []
        frontier = [0]
        for k in self.branching:
            nxt = []
            for p in frontier:
                for _ in range(k):
                    parents.append(p)
                    nxt.append(len(parents))
            frontier = nxt
        return parents


@dataclass
class TokenTree:
    """One step's draft trees, one per batch row, all with N node slots.

    ``tokens`` [B, N] target ids; ``parent`` [B, N] block index (0 = root); ``depth`` [B, N] (1-based);
    ``valid`` [B, N] (rows may have fewer nodes: an n-gram with no match, a depth limit);
    ``q`` [B, N, V] or None: the distribution each node's token was *sampled* from (None: the nodes are
    deterministic candidates).
    """

    tokens: torch.Tensor
    parent: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    q: torch.Tensor | None = None
    # Structure shared by every row of a static tree, computed once by its proposer (else on first use).
    ancestor_mask: torch.Tensor | None = None
    child_index: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.tokens.shape[1])

    @cached_property
    def max_depth(self) -> int:
        return int(self.depth.max()) if self.n_nodes else 0

    @cached_property
    def is_chain(self) -> bool:
        """Every node's parent is the node before it (a chain; rows may end early)."""
        if self.n_nodes == 0:
            return True
        expected = torch.arange(self.n_nodes, device=self.parent.device)
        return bool((self.parent == expected).all())

    @property
    def ancestors(self) -> torch.Tensor:
        """bool [B, 1+N, 1+N]: ``[b, i, j]`` when block slot j is slot i or one of its ancestors."""
        if self.ancestor_mask is None:
            self.ancestor_mask = self._ancestors()
        return self.ancestor_mask

    def _ancestors(self) -> torch.Tensor:
        b, n = self.batch, self.n_nodes
        anc = torch.eye(n + 1, dtype=torch.bool, device=self.tokens.device).expand(b, n + 1, n + 1).clone()
        if self.is_chain:
            return torch.tril(anc[0].new_ones(n + 1, n + 1)).expand(b, n + 1, n + 1).clone()
        rows = torch.arange(b, device=self.tokens.device)
        for i in range(n):  # parents precede children: each row of the matrix extends its parent's
            anc[:, i + 1] |= anc[rows, self.parent[:, i]]
        return anc

    @property
    def children(self) -> torch.Tensor:
        """long [B, 1+N, K]: block indices of each slot's children (in node order), -1 padded."""
        if self.child_index is None:
            self.child_index = self._children()
        return self.child_index

    def _children(self) -> torch.Tensor:
        b, n = self.batch, self.n_nodes
        dev = self.tokens.device
        if n == 0:
            return torch.full((b, 1, 0), -1, dtype=torch.long, device=dev)
        counts = torch.zeros(b, n + 1, dtype=torch.long, device=dev)
        counts.scatter_add_(1, self.parent, self.valid.long())
        k = max(int(counts.max()), 1)
        out = torch.full((b, n + 1, k), -1, dtype=torch.long, device=dev)
        fill = torch.zeros(b, n + 1, dtype=torch.long, device=dev)
        rows = torch.arange(b, device=dev)
        for i in range(n):
            p = self.parent[:, i]
            ok = self.valid[:, i]
            slot = fill[rows, p]
            out[rows[ok], p[ok], slot[ok]] = i + 1
            fill[rows[ok], p[ok]] += 1
        return out

    def nodes_per_depth(self, limit: torch.Tensor) -> torch.Tensor:
        """long [B, D]: valid nodes per depth within each row's depth ``limit`` [B]."""
        d = self.max_depth
        if d == 0:
            return torch.zeros(self.batch, 0, dtype=torch.long, device=self.tokens.device)
        judged = self.valid & (self.depth <= limit[:, None])
        onehot = torch.nn.functional.one_hot((self.depth - 1).clamp_min(0), d) * judged[..., None]
        return onehot.sum(1)


def select_dynamic(pool_tok: torch.Tensor, pool_score: torch.Tensor, pool_parent: torch.Tensor,
                   pool_depth: torch.Tensor, n: int) -> tuple[TokenTree, torch.Tensor]:
    """EAGLE-2's rerank: of a drafted pool ([B, P] tokens, cumulative log-probabilities, pool index of each
    node's parent (-1: the root) and depths), keep the ``n`` best nodes, in breadth-first order, as a
    `TokenTree`; also return each kept node's pool index [B, n].

    Ties go to the shallower node, so the selection is ancestor-closed: a child's cumulative
    log-probability never exceeds its parent's."""
    b, size = pool_tok.shape
    dev = pool_tok.device
    order = torch.sort(pool_depth, dim=1, stable=True).indices
    by_score = torch.sort(pool_score.gather(1, order), dim=1, descending=True, stable=True).indices
    chosen = order.gather(1, by_score)[:, :n]
    key = pool_depth.gather(1, chosen) * (size + 1) + chosen  # breadth-first: by depth, then by pool index
    chosen = chosen.gather(1, key.argsort(1))
    block_of = torch.full((b, size), -1, dtype=torch.long, device=dev)
    block_of.scatter_(1, chosen, torch.arange(1, n + 1, device=dev).expand(b, n))
    ppar = pool_parent.gather(1, chosen)
    parent = torch.where(ppar < 0, torch.zeros_like(ppar), block_of.gather(1, ppar.clamp_min(0)))
    if bool((parent < 0).any()):
        raise RuntimeError("dynamic tree selection is not ancestor-closed (internal error)")
    tree = TokenTree(pool_tok.gather(1, chosen), parent, pool_depth.gather(1, chosen),
                     torch.ones(b, n, dtype=torch.bool, device=dev))
    return tree, chosen
