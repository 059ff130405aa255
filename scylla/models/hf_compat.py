"""One place for the `transformers` API drift Scylla depends on.

transformers 5.24 renamed the KV-cache argument and output field ``past_key_values`` to ``cache``
(the old name warns until it is removed in 5.40). Scylla passes caches to models it did not build,
so it asks each callable which name it takes instead of assuming one release.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable

from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

__all__ = ["CACHE_NAME", "cache_kwarg", "cache_kwarg_for", "forward_accepts", "output_cache", "causal_mask"]


def _takes(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# The name this transformers release uses for the cache (layers, masks and model outputs alike).
CACHE_NAME = "cache" if _takes(LlamaDecoderLayer.forward, "cache") else "past_key_values"
_MASK_CACHE_NAME = "cache" if _takes(create_causal_mask, "cache") else "past_key_values"


@lru_cache(maxsize=None)
def _class_forward_accepts(cls: type, name: str) -> bool:
    forward = getattr(cls, "forward", None)
    return forward is not None and _takes(forward, name)


def forward_accepts(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``name`` (by its signature, cached per class)."""
    return _class_forward_accepts(type(model), name)


def cache_kwarg_for(model: Any) -> str:
    """The keyword under which ``model.forward`` takes a KV cache (by its signature, per class)."""
    for name in ("cache", "past_key_values"):
        if forward_accepts(model, name):
            return name
    return CACHE_NAME


def cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` to splat into ``model(...)``, whichever name the model's forward takes."""
    return {cache_kwarg_for(model): cache}


def output_cache(output: Any) -> Any:
    """The KV cache a model output returns (``.cache`` in new releases, ``.past_key_values`` before)."""
    if isinstance(output, dict) and "cache" in output:
        return output["cache"]
    cache = getattr(output, "cache", None)
    if cache is not None:
        return cache
    return getattr(output, "past_key_values", None)


def causal_mask(*, config: Any, inputs_embeds: Any, attention_mask: Any, cache: Any, position_ids: Any) -> Any:
    """`transformers.masking_utils.create_causal_mask` under either cache keyword."""
    return create_causal_mask(config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                              position_ids=position_ids, **{_MASK_CACHE_NAME: cache})
