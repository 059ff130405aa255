"""Checks that must pass before any training starts (training a real target takes hours).

`check_positions` runs inside config validation (it needs only the config): the longest sequence a
job decodes, ``eval.prompt_tokens + decode.max_new_tokens + the deepest draft shape``, must fit the
preset models' position table. `check_job` runs in `scylla.harness.pipeline.run_job` once the tokenizer
exists and before the target or draft trains: the same length check against a pretrained target's
own ``max_position_embeddings``, and a tokenizer whose vocabulary does not match that target's.
Each failure is one `scylla.config.ConfigError` naming the keys and the fix.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["decode_length", "max_draft_depth", "check_positions", "check_job"]


def max_draft_depth(cfg: Any) -> int:
    """The most draft tokens one verify step adds: the deepest chain/tree, or k - 1 MTP heads."""
    from scylla.decode.tree import TreeSpec

    depth = max(TreeSpec.parse(s).depth for s in cfg.decode.shapes)
    if cfg.draft.family == "mtp" and cfg.draft.k:
        depth = max(depth, int(cfg.draft.k) - 1)
    return depth


def decode_length(cfg: Any) -> int:
    """Positions a decoded row can reach: prompt + new tokens + one full draft on top."""
    return int(cfg.eval.prompt_tokens) + int(cfg.decode.max_new_tokens) + max_draft_depth(cfg)


def _length_error(cfg: Any, limit: int, what: str) -> Exception:
    from scylla.config import ConfigError

    need = decode_length(cfg)
    return ConfigError(
        f"eval.prompt_tokens + decode.max_new_tokens + draft depth = {cfg.eval.prompt_tokens} + "
        f"{cfg.decode.max_new_tokens} + {max_draft_depth(cfg)} = {need} positions exceed {what}'s "
        f"{limit} positions; lower eval.prompt_tokens or decode.max_new_tokens (or the draft depth: "
        "decode.gamma/gammas/trees)")


def check_positions(cfg: Any) -> None:
    """Preset targets and trained drafts have `ModelSpec.max_seq_len` positions; fail before training."""
    from scylla.models.llama import ModelSpec

    limit = ModelSpec.__dataclass_fields__["max_seq_len"].default
    need = decode_length(cfg)
    if need > limit and (cfg.target.source == "preset" or cfg.draft.family in ("llama", "mtp")):
        what = "the preset target" if cfg.target.source == "preset" else f"the {cfg.draft.family} draft"
        raise _length_error(cfg, limit, what)


def _pretrained_config(path: str) -> Optional[Any]:
    """A pretrained target's HF config (no weights loaded); None when it cannot be read here."""
    import os

    try:
        from transformers import AutoConfig

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        return AutoConfig.from_pretrained(str(path), local_files_only=offline)
    except (OSError, ValueError):
        return None  # the target loader reports a missing model with its own message


def check_job(cfg: Any, tokenizer: Any) -> None:
    """Length and vocabulary checks that need the tokenizer or a pretrained target's config."""
    from scylla.config import ConfigError

    if cfg.data.source == "responses":  # chat requests need the template before the target generates
        from scylla.data.corpora import CorpusError
        from scylla.data.tasks import chat_template_of

        try:
            chat_template_of(tokenizer, "data.source=responses")
        except CorpusError as err:
            raise ConfigError(f"data.source: {err}") from None
    if cfg.target.source != "pretrained":
        return  # a preset target is built from this tokenizer's vocabulary
    hf = _pretrained_config(str(cfg.target.path))
    if hf is None:
        return
    limit = getattr(hf, "max_position_embeddings", None)
    if limit and decode_length(cfg) > int(limit):
        raise _length_error(cfg, int(limit), f"target {cfg.target.path}")
    vocab = getattr(hf, "vocab_size", None)
    tok_vocab = int(tokenizer.vocab_size)
    kind = cfg.tokenizer.kind
    if vocab and (tok_vocab > int(vocab) or (not kind.startswith("pretrained:") and tok_vocab != int(vocab))):
        raise ConfigError(
            f"tokenizer.kind: the {kind!r} tokenizer has {tok_vocab} tokens but target {cfg.target.path} has a "
            f"vocabulary of {vocab}: its ids would not mean the target's tokens. Use the target's own tokenizer: "
            f"tokenizer.kind=pretrained:{cfg.target.path}")
