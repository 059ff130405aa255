"""Reductions over a vocabulary (argmax, top-k) at the speed of a value-only max reduction.

Greedy verification takes the target's argmax at every verified slot and a tree proposer the draft's
top-k at every frontier node, each over tens of thousands of logits. torch's CPU kernels for argmax
and top-k are several times slower than its ``amax`` (the `smollm2` benchmark prints the three side by
side), so both go through the maxima of `SLICE`-wide slices of the vocabulary: the answer lies in the
slices with the largest maxima, and only those are searched index by index. The results are exactly
``torch.argmax``'s (first maximum on ties) and ``torch.topk``'s (distinct values; among tied values
top-k makes no promise either); tests compare them.
"""

from __future__ import annotations

import torch

__all__ = ["SLICE", "greedy_tokens", "top_k_tokens"]

SLICE = 1024  # vocabulary entries per slice whose maximum is taken in one vectorised reduction


def _slice_maxima(logits: torch.Tensor) -> torch.Tensor:
    """Maximum of each `SLICE`-wide slice of the last dimension (a shorter last slice included)."""
    v = logits.shape[-1]
    n_full = v // SLICE
    maxima = logits[..., :n_full * SLICE].unflatten(-1, (n_full, SLICE)).amax(-1)
    if n_full * SLICE < v:
        maxima = torch.cat([maxima, logits[..., n_full * SLICE:].amax(-1, keepdim=True)], -1)
    return maxima


def _slice_entries(first_slice: torch.Tensor, v: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary indices of the given slices [..., S] -> [..., S * SLICE], clamped to the vocabulary,
    and where they were clamped (entries past the end of a shorter last slice)."""
    raw = (first_slice[..., None] * SLICE + torch.arange(SLICE, device=first_slice.device)).flatten(-2)
    return raw.clamp_max(v - 1), raw >= v


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)``: the first slice holding the overall maximum holds its first occurrence."""
    v = logits.shape[-1]
    if v < 2 * SLICE:
        return logits.max(-1).indices
    best_slice = _slice_maxima(logits).max(-1, keepdim=True).indices
    idx, _ = _slice_entries(best_slice, v)  # clamped repeats of the last entry come later: never first
    return idx.gather(-1, logits.gather(-1, idx).max(-1, keepdim=True).indices).squeeze(-1)


def top_k_tokens(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.topk(k, -1)`` (values, indices): each of the k largest entries lies in one of the k
    slices with the largest maxima (a slice outside them has k maxima of other slices above it)."""
    v = logits.shape[-1]
    if v < 4 * k * SLICE:
        return logits.topk(k, dim=-1)
    slices = _slice_maxima(logits).topk(k, dim=-1).indices
    idx, past_end = _slice_entries(slices, v)
    candidates = logits.gather(-1, idx).masked_fill(past_end, float("-inf"))
    values, pos = candidates.topk(k, dim=-1)
    return values, idx.gather(-1, pos)
