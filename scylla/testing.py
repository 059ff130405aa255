"""Tiny models and prompts for tests, notebooks and benchmarks (nothing downloaded)."""

from __future__ import annotations

import copy

import torch

from scylla.models.llama import ModelSpec, build_llama


def tiny_llama(
    vocab_size: int = 64,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    seed: int = 0,
    init_std: float = 0.5,
    max_seq_len: int = 512,
) -> torch.nn.Module:
    """An untrained Llama whose outputs are varied and peaked (large init, untied embeddings)."""
    spec = ModelSpec(d_model=d_model, n_layers=n_layers, n_heads=n_heads, vocab_size=vocab_size,
                     max_seq_len=max_seq_len, tie_embeddings=False)
    return build_llama(spec, seed=seed, init_std=init_std)


def perturbed_copy(model: torch.nn.Module, noise: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with Gaussian noise on every weight: a draft of intermediate acceptance."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise)
    return out


def random_prompts(n: int, vocab_size: int, min_len: int = 3, max_len: int = 20, seed: int = 0) -> list[list[int]]:
    """``n`` prompts of random tokens with lengths in [min_len, max_len]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    return [torch.randint(0, vocab_size, (int(length),), generator=g).tolist() for length in lengths]


def bigram_llama(logits: torch.Tensor) -> torch.nn.Module:
    """A Llama whose next-token logits depend only on the current token: ``logits[v]`` after token v.

    One decoder layer with zeroed output projections (the residual passes through), one-hot token
    embeddings and ``lm_head`` columns set so that the final RMSNorm of a one-hot vector (sqrt(d) times
    it) maps token v to ``logits[v]``. Exact, controllable target/draft pairs for statistical tests."""
    vocab = int(logits.shape[0])
    d = vocab + vocab % 2  # rotary embeddings need an even head size
    spec = ModelSpec(d_model=d, n_layers=1, n_heads=1, vocab_size=vocab, tie_embeddings=False, ffn_dim=8)
    model = build_llama(spec, seed=0)
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, d))
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros(vocab, d)
        head[:, :vocab] = logits.T.float() / d ** 0.5
        model.lm_head.weight.copy_(head)
    return model
