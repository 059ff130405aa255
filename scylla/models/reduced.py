"""A Llama draft with a reduced output vocabulary (EAGLE-3's d2t/t2d layout, `scylla.models.vocab`).

Why: a d64x2 draft for SmolLM2's 49,152-token vocabulary is 3.2M parameters, almost all unembedding,
and trains at ~1,000 tok/s here; predicting only the 8,192 most frequent target tokens trains ~6x
faster. The draft still *reads* every target id (its input embedding covers the full target
vocabulary: the accepted context contains rare tokens too) but *predicts* only ``V_d`` of them.

Training choice (documented in docs/targets.md): a label outside the draft vocabulary is ignored
(``-100``), as EAGLE-3 does; so a reduced draft's ``val_loss`` is over in-vocabulary tokens only and is
not comparable with a full-vocabulary draft's. The engine and the oracle map draft ids to target ids
through ``model.draft_vocab`` (`scylla.decode.proposers.DraftLMProposer`, `scylla.measure.oracle`).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from scylla.models.vocab import DraftVocab

__all__ = ["ReducedVocabLlama", "ReducedVocabFactory", "vocab_from_streams"]


class ReducedVocabLlama(LlamaForCausalLM):
    """LlamaForCausalLM whose ``lm_head`` has ``config.draft_vocab_size`` rows; ``draft_to_target`` (a
    saved buffer) maps each row to its target id, ``draft_vocab`` exposes it as a `DraftVocab`."""

    def __init__(self, config: LlamaConfig) -> None:
        config.tie_word_embeddings = False  # input rows are target ids, output rows draft ids
        super().__init__(config)
        vd = int(config.draft_vocab_size)
        self.lm_head = torch.nn.Linear(config.hidden_size, vd, bias=False)
        self.register_buffer("draft_to_target", torch.arange(vd, dtype=torch.int64), persistent=True)
        self.register_buffer("target_to_draft", torch.full((config.vocab_size,), -1, dtype=torch.int64),
                             persistent=False)
        self._vocab: Optional[DraftVocab] = None
        self.post_init()

    def set_draft_vocab(self, vocab: DraftVocab) -> None:
        if vocab.target_size != self.config.vocab_size or vocab.size != self.config.draft_vocab_size:
            raise ValueError(f"draft vocabulary {vocab.size}/{vocab.target_size} does not fit this model "
                             f"({self.config.draft_vocab_size}/{self.config.vocab_size})")
        with torch.no_grad():
            self.draft_to_target.copy_(vocab.draft_to_target)
        self._vocab = None

    @property
    def draft_vocab(self) -> DraftVocab:
        if self._vocab is None or not torch.equal(self._vocab.draft_to_target, self.draft_to_target.cpu()):
            self._vocab = DraftVocab(self.draft_to_target.detach().cpu().clone(), int(self.config.vocab_size))
            self.target_to_draft = self._vocab.target_to_draft().to(self.draft_to_target.device)
        return self._vocab

    def _init_weights(self, module: Any) -> None:
        if isinstance(module, ReducedVocabLlama):
            return  # buffers are set by set_draft_vocab / loaded from the checkpoint
        super()._init_weights(module)

    def forward(self, input_ids: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """Logits over draft ids [..., V_d]; ``labels`` are target ids (shifted inside, as in HF), mapped
        to draft ids, outside-vocabulary labels ignored."""
        out = super().forward(input_ids=input_ids, **kwargs)
        if labels is not None:
            _ = self.draft_vocab  # refresh the inverse table
            table = self.target_to_draft.to(labels.device)
            y = labels[:, 1:]
            yd = torch.where(y < 0, torch.full_like(y, -100), table[y.clamp_min(0)])
            yd = torch.where(yd < 0, torch.full_like(yd, -100), yd)
            logits = out.logits[:, :-1].float()
            if bool((yd >= 0).any()):
                out.loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yd.reshape(-1), ignore_index=-100)
            else:
                out.loss = logits.sum() * 0.0
        return out


class ReducedVocabFactory:
    """``model_factory`` for `scylla.training.trainer.train_budgets`: a fresh reduced-vocabulary draft.

    ``cache_key`` names the vocabulary, so drafts over different vocabularies never share checkpoints."""

    def __init__(self, vocab: DraftVocab, seed: int = 0) -> None:
        self.vocab, self.seed = vocab, seed
        self.cache_key = f"scylla.models.reduced.ReducedVocabLlama(vd={vocab.size},vocab={vocab.fingerprint()})"

    def __call__(self, spec: Any) -> ReducedVocabLlama:
        config = spec.to_hf_config()
        config.initializer_range = 0.02
        config.draft_vocab_size = self.vocab.size
        config._attn_implementation = "sdpa"
        torch.manual_seed(self.seed)
        model = ReducedVocabLlama(config)
        model.set_draft_vocab(self.vocab)
        model.eval()
        return model


def vocab_from_streams(streams: list[np.ndarray], target_size: int, size: int, *,
                       always: tuple[int, ...] = ()) -> tuple[DraftVocab, float]:
    """The ``size`` most frequent target ids of the training token streams (plus ``always``), and
    the fraction of those training tokens it covers."""
    counts = np.zeros(target_size, dtype=np.int64)
    for s in streams:
        counts += np.bincount(np.asarray(s, dtype=np.int64), minlength=target_size)[:target_size]
    vocab = DraftVocab.from_counts(counts, size, always=always)
    covered = float(counts[vocab.draft_to_target.numpy()].sum() / max(1, counts.sum()))
    return vocab, covered


def reduced_vocab_factory(tokenizer: Any, corpora: list[str], corpus_options: Optional[dict[str, Any]],
                          cache_dir: Any, size: int, target_size: int,
                          seed: int = 0) -> tuple[ReducedVocabFactory, dict[str, Any]]:
    """The factory of a ``draft.vocab_size`` draft and what the record says about its vocabulary:
    the V_d most frequent target tokens of the corpora's *training* split (EOS always included), the
    share of training tokens they cover and the coverage of the evaluation split (``coverage``)."""
    from scylla.config import ConfigError
    from scylla.data.corpora import load_corpus
    from scylla.training.trainer import token_stream

    if size > target_size:
        raise ConfigError(f"draft.vocab_size: {size} is larger than the target's vocabulary ({target_size} "
                          "tokens); use at most that, or null for the full vocabulary")
    opts = corpus_options or {}
    loaded = [load_corpus(n, **dict(opts.get(n, {}))) for n in corpora]
    train = [token_stream(c, tokenizer, "train", cache_dir) for c in loaded]
    vocab, train_cov = vocab_from_streams(train, target_size, size, always=(int(tokenizer.eos_token_id),))
    evals = [np.asarray(token_stream(c, tokenizer, "eval", cache_dir), dtype=np.int64) for c in loaded]
    coverage = vocab.coverage(np.concatenate(evals)) if evals else float("nan")
    info = {"vocab_size": vocab.size, "target_vocab_size": target_size, "coverage": coverage,
            "coverage_by_corpus": {c.name: vocab.coverage(e) for c, e in zip(loaded, evals)},
            "train_coverage": train_cov, "vocab_fingerprint": vocab.fingerprint(),
            "vocab_source": "most frequent target tokens of the training split (EOS always in)",
            "val_loss_note": "over in-vocabulary tokens only (out-of-vocabulary labels are ignored)"}
    return ReducedVocabFactory(vocab, seed), info
