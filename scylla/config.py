"""Structured-config schemas for the Hydra tree in ``configs/``.

Every YAML file of the tree merges into one of these dataclasses, so OmegaConf rejects a wrong type
or an unknown key while Hydra composes; `validate` then builds the typed objects, which runs every
``__post_init__`` range check. `compose` does both, for notebooks and tests; ``scylla-run`` validates
before any work starts. Each check raises `ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = [
    "ConfigError",
    "DataConfig",
    "ResponsesConfig",
    "TokenizerConfig",
    "TargetConfig",
    "DraftConfig",
    "TrainSchema",
    "DecodeConfig",
    "EvalConfig",
    "LoggerConfig",
    "PathsConfig",
    "RuntimeConfig",
    "AxesConfig",
    "StudyConfig",
    "StudyPart",
    "ScyllaConfig",
    "DRAFT_FAMILIES",
    "config_dir",
    "compose",
    "validate",
    "to_plain_dict",
    "scrub_secrets",
    "secret_overrides",
    "scrub_text_file",
    "is_secret_key",
    "identity",
    "config_hash",
]

DRAFT_FAMILIES = ("llama", "mtp", "ngram", "eagle3")
EAGLE3_LOSSES = ("soft_ce", "kl")  # scylla.training.eagle3.LOSSES (kept torch-free here)
HIDDEN_SOURCES = ("auto", "online", "offline")  # scylla.training.eagle3.HIDDEN_SOURCES
# Keys only family=eagle3 reads: left out of other jobs' identities, so their record keys do not change.
EAGLE3_KEYS = ("layer_ids", "ttt_steps", "ttt_decay", "loss", "hidden_source", "feature_runs")
DECODE_METHODS = ("oracle", "engine")
TOKENIZER_KINDS = ("bpe", "byte", "target")  # plus "pretrained:<name_or_path>"
TARGET_SOURCES = ("preset", "pretrained", "gguf")
WANDB_MODES = ("offline", "online", "disabled")
LOGGER_BACKENDS = ("none", "wandb")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and how to fix it."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _positive(value: Any, key: str) -> None:
    _check(value is not None and value >= 1, key, f"must be >= 1, got {value!r}")


def _check_shape(prefix: str, d_model: int, n_layers: int, n_heads: int, ffn_dim: Optional[int]) -> None:
    for name, value in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads)):
        _positive(value, f"{prefix}.{name}")
    _check(d_model % n_heads == 0, f"{prefix}.n_heads",
           f"d_model={d_model} is not divisible by n_heads={n_heads}; pick n_heads that divides d_model")
    _check(ffn_dim is None or ffn_dim >= 1, f"{prefix}.ffn_dim", f"must be >= 1 or null (default), got {ffn_dim!r}")


# ---------------------------------------------------------------------------------------------------
# Groups


@dataclass
class ResponsesConfig:
    """The target's own answers to training-split chat requests (`scylla.data.responses`), used as draft
    training data when ``data.source=responses``: generated once per target and settings, cached."""

    tasks: list[str] = field(default_factory=lambda: ["chat-summarise", "chat-qa", "chat-code"])
    n_prompts: int = 768
    prompt_tokens: int = 96
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        from scylla.data.tasks import TASKS

        chat = sorted(t for t, spec in TASKS.items() if spec.chat is not None)
        _check(len(self.tasks) > 0, "data.responses.tasks", f"list at least one chat task, e.g. {chat}")
        bad = [t for t in self.tasks if t not in chat]
        _check(not bad, "data.responses.tasks", f"{bad} are not chat tasks; use some of {chat}")
        for name in ("n_prompts", "prompt_tokens", "max_new_tokens", "batch_size"):
            _positive(getattr(self, name), f"data.responses.{name}")
        _check(self.n_prompts >= len(self.tasks), "data.responses.n_prompts",
               f"must be at least the number of tasks ({len(self.tasks)}), got {self.n_prompts}")
        _check(self.temperature >= 0 and self.temperature != float("inf"), "data.responses.temperature",
               f"must be a finite number >= 0 (0 = greedy answers), got {self.temperature!r}")

    def to_settings(self) -> Any:
        from scylla.data.responses import ResponseSettings

        return ResponseSettings(tasks=tuple(self.tasks), n_prompts=self.n_prompts, prompt_tokens=self.prompt_tokens,
                                max_new_tokens=self.max_new_tokens, temperature=float(self.temperature),
                                seed=self.seed, batch_size=self.batch_size)


DATA_SOURCES = ("corpus", "responses")


@dataclass
class DataConfig:
    """Training corpora (registry names of `scylla.data.corpora.load_corpus`) and per-corpus loader options.

    ``source`` is the data-source axis of the drafts: ``corpus`` trains them on ``corpora``;
    ``responses`` on the target's own answers to training-split chat requests (``responses``). The
    tokenizer and a self-trained target always use ``corpora``."""

    corpora: list[str] = field(default_factory=lambda: ["pycode", "shakespeare", "kjv"])
    corpus_options: dict[str, Any] = field(default_factory=dict)
    source: str = "corpus"
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)

    def __post_init__(self) -> None:
        _check(len(self.corpora) > 0, "data.corpora", "list at least one corpus (e.g. [pycode, shakespeare, kjv])")
        _check(len(set(self.corpora)) == len(self.corpora), "data.corpora", f"has duplicates: {list(self.corpora)}")
        unknown = set(self.corpus_options) - set(self.corpora)
        _check(not unknown, "data.corpus_options", f"options for corpora not in data.corpora: {sorted(unknown)}")
        _check(self.source in DATA_SOURCES, "data.source", f"unknown source {self.source!r}; use one of {list(DATA_SOURCES)}")


@dataclass
class TokenizerConfig:
    """The tokenizer shared by target and drafts: ``bpe`` (trained and cached), ``byte``,
    ``target`` (the pretrained or GGUF target's own tokenizer, wherever it comes from) or
    ``pretrained:<name_or_path>`` (a named tokenizer)."""

    kind: str = "bpe"
    vocab_size: int = 4096
    min_frequency: int = 2

    def __post_init__(self) -> None:
        _check(self.kind in TOKENIZER_KINDS or (self.kind.startswith("pretrained:") and len(self.kind) > 11),
               "tokenizer.kind", f"unknown kind {self.kind!r}; use one of {list(TOKENIZER_KINDS)} or "
               "'pretrained:<name_or_path>'")
        _check(self.vocab_size >= 260, "tokenizer.vocab_size",
               f"must be >= 260 (256 bytes + specials), got {self.vocab_size}")
        _positive(self.min_frequency, "tokenizer.min_frequency")


@dataclass
class TargetConfig:
    """The model whose outputs speculative decoding reproduces.

    ``source: preset`` trains a Llama of the given shape for ``tokens`` tokens (cached);
    ``source: pretrained`` loads any causal LM from ``path`` (a local folder or hub id);
    ``source: gguf`` converts ``gguf_file`` (a path, or a file inside the installed ``package``)
    once into the cache (`scylla.models.gguf`) and loads that."""

    name: str = "demo"  # the defaults are configs/target/demo.yaml (a test keeps them equal)
    source: str = "preset"
    path: Optional[str] = None
    gguf_file: Optional[str] = None
    package: Optional[str] = None
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    ffn_dim: Optional[int] = 704
    tokens: int = 3_200_000

    def __post_init__(self) -> None:
        _check(bool(self.name), "target.name", "must be a non-empty string")
        _check(self.source in TARGET_SOURCES, "target.source",
               f"unknown source {self.source!r}; use one of {list(TARGET_SOURCES)}")
        if self.source == "pretrained":
            _check(bool(self.path), "target.path", "source=pretrained needs a local folder or hub id in target.path")
        elif self.source == "gguf":
            _check(bool(self.gguf_file or self.package), "target.gguf_file",
                   "source=gguf needs a .gguf path in target.gguf_file (or an installed target.package)")
        else:
            _check_shape("target", self.d_model, self.n_layers, self.n_heads, self.ffn_dim)
            _positive(self.tokens, "target.tokens")

    def to_spec(self, vocab_size: int) -> Any:
        """The `scylla.models.llama.ModelSpec` of a preset target."""
        from scylla.models.llama import ModelSpec

        return ModelSpec(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                         ffn_dim=self.ffn_dim, vocab_size=vocab_size)


@dataclass
class DraftConfig:
    """One draft model. Depth (``n_layers``) and width (``d_model``) are separate knobs.

    ``tokens`` is the draft's pretraining budget. ``token_budgets`` lists every budget of the sweep
    this job belongs to: jobs that differ only in ``tokens`` then share one branched training run
    (the first job trains all budgets under a lock, the others reuse the checkpoints). ``family:
    mtp`` selects multi-token-prediction heads (``k`` heads) instead of a separate draft model.

    ``family: eagle3`` is an EAGLE-3 head (docs/eagle3.md): ``n_layers`` draft layers over three of the
    target's hidden states (``layer_ids``; null: EAGLE's [2, L//2, L-3]); its width is the target's
    hidden size (``d_model`` null, or equal to it), ``n_heads`` / ``ffn_dim`` null take the target's.
    ``ttt_steps`` / ``ttt_decay``: the training-time test (SpecForge 7 / 0.8, ModelOpt 3 / 0.9);
    ``loss``: soft_ce or kl against the target's distribution over the draft vocabulary;
    ``hidden_source``: the target's states online, from an offline cache, or auto (measured);
    ``feature_runs``: head sizes expected to share the offline features (null: the EAGLE-3 presets of
    ``axes.drafts``), which the auto decision weighs."""

    name: str = "draft"
    family: str = "llama"
    d_model: Optional[int] = 64
    n_layers: int = 2
    n_heads: Optional[int] = 4
    ffn_dim: Optional[int] = None
    tokens: int = 2_000_000
    token_budgets: Optional[list[int]] = None
    k: Optional[int] = None
    # family=mtp: take the n-1 extra head layers out of the trunk (Gloeckle et al.'s parameter-matched
    # comparison) instead of adding them on top of an n_layers-deep next-token model.
    parameter_matched: bool = False
    # family=ngram (prompt lookup, no model): the longest and shortest suffix n-gram looked up.
    ngram_max: int = 3
    ngram_min: int = 1
    # Reduced draft vocabulary (EAGLE-3's d2t/t2d): the draft predicts only the vocab_size most frequent
    # target tokens of its training split; null = the full target vocabulary.
    vocab_size: Optional[int] = None
    # family=eagle3 (see the class doc).
    layer_ids: Optional[list[int]] = None
    ttt_steps: int = 7
    ttt_decay: float = 0.8
    loss: str = "soft_ce"
    hidden_source: str = "auto"
    feature_runs: Optional[int] = None

    def __post_init__(self) -> None:
        _check(bool(self.name), "draft.name", "must be a non-empty string")
        _check(self.vocab_size is None or self.vocab_size >= 2, "draft.vocab_size",
               f"must be >= 2 or null (the full target vocabulary), got {self.vocab_size!r}")
        _check(self.vocab_size is None or self.family in ("llama", "eagle3"), "draft.vocab_size",
               f"a reduced vocabulary is for family=llama or eagle3 drafts; set it to null for family={self.family}")
        _check(self.family in DRAFT_FAMILIES, "draft.family",
               f"unknown family {self.family!r}; use one of {list(DRAFT_FAMILIES)}")
        if self.family == "ngram":
            _check(1 <= self.ngram_min <= self.ngram_max, "draft.ngram_min",
                   f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min} and {self.ngram_max}")
        if self.family == "eagle3":
            self._check_eagle3()
        else:
            _check(self.d_model is not None, "draft.d_model", f"family={self.family} needs a width (got null)")
            _check(self.n_heads is not None, "draft.n_heads", f"family={self.family} needs n_heads (got null)")
            _check(self.layer_ids is None, "draft.layer_ids",
                   f"is only used by family=eagle3 (the target layers a head reads); set it to null")
            _check_shape("draft", self.d_model, self.n_layers, self.n_heads, self.ffn_dim)
        _check(self.tokens is not None and self.tokens >= 1, "draft.tokens",
               f"the token budget must be a positive number of tokens, got {self.tokens!r}")
        if self.token_budgets is not None:
            bad = [b for b in self.token_budgets if b < 1]
            _check(not bad, "draft.token_budgets", f"every budget must be >= 1 token, got {bad}")
            _check(self.tokens in self.token_budgets, "draft.token_budgets",
                   f"draft.tokens={self.tokens} is not one of the sweep's budgets {list(self.token_budgets)}; "
                   "add it or set draft.token_budgets=null")
        if self.family == "mtp":
            _check(self.k is not None and self.k >= 2, "draft.k",
                   f"family=mtp needs k >= 2 prediction heads, got {self.k!r}")
            if self.parameter_matched:
                _check(self.n_layers - self.k >= 0, "draft.parameter_matched",
                       f"removing k-1={self.k - 1} layers leaves no trunk in n_layers={self.n_layers}; "
                       f"use n_layers >= k or parameter_matched=false")
        else:
            _check(self.k is None, "draft.k", f"is only used by family=mtp; set it to null (got {self.k})")
            _check(not self.parameter_matched, "draft.parameter_matched",
                   "is only used by family=mtp; set it to false")

    def _check_eagle3(self) -> None:
        _positive(self.n_layers, "draft.n_layers")
        for name in ("d_model", "n_heads", "ffn_dim"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"draft.{name}",
                   f"must be >= 1 or null (the target's, for family=eagle3), got {value!r}")
        if self.layer_ids is not None:
            ids = list(self.layer_ids)
            _check(len(ids) == 3, "draft.layer_ids",
                   f"an EAGLE-3 head fuses three target layers (low, middle, high); give three ids, got {ids}")
            _check(all(i >= 0 for i in ids), "draft.layer_ids",
                   f"layer ids count the target's decoder layers from 0, got {ids}")
        _positive(self.ttt_steps, "draft.ttt_steps")
        _check(0 < self.ttt_decay <= 1, "draft.ttt_decay", f"must lie in (0, 1], got {self.ttt_decay}")
        _check(self.loss in EAGLE3_LOSSES, "draft.loss", f"use one of {list(EAGLE3_LOSSES)}, got {self.loss!r}")
        _check(self.hidden_source in HIDDEN_SOURCES, "draft.hidden_source",
               f"use one of {list(HIDDEN_SOURCES)}, got {self.hidden_source!r}")
        _check(self.feature_runs is None or self.feature_runs >= 1, "draft.feature_runs",
               f"must be >= 1 or null, got {self.feature_runs!r}")

    def to_spec(self, vocab_size: int) -> Any:
        """The `scylla.models.llama.ModelSpec` of this draft (its trunk, for family=mtp)."""
        from scylla.models.llama import ModelSpec

        _check(self.family != "eagle3", "draft.family",
               "an EAGLE-3 head takes its shape from its target: use scylla.training.eagle3.eagle3_spec(target, ...)")

        return ModelSpec(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                         ffn_dim=self.ffn_dim, vocab_size=vocab_size)

    @property
    def budgets(self) -> list[int]:
        """The budgets one training run produces for this job (sorted, ``tokens`` included)."""
        return sorted(set(self.token_budgets or []) | {self.tokens})


def _train_schema() -> type:
    """The ``train`` node's schema, generated from `scylla.training.settings.TrainConfig` (the one source
    of its fields, defaults and range checks) minus ``threads``, a runtime knob (``runtime.threads``)."""
    import dataclasses
    import typing

    from scylla.training.settings import TrainConfig, TrainError

    hints = typing.get_type_hints(TrainConfig)
    fields = [(f.name, hints[f.name], field(default=f.default)) for f in dataclasses.fields(TrainConfig)
              if f.name != "threads"]

    def __post_init__(self: Any) -> None:
        try:
            problems = TrainConfig(**dataclasses.asdict(self)).problems()
        except TrainError as err:
            raise ConfigError(f"train: {err}") from None
        for name, message in problems:
            raise ConfigError(f"train.{name}: {message}")

    def to_train_config(self: Any, threads: Optional[int] = None) -> Any:
        """The `TrainConfig` these settings describe."""
        return TrainConfig(**dataclasses.asdict(self), threads=threads)

    schema = dataclasses.make_dataclass(
        "TrainSchema", fields,
        namespace={"__post_init__": __post_init__, "to_train_config": to_train_config,
                   "__doc__": "Pretraining settings shared by target and drafts: `TrainConfig` without threads."})
    schema.__module__ = __name__
    return schema


TrainSchema = _train_schema()


@dataclass
class DecodeConfig:
    """Speculative decoding settings. Every batch size, gamma and static tree is measured inside one
    job (one model load, no retraining).

    ``method: oracle`` (the default) prices acceptance for every chain in ``gammas`` (null: just
    ``gamma``) and every static tree in ``trees`` with the teacher-forced oracle, probes costs at every
    batch size and records the predicted speedup; then it decodes a few cells for real with the engine
    (``check_cells`` per batch size in ``check_batch_sizes``, null = every batch size, on the first
    ``check_prompts`` prompts of the first task). ``method: engine`` decodes every cell for real."""

    gamma: int = 4
    temperature: float = 0.0
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16])
    max_new_tokens: int = 64
    gammas: Optional[list[int]] = None
    trees: list[str] = field(default_factory=list)
    method: str = "oracle"
    samples_per_prompt: int = 1
    check_batch_sizes: Optional[list[int]] = None
    check_cells: int = 2
    check_prompts: int = 8
    check_repeats: int = 3
    probe_repeats: int = 5

    def __post_init__(self) -> None:
        import math

        _positive(self.gamma, "decode.gamma")
        _check(isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0,
               "decode.temperature", f"must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        _check(len(self.batch_sizes) > 0, "decode.batch_sizes", "list at least one batch size, e.g. [1, 4, 16]")
        bad = [b for b in self.batch_sizes if b < 1]
        _check(not bad, "decode.batch_sizes", f"batch sizes must be >= 1, got {bad}")
        _check(len(set(self.batch_sizes)) == len(self.batch_sizes), "decode.batch_sizes",
               f"has duplicates: {list(self.batch_sizes)}")
        _positive(self.max_new_tokens, "decode.max_new_tokens")
        _check(self.method in DECODE_METHODS, "decode.method",
               f"unknown method {self.method!r}; use oracle (price acceptance, check a few cells) or engine (decode all)")
        if self.gammas is not None:
            _check(len(self.gammas) > 0 and all(g >= 1 for g in self.gammas), "decode.gammas",
                   f"list draft lengths >= 1 (or null for [decode.gamma]), got {self.gammas}")
            _check(len(set(self.gammas)) == len(self.gammas), "decode.gammas", f"has duplicates: {self.gammas}")
        from scylla.decode.tree import TreeError, TreeSpec

        for tree in self.trees:
            try:
                spec = TreeSpec.parse(tree)
            except TreeError as err:
                raise ConfigError(f"decode.trees: {err}") from None
            _check(spec.depth >= 1, "decode.trees", f"{tree!r} has no depth")
        _positive(self.samples_per_prompt, "decode.samples_per_prompt")
        _check(self.temperature > 0 or self.samples_per_prompt == 1, "decode.samples_per_prompt",
               "greedy continuations are deterministic: use 1 at temperature 0")
        if self.check_batch_sizes is not None:
            extra = [b for b in self.check_batch_sizes if b not in self.batch_sizes]
            _check(not extra, "decode.check_batch_sizes", f"{extra} are not in decode.batch_sizes {self.batch_sizes}")
        _check(self.check_cells >= 0, "decode.check_cells", f"must be >= 0 (0: no engine check), got {self.check_cells}")
        _positive(self.check_prompts, "decode.check_prompts")
        _positive(self.check_repeats, "decode.check_repeats")
        _positive(self.probe_repeats, "decode.probe_repeats")

    @property
    def shapes(self) -> list[str]:
        """Every draft shape a job measures: the chains of ``gammas`` (or ``gamma``), then ``trees``."""
        from scylla.decode.tree import TreeSpec

        chains = [TreeSpec.chain(int(g)).describe() for g in (self.gammas or [self.gamma])]
        return chains + [TreeSpec.parse(t).describe() for t in self.trees if TreeSpec.parse(t).describe() not in chains]


@dataclass
class EvalConfig:
    """Held-out prompts per task (tasks of `scylla.data.tasks.TASKS`) and wall-clock repeats."""

    tasks: list[str] = field(default_factory=lambda: ["code", "shakespeare", "bible"])
    n_prompts: int = 32
    prompt_tokens: int = 64
    seed: int = 1234
    repeats: int = 1

    def __post_init__(self) -> None:
        _check(len(self.tasks) > 0, "eval.tasks", "list at least one task, e.g. [code, shakespeare, bible]")
        _check(len(set(self.tasks)) == len(self.tasks), "eval.tasks", f"has duplicates: {list(self.tasks)}")
        known = _known_tasks()
        if known is not None:
            unknown = [t for t in self.tasks if t not in known]
            _check(not unknown, "eval.tasks", f"unknown task(s) {unknown}; known tasks: {sorted(known)}")
        _positive(self.n_prompts, "eval.n_prompts")
        _positive(self.prompt_tokens, "eval.prompt_tokens")
        _positive(self.repeats, "eval.repeats")


@dataclass
class LoggerConfig:
    """Experiment tracking. The local results store is the source of truth; wandb is the view.

    ``mode: null`` follows ``$WANDB_MODE`` and falls back to offline (no network; ``wandb sync``
    later). API keys are never configured here: wandb reads them from its own login or env."""

    backend: str = "none"
    mode: Optional[str] = None
    project: str = "scylla"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    dir: Optional[str] = None

    def __post_init__(self) -> None:
        _check(self.backend in LOGGER_BACKENDS, "logger.backend",
               f"unknown backend {self.backend!r}; use one of {list(LOGGER_BACKENDS)} (logger=wandb or logger=none)")
        _check(self.mode is None or self.mode in WANDB_MODES, "logger.mode",
               f"unknown mode {self.mode!r}; use one of {list(WANDB_MODES)} or null (= $WANDB_MODE, else offline)")
        _check(bool(self.project), "logger.project", "must be a non-empty string")


@dataclass
class PathsConfig:
    """Where records and caches go. Relative paths resolve against the directory scylla-run was
    started from (Hydra's original cwd), so every launcher writes to the same place."""

    results_dir: str = "outputs/results"
    cache_dir: str = "${oc.env:SCYLLA_CACHE,'~/.cache/scylla'}"

    def __post_init__(self) -> None:
        _check(bool(self.results_dir), "paths.results_dir", "must be a non-empty path")
        _check(bool(self.cache_dir), "paths.cache_dir", "must be a non-empty path")


@dataclass
class RuntimeConfig:
    """Per-job execution knobs that do not change what is measured (not part of the record key)."""

    threads: Optional[int] = None  # null: cores // concurrent jobs of the launcher
    device: str = "auto"  # auto = cuda when present, else cpu
    skip_existing: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.threads is None or self.threads >= 1, "runtime.threads",
               f"must be >= 1 or null (auto), got {self.threads}")
        _check(self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device) is not None,
               "runtime.device", f"use auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass
class AxesConfig:
    """The values the sweep presets (configs/sweep) iterate over; not part of a job's identity.

    ``drafts`` are draft preset names, ``tokens`` draft pretraining budgets, ``gammas`` draft
    lengths of the batch sweep, ``batch_sizes`` the batch sizes each batch/grid job measures."""

    drafts: list[str] = field(default_factory=lambda: ["draft-w32", "draft-w64", "draft-w128"])
    tokens: list[int] = field(default_factory=lambda: [1_000_000, 2_000_000])
    gammas: list[int] = field(default_factory=lambda: [2, 4])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16])

    def __post_init__(self) -> None:
        for name in ("drafts", "tokens", "gammas", "batch_sizes"):
            values = list(getattr(self, name))
            _check(len(values) > 0, f"axes.{name}", "list at least one value")
            _check(len(set(values)) == len(values), f"axes.{name}", f"has duplicates: {values}")
        for name in ("tokens", "gammas", "batch_sizes"):
            bad = [v for v in getattr(self, name) if v < 1]
            _check(not bad, f"axes.{name}", f"values must be >= 1, got {bad}")


@dataclass
class StudyPart:
    """One part of a study (`scylla.harness.study`): every draft preset in ``drafts`` at every budget in
    ``tokens`` (one branched training run per draft), with ``overrides`` applied to each of its jobs."""

    name: str = "grid"
    drafts: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        key = f"study.parts[{self.name}]"
        _check(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", self.name)), key, "name it with letters, digits, '-', '_', '.'")
        _check(len(self.drafts) > 0 and len(set(self.drafts)) == len(self.drafts), f"{key}.drafts",
               f"list distinct draft presets, got {list(self.drafts)}")
        _check(len(self.tokens) > 0 and all(t >= 1 for t in self.tokens) and len(set(self.tokens)) == len(self.tokens),
               f"{key}.tokens", f"list distinct positive token budgets, got {list(self.tokens)}")
        bad = [o for o in self.overrides if "=" not in o or o.split("=", 1)[0].strip() in ("draft", "draft.tokens",
                                                                                           "draft.token_budgets")]
        _check(not bad, f"{key}.overrides", f"{bad}: give key=value overrides other than the part's draft and tokens")


@dataclass
class StudyConfig:
    """The parts of a study; empty: one part, ``axes.drafts`` x ``axes.tokens``. Not part of a job's
    identity: a job measured by one study is reused by any other that runs it."""

    parts: list[StudyPart] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [p.name for p in self.parts]
        _check(len(set(names)) == len(names), "study.parts", f"part names must be distinct, got {names}")


@dataclass
class ScyllaConfig:
    """One job: which target and draft, how they are trained, and how decoding is measured."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    draft: DraftConfig = field(default_factory=DraftConfig)
    train: TrainSchema = field(default_factory=TrainSchema)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    axes: AxesConfig = field(default_factory=AxesConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    experiment: str = "default"
    seed: int = 0

    def __post_init__(self) -> None:
        step = self.train.batch_size * self.train.seq_len
        small = [b for b in self.draft.budgets if b < step] if self.draft.family != "ngram" else []
        _check(not small, "draft.tokens", f"budget(s) {small} are smaller than one training step (train.batch_size "
               f"{self.train.batch_size} x train.seq_len {self.train.seq_len} = {step} tokens); raise the budget "
               "or lower train.batch_size/seq_len")
        if self.target.source == "preset":
            _check(self.target.tokens >= step, "target.tokens",
                   f"{self.target.tokens} is smaller than one training step ({step} tokens)")
        if self.tokenizer.kind.startswith("pretrained:") or self.tokenizer.kind == "target":
            _check(self.target.source in ("pretrained", "gguf"), "tokenizer.kind",
                   f"{self.tokenizer.kind} only fits a pretrained or GGUF target (target.source=pretrained|gguf); "
                   "a preset target trains with tokenizer=bpe or byte")
        if self.data.source == "responses":
            _check(self.target.source in ("pretrained", "gguf"), "data.source",
                   "responses are the target's answers to chat requests: they need a pretrained or GGUF target with "
                   "a chat template (target=smollm2); use data.source=corpus for a preset target")
            _check(self.draft.family not in ("mtp", "ngram"), "data.source",
                   f"draft.family={self.draft.family} does not train on the target's responses (mtp is its own "
                   "target; ngram trains nothing); use data.source=corpus")
        # A batch larger than the prompts would decode fewer rows than its label says and feed the batch law.
        big = [b for b in self.decode.batch_sizes if b > self.eval.n_prompts]
        _check(not big, "decode.batch_sizes",
               f"batch size(s) {big} exceed eval.n_prompts={self.eval.n_prompts} (prompts per task), so those "
               f"batches could not be filled; raise eval.n_prompts to >= {max(big) if big else 0} or drop them")
        from scylla.preflight import check_positions

        check_positions(self)


def _known_tasks() -> Optional[set[str]]:
    try:
        from scylla.data.tasks import TASKS
    except ImportError:  # data module not importable: the pipeline checks task names itself
        return None
    return set(TASKS)


def _register() -> None:
    cs = ConfigStore.instance()
    # One schema for the whole tree: every group file merges into its typed node of ScyllaConfig.
    cs.store(name="scylla_schema", node=ScyllaConfig)


_register()


def _csv(values: Any) -> str:
    """``${csv:${axes.tokens}}`` -> "1,2,3": a list as a Hydra sweep value."""
    if len(values) == 0:  # else Hydra's "'' could not be converted to Integer" names no axis
        raise ConfigError("a sweep axis (axes.drafts/tokens/gammas/batch_sizes) is an empty list; "
                          "list at least one value, e.g. axes.gammas=[2,4]")
    return ",".join(str(v) for v in values)


if not OmegaConf.has_resolver("csv"):
    OmegaConf.register_new_resolver("csv", _csv)


# ---------------------------------------------------------------------------------------------------
# Composition and validation


def config_dir() -> Path:
    """The ``configs/`` tree: ``$SCYLLA_CONFIG_DIR``, else the one next to the package (a checkout or
    an editable install)."""
    env = os.environ.get("SCYLLA_CONFIG_DIR")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "configs"
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"config tree not found at {path} (no config.yaml); run from a checkout or `pip install -e .`, "
            "or point SCYLLA_CONFIG_DIR at a copy of the repository's configs/ folder"
        )
    return path


def _without_hydra(cfg: DictConfig) -> DictConfig:
    """The job config without Hydra's own node (present with return_hydra_config), type kept."""
    if "hydra" not in cfg:
        return cfg
    node = cfg.copy()
    with open_dict(node):
        del node["hydra"]
    return node


def _check_known_keys(node: Any, schema: type, prefix: str) -> None:
    """Reject keys a schema does not declare (``+draft.foo=1`` slips past OmegaConf's struct mode)."""
    import dataclasses

    if not isinstance(node, DictConfig):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key; {prefix.rstrip('.') or 'the config'} accepts "
                              f"{sorted(fields)}")
        ftype = fields[key].type
        sub = globals().get(ftype) if isinstance(ftype, str) else ftype
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            _check_known_keys(node._get_node(key), sub, f"{prefix}{key}.")


def validate(cfg: DictConfig | ScyllaConfig) -> ScyllaConfig:
    """Build the typed config (running every range check); raise `ConfigError` on bad values."""
    if isinstance(cfg, ScyllaConfig):
        return cfg
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = _without_hydra(cfg)
        _check_known_keys(node, ScyllaConfig, "")
        obj = OmegaConf.to_object(node)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        raise ConfigError(str(err).splitlines()[0]) from None
    if not isinstance(obj, ScyllaConfig):
        raise ConfigError("the composed config does not use scylla_schema; keep `- scylla_schema` first in "
                          "config.yaml's defaults")
    return obj


def compose(overrides: list[str] | None = None, *, config_name: str = "config",
            return_hydra_config: bool = False) -> DictConfig:
    """Compose and validate a job config with the Compose API (notebooks, tests, the demo).

    Raises `ConfigError` with Hydra's message for an unknown preset, key or bad type."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf.errors import OmegaConfBaseException

    backup = get_gh_backup()  # also usable inside a running Hydra app, whose state is put back after
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []),
                                return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(hydra_error_message(err)) from None
    finally:
        restore_gh_from_backup(backup)
    validate(cfg)
    return cfg


def hydra_error_message(err: Exception) -> str:
    """Hydra's own message without the traceback (it already names the bad preset or key)."""
    msg = str(err).strip()
    cause = err.__cause__
    if cause is not None and str(cause) and str(cause) not in msg:
        msg = f"{msg}\n{str(cause).strip()}"
    return msg


# ---------------------------------------------------------------------------------------------------
# Plain dicts, secrets and the record key

# A key *named* like a credential (api_key, hf_token, secret, password, private_key, ...), not one
# merely containing the word (tokens, tokenizer_fingerprint, max_new_tokens are settings).
_SECRET_KEY = re.compile(
    r"(^|[_-])(api[_-]?key|(private|secret|access|ssh|signing)[_-]?key|token|secret|password|passwd|passphrase"
    r"|credentials?|auth|authorization|bearer|cookie)$", re.IGNORECASE)
# Environment variables holding credentials: WANDB_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIALS?)$|SECRET", re.IGNORECASE)
# user:password@ in a URL (a database or proxy address pasted into a setting).
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")
REDACTED = "<redacted>"


def _secret_env() -> dict[str, str]:
    """Secret-looking environment variables (name -> value), longest values first so that a secret
    containing another one is removed whole."""
    found = {k: v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 8}
    return dict(sorted(found.items(), key=lambda kv: -len(kv[1])))


def _secret_values() -> list[str]:
    return list(_secret_env().values())


def is_secret_key(key: str) -> bool:
    """True for a key named like a credential (``api_key``, ``WANDB_API_KEY``, ``hf_token``)."""
    return _SECRET_KEY.search(key) is not None


def scrub_secrets(obj: Any, _values: Optional[list[str]] = None) -> Any:
    """A copy of ``obj`` with secret-looking keys redacted and any env secret value removed.

    Secret values come from environment variables such as WANDB_API_KEY or HF_TOKEN; they must
    never reach a record, a log or a wandb config, even when interpolated into some other key."""
    values = _secret_values() if _values is None else _values
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, str) and is_secret_key(k) and v is not None \
                    and not isinstance(v, (dict, list, bool, int, float)):
                out[k] = REDACTED
            else:
                out[k] = scrub_secrets(v, values)
        return out
    if isinstance(obj, (list, tuple)):
        return [scrub_secrets(v, values) for v in obj]
    if isinstance(obj, str):
        for secret in values:
            if secret in obj:
                obj = obj.replace(secret, REDACTED)
        return _URL_PASSWORD.sub(rf"\1{REDACTED}@", obj)
    return obj


def scrub_text_file(path: str | os.PathLike) -> bool:
    """Scrub a text file in place (same inode: a log handler appending to it keeps working); True if
    it changed. Used on the dumps Hydra writes before any job code runs."""
    path = Path(path)
    try:
        with open(path, "r+", encoding="utf-8") as fh:
            text = fh.read()
            clean = scrub_secrets(text)
            if clean == text:
                return False
            fh.seek(0)
            fh.write(clean)
            fh.truncate()
        return True
    except (OSError, UnicodeDecodeError):
        return False


def secret_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides that carry a credential: a secret-named key (``+logger.api_key=..``,
    ``hydra.job.env_set.WANDB_API_KEY=..``) or the value of a secret environment variable.

    ``scylla-run`` refuses them before Hydra starts, because Hydra copies every override into
    ``.hydra/overrides.yaml``, ``multirun.yaml`` and its logs, and wandb records the command line."""
    env = _secret_env()
    bad = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        last = re.split(r"[./]", key.lstrip("+~"))[-1]
        if sep and value and is_secret_key(last):
            bad.append(f"{key}=... (a credential-named key)")
        else:
            names = [name for name, secret in env.items() if secret in arg]
            if names:
                bad.append(f"{key}{sep}... (holds the value of ${names[0]})")
    return bad


def to_plain_dict(cfg: DictConfig | ScyllaConfig) -> dict[str, Any]:
    """The resolved job config as plain JSON-ready Python, secrets stripped, Hydra's node dropped."""
    if isinstance(cfg, ScyllaConfig):
        node = OmegaConf.structured(cfg)
    else:
        node = _without_hydra(cfg)
    plain = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    return scrub_secrets(plain)


# Sections that decide what a job measures. Logger, paths and runtime (threads, progress) do not.
# Train settings that change neither weights nor the recorded losses (as in scylla.training.trainer.TrainConfig).
_TRAIN_NON_KEY = ("log_every", "eval_every", "save_every_steps", "save_every_seconds")
IDENTITY_KEYS = ("data", "tokenizer", "target", "draft", "train", "decode", "eval", "seed")


def identity(cfg: DictConfig | ScyllaConfig, device: str) -> dict[str, Any]:
    """The part of a job config that determines its measurement (plus the device type)."""
    plain = to_plain_dict(cfg)
    ident = {k: plain[k] for k in IDENTITY_KEYS}
    # Which budgets train together is scheduling, not measurement: a budget's checkpoint is the
    # same whichever other budgets share its run (WSD branches off one trunk).
    # So is where an EAGLE-3 head's features come from (a speed choice; both give the same inputs).
    ident["draft"] = {k: v for k, v in ident["draft"].items()
                      if k not in ("token_budgets", "hidden_source", "feature_runs")}
    if ident["draft"].get("family") != "eagle3":
        ident["draft"] = {k: v for k, v in ident["draft"].items() if k not in EAGLE3_KEYS}
    if ident["data"].get("source", "corpus") == "corpus":  # as before the data-source axis existed
        ident["data"] = {k: v for k, v in ident["data"].items() if k not in ("source", "responses")}
    ident["train"] = {k: v for k, v in ident["train"].items() if k not in _TRAIN_NON_KEY}
    ident["device"] = device.split(":")[0]
    return ident


def config_hash(cfg: DictConfig | ScyllaConfig, device: str) -> str:
    """Key of a job's record: sha256 of its canonical identity JSON (first 16 hex digits)."""
    blob = json.dumps(identity(cfg, device), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
