"""Model builders: Llama-family decoders from a size spec, and loading of any causal LM.

Drafts and the default target are plain `transformers` Llama models, so every checkpoint saves with
`save_pretrained` (safetensors) and loads as a draft in HF assisted generation or vLLM.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a Llama-family decoder. Depth (`n_layers`) and width (`d_model`) are separate knobs
    because they matter separately for latency: a step costs ~n_layers sequential kernels."""

    d_model: int
    n_layers: int
    n_heads: int
    vocab_size: int
    ffn_dim: int | None = None  # default: SwiGLU-style 8/3 * d_model rounded up to a multiple of 32
    n_kv_heads: int | None = None
    max_seq_len: int = 1024
    tie_embeddings: bool = True
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "vocab_size", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelSpec.d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "pick n_heads that divides d_model"
            )
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={kv}")

    @property
    def ffn(self) -> int:
        if self.ffn_dim:
            return self.ffn_dim
        return int(-(-(8 * self.d_model // 3) // 32) * 32)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_hf_config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.d_model,
            intermediate_size=self.ffn,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads or self.n_heads,
            max_position_embeddings=self.max_seq_len,
            tie_word_embeddings=self.tie_embeddings,
            rope_theta=self.rope_theta,
            rms_norm_eps=1e-5,
            attention_bias=False,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )


def build_llama(spec: ModelSpec, seed: int | None = 0, *, init_std: float = 0.02) -> LlamaForCausalLM:
    """A freshly initialised Llama decoder of the given shape (deterministic for a seed).

    ``init_std`` above the default makes untrained models produce varied, peaked outputs, which
    tests need (at 0.02 a random model repeats one token and every draft looks perfect)."""
    if seed is not None:
        torch.manual_seed(seed)
    config = spec.to_hf_config()
    config.initializer_range = init_std
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total and non-embedding parameter counts (Kaplan's N excludes the embedding and unembedding).

    Tied weights are counted once."""
    seen: set[int] = set()
    total = 0
    embedding = 0
    emb_ids = set()
    if isinstance(model, PreTrainedModel):
        for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
            if mod is not None:
                emb_ids.update(id(p) for p in mod.parameters())
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if id(p) in emb_ids:
            embedding += p.numel()
    return {"total": total, "non_embedding": total - embedding}


def default_device() -> torch.device:
    """The GPU when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
