"""Model size presets, read from ``configs/target/*.yaml`` and ``configs/draft/*.yaml`` (the one source
of every preset's shape; parameter counts at a 4096-token vocabulary with tied embeddings are in
docs/training.md).

Drafts vary width and depth as separate knobs, because they matter separately: parameters (and so
acceptance) grow with both, but a draft step's latency grows mostly with depth (one sequential block of
kernels per layer), so a wide shallow draft and a narrow deep one of equal size cost differently.
The family is a width series at 2 layers (d_model 16 to 256) crossed at d_model 128 with a depth series
(1 to 8 layers); together they span 1.5 decades of total parameters (and 2.3 of non-embedding ones).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from scylla.models.llama import ModelSpec

__all__ = ["shapes", "spec_for"]

_SHAPE_KEYS = ("d_model", "n_layers", "n_heads", "ffn_dim")


@lru_cache(maxsize=None)
def _table(group: str) -> dict[str, dict[str, Any]]:
    from omegaconf import OmegaConf

    from scylla.config import config_dir

    out = {}
    for path in sorted((config_dir() / group).glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        trained_llama = node.get("source", "preset") == "preset" if group == "target" else node.get("family") == "llama"
        if trained_llama and all(k in node for k in _SHAPE_KEYS[:3]):
            out[path.stem] = {k: node.get(k) for k in _SHAPE_KEYS}
    return out


def shapes(group: str) -> dict[str, dict[str, Any]]:
    """``name -> {d_model, n_layers, n_heads, ffn_dim}`` of every trained Llama preset of ``group``
    (``"target"`` or ``"draft"``); ``ffn_dim`` None means the `ModelSpec` default."""
    if group not in ("target", "draft"):
        raise ValueError(f"group must be 'target' or 'draft', got {group!r}")
    return {k: dict(v) for k, v in _table(group).items()}


def spec_for(name: str, vocab_size: int, **overrides: Any) -> ModelSpec:
    """A `ModelSpec` for a target or draft preset at the tokenizer's vocabulary size."""
    for group in ("target", "draft"):
        if name in _table(group):
            shape = {k: v for k, v in _table(group)[name].items() if v is not None}
            return ModelSpec(vocab_size=vocab_size, **{**shape, **overrides})
    raise KeyError(f"unknown preset {name!r}; targets: {sorted(_table('target'))}, drafts: {sorted(_table('draft'))} "
                   "(presets are the files of configs/target and configs/draft)")
