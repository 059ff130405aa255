"""Multi-token prediction (MTP) models (Gloeckle et al. 2024, arXiv 2404.19737).

A shared trunk of Llama decoder layers feeds ``n_future`` output heads, each ONE Llama decoder layer;
all heads share the final RMSNorm and the unembedding. Head ``i`` (1-based) at position ``t`` predicts
token ``t + i``; head 1 is an ordinary next-token model, so the MTP model *is* a causal LM (``.logits``
are head 1's) and the extra heads are its own draft (see ``scylla.decode.mtp``).

Depth convention (so that ``n_future=1`` is exactly a plain Llama of the same spec): ``spec.n_layers``
counts trunk + head-1 layers, i.e. the trunk has ``spec.n_layers - 1`` layers by default, and the model
has ``n_future - 1`` layers (and their parameters) more than a Llama of that spec. With
``parameter_matched=True`` the trunk instead has ``spec.n_layers - n_future`` layers: the paper's
"remove n-1 layers from the trunk", which gives the same layer count and parameter count as the
next-token Llama of that spec.

Training uses ``forward(input_ids, labels)`` whose ``.loss`` is the SUM of the heads' mean
cross-entropies (head ``i``: logits at ``t`` vs labels at ``t + i``); ``.head_losses`` holds each
head's loss and ``.next_token_loss`` head 1's, the figure comparable with a next-token model.

KV cache: trunk layers use cache layers ``0..n_trunk-1`` and head ``i`` uses ``n_trunk + i - 1`` in the
same ``DynamicCache``. The decoding path (`MTPForCausalLM.fused_head_states`) runs the k heads as one
batched layer whose cache is a single layer ``n_trunk`` with ``k * n_kv_heads`` key/value heads (the
heads are folded into the KV-head axis, so every cache operation that works per batch row — crop,
row selection, slot compaction — keeps working). The two cache layouts must not be mixed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, LlamaConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicLayer
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding,
                                                      apply_rotary_pos_emb, eager_attention_forward)

from scylla.models.hf_compat import CACHE_NAME, causal_mask
from scylla.models.llama import ModelSpec

__all__ = ["MTPConfig", "MTPForCausalLM", "MTPOutput", "FusedHeads", "build_mtp", "mtp_factory", "trunk_layers_for",
           "mtp_parameter_counts", "synthetic_stream", "train_on_stream"]


@strict
class MTPConfig(LlamaConfig):
    """A `LlamaConfig` plus the number of future-token heads.

    ``num_hidden_layers`` is the TRUNK depth; the model has ``num_hidden_layers + n_future`` decoder
    layers. ``parameter_matched`` only records how the trunk depth was chosen (see `build_mtp`).
    """

    model_type = "scylla_mtp"
    n_future: int = 4
    parameter_matched: bool = False

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if not isinstance(self.n_future, int) or self.n_future < 1:
            raise ValueError(f"MTPConfig.n_future must be an integer >= 1 (number of future-token heads), "
                             f"got {self.n_future!r}")
        if self.num_hidden_layers < 0:
            raise ValueError(f"MTPConfig.num_hidden_layers (trunk depth) must be >= 0, got {self.num_hidden_layers}")


@dataclass
class MTPOutput(ModelOutput):
    """Output of `MTPForCausalLM.forward`.

    ``loss``: sum over the heads run of each head's mean cross-entropy (``None`` without labels).
    ``logits``: head 1 (next token), [B, T, V]. ``head_logits``: one [B, T, V] tensor per head run
    (head 1 first), returned with labels or ``return_head_logits=True``. ``head_losses``: [n_heads].
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    head_logits: tuple[torch.Tensor, ...] | None = None
    head_losses: torch.Tensor | None = None
    next_token_loss: torch.Tensor | None = None
    # The KV cache, under the field name of this transformers release (``cache`` from 5.24 on).
    if CACHE_NAME == "cache":
        cache: Any = None
    else:
        past_key_values: Any = None


class MTPPreTrainedModel(PreTrainedModel):
    config_class = MTPConfig
    config: MTPConfig
    base_model_prefix = "mtp"
    supports_gradient_checkpointing = False
    _no_split_modules = ["LlamaDecoderLayer"]
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_sdpa = True
    _supports_attention_backend = True


class MTPForCausalLM(MTPPreTrainedModel, GenerationMixin):
    """Shared trunk + ``n_future`` one-layer heads + shared final norm and unembedding."""

    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self, config: MTPConfig) -> None:
        super().__init__(config)
        self.vocab_size = config.vocab_size
        self.n_trunk = config.num_hidden_layers
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(self.n_trunk)])
        self.heads = nn.ModuleList([LlamaDecoderLayer(config, self.n_trunk + i) for i in range(config.n_future)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # -- HF plumbing ---------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    @property
    def n_future(self) -> int:
        return int(self.config.n_future)

    # -- trunk ---------------------------------------------------------------------------------------
    def _trunk(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
               attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
               past_key_values: Any, use_cache: bool, mask: Any = "auto") -> tuple[torch.Tensor, Any, tuple, Any]:
        """Trunk states z [B, T, d] plus what the heads need (mask, rotary embeddings, cache).

        ``mask="auto"`` builds the attention mask the HF way; the decoding path passes its own."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        _ensure_cache_layers(past_key_values, self.n_trunk + self.n_future)
        if position_ids is None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past)[None, :]
        if isinstance(mask, str):
            mask = causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               cache=past_key_values, position_ids=position_ids)
        rope = self.rotary_emb(inputs_embeds, position_ids=position_ids)
        z = inputs_embeds
        for layer in self.layers:
            z = layer(z, attention_mask=mask, position_embeddings=rope, position_ids=position_ids,
                      use_cache=use_cache, **{CACHE_NAME: past_key_values})
        return z, mask, rope, past_key_values

    # -- training / reference forward ----------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        n_heads: int | None = None,
        return_head_logits: bool = False,
        cache: Any = None,
        **kwargs: Any,
    ) -> MTPOutput:
        """Run the trunk and the first ``n_heads`` heads (default all) through their own layers.

        With a cache every head run keeps its own cache layer, so later calls must run at least as
        many heads. ``logits_to_keep`` (as in HF) limits head-1 logits to the last positions when no
        labels are given (what ``generate`` asks for).
        """
        if cache is not None:  # the transformers >= 5.24 name of past_key_values
            if past_key_values is not None:
                raise ValueError("pass the KV cache as cache or as past_key_values, not both")
            past_key_values = cache
        n_heads = self.n_future if n_heads is None else n_heads
        if not 1 <= n_heads <= self.n_future:
            raise ValueError(f"n_heads={n_heads} is outside 1..n_future={self.n_future}")
        use_cache = bool(use_cache) if use_cache is not None else False
        z, mask, rope, past_key_values = self._trunk(input_ids, inputs_embeds, attention_mask, position_ids,
                                                     past_key_values, use_cache)
        want_all = labels is not None or return_head_logits
        head_logits: list[torch.Tensor] = []
        for i, head in enumerate(self.heads[:n_heads]):
            h = head(z, attention_mask=mask, position_embeddings=rope, position_ids=position_ids,
                     use_cache=use_cache, **{CACHE_NAME: past_key_values})
            if i == 0 or want_all:
                h = self.norm(h)
                if labels is None and logits_to_keep and i == 0 and not return_head_logits:
                    h = h[:, -logits_to_keep:]
                head_logits.append(self.lm_head(h))
        loss = head_losses = None
        if labels is not None:
            head_losses = torch.stack([self._head_loss(lg, labels, i + 1) for i, lg in enumerate(head_logits)])
            loss = head_losses.sum()
        return MTPOutput(
            loss=loss,
            logits=head_logits[0],
            head_logits=tuple(head_logits) if want_all else None,
            head_losses=head_losses,
            next_token_loss=head_losses[0] if head_losses is not None else None,
            **{CACHE_NAME: past_key_values if use_cache else None},
        )

    @staticmethod
    def _head_loss(logits: torch.Tensor, labels: torch.Tensor, offset: int) -> torch.Tensor:
        """Mean cross-entropy of head ``offset``: logits at t against labels at t + offset (-100 ignored).

        A sequence shorter than ``offset + 1`` gives that head nothing to predict; it contributes 0
        (not NaN) so short batches still train the heads that have targets."""
        pred = logits[:, :-offset].float()
        target = labels[:, offset:].to(logits.device)
        if pred.shape[1] == 0 or bool((target == -100).all()):
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=-100)

    # -- decoding path: the k heads as one batched layer ---------------------------------------------
    def fused_heads(self, k: int) -> "FusedHeads":
        """Heads 1..k stacked into one batched layer (weights copied now: rebuild after training)."""
        if not isinstance(k, int) or not 1 <= k <= self.n_future:
            raise ValueError(f"k={k!r} heads requested but the model has n_future={self.n_future}; use 1 <= k <= "
                             f"{self.n_future}")
        return FusedHeads(self, k)

    def fused_head_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          position_ids: torch.Tensor | None, past_key_values: Any,
                          fused: "FusedHeads") -> torch.Tensor:
        """Normalised hidden states of heads 1..k, head-major [k, B, T, d] (cache: fused layout).

        Unembed with ``self.lm_head`` only the rows needed: self-speculative decoding needs head 1 at
        every position but heads 2..k only at the last accepted one, which saves most of the
        unembedding cost for small models."""
        mask = "auto"
        if attention_mask is not None and attention_mask.dim() == 4:  # a tree block's own additive mask
            mask = attention_mask
        elif attention_mask is not None:
            mask = _slot_mask(attention_mask, input_ids.shape[1], self.embed_tokens.weight.dtype)
        z, mask, rope, _ = self._trunk(input_ids, None, attention_mask, position_ids, past_key_values,
                                       past_key_values is not None, mask=mask)
        h = fused(z, mask, rope, past_key_values, layer_idx=self.n_trunk)
        return self.norm(h)


def _slot_mask(attention_mask: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive attention mask [B, 1, q, S] (0 / -inf, in the model's dtype, so attention need not
    convert it in every layer) for a block of ``q_len`` new slots after ``S - q_len`` cached ones.

    Slot j is visible to new slot i iff it holds a real token (``attention_mask``) and comes no later;
    each slot always sees itself, so padding slots compute finite garbage instead of NaN (which would
    leak through zero attention weights). A single new token over an all-valid cache needs no mask
    (the fast path HF takes too). Built directly: the generic mask builder costs dozens of small ops
    per forward, which a tiny model on a CPU pays at every decoding step."""
    valid = attention_mask.bool()
    total = valid.shape[1]
    if q_len == 1 and bool(valid.all()):
        return None
    slots = torch.arange(total, device=valid.device)
    query = slots[total - q_len:, None]
    allowed = valid[:, None, None, :] & (slots[None, :] <= query)[None, None]
    allowed = allowed | (slots[None, :] == query)[None, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill_(~allowed, float("-inf"))


def _ensure_cache_layers(cache: Any, n_layers: int) -> None:
    """`generate` sizes a fresh DynamicCache by ``config.num_hidden_layers`` (the trunk only): add
    empty layers for the heads. Caches that grow on demand are left alone."""
    layers = getattr(cache, "layers", None)
    if layers is None or getattr(cache, "layer_class_to_replicate", None) is not None:
        return
    while len(layers) < n_layers:
        layers.append(DynamicLayer())


class FusedHeads:
    """k decoder layers applied to the same input as one batched computation.

    Tiny models on a CPU are bound by per-kernel overhead, not FLOPs: k separate head layers would cost
    ~k layers of latency per forward and eat the gain of self-speculation. Stacking the heads' weights
    turns each projection into one batched matmul and their attentions into one attention over
    ``k * n_heads`` heads, so the k heads cost about one layer. Numerically the same computation as
    the per-head `LlamaDecoderLayer`s (up to float summation order; tested).
    """

    def __init__(self, model: MTPForCausalLM, k: int) -> None:
        cfg = model.config
        heads = list(model.heads[:k])
        self.k = k
        self.attn_module = heads[0].self_attn  # supplies scaling / GQA groups to the attention function
        self.n_q = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.eps = cfg.rms_norm_eps
        self.attn_impl = cfg._attn_implementation
        self.act = ACT2FN[cfg.hidden_act]
        self.ffn = cfg.intermediate_size
        with torch.no_grad():
            def stack(get: Callable[[LlamaDecoderLayer], torch.Tensor | None]) -> torch.Tensor | None:
                parts = [get(h) for h in heads]
                return None if parts[0] is None else torch.stack([p.detach() for p in parts])

            self.ln1 = stack(lambda h: h.input_layernorm.weight)[:, None, :]  # [k, 1, d]
            self.ln2 = stack(lambda h: h.post_attention_layernorm.weight)[:, None, :]
            a = [h.self_attn for h in heads]
            self.w_qkv = torch.stack([torch.cat([x.q_proj.weight, x.k_proj.weight, x.v_proj.weight]).T for x in a]
                                     ).detach().contiguous()  # [k, d, (Hq + 2 Hkv) hd]
            self.b_qkv = (torch.stack([torch.cat([x.q_proj.bias, x.k_proj.bias, x.v_proj.bias]) for x in a])
                          [:, None, :].detach() if a[0].q_proj.bias is not None else None)
            self.w_o = torch.stack([x.o_proj.weight.T for x in a]).detach().contiguous()  # [k, Hq hd, d]
            self.b_o = stack(lambda h: h.self_attn.o_proj.bias)
            m = [h.mlp for h in heads]
            self.w_gu = torch.stack([torch.cat([x.gate_proj.weight, x.up_proj.weight]).T for x in m]
                                    ).detach().contiguous()  # [k, d, 2 f]
            self.b_gu = (torch.stack([torch.cat([x.gate_proj.bias, x.up_proj.bias]) for x in m])[:, None, :].detach()
                         if m[0].gate_proj.bias is not None else None)
            self.w_d = torch.stack([x.down_proj.weight.T for x in m]).detach().contiguous()  # [k, f, d]
            self.b_d = stack(lambda h: h.mlp.down_proj.bias)
        if self.b_o is not None:
            self.b_o = self.b_o[:, None, :]
        if self.b_d is not None:
            self.b_d = self.b_d[:, None, :]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(dtype)

    def __call__(self, z: torch.Tensor, mask: Any, rope: tuple[torch.Tensor, torch.Tensor], cache: Any,
                 layer_idx: int) -> torch.Tensor:
        """Trunk states z [B, T, d] -> un-normalised head states [k, B, T, d]."""
        k, (b, t, d) = self.k, z.shape
        flat = z.reshape(1, b * t, d)
        x = self._rms(flat, self.ln1)  # [k, BT, d]: one RMS statistic, k gains
        qkv = torch.bmm(x, self.w_qkv)
        if self.b_qkv is not None:
            qkv = qkv + self.b_qkv
        nq, nkv, hd = self.n_q * self.head_dim, self.n_kv * self.head_dim, self.head_dim
        q, kk, v = qkv.split([nq, nkv, nkv], dim=-1)

        def heads_first(y: torch.Tensor, n: int) -> torch.Tensor:  # [k, BT, n hd] -> [B, k n, T, hd]
            return y.reshape(k, b, t, n, hd).permute(1, 0, 3, 2, 4).reshape(b, k * n, t, hd)

        q, kk, v = heads_first(q, self.n_q), heads_first(kk, self.n_kv), heads_first(v, self.n_kv)
        cos, sin = rope
        q, kk = apply_rotary_pos_emb(q, kk, cos, sin)
        if cache is not None:
            kk, v = cache.update(kk, v, layer_idx)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.attn_impl, eager_attention_forward)
        out, _ = attend(self.attn_module, q, kk, v, mask, dropout=0.0, scaling=self.attn_module.scaling)
        # out: [B, T, k n_q, hd] -> [k, BT, n_q hd]
        out = out.reshape(b, t, k, nq).permute(2, 0, 1, 3).reshape(k, b * t, nq)
        out = torch.bmm(out, self.w_o)
        if self.b_o is not None:
            out = out + self.b_o
        h = flat + out  # [k, BT, d]
        gu = torch.bmm(self._rms(h, self.ln2), self.w_gu)
        if self.b_gu is not None:
            gu = gu + self.b_gu
        g, u = gu.split([self.ffn, self.ffn], dim=-1)
        mlp = torch.bmm(self.act(g) * u, self.w_d)
        if self.b_d is not None:
            mlp = mlp + self.b_d
        return (h + mlp).reshape(k, b, t, d)


def trunk_layers_for(spec: ModelSpec, n_future: int, parameter_matched: bool = False) -> int:
    """Trunk depth: ``spec.n_layers - 1`` (n_future=1 is the spec's Llama), or ``spec.n_layers - n_future``
    when parameter-matched to that Llama."""
    if not isinstance(n_future, int) or isinstance(n_future, bool) or n_future < 1:
        raise ValueError(f"n_future must be an integer >= 1 (number of future-token heads), got {n_future!r}")
    if parameter_matched:
        if spec.n_layers < n_future:
            raise ValueError(
                f"parameter_matched needs spec.n_layers >= n_future (the trunk keeps n_layers - n_future layers); "
                f"got n_layers={spec.n_layers}, n_future={n_future}: use a deeper spec or parameter_matched=False")
        return spec.n_layers - n_future
    return spec.n_layers - 1


def build_mtp(spec: ModelSpec, n_future: int, *, parameter_matched: bool = False, seed: int | None = 0,
              init_std: float = 0.02) -> MTPForCausalLM:
    """A freshly initialised MTP model for a Llama size spec (deterministic for a seed; ``None`` keeps
    the global RNG, as `train_budgets` seeds it). See the module doc for the depth convention."""
    trunk = trunk_layers_for(spec, n_future, parameter_matched)
    if seed is not None:
        torch.manual_seed(seed)
    base = spec.to_hf_config().to_dict()
    for key in ("model_type", "transformers_version", "architectures", "num_hidden_layers", "initializer_range"):
        base.pop(key, None)
    config = MTPConfig(**base, num_hidden_layers=trunk, n_future=n_future, parameter_matched=parameter_matched,
                       initializer_range=init_std)
    config._attn_implementation = "sdpa"
    model = MTPForCausalLM(config)
    model.eval()
    return model


def mtp_factory(n_future: int, *, parameter_matched: bool = False,
                init_std: float = 0.02) -> Callable[[ModelSpec], MTPForCausalLM]:
    """``model_factory`` for `scylla.training.trainer.train_budgets`: a partial, so the cache key names it exactly."""
    return functools.partial(build_mtp, n_future=n_future, parameter_matched=parameter_matched, seed=None,
                             init_std=init_std)


def mtp_parameter_counts(model: MTPForCausalLM) -> dict[str, int]:
    """Total and non-embedding counts (tied weights once), plus the trunk's and one head's share."""
    from scylla.models.llama import count_parameters

    counts = count_parameters(model)
    trunk = sum(p.numel() for p in model.layers.parameters())
    head = sum(p.numel() for p in model.heads[0].parameters())
    return {**counts, "trunk_non_embedding": trunk, "per_head": head, "n_future": model.n_future,
            "trunk_layers": model.n_trunk}


AutoConfig.register(MTPConfig.model_type, MTPConfig, exist_ok=True)
AutoModelForCausalLM.register(MTPConfig, MTPForCausalLM, exist_ok=True)


def synthetic_stream(n_tokens: int, vocab_size: int = 32, *, determinism: float = 0.9,
                     seed: int = 0) -> torch.Tensor:
    """A token stream from a random second-order Markov chain: with probability ``determinism`` the
    next token is a fixed function of the previous two, else uniform. Learnable in seconds, and its
    future is predictable a few tokens ahead only in part, so a briefly trained MTP model accepts some
    but not all of its heads' guesses (what tests and benchmarks need without a corpus)."""
    if not 0 <= determinism <= 1:
        raise ValueError(f"determinism must lie in [0, 1], got {determinism}")
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, vocab_size, (vocab_size, vocab_size), generator=g)
    noise = torch.rand(n_tokens, generator=g) >= determinism
    random_tokens = torch.randint(0, vocab_size, (n_tokens,), generator=g).tolist()
    out = [int(t) for t in torch.randint(0, vocab_size, (2,), generator=g)]
    for i in range(2, n_tokens):
        out.append(random_tokens[i] if bool(noise[i]) else int(table[out[-2], out[-1]]))
    return torch.tensor(out[:n_tokens], dtype=torch.long)


def train_on_stream(model: torch.nn.Module, stream: torch.Tensor, *, steps: int, seq_len: int = 64,
                    batch_size: int = 16, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """A minimal AdamW loop on random windows of one token stream; returns the loss per step.

    For tests, demos and benchmarks that need a briefly trained model in seconds; token-budgeted,
    cached, resumable training is `scylla.training.trainer.train_budgets(..., model_factory=mtp_factory(n))`."""
    if stream.dim() != 1 or len(stream) <= seq_len:
        raise ValueError(f"stream must be a 1-D tensor longer than seq_len={seq_len}, got shape {tuple(stream.shape)}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=g)
        x = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
