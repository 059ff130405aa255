"""The target side of a decoding step: prefill, then score each row's root and tree in one forward.

`TargetRunner` wraps any ``transformers`` causal LM through its public forward API. A proposer that
drafts from the target's own states (EAGLE-3's hidden states, MTP's heads) asks for them through
``features``: a `FeatureSpec` names extra forward keywords and how to read the features off the output,
so the engine needs no model-specific code. `scylla.decode.mtp` subclasses the runner for MTP models,
whose forward is not a plain causal LM's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from scylla.decode.cache import CachedLM
from scylla.decode.tree import TokenTree
from scylla.decode.verify import Verdict

__all__ = ["FeatureSpec", "TargetRunner", "left_pad"]


@dataclass(frozen=True)
class FeatureSpec:
    """What a proposer needs from each target forward: extra keywords and a reader of the output."""

    forward_kwargs: dict[str, Any] = field(default_factory=dict)
    read: Callable[[Any], torch.Tensor] | None = None


def left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as one left-padded block: every row's last prompt token sits in the last column."""
    n, longest = len(prompts), max(len(p) for p in prompts)
    tokens = torch.zeros(n, longest, dtype=torch.long, device=device)
    valid = torch.zeros(n, longest, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p):] = torch.tensor(list(p), dtype=torch.long)
        valid[i, longest - len(p):] = True
    return tokens, valid


class TargetRunner:
    """The model whose distribution is reproduced, with its cache (one per chunk of prompts)."""

    def __init__(self, model: torch.nn.Module, batch: int, device: torch.device,
                 features: FeatureSpec | None = None) -> None:
        self.lm = CachedLM(model, batch, device)
        self.features = features

    @property
    def forwards(self) -> int:
        return self.lm.forwards

    @property
    def forward_seconds(self) -> float:
        return self.lm.forward_seconds

    def _run(self, tokens: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor | None,
             visible: torch.Tensor | None, last_only: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        extra = dict(self.features.forward_kwargs) if self.features is not None else {}
        # Features (hidden states) come for every slot whatever ``last_only`` trims from the logits.
        out = self.lm.append(tokens, valid, positions=positions, visible=visible, last_only=last_only, **extra)
        feats = self.features.read(out) if self.features is not None and self.features.read is not None else None
        logits = out.logits[:, -1:] if last_only else out.logits
        return logits.float(), feats

    def prefill(self, tokens: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, V] after each row's last prompt token, and the features of every prompt slot."""
        logits, feats = self._run(tokens, valid, None, None, last_only=True)
        return logits[:, -1], feats

    def verify(self, root: torch.Tensor, tree: TokenTree | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Score ``[root, tree nodes]`` per row in one forward: logits [B, 1 + N, V] (and features)."""
        if tree is None or tree.n_nodes == 0:
            block = root[:, None]
            return self._run(block, torch.ones_like(block, dtype=torch.bool), None, None, last_only=False)
        block = torch.cat([root[:, None], tree.tokens], dim=1)
        valid = torch.cat([torch.ones_like(root[:, None], dtype=torch.bool), tree.valid], dim=1)
        if tree.is_chain:  # consecutive positions and a causal block: the plain 2D mask serves
            return self._run(block, valid, None, None, last_only=False)
        depth = torch.cat([torch.zeros_like(root[:, None]), tree.depth], dim=1)
        positions = self.lm.next_pos[:, None] + depth
        old = torch.ones(block.shape[0], block.shape[1], self.lm.length, dtype=torch.bool, device=block.device)
        visible = torch.cat([old, tree.ancestors], dim=2)
        return self._run(block, valid, positions, visible, last_only=False)

    def keep(self, verdict: Verdict, tree: TokenTree | None) -> None:
        """Keep the root and the accepted path in the cache; hide the rest of the block."""
        if tree is None or tree.n_nodes == 0:
            return  # the block is the root alone, and the root is always kept
        width = 1 + tree.n_nodes
        keep = torch.zeros(verdict.path.shape[0], width, dtype=torch.bool, device=verdict.path.device)
        path = verdict.path
        keep.scatter_(1, path.clamp_min(0), path >= 0)
        keep[:, 0] = True
        self.lm.keep_block(width, keep)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.lm.select_rows(rows)

    def maybe_compact(self) -> None:
        self.lm.maybe_compact()
