"""A causal LM plus its KV cache, with per-slot validity so ragged rows and token trees share one cache.

Slot ``j`` of row ``b`` holds a real token iff ``valid[b, j]``; the positions of a row's real tokens
are consecutive, so a row's next position is its count of valid slots. Rejected draft tokens are not
recomputed or re-padded: their slots are hidden by the attention mask (the gpt-fast idea, through the
public ``transformers`` forward API: ``input_ids``, ``attention_mask``, ``position_ids`` and the cache).

A token tree is appended as one block whose slots see the valid prefix and their own ancestors only:
a 4D *additive* float mask (0 visible, -inf hidden) in the model's dtype, which eager and SDPA
attention both add to their scores (a boolean mask would be read as 0/1 additions by eager attention
and silently invert). ``cache_position`` stays contiguous while position ids repeat across siblings
(transformers derives it from the cache length, which is what the cache layout needs). After
verification the accepted path is not a suffix of the block, so `keep_block` gathers its KV entries
to the front of the block and crops the rest.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import DynamicCache

from scylla.models.hf_compat import cache_kwarg, forward_accepts, output_cache

__all__ = ["CachedLM", "supports_tree_masks"]

# Attention implementations that apply a custom 4D mask as given (flash attention drops it).
_MASKED_ATTENTION = ("eager", "sdpa")


def supports_tree_masks(model: torch.nn.Module) -> bool:
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    return impl in _MASKED_ATTENTION


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CachedLM:
    """One model, its `DynamicCache` and the validity of every cache slot (see the module doc)."""

    def __init__(self, model: torch.nn.Module, batch: int, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.cache = DynamicCache()
        self.valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self._new_holes = True  # slots may have been hidden since `maybe_compact` last counted them
        self.forwards = 0
        self.forward_seconds = 0.0
        self.dtype = next(model.parameters()).dtype

    @property
    def next_pos(self) -> torch.Tensor:
        """Each row's next position: its count of valid slots."""
        return self.valid.long().sum(1)

    @property
    def length(self) -> int:
        return int(self.valid.shape[1])

    def append(self, tokens: torch.Tensor, valid: torch.Tensor, *, positions: torch.Tensor | None = None,
               visible: torch.Tensor | None = None, last_only: bool = False, **model_kwargs: Any) -> Any:
        """Append ``tokens`` [B, W] (``valid`` marks real ones) and return the model output.

        Default: consecutive positions after each row's valid slots and a causal mask among the new
        valid slots (a 2D mask; transformers builds the rest). ``visible`` [B, W, L + W] (bool) instead
        states which slots each new slot attends to (tree blocks); it is intersected with slot validity
        and every slot sees itself, so padding slots compute finite values instead of NaN. ``last_only``
        unembeds only the last position where the model allows it (``logits_to_keep``)."""
        if positions is None:
            positions = (self.next_pos[:, None] + valid.long().cumsum(1) - 1).clamp_min(0)
        slots_valid = torch.cat([self.valid, valid], dim=1)
        if visible is None:
            mask: torch.Tensor = slots_valid.long()
        else:
            w, total = tokens.shape[1], slots_valid.shape[1]
            allowed = visible & slots_valid[:, None, :]
            own = torch.arange(w, device=tokens.device) + (total - w)
            allowed[:, torch.arange(w, device=tokens.device), own] = True
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=tokens.device)
            mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
            mask = mask[:, None]
        if last_only and forward_accepts(self.model, "logits_to_keep"):
            model_kwargs["logits_to_keep"] = 1
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                         **cache_kwarg(self.model, self.cache), **model_kwargs)
        _sync(self.device)
        self.forward_seconds += time.perf_counter() - t0
        returned = output_cache(out)
        if returned is not None:
            self.cache = returned
        self.valid = slots_valid
        if tokens.shape[1] > 1:  # a block may hold padding or hidden slots; one token per row never does
            self._new_holes = True
        self.forwards += 1
        return out

    def keep_block(self, width: int, keep: torch.Tensor) -> None:
        """Of the last ``width`` slots keep those where ``keep`` [B, width] is set, moved to the front of
        the block in order (their KV entries gathered when they are not already a prefix); hide the
        rest and crop trailing slots that no row uses."""
        if width == 0:
            return
        prefix = keep.long().cumprod(1).bool()
        if not bool((prefix == keep).all()):
            # Kept slots first, in order; only the first ``kept`` of them hold anything any row keeps, so
            # only those are gathered (the slots after them are cropped below).
            kept = int(keep.sum(1).max())
            order = torch.sort((~keep).long(), dim=1, stable=True).indices[:, :kept]
            start = self.length - width
            for layer in self._layers():
                idx = order[:, None, :, None]
                layer.keys[:, :, start:start + kept] = layer.keys[:, :, start:].gather(
                    2, idx.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3]))
                layer.values[:, :, start:start + kept] = layer.values[:, :, start:].gather(
                    2, idx.expand(-1, layer.values.shape[1], -1, layer.values.shape[3]))
            keep = torch.cat([keep.gather(1, order), keep.new_zeros(keep.shape[0], width - kept)], 1)
        self.valid[:, -width:] &= keep
        self._new_holes = True
        self._crop_trailing()

    def _layers(self) -> list[Any]:
        layers = getattr(self.cache, "layers", None)
        if layers is None or any(getattr(layer, "keys", None) is None for layer in layers):
            raise TypeError("tree verification needs a cache with per-layer key/value tensors (DynamicCache)")
        return list(layers)

    def _crop_trailing(self) -> None:
        any_valid = self.valid.any(0)
        length = int(any_valid.nonzero().max()) + 1 if bool(any_valid.any()) else 0
        if length < self.valid.shape[1]:
            # A negative argument removes that many trailing slots in every transformers release.
            self.cache.crop(length - self.valid.shape[1])
            self.valid = self.valid[:, :length]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (finished rows leave the batch)."""
        self.cache.batch_select_indices(rows)
        self.valid = self.valid[rows]
        self._new_holes = True
        self.maybe_compact()

    def maybe_compact(self, min_len: int = 32, max_hole_fraction: float = 0.25) -> None:
        """Gather each row's valid slots to the right when more than a quarter are holes.

        Attention over holes and the gather both cost memory traffic proportional to the cache, so the
        trade-off does not depend on the machine: compacting when holes exceed a fixed fraction bounds
        the waste to that fraction. Keys carry their rotary position already and attention ignores slot
        order, so moving slots is exact. Skipped for cache types without per-layer tensors."""
        batch, length = self.valid.shape
        if length < min_len or batch == 0 or not self._new_holes:
            return  # appending valid slots only lowers the hole fraction: nothing to re-check
        self._new_holes = False
        new_len = int(self.valid.long().sum(1).max())
        if length - new_len <= max_hole_fraction * length:
            return
        try:
            layers = self._layers()
        except TypeError:
            return
        # Right-align: stable sort puts invalid slots (False) first and keeps valid ones in order.
        order = torch.sort(self.valid.long(), dim=1, stable=True).indices[:, length - new_len:]
        for layer in layers:
            idx = order[:, None, :, None]
            layer.keys = layer.keys.gather(2, idx.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3]))
            layer.values = layer.values.gather(2, idx.expand(-1, layer.values.shape[1], -1, layer.values.shape[3]))
        self.valid = self.valid.gather(1, order)
