"""EAGLE-3 feature-level draft heads (Li et al. 2025), as SpecForge's `LlamaForCausalLMEagle3` lays them out.

A head drafts from the target's own hidden states instead of from tokens alone:

- three of the target's hidden states (low, middle and high layers; `Eagle3Config.aux_layer_ids`) are
  concatenated and fused by a bias-free linear layer ``fc`` (3H -> H);
- the first draft layer (``midlayer``) normalises the token embedding (``input_layernorm``) and the
  fused state (``hidden_norm``) separately and attends over their concatenation: its q/k/v take 2H;
  the residual stream is the un-normalised fused state (SpecForge's and vLLM's default,
  ``norm_before_residual = false``);
- ``num_hidden_layers - 1`` further standard Llama decoder layers follow (the capacity axis: one layer
  is EAGLE-3 itself; vLLM serves the deeper ones, SGLang only one, see docs/eagle3.md);
- a final norm and an LM head over a reduced draft vocabulary (``d2t`` / ``t2d``, `scylla.models.vocab`);
- the token embedding is the target's, frozen (``embed_tokens``, not trained and not exported).

The draft's state after a step is its last layer's output *before* the final norm: the draft feeds it
back as its own hidden input for the next depth (training-time test), while tokens it accepted are
re-processed with the target's fused features after verification.

Layer ids follow EAGLE's and vLLM's convention (``eagle_aux_hidden_state_layer_ids``): id ``i`` is the
input of the target's decoder layer ``i``, i.e. ``output_hidden_states[i]`` of a `transformers` model
(0 = the embeddings); ids must lie in ``[0, L - 1]`` because ``output_hidden_states[L]`` has the final
norm applied. EAGLE's default is ``[2, L // 2, L - 3]``; SpecForge writes the same layers as
``[1, L // 2 - 1, L - 4]`` (it counts the output of layer ``k``, which is the input of layer ``k + 1``).

Three forwards share the weights: `Eagle3Draft.forward` (decoding, with a KV cache and the tree masks
of `scylla.decode.cache.CachedLM`), `Eagle3Draft.ttt` (the training-time test unrolled over a whole
sequence, for training and for the acceptance oracle) and `export_eagle3` / `import_eagle3` (the folder
SGLang and vLLM load).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, LlamaConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput
from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaRMSNorm,
                                                      LlamaRotaryEmbedding, apply_rotary_pos_emb, repeat_kv)

from scylla.models.hf_compat import CACHE_NAME, causal_mask
from scylla.models.vocab import DraftVocab

__all__ = ["Eagle3Config", "Eagle3Draft", "Eagle3CostView", "Eagle3Output", "Eagle3Error", "TTTOutput", "default_layer_ids",
           "specforge_layer_ids", "resolve_layer_ids", "check_target", "build_eagle3", "eagle3_parameter_counts",
           "target_features", "export_eagle3", "import_eagle3", "EXPORT_ARCHITECTURE"]

EXPORT_ARCHITECTURE = "LlamaForCausalLMEagle3"


class Eagle3Error(ValueError):
    """An EAGLE-3 head that does not fit its target (the message names the problem and the fix)."""


def default_layer_ids(n_target_layers: int) -> list[int]:
    """EAGLE's low/middle/high layers ``[2, L // 2, L - 3]`` (inputs of those decoder layers)."""
    return [2, n_target_layers // 2, n_target_layers - 3]


def specforge_layer_ids(n_target_layers: int) -> list[int]:
    """SpecForge's ``[1, L // 2 - 1, L - 4]`` (outputs of those layers): the same layers as
    `default_layer_ids`, written in the other convention. Returned in this module's convention."""
    return [i + 1 for i in (1, n_target_layers // 2 - 1, n_target_layers - 4)]


def resolve_layer_ids(layer_ids: Sequence[int] | None, n_target_layers: int) -> list[int]:
    """The three aux layer ids for a target of ``n_target_layers`` layers (None: EAGLE's default),
    checked: one `Eagle3Error` naming the layer count and the valid range otherwise."""
    ids = default_layer_ids(n_target_layers) if layer_ids is None else [int(i) for i in layer_ids]
    origin = "the default [2, L//2, L-3]" if layer_ids is None else "draft.layer_ids"
    if len(ids) != 3:
        raise Eagle3Error(f"{origin} = {ids}: EAGLE-3 fuses exactly three target hidden states (low, middle, "
                          "high); give three layer ids")
    bad = [i for i in ids if not 0 <= i <= n_target_layers - 1]
    if bad:
        raise Eagle3Error(f"{origin} = {ids} does not fit a target with {n_target_layers} decoder layers: ids "
                          f"{bad} lie outside [0, {n_target_layers - 1}] (id i is the input of layer i); set "
                          f"draft.layer_ids to three ids in that range, e.g. "
                          f"{[min(max(0, i), n_target_layers - 1) for i in default_layer_ids(max(n_target_layers, 4))]}")
    return ids


def check_target(config: "Eagle3Config", target: torch.nn.Module) -> None:
    """Raise one `Eagle3Error` when ``target`` is not the model this head was built for (hidden size,
    layer count, vocabulary)."""
    tc = target.config
    hidden = int(getattr(tc, "hidden_size"))
    layers = int(getattr(tc, "num_hidden_layers"))
    vocab = int(target.get_input_embeddings().weight.shape[0])
    if hidden != config.hidden_size:
        raise Eagle3Error(f"the EAGLE-3 head has hidden size {config.hidden_size} but the target's is {hidden}: a "
                          "head reads the target's hidden states and embeddings, so its width must equal the "
                          "target's; build (or train) the head for this target")
    resolve_layer_ids(config.aux_layer_ids, layers)
    if config.target_num_layers is not None and config.target_num_layers != layers:
        raise Eagle3Error(f"the EAGLE-3 head was built for a target with {config.target_num_layers} layers, this "
                          f"one has {layers}; train a head for this target")
    if vocab != config.vocab_size:
        raise Eagle3Error(f"the EAGLE-3 head's vocabulary ({config.vocab_size} ids) differs from the target's "
                          f"({vocab}); train it with the target's tokenizer")
    if config.draft_vocab_size > vocab:
        raise Eagle3Error(f"the draft vocabulary ({config.draft_vocab_size}) is larger than the target's ({vocab}); "
                          "use at most that (draft.vocab_size)")


@strict
class Eagle3Config(LlamaConfig):
    """A `LlamaConfig` (the draft's layers) plus what ties the head to its target.

    ``num_hidden_layers`` is the number of draft layers L (the first one is the 2H ``midlayer``);
    ``vocab_size`` is the target's vocabulary, ``draft_vocab_size`` the head's output vocabulary;
    ``aux_layer_ids`` the three target layers fused (module doc); ``target_num_layers`` the target's
    depth (checked when the head meets a target)."""

    model_type = "scylla_eagle3"
    draft_vocab_size: int = 32000
    aux_layer_ids: list[int] | None = None
    target_num_layers: int | None = None

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.num_hidden_layers < 1:
            raise ValueError(f"Eagle3Config.num_hidden_layers must be >= 1 (draft layers), got {self.num_hidden_layers}")
        if not 1 <= self.draft_vocab_size <= self.vocab_size:
            raise ValueError(f"Eagle3Config.draft_vocab_size={self.draft_vocab_size} must lie in [1, vocab_size="
                             f"{self.vocab_size}]")
        if self.aux_layer_ids is not None and len(self.aux_layer_ids) != 3:
            raise ValueError(f"Eagle3Config.aux_layer_ids must hold three layer ids, got {self.aux_layer_ids}")


@dataclass
class Eagle3Output(ModelOutput):
    """``logits`` over the draft vocabulary [B, W, V_d] (the last ``logits_to_keep`` slots when set);
    ``last_hidden_state``: the last layer's output before the final norm [B, W, H], the state the draft
    feeds back at the next depth."""

    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    if CACHE_NAME == "cache":
        cache: Any = None
    else:
        past_key_values: Any = None


@dataclass
class TTTOutput:
    """The training-time test unrolled over whole sequences: per step k (0-based list index k - 1),
    ``logits[k]`` [B, P, V_d] and ``hidden[k]`` [B, P, H] (pre-norm) at every slot p = 0..P-1, where slot
    p pairs the target's state at position p with token p + 1 and step k predicts token p + 2. Slots
    p < k - 1 of step k have no defined value (their chain would start before the sequence)."""

    logits: list[torch.Tensor]
    hidden: list[torch.Tensor]


class Eagle3FirstLayer(nn.Module):
    """The 2H-input decoder layer (SpecForge's ``midlayer``): attention over
    concat(input_layernorm(embedding), hidden_norm(fused state)), residual on the fused state."""

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        h = config.hidden_size
        self.self_attn = LlamaAttention(config, layer_idx=0)
        a = self.self_attn
        bias = config.attention_bias
        a.q_proj = nn.Linear(2 * h, config.num_attention_heads * a.head_dim, bias=bias)
        a.k_proj = nn.Linear(2 * h, config.num_key_value_heads * a.head_dim, bias=bias)
        a.v_proj = nn.Linear(2 * h, config.num_key_value_heads * a.head_dim, bias=bias)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
        self.hidden_norm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(h, eps=config.rms_norm_eps)

    def attention_input(self, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, *, attention_mask: Any,
                position_embeddings: tuple[torch.Tensor, torch.Tensor], cache: Any) -> torch.Tensor:
        x = self.attention_input(embeds, hidden)
        attn, _ = self.self_attn(hidden_states=x, position_embeddings=position_embeddings,
                                 attention_mask=attention_mask, **{CACHE_NAME: cache})
        h = hidden + attn
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3PreTrainedModel(PreTrainedModel):
    config_class = Eagle3Config
    config: Eagle3Config
    base_model_prefix = "eagle3"
    supports_gradient_checkpointing = False
    _no_split_modules = ["LlamaDecoderLayer", "Eagle3FirstLayer"]
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_sdpa = True
    _supports_attention_backend = True


class Eagle3Draft(Eagle3PreTrainedModel):
    """An EAGLE-3 head (see the module doc). ``draft_vocab`` maps its outputs to target ids."""

    # The draft re-processes the accepted tokens of every step with the target's features: its first
    # forward of a step is 1 + accepted tokens wide (what `scylla.measure.compose` prices).
    reprocesses_accepted = True

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__(config)
        h = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, h)
        self.embed_tokens.weight.requires_grad_(False)  # the target's, frozen
        self.fc = nn.Linear(3 * h, h, bias=False)
        self.midlayer = Eagle3FirstLayer(config)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(1, config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.lm_head = nn.Linear(h, config.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.int64), persistent=True)
        self.register_buffer("t2d", torch.ones(config.vocab_size, dtype=torch.bool), persistent=True)
        self._vocab: DraftVocab | None = None
        self.post_init()

    # -- HF plumbing ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> "Eagle3Draft":
        """`PreTrainedModel.from_pretrained`, with the target's embedding frozen again after loading."""
        model = super().from_pretrained(*args, **kwargs)
        model.embed_tokens.weight.requires_grad_(False)
        return model

    def _init_weights(self, module: Any) -> None:
        if isinstance(module, Eagle3Draft):
            return  # d2t / t2d are set by set_draft_vocab or loaded
        super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def layer_ids(self) -> list[int]:
        return list(self.config.aux_layer_ids or [])

    def cost_view(self) -> "Eagle3CostView":
        """This head as a plain causal LM for cost probes (`Eagle3CostView`)."""
        return Eagle3CostView(self)

    # -- vocabulary ----------------------------------------------------------------------------------
    def set_draft_vocab(self, vocab: DraftVocab) -> None:
        """Use ``vocab`` (its size must be ``draft_vocab_size`` over the target's ``vocab_size`` ids)."""
        if vocab.target_size != self.config.vocab_size or vocab.size != self.config.draft_vocab_size:
            raise Eagle3Error(f"draft vocabulary {vocab.size}/{vocab.target_size} does not fit this head "
                              f"({self.config.draft_vocab_size}/{self.config.vocab_size})")
        with torch.no_grad():
            self.d2t.copy_(vocab.d2t)
            self.t2d.copy_(vocab.t2d)
        self._vocab = None

    @property
    def draft_vocab(self) -> DraftVocab:
        d2t = self.d2t.detach().cpu()
        if self._vocab is None or not torch.equal(self._vocab.d2t, d2t):
            self._vocab = DraftVocab.from_d2t(d2t.clone(), int(self.config.vocab_size))
        return self._vocab

    def set_embeddings(self, weight: torch.Tensor) -> None:
        """Copy the target's token embedding [V, H] (frozen)."""
        if tuple(weight.shape) != tuple(self.embed_tokens.weight.shape):
            raise Eagle3Error(f"target embedding {tuple(weight.shape)} does not fit the head's "
                              f"{tuple(self.embed_tokens.weight.shape)} (vocabulary x hidden size)")
        with torch.no_grad():
            self.embed_tokens.weight.copy_(weight.detach().to(self.embed_tokens.weight))

    # -- decoding forward ----------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Any = None, use_cache: bool | None = None,
                aux_hidden_states: torch.Tensor | None = None, hidden_states: torch.Tensor | None = None,
                logits_to_keep: int = 0, past_key_values: Any = None, **kwargs: Any) -> Eagle3Output:
        """One cached forward over a block of slots. Each slot pairs a token with a state: the target's
        three aux states ``aux_hidden_states`` [B, W, 3H] (fused by ``fc``) or the draft's own pre-norm
        output ``hidden_states`` [B, W, H] (a deeper draft step). ``attention_mask`` is 2D (slot
        validity, causal among the new slots) or a 4D additive mask (trees), as
        `scylla.decode.cache.CachedLM` passes them."""
        if cache is None:
            cache = past_key_values
        if (aux_hidden_states is None) == (hidden_states is None):
            raise Eagle3Error("pass exactly one of aux_hidden_states (the target's three states, 3H wide) or "
                              "hidden_states (the draft's own previous output, H wide) with every block")
        h = self.fc(aux_hidden_states) if aux_hidden_states is not None else hidden_states
        embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(input_ids.shape[1], device=input_ids.device) + past)[None, :]
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask
        else:
            mask = causal_mask(config=self.config, inputs_embeds=embeds, attention_mask=attention_mask, cache=cache,
                               position_ids=position_ids)
        rope = self.rotary_emb(h, position_ids=position_ids)
        h = self.midlayer(embeds, h, attention_mask=mask, position_embeddings=rope, cache=cache)
        for layer in self.layers:
            h = layer(h, attention_mask=mask, position_embeddings=rope, position_ids=position_ids,
                      use_cache=bool(use_cache), **{CACHE_NAME: cache})
        last = h[:, -logits_to_keep:] if logits_to_keep else h
        logits = self.lm_head(self.norm(last))
        return Eagle3Output(logits=logits, last_hidden_state=h, **{CACHE_NAME: cache if use_cache else None})

    # -- training-time test over whole sequences -----------------------------------------------------
    def ttt(self, input_ids: torch.Tensor, aux_hidden_states: torch.Tensor, steps: int,
            valid: torch.Tensor | None = None) -> TTTOutput:
        """The training-time test unrolled ``steps`` times over sequences ``input_ids`` [B, T] whose
        target states are ``aux_hidden_states`` [B, T, 3H] (``valid`` [B, T]: real tokens; left padding).

        Slot p (0..T-2) pairs the target's state at position p with token p + 1. Step 1 reads the fused
        target state; step k > 1 reads step k - 1's pre-norm output at slot p - 1, the draft's own
        output, as decoding does at depth k. A step-k query at slot p sees what the decoder's cache
        holds at depth k: the step-1 (target-feature) entries of slots <= p - k + 1 and the step-j
        entry of slot p - k + j for j = 2..k (its own chain). Rotary positions are the slots' own
        positions (depth k of a chain sits k - 1 positions after its first slot), as in decoding."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        b, t = input_ids.shape
        if valid is None:
            valid = torch.ones(b, t, dtype=torch.bool, device=input_ids.device)
        slot_valid = valid[:, :-1] & valid[:, 1:]  # [B, P]
        positions = (valid.long().cumsum(1) - 1).clamp_min(0)[:, :-1]
        embeds = self.embed_tokens(input_ids[:, 1:])
        fused = self.fc(aux_hidden_states[:, :-1])
        p = t - 1
        rope = self.rotary_emb(fused, position_ids=positions)
        n_layers = 1 + len(self.layers)
        keys: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]  # per layer, per step: [B, nkv, P, hd]
        values: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        out_logits, out_hidden = [], []
        h_in = fused
        for k in range(1, steps + 1):
            if k > 1:  # step k at slot p reads step k - 1's output at slot p - 1
                prev = out_hidden[-1]
                h_in = torch.cat([torch.zeros_like(prev[:, :1]), prev[:, :-1]], dim=1)
            h = self._ttt_layer(0, embeds, h_in, rope, slot_valid, k, keys, values)
            for i in range(1, n_layers):
                h = self._ttt_layer(i, None, h, rope, slot_valid, k, keys, values)
            out_hidden.append(h)
            out_logits.append(self.lm_head(self.norm(h)))
        assert out_logits[0].shape[1] == p
        return TTTOutput(out_logits, out_hidden)

    def _ttt_layer(self, index: int, embeds: torch.Tensor | None, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                   slot_valid: torch.Tensor, step: int, keys: list[list[torch.Tensor]],
                   values: list[list[torch.Tensor]]) -> torch.Tensor:
        if index == 0:
            layer = self.midlayer
            x = layer.attention_input(embeds, h)
        else:
            layer = self.layers[index - 1]
            x = layer.input_layernorm(h)
        attn = self._ttt_attention(layer.self_attn, x, rope, slot_valid, step, keys[index], values[index])
        h = h + attn
        return h + layer.mlp(layer.post_attention_layernorm(h))

    @staticmethod
    def _ttt_attention(attn: LlamaAttention, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                       slot_valid: torch.Tensor, step: int, keys: list[torch.Tensor],
                       values: list[torch.Tensor]) -> torch.Tensor:
        """Attention of step ``step``'s queries: causal over step-1 keys shifted by ``step - 1`` slots,
        plus one key per earlier step on the diagonal (module-level `ttt` doc)."""
        b, p, _ = x.shape
        hd = attn.head_dim
        q = attn.q_proj(x).view(b, p, -1, hd).transpose(1, 2)
        k = attn.k_proj(x).view(b, p, -1, hd).transpose(1, 2)
        v = attn.v_proj(x).view(b, p, -1, hd).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys.append(k)
        values.append(v)
        groups = attn.num_key_value_groups
        k1, v1 = repeat_kv(keys[0], groups), repeat_kv(values[0], groups)
        s = step - 1
        slots = torch.arange(p, device=x.device)
        allowed = (slots[None, :] <= slots[:, None] - s)[None, None] & slot_valid[:, None, None, :]
        scores = torch.matmul(q, k1.transpose(2, 3)) * attn.scaling
        neg = torch.finfo(scores.dtype).min
        scores = scores.masked_fill(~allowed, neg)
        diag_scores, diag_values = [], []
        for j in range(2, step + 1):  # step j's entry at slot p - (step - j)
            shift = step - j
            kj, vj = repeat_kv(keys[j - 1], groups), repeat_kv(values[j - 1], groups)
            if shift:
                kj = torch.cat([torch.zeros_like(kj[:, :, :shift]), kj[:, :, :-shift]], dim=2)
                vj = torch.cat([torch.zeros_like(vj[:, :, :shift]), vj[:, :, :-shift]], dim=2)
            diag_scores.append((q * kj).sum(-1, keepdim=True) * attn.scaling)
            diag_values.append(vj)
        if diag_scores:
            weights = torch.softmax(torch.cat([scores] + diag_scores, dim=-1).float(), dim=-1).to(q.dtype)
            out = torch.matmul(weights[..., :p], v1)
            for i, vj in enumerate(diag_values):
                out = out + weights[..., p + i:p + i + 1] * vj
        else:  # step 1: plain causal attention (every valid slot sees itself)
            self_mask = torch.eye(p, dtype=torch.bool, device=x.device)[None, None]
            scores = torch.where(self_mask, torch.matmul(q, k1.transpose(2, 3)) * attn.scaling, scores)
            weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = torch.matmul(weights, v1)
        out = out.transpose(1, 2).reshape(b, p, -1)
        return attn.o_proj(out)


class Eagle3CostView(nn.Module):
    """The head seen as a plain causal LM, for cost probes (`scylla.measure.probes`): every slot is fed
    target-shaped states (zeros, 3H wide, through ``fc``), as the first forward of a step is. Deeper
    depths skip ``fc`` (3H x H per token), so probes overstate them by that much."""

    def __init__(self, draft: "Eagle3Draft") -> None:
        super().__init__()
        self.draft = draft
        self.config = draft.config

    def get_input_embeddings(self) -> nn.Module:
        return self.draft.embed_tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Any = None, use_cache: bool | None = None,
                logits_to_keep: int = 0, **kwargs: Any) -> Eagle3Output:
        aux = self.draft.fc.weight.new_zeros(*input_ids.shape, 3 * self.config.hidden_size)
        return self.draft(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                          use_cache=use_cache, aux_hidden_states=aux, logits_to_keep=logits_to_keep)


def build_eagle3(target_config: Any, *, n_layers: int, draft_vocab: DraftVocab, layer_ids: Sequence[int] | None = None,
                 n_heads: int | None = None, ffn_dim: int | None = None, embeddings: torch.Tensor | None = None,
                 seed: int | None = 0, init_std: float = 0.02) -> Eagle3Draft:
    """A fresh EAGLE-3 head for a target with config ``target_config``: its width, attention heads
    (unless ``n_heads``), MLP width (unless ``ffn_dim``), rotary settings and positions are the
    target's; ``embeddings`` (the target's [V, H] embedding) is copied in, frozen."""
    tc = target_config
    n_target_layers = int(tc.num_hidden_layers)
    ids = resolve_layer_ids(layer_ids, n_target_layers)
    hidden = int(tc.hidden_size)
    vocab = int(tc.vocab_size)
    if draft_vocab.target_size != vocab:
        raise Eagle3Error(f"the draft vocabulary covers {draft_vocab.target_size} target ids but the target has "
                          f"{vocab}; build it from the target's tokenizer")
    if n_layers < 1:
        raise Eagle3Error(f"an EAGLE-3 head needs at least one layer, got n_layers={n_layers}")
    heads = int(n_heads) if n_heads else int(tc.num_attention_heads)
    kv = int(getattr(tc, "num_key_value_heads", None) or heads) if not n_heads else heads
    if hidden % heads:
        raise Eagle3Error(f"the head's width is the target's hidden size {hidden}, which n_heads={heads} does not "
                          "divide; pick n_heads that divides it (or null for the target's)")
    rope = getattr(tc, "rope_parameters", None)
    config = Eagle3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(ffn_dim or tc.intermediate_size),
        num_hidden_layers=int(n_layers), num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=hidden // heads, max_position_embeddings=int(tc.max_position_embeddings),
        rms_norm_eps=float(getattr(tc, "rms_norm_eps", 1e-5)), hidden_act=str(getattr(tc, "hidden_act", "silu")),
        rope_parameters=dict(rope) if rope else None, tie_word_embeddings=False, attention_bias=False,
        initializer_range=init_std, draft_vocab_size=draft_vocab.size, aux_layer_ids=ids,
        target_num_layers=n_target_layers, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    config._attn_implementation = "sdpa"
    if seed is not None:
        torch.manual_seed(seed)
    model = Eagle3Draft(config)
    model.set_draft_vocab(draft_vocab)
    if embeddings is not None:
        model.set_embeddings(embeddings)
    model.eval()
    return model


def eagle3_parameter_counts(model: Eagle3Draft) -> dict[str, int]:
    """``draft``: the head's own parameters (fc, layers, norms, LM head; what is trained and exported);
    ``non_embedding``: the same without the LM head; ``embedding_shared``: the target's frozen
    embedding it reads; ``total``: all of them."""
    emb = model.embed_tokens.weight.numel()
    head = model.lm_head.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "draft": total - emb, "non_embedding": total - emb - head, "embedding_shared": emb,
            "lm_head": head, "layers": model.n_layers}


def target_features(output: Any, layer_ids: Sequence[int]) -> torch.Tensor:
    """The three aux states [B, W, 3H] from a target output computed with ``output_hidden_states=True``
    (the public `transformers` API: ``hidden_states[i]`` is the input of decoder layer i)."""
    states = getattr(output, "hidden_states", None)
    if states is None:
        raise Eagle3Error("the target's output has no hidden_states; call it with output_hidden_states=True")
    return torch.cat([states[i] for i in layer_ids], dim=-1)


# ---------------------------------------------------------------------------------------------------
# Export for SGLang and vLLM


def _export_state(model: Eagle3Draft) -> dict[str, torch.Tensor]:
    """The serving layout: ``fc``, ``midlayer.*`` (layer 0), ``layers.{i}.*`` (layers 1..L-1, vLLM's
    names), ``norm``, ``lm_head``, ``d2t``, ``t2d``; no ``embed_tokens`` (serving shares the target's)."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, value in sd.items():
        if name.startswith("embed_tokens.") or name.startswith("rotary_emb."):
            continue
        if name.startswith("layers."):
            _, idx, rest = name.split(".", 2)
            name = f"layers.{int(idx) + 1}.{rest}"
        out[name] = value
    for i in range(1, model.n_layers):
        # vLLM builds a hidden_norm in every Eagle3 layer (only layer 0 uses it): written as ones so a
        # loader that insists on every parameter finds it; it changes nothing.
        out[f"layers.{i}.hidden_norm.weight"] = torch.ones_like(model.norm.weight)
    return out


def export_eagle3(model: Eagle3Draft, folder: str | Path, *, dtype: torch.dtype | None = None,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder`` with ``config.json`` (``architectures: [LlamaForCausalLMEagle3]``,
    ``draft_vocab_size``, the layer config, ``eagle_config.eagle_aux_hidden_state_layer_ids``) and
    ``model.safetensors`` in SpecForge's key layout; ``dtype`` casts floating weights (e.g. bfloat16
    for serving). Returns the folder. docs/eagle3.md says which engine loads which depth."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    state = _export_state(model)
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    weight_dtype = str(dtype or model.fc.weight.dtype).replace("torch.", "")
    rope = dict(c.rope_parameters or {})
    config = {
        "architectures": [EXPORT_ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "target_hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": c.hidden_act,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": None if rope.get("rope_type", "default") == "default" else rope,
        "rope_parameters": rope or None,
        "vocab_size": c.vocab_size,
        "draft_vocab_size": c.draft_vocab_size,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "torch_dtype": weight_dtype,
        # vLLM reads the ids at the top level; EAGLE-style configs nest them in eagle_config.
        "eagle_aux_hidden_state_layer_ids": list(c.aux_layer_ids or []),
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(c.aux_layer_ids or []),
                         "use_aux_hidden_state": True},
        "scylla": {"format": "scylla-eagle3-export-v1", "target_num_layers": c.target_num_layers,
                   "layer_id_convention": "id i = input of target decoder layer i (EAGLE / vLLM)",
                   "embed_tokens": "not included: serving shares the target's embedding",
                   **(extra or {})},
    }
    tmp = folder / ".model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def import_eagle3(folder: str | Path, target: torch.nn.Module, *, dtype: torch.dtype = torch.float32) -> Eagle3Draft:
    """An `Eagle3Draft` from an exported folder (ours or SpecForge's single-layer layout) and the target
    whose embedding it shares; one `Eagle3Error` when the folder or the target does not fit."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise Eagle3Error(f"{folder} is not an EAGLE-3 export (needs config.json and model.safetensors)")
    cfg = json.loads(cfg_path.read_text())
    if EXPORT_ARCHITECTURE not in (cfg.get("architectures") or []):
        raise Eagle3Error(f"{cfg_path}: architectures {cfg.get('architectures')} do not include {EXPORT_ARCHITECTURE}")
    state = load_file(str(weights))
    ids = cfg.get("eagle_aux_hidden_state_layer_ids") or (cfg.get("eagle_config") or {}).get(
        "eagle_aux_hidden_state_layer_ids")
    tc = target.config
    n_target = int(tc.num_hidden_layers)
    if ids is None:
        ids = default_layer_ids(n_target)
    if int(cfg["hidden_size"]) != int(tc.hidden_size):
        raise Eagle3Error(f"{cfg_path}: hidden_size {cfg['hidden_size']} differs from the target's {tc.hidden_size}")
    vocab = int(cfg["vocab_size"])
    if "d2t" in state:
        d2t = state["d2t"].to(torch.int64)
    else:
        d2t = torch.zeros(int(cfg.get("draft_vocab_size") or vocab), dtype=torch.int64)
    draft_vocab = DraftVocab.from_d2t(d2t, vocab)
    rope = cfg.get("rope_parameters") or {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0)}

    class _Shape:  # the target-shaped config build_eagle3 reads
        pass

    shape = _Shape()
    for key, value in dict(hidden_size=cfg["hidden_size"], num_hidden_layers=n_target, vocab_size=vocab,
                           num_attention_heads=cfg["num_attention_heads"],
                           num_key_value_heads=cfg.get("num_key_value_heads"),
                           intermediate_size=cfg["intermediate_size"],
                           max_position_embeddings=cfg["max_position_embeddings"],
                           rms_norm_eps=cfg.get("rms_norm_eps", 1e-5), hidden_act=cfg.get("hidden_act", "silu"),
                           rope_parameters=rope).items():
        setattr(shape, key, value)
    model = build_eagle3(shape, n_layers=int(cfg["num_hidden_layers"]), draft_vocab=draft_vocab, layer_ids=ids,
                         n_heads=None, seed=None)
    check_target(model.config, target)
    own: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name in ("d2t", "t2d") or name.startswith("embed_tokens."):
            continue
        if name.startswith("layers."):
            _, idx, rest = name.split(".", 2)
            if rest == "hidden_norm.weight":
                continue  # vLLM's unused norm (written as ones)
            name = f"layers.{int(idx) - 1}.{rest}"
        own[name] = value.to(dtype)
    own["embed_tokens.weight"] = target.get_input_embeddings().weight.detach().to("cpu", dtype)
    own["d2t"], own["t2d"] = draft_vocab.d2t, draft_vocab.t2d
    missing, unexpected = model.load_state_dict(own, strict=False)
    missing = [m for m in missing if not m.startswith("rotary_emb.")]
    if missing or unexpected:
        raise Eagle3Error(f"{weights}: missing weights {missing[:6]}, unexpected {unexpected[:6]}")
    model.to(dtype)
    model.eval()
    return model


AutoConfig.register(Eagle3Config.model_type, Eagle3Config, exist_ok=True)


def _register_family() -> None:
    """Teach the decode core and the oracle about EAGLE-3 heads (their modules import this one)."""
    import scylla.decode.eagle3  # noqa: F401
    import scylla.measure.eagle3  # noqa: F401


_register_family()
