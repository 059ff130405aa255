"""Model size presets: targets and a family of drafts (parameter counts at a 4096-token vocabulary with
tied embeddings are in docs/training.md; `python -m scylla.harness.presets` prints them).

Drafts vary width and depth as separate knobs, because they matter separately: parameters (and so
acceptance) grow with both, but a draft step's latency grows mostly with depth (one sequential block of
kernels per layer), so a wide shallow draft and a narrow deep one of equal size cost differently.
The family is a width series at 2 layers (d_model 16 to 256) crossed at d_model 128 with a depth series
(1 to 8 layers); together they span 1.5 decades of total parameters (and 2.3 of non-embedding ones).
"""

from __future__ import annotations

from typing import Any

from scylla.models.llama import ModelSpec


def _shape(d_model: int, n_layers: int, n_heads: int, ffn_dim: int | None = None) -> dict[str, Any]:
    return {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads,
            "ffn_dim": ffn_dim if ffn_dim is not None else ModelSpec(d_model, n_layers, n_heads, 1).ffn}


TARGETS: dict[str, dict[str, Any]] = {
    # Trains to ~2M tokens in about 10 minutes on 2 CPU threads (where bf16 autocast measures faster); clearly stronger
    # than every draft at the drafts' budgets (docs/training.md has the measured losses).
    "demo": _shape(256, 6, 4),
    # For a GPU or a patient CPU: ~27M parameters, ~10x the demo target's compute per token.
    "large": _shape(512, 8, 8),
}

DRAFTS: dict[str, dict[str, Any]] = {
    # width series, 2 layers
    "draft-w16": _shape(16, 2, 2),
    "draft-w32": _shape(32, 2, 2),
    "draft-w64": _shape(64, 2, 2),
    "draft-w128": _shape(128, 2, 4),
    "draft-w256": _shape(256, 2, 4),
    # depth series at width 128 (draft-w128 is its 2-layer member)
    "draft-w128-l1": _shape(128, 1, 4),
    "draft-w128-l4": _shape(128, 4, 4),
    "draft-w128-l8": _shape(128, 8, 4),
}

# Short aliases used by benchmarks and docs (ordered by size).
ALIASES = {"draft-xs": "draft-w32", "draft-s": "draft-w64", "draft-m": "draft-w128", "draft-l": "draft-w128-l4",
           "draft-xl": "draft-w256"}


def preset(name: str) -> dict[str, Any]:
    """The shape dict of a target or draft preset (aliases accepted)."""
    name = ALIASES.get(name, name)
    if name in TARGETS:
        return dict(TARGETS[name])
    if name in DRAFTS:
        return dict(DRAFTS[name])
    raise KeyError(f"unknown preset {name!r}; targets: {sorted(TARGETS)}, drafts: {sorted(DRAFTS)}, "
                   f"aliases: {sorted(ALIASES)}")


def spec_for(name: str, vocab_size: int, **overrides: Any) -> ModelSpec:
    """A `ModelSpec` for a preset at the tokenizer's vocabulary size."""
    return ModelSpec(vocab_size=vocab_size, **{**preset(name), **overrides})


def parameter_table(vocab_size: int = 4096) -> list[dict[str, Any]]:
    """Name, shape and parameter counts (total, non-embedding) of every preset."""
    from scylla.models.llama import build_llama, count_parameters

    rows = []
    for kind, table in (("target", TARGETS), ("draft", DRAFTS)):
        for name, shape in table.items():
            counts = count_parameters(build_llama(spec_for(name, vocab_size), seed=None))
            rows.append({"kind": kind, "name": name, **shape, **counts})
    return rows


if __name__ == "__main__":
    for row in parameter_table():
        print(f"{row['kind']:6} {row['name']:14} d={row['d_model']:4} L={row['n_layers']:2} h={row['n_heads']:2} "
              f"ffn={row['ffn_dim']:5} total={row['total'] / 1e6:7.3f}M non_emb={row['non_embedding'] / 1e6:7.3f}M")
