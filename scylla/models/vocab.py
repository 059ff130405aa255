"""A draft's reduced vocabulary: the V_d most frequent target tokens, in the layout serving engines use.

A draft for a 49k-vocabulary target spends most of its parameters and most of its training time on the
unembedding. EAGLE-3 (and SpecForge, vLLM, SGLang after it) let the draft predict only the ``V_d`` most
frequent target tokens. Draft id ``i`` stands for target id ``i + d2t[i]`` (``d2t`` holds int64
offsets), and ``t2d`` is a boolean mask over the target vocabulary marking the tokens the draft can
propose. Target ids are kept in ascending order, so ``d2t`` is non-negative and non-decreasing.

Decoding stays lossless: at temperature 0 a draft token is its target id; at temperature > 0 the
draft's distribution over target ids is zero outside ``t2d``, and the residual ``max(0, p - q)`` of
rejection sampling covers the tokens the draft cannot propose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DraftVocab", "VocabError"]

VOCAB_FILE = "draft_vocab.safetensors"


class VocabError(ValueError):
    """A draft vocabulary that does not fit its target (the message says how to fix it)."""


@dataclass(frozen=True)
class DraftVocab:
    """Target ids of the draft's vocabulary, ascending: ``draft_to_target[i]`` is draft id i's target id."""

    draft_to_target: torch.Tensor  # int64 [V_d], strictly increasing
    target_size: int

    def __post_init__(self) -> None:
        ids = self.draft_to_target
        if ids.dtype != torch.int64 or ids.dim() != 1 or ids.numel() == 0:
            raise VocabError("draft_to_target must be a non-empty 1-D int64 tensor of target ids")
        if int(ids.min()) < 0 or int(ids.max()) >= self.target_size:
            raise VocabError(f"draft vocabulary holds ids outside the target vocabulary [0, {self.target_size})")
        if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
            raise VocabError("draft_to_target must be strictly increasing (each target id at most once)")

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_counts(cls, counts: np.ndarray | torch.Tensor, size: int, *, always: Iterable[int] = ()) -> "DraftVocab":
        """The ``size`` most frequent target ids of a token histogram (ties broken by lower id), plus
        ``always`` (EOS, say: a draft that cannot propose the end of text never accepts it)."""
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
        target_size = int(counts.numel())
        if not 1 <= size <= target_size:
            raise VocabError(f"draft.vocab_size={size} must lie in [1, {target_size}] (the target's vocabulary "
                             f"size); use a smaller draft vocabulary or null for the full one")
        forced = sorted({int(t) for t in always})
        if any(not 0 <= t < target_size for t in forced):
            raise VocabError(f"always-included ids {forced} lie outside the target vocabulary [0, {target_size})")
        if len(forced) > size:
            raise VocabError(f"draft.vocab_size={size} is smaller than the {len(forced)} ids it must hold")
        score = counts.clone()
        score[forced] = float("inf")
        # Stable descending order: equal counts keep ascending ids.
        order = torch.sort(-score, stable=True).indices[:size]
        return cls(torch.sort(order).values.to(torch.int64), target_size)

    @classmethod
    def full(cls, target_size: int) -> "DraftVocab":
        return cls(torch.arange(target_size, dtype=torch.int64), target_size)

    @classmethod
    def from_d2t(cls, d2t: torch.Tensor, target_size: int) -> "DraftVocab":
        """From EAGLE-3's offsets (``target_id = i + d2t[i]``)."""
        d2t = torch.as_tensor(d2t, dtype=torch.int64)
        return cls(torch.arange(d2t.numel(), dtype=torch.int64) + d2t, int(target_size))

    # -- the serving layout ------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.draft_to_target.numel())

    @property
    def is_full(self) -> bool:
        return self.size == self.target_size

    @property
    def d2t(self) -> torch.Tensor:
        """int64 [V_d] offsets: target id = draft id + d2t[draft id]."""
        return self.draft_to_target - torch.arange(self.size, dtype=torch.int64)

    @property
    def t2d(self) -> torch.Tensor:
        """bool [V_target]: True where the target token is in the draft vocabulary."""
        mask = torch.zeros(self.target_size, dtype=torch.bool)
        mask[self.draft_to_target] = True
        return mask

    def target_to_draft(self) -> torch.Tensor:
        """int64 [V_target]: the draft id of each target id, -1 outside the draft vocabulary."""
        out = torch.full((self.target_size,), -1, dtype=torch.int64)
        out[self.draft_to_target] = torch.arange(self.size, dtype=torch.int64)
        return out

    # -- mapping -----------------------------------------------------------------------------------
    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Target ids of draft ids (any shape)."""
        table = self.draft_to_target.to(draft_ids.device)
        return table[draft_ids]

    def to_draft(self, target_ids: torch.Tensor, missing: int = -100) -> torch.Tensor:
        """Draft ids of target ids; ids outside the draft vocabulary become ``missing`` (default: the
        ignore index of cross-entropy, so training skips tokens the draft cannot predict)."""
        table = self.target_to_draft().to(target_ids.device)
        out = table[target_ids.clamp_min(0)]
        out = torch.where(target_ids < 0, target_ids, out)  # keep an existing ignore index
        return torch.where(out == -1, torch.full_like(out, missing), out)

    def scatter_probs(self, draft_probs: torch.Tensor) -> torch.Tensor:
        """A distribution over draft ids [..., V_d] as one over target ids [..., V_target] (zeros elsewhere)."""
        out = draft_probs.new_zeros(*draft_probs.shape[:-1], self.target_size)
        index = self.draft_to_target.to(draft_probs.device).expand(*draft_probs.shape[:-1], self.size)
        return out.scatter_(-1, index, draft_probs)

    def coverage(self, target_tokens: np.ndarray | torch.Tensor | Iterable[int]) -> float:
        """Fraction of the given target tokens that lie inside the draft vocabulary."""
        ids = torch.as_tensor(np.asarray(list(target_tokens) if not hasattr(target_tokens, "shape") else target_tokens),
                              dtype=torch.int64).reshape(-1)
        if ids.numel() == 0:
            return float("nan")
        return float(self.t2d[ids].float().mean())

    # -- files -------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """``draft_vocab.safetensors`` with ``d2t`` and ``t2d`` (the tensors EAGLE-3 checkpoints carry)."""
        from safetensors.torch import save_file

        path = Path(folder) / VOCAB_FILE
        save_file({"d2t": self.d2t.contiguous(), "t2d": self.t2d.contiguous()}, str(path))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "DraftVocab":
        from safetensors.torch import load_file

        path = Path(folder) / VOCAB_FILE
        if not path.is_file():
            raise VocabError(f"no draft vocabulary at {path}")
        tensors = load_file(str(path))
        vocab = cls.from_d2t(tensors["d2t"], int(tensors["t2d"].numel()))
        if not torch.equal(vocab.t2d, tensors["t2d"].bool()):
            raise VocabError(f"{path}: d2t and t2d disagree; the file is corrupt, rebuild the draft")
        return vocab

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(self.draft_to_target.numpy().tobytes() + str(self.target_size).encode()).hexdigest()[:16]
