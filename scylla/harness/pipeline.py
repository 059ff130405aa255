"""One job of a sweep: config -> tokenizer -> target -> draft -> measurements -> one result record.

`run_job` is what ``scylla-run`` calls for every Hydra job (any launcher) and what `scylla.harness.demo`
and the tests call in-process. The stages follow the data flow of docs/design.md ("Data flow"):

1. skip the job when its record already exists (the key is a hash of the job's identity);
2. the tokenizer shared by target and draft (trained once and cached, or bytes, or pretrained);
3. the target: trained for ``target.tokens`` through the checkpoint cache, or loaded pretrained;
4. the draft, by family (`register_draft_family`): ``llama`` is a separate model; ``mtp`` is one
   multi-token-prediction model that drafts for itself (no separate target), trained for *all* of
   ``draft.token_budgets`` in one branched run that concurrent jobs share; ``eagle3`` is an EAGLE-3
   head over the target's hidden states; ``ngram`` is prompt lookup;
5. speculative against plain decoding on held-out prompts, per task and per batch size (and, for
   ``mtp``, per number of heads k' = 2..k: one row each, ``gamma = k' - 1``);
6. the record, written atomically to the store *before* anything is sent to wandb.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig

from scylla.config import ConfigError, ScyllaConfig, config_hash, scrub_secrets, to_plain_dict, validate
from scylla.harness.results import SCHEMA_VERSION, ResultStore
from scylla.harness.tracking import Tracker, make_tracker

log = logging.getLogger(__name__)

__all__ = ["JobOutcome", "JobContext", "PreparedModel", "DraftFamily", "run_job", "prepare_job", "register_draft_family",
           "DRAFT_BUILDERS", "mtp_measure_fn", "eagle3_presets_in_sweep",
           "resolve_device", "resolve_threads", "available_cores"]

TAU_DEFINITION = "1 + accepted/steps (bonus/correction token included; 1.00 for plain decoding)"


# ---------------------------------------------------------------------------------------------------
# Runtime: device and threads


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_device(device: str) -> str:
    """``auto`` is the GPU when one is present, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device: {device!r} asked for but no CUDA device is visible; use auto or cpu")
    return device


def resolve_threads(threads: Optional[int], launcher: Optional[dict[str, Any]] = None,
                    sweep_jobs: Optional[int] = None) -> int:
    """Torch threads for one job, so that jobs running at once do not oversubscribe the cores.

    ``threads`` wins when set. Otherwise: joblib runs ``n_jobs`` at once (-1 = one per core);
    submitit_local starts every job of the sweep at once; SLURM gives each task its
    ``cpus_per_task`` (``$SLURM_CPUS_PER_TASK``); a single run or the basic launcher gets every core."""
    if threads:
        return int(threads)
    cores = available_cores()
    target = str((launcher or {}).get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        n_jobs = (launcher or {}).get("n_jobs") or -1
        concurrent = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
        if sweep_jobs:
            concurrent = min(concurrent, sweep_jobs)
    elif target.endswith("SlurmLauncher"):
        slurm = os.environ.get("SLURM_CPUS_PER_TASK") or (launcher or {}).get("cpus_per_task")
        return max(1, int(slurm)) if slurm else cores
    elif target.endswith("LocalLauncher"):  # submitit_local: every job is its own process, all at once
        cpus = (launcher or {}).get("cpus_per_task")
        if cpus:
            return max(1, int(cpus))
        concurrent = sweep_jobs or 1
    else:
        concurrent = 1
    return max(1, cores // max(1, concurrent))


# ---------------------------------------------------------------------------------------------------
# Stages


@dataclass
class PreparedModel:
    """A model ready for decoding plus what the record says about it."""

    model: Any
    info: dict[str, Any]
    # Family-specific measurement (e.g. self-speculative MTP); None = scylla.measure.speedup.measure_speedup.
    measure: Optional[Callable[..., Any]] = None


@dataclass
class JobContext:
    """Everything the stages share; built once per job by `run_job`."""

    cfg: ScyllaConfig
    cache_dir: Path
    device: str
    threads: int
    tracker: Tracker
    progress: bool
    tokenizer: Any = None
    target: Optional[PreparedModel] = None
    timings: dict[str, float] = field(default_factory=dict)
    # Stops a row when emitted (None: continuation tasks run to max_new_tokens).
    eos_token_id: Optional[int] = None
    # What the measurement stage adds to the record besides its rows (probes, continuation keys, checks).
    record_extra: dict[str, Any] = field(default_factory=dict)
    # The target's answers used as draft training data (data.source=responses), once built.
    responses: Any = None

    def train_config(self) -> Any:
        return self.cfg.train.to_train_config(threads=self.threads)

    def target_key(self) -> str:
        """The target's fingerprint (configuration and weights), computed once per job."""
        if "target_key" not in self.record_extra:
            from scylla.measure.continuations import model_fingerprint

            self.record_extra["target_key"] = model_fingerprint(self.target.model)
        return str(self.record_extra["target_key"])

    def training_corpora(self, role: str) -> tuple[list[str], Optional[dict[str, Any]]]:
        """(corpus names, loader options) a model of ``role`` trains on: ``data.corpora``, or for drafts
        with ``data.source=responses`` the target's own answers (`scylla.data.responses`), generated on
        first use and cached for every job of the target."""
        d = self.cfg.data
        if role == "target" or d.source == "corpus":
            return list(d.corpora), dict(d.corpus_options) or None
        if self.responses is None:
            from scylla.data.responses import target_responses

            if self.target is None:
                raise ConfigError("data.source=responses needs the job's target to generate them")
            self.responses = target_responses(
                self.target.model, self.tokenizer, d.responses.to_settings(), self.cache_dir,
                target_key=self.target_key(), eos_token_id=self.eos_token_id, progress=self.progress)
        return [self.responses.corpus_name], None

    def data_info(self) -> dict[str, Any]:
        """What a draft's record says about its training data (the data-source axis)."""
        if self.cfg.data.source == "corpus":
            return {"data_source": "corpus", "corpora": list(self.cfg.data.corpora)}
        return {"data_source": "responses", "responses": self.responses.describe() if self.responses else None}

    def train(self, role: str, spec: Any, budgets: list[int], **kwargs: Any) -> dict[int, Path]:
        """Train (or reuse) one model size at ``budgets`` through the locked checkpoint cache."""
        from scylla.training.trainer import train_budgets

        corpora, options = self.training_corpora(role)
        return train_budgets(
            spec, corpora, self.tokenizer, budgets, self.train_config(), self.cache_dir,
            progress=self.progress, corpus_options=options,
            logger=lambda event: self.tracker.log_train(role, event), device=self.device, **kwargs,
        )


def _timed(ctx: JobContext, name: str):
    class _Timer:
        def __enter__(self) -> None:
            self.t0 = time.perf_counter()

        def __exit__(self, *exc: Any) -> None:
            ctx.timings[f"{name}_seconds"] = time.perf_counter() - self.t0

    return _Timer()


def build_tokenizer(ctx: JobContext) -> Any:
    from scylla.data.tokenizer import get_tokenizer

    t = ctx.cfg.tokenizer
    if t.kind == "target":  # the target's own tokenizer, shared by every draft
        from scylla.models.pretrained import target_location

        return get_tokenizer(f"pretrained:{target_location(ctx.cfg.target, ctx.cache_dir)[0]}")
    return get_tokenizer(t.kind, t.vocab_size, list(ctx.cfg.data.corpora), ctx.cache_dir,
                         min_frequency=t.min_frequency, corpus_options=dict(ctx.cfg.data.corpus_options) or None)


def _model_info(model: Any, provenance: Optional[dict[str, Any]], checkpoint: Optional[Path]) -> dict[str, Any]:
    from scylla.models.llama import count_parameters

    counts = count_parameters(model)
    prov = provenance or {}
    return {
        "params": counts["total"], "params_non_embedding": counts["non_embedding"],
        "val_loss": prov.get("val_loss"), "tokens_seen": prov.get("tokens_seen"),
        "checkpoint": str(checkpoint) if checkpoint else None, "checkpoint_created": prov.get("created"),
        "corpus_manifest_hash": prov.get("corpus_manifest_hash"),
        "train_precision": (prov.get("precision") or {}).get("precision"),
        "train_bf16_speed_ratio": (prov.get("precision") or {}).get("ratio"),
    }


def build_target(ctx: JobContext) -> PreparedModel:
    from scylla.training.checkpoints import load_checkpoint
    from scylla.models.pretrained import load_causal_lm

    t = ctx.cfg.target
    if t.source in ("pretrained", "gguf"):
        from scylla.models.pretrained import target_location

        where, extra = target_location(t, ctx.cache_dir)
        model = load_causal_lm(where, device=ctx.device)
        info = _model_info(model, None, None)
        info.update(name=t.name, source=t.source, vocab_size=int(model.config.vocab_size), **extra)
        return PreparedModel(model, info)
    spec = t.to_spec(ctx.tokenizer.vocab_size)
    path = ctx.train("target", spec, [t.tokens])[t.tokens]
    model, prov = load_checkpoint(path, device=ctx.device)
    info = _model_info(model, prov, path)
    info.update(name=t.name, source="preset", d_model=t.d_model, n_layers=t.n_layers, n_heads=t.n_heads,
                ffn_dim=spec.ffn, tokens=t.tokens)
    return PreparedModel(model, info)


DraftBuilder = Callable[[JobContext], PreparedModel]


@dataclass(frozen=True)
class DraftFamily:
    """How one ``draft.family`` is built. ``needs_target=False`` families (self-speculative MTP) set
    ``ctx.target`` themselves: the model verifies its own drafts, so no separate target is trained."""

    build: DraftBuilder
    needs_target: bool = True


DRAFT_BUILDERS: dict[str, DraftFamily] = {}


def register_draft_family(family: str, builder: DraftBuilder, *, needs_target: bool = True) -> None:
    """Add a draft family (``draft.family``): ``builder(ctx)`` trains or reuses the draft (``ctx.target``
    is ready when ``needs_target``) and returns a `PreparedModel`, whose ``measure`` may replace
    `scylla.measure.speedup.measure_speedup`."""
    DRAFT_BUILDERS[family] = DraftFamily(builder, needs_target)


def _llama_draft(ctx: JobContext) -> PreparedModel:
    """A separate Llama draft, trained for every budget of its sweep in one branched run."""
    from scylla.training.checkpoints import load_checkpoint

    d = ctx.cfg.draft
    spec = d.to_spec(ctx.tokenizer.vocab_size)
    kwargs, vocab_info = {}, {}
    if d.vocab_size is not None:  # a reduced draft vocabulary (scylla.models.reduced)
        from scylla.models.reduced import reduced_vocab_factory

        target_size = spec.vocab_size if ctx.target is None else int(ctx.target.model.get_input_embeddings().num_embeddings)
        corpora, options = ctx.training_corpora("draft")
        kwargs["model_factory"], vocab_info = reduced_vocab_factory(
            ctx.tokenizer, corpora, options, ctx.cache_dir, int(d.vocab_size), target_size, seed=ctx.cfg.train.seed)
    paths = ctx.train("draft", spec, d.budgets, **kwargs)  # the sweep's budgets: one shared branched run
    model, prov = load_checkpoint(paths[d.tokens], device=ctx.device)
    info = _model_info(model, prov, paths[d.tokens])
    info.update(name=d.name, family="llama", d_model=d.d_model, n_layers=d.n_layers, n_heads=d.n_heads,
                ffn_dim=spec.ffn, tokens=d.tokens, token_budgets=d.budgets, **vocab_info, **ctx.data_info())
    return PreparedModel(model, info)


def _mtp_draft(ctx: JobContext) -> PreparedModel:
    """Multi-token prediction: one model with ``draft.k`` heads drafts for itself (Gloeckle et al.).

    The MTP model is trained like a draft (its size and token budget are the swept axes), is also the
    job's target, and its speedup is measured against its own plain (k = 1) decoding, for every number
    of heads k' = 2..k inside the job (`mtp_measure_fn`), like batch sizes."""
    from scylla.training.checkpoints import load_checkpoint
    from scylla.models.mtp import mtp_factory, mtp_parameter_counts

    d = ctx.cfg.draft
    k = int(d.k)
    spec = d.to_spec(ctx.tokenizer.vocab_size)
    paths = ctx.train("draft", spec, d.budgets, model_factory=mtp_factory(k, parameter_matched=d.parameter_matched))
    model, prov = load_checkpoint(paths[d.tokens], device=ctx.device)
    info = _model_info(model, prov, paths[d.tokens])
    counts = mtp_parameter_counts(model)
    info.update(name=d.name, family="mtp", d_model=d.d_model, n_layers=d.n_layers, n_heads=d.n_heads,
                ffn_dim=spec.ffn, tokens=d.tokens, token_budgets=d.budgets, k=k,
                parameter_matched=d.parameter_matched, trunk_layers=counts["trunk_layers"], per_head_params=counts["per_head"])
    ctx.target = PreparedModel(model, {**info, "source": "self (mtp)"})

    return PreparedModel(model, info, measure=mtp_measure_fn(k))


def mtp_measure_fn(k: int) -> Callable[..., list[Any]]:
    """The measurement of an MTP job with ``k`` heads: every k' in 2..k (one shared plain baseline), so
    each (task, batch size) gives k - 1 rows with ``gamma = k' - 1``; ``decode.gamma`` is not used."""
    from scylla.decode.mtp import measure_self_speculative_ks

    def measure_fn(target: Any, draft: Any, prompts: Any, *, gamma: int, batch_size: int, max_new_tokens: int,
                   temperature: float, seed: int, repeats: int) -> list[Any]:
        return measure_self_speculative_ks(draft, prompts, ks=range(2, k + 1), batch_size=batch_size,
                                           max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                           repeats=repeats)

    return measure_fn


def _ngram_draft(ctx: JobContext) -> PreparedModel:
    """Prompt lookup (vLLM's ``ngram``): no model and no training; the baseline every peer offers."""
    from scylla.decode.proposers import NgramProposer
    from scylla.decode.tree import TreeSpec

    d = ctx.cfg.draft
    depth = max(TreeSpec.parse(s).depth for s in ctx.cfg.decode.shapes)
    info = {"name": d.name, "family": "ngram", "params": 0, "params_non_embedding": 0, "tokens": d.tokens,
            "ngram_max": d.ngram_max, "ngram_min": d.ngram_min, "val_loss": None}
    return PreparedModel(NgramProposer(depth, n_max=d.ngram_max, n_min=d.ngram_min), info)


def eagle3_presets_in_sweep(cfg: ScyllaConfig) -> int:
    """How many EAGLE-3 head sizes the job's sweep axes train against the same target (at least 1): they
    read the same target features, which the offline/online decision weighs."""
    from omegaconf import OmegaConf

    from scylla.config import config_dir

    names = list(cfg.axes.drafts)
    if cfg.draft.name not in names:
        return 1
    count = 0
    for name in names:
        path = config_dir() / "draft" / f"{name}.yaml"
        if path.is_file() and OmegaConf.load(path).get("family") == "eagle3":
            count += 1
    return max(1, count)


def _eagle3_draft(ctx: JobContext) -> PreparedModel:
    """An EAGLE-3 head (docs/eagle3.md) over the job's target, trained for every budget of its sweep in
    one branched run; the record carries its layers, parameters, draft vocabulary and the training-time
    metrics at the checkpoint (per-step accuracy, simulated acceptance length) beside the tau the oracle
    and the engine measure."""
    from scylla.models.eagle3 import Eagle3Error, check_target, eagle3_parameter_counts, resolve_layer_ids
    from scylla.models.vocab import DraftVocab
    from scylla.training.checkpoints import load_checkpoint
    from scylla.training.eagle3 import train_eagle3

    d = ctx.cfg.draft
    target = ctx.target.model
    tc = target.config
    hidden = int(tc.hidden_size)
    if d.d_model is not None and int(d.d_model) != hidden:
        raise ConfigError(f"draft.d_model: an EAGLE-3 head's width is its target's hidden size ({hidden}), got "
                          f"{d.d_model}; set draft.d_model=null")
    try:
        layer_ids = resolve_layer_ids(d.layer_ids, int(tc.num_hidden_layers))
    except Eagle3Error as err:
        raise ConfigError(f"draft.layer_ids: {err}") from None
    target_size = int(target.get_input_embeddings().weight.shape[0])
    if d.vocab_size is not None:
        from scylla.models.reduced import reduced_vocab_factory

        corpora, options = ctx.training_corpora("draft")
        factory, vocab_info = reduced_vocab_factory(
            ctx.tokenizer, corpora, options, ctx.cache_dir, int(d.vocab_size), target_size, seed=ctx.cfg.train.seed)
        vocab = factory.vocab
    else:
        vocab = DraftVocab.full(target_size)
        vocab_info = {"vocab_size": target_size, "target_vocab_size": target_size, "coverage": 1.0}
    runs = int(d.feature_runs) if d.feature_runs else eagle3_presets_in_sweep(ctx.cfg)
    corpora, options = ctx.training_corpora("draft")
    try:
        paths = train_eagle3(
            target, int(d.n_layers), corpora, ctx.tokenizer, d.budgets, ctx.train_config(),
            ctx.cache_dir, vocab=vocab, layer_ids=layer_ids, ttt_steps=int(d.ttt_steps), ttt_decay=float(d.ttt_decay),
            loss=d.loss, hidden_source=d.hidden_source, runs_sharing_features=runs, n_heads=d.n_heads,
            ffn_dim=d.ffn_dim, target_key=ctx.target_key(), progress=ctx.progress,
            corpus_options=options, logger=lambda event: ctx.tracker.log_train("draft", event), device=ctx.device)
    except Eagle3Error as err:
        raise ConfigError(f"draft: {err}") from None
    path = paths[d.tokens]
    model, prov = load_checkpoint(path, device=ctx.device)
    check_target(model.config, target)
    info = _model_info(model, prov, path)
    counts = eagle3_parameter_counts(model)
    ttt = prov.get("ttt_metrics") or {}
    info.update(
        name=d.name, family="eagle3", d_model=hidden, n_layers=int(d.n_layers), n_heads=model.config.num_attention_heads,
        ffn_dim=model.config.intermediate_size, tokens=d.tokens, token_budgets=d.budgets, layer_ids=layer_ids,
        ttt_steps=int(d.ttt_steps), ttt_decay=float(d.ttt_decay), loss=d.loss,
        params=counts["draft"], params_non_embedding=counts["non_embedding"], params_total=counts["total"],
        params_embedding_shared=counts["embedding_shared"],
        params_note="params: the head's own (fc, layers, norms, LM head); the target's frozen embedding it "
                    "shares is params_embedding_shared",
        train_acc_per_step=ttt.get("acc_per_step"), train_simulated_acc_len=ttt.get("simulated_acc_len"),
        train_simulated_tau=ttt.get("simulated_tau"), train_ttt_metrics=ttt,
        hidden_source=prov.get("hidden_source"), **vocab_info, **ctx.data_info())
    return PreparedModel(model, info)


register_draft_family("llama", _llama_draft)
register_draft_family("mtp", _mtp_draft, needs_target=False)
register_draft_family("ngram", _ngram_draft)
register_draft_family("eagle3", _eagle3_draft)


def draft_family(family: str) -> DraftFamily:
    if family not in DRAFT_BUILDERS:
        raise ConfigError(f"draft.family: no builder for {family!r}; available: {sorted(DRAFT_BUILDERS)} "
                          "(add one with scylla.harness.pipeline.register_draft_family)")
    return DRAFT_BUILDERS[family]


def measure(ctx: JobContext, draft: PreparedModel) -> list[dict[str, Any]]:
    """The job's measurements (`scylla.harness.measurement`): oracle, probes and engine checks."""
    from scylla.harness.measurement import measure as measure_stage

    return measure_stage(ctx, draft)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("scylla", "torch", "transformers", "tokenizers", "hydra-core", "omegaconf", "wandb", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _corpus_hash(ctx: JobContext, *infos: dict[str, Any]) -> Optional[str]:
    for info in infos:
        if info.get("corpus_manifest_hash"):
            return info["corpus_manifest_hash"]
    from scylla.training.checkpoints import hash_key
    from scylla.data.corpora import load_corpus

    opts = dict(ctx.cfg.data.corpus_options)
    return hash_key([[n, load_corpus(n, **dict(opts.get(n, {}))).split_fingerprint] for n in ctx.cfg.data.corpora])


# ---------------------------------------------------------------------------------------------------
# The job


@dataclass
class JobOutcome:
    """What `run_job` did: ``done`` (record written) or ``skipped`` (record already there)."""

    run_id: str
    status: str
    record_path: Path
    seconds: float
    record: Optional[dict[str, Any]] = None


def resolve_path(path: str) -> Path:
    """Relative to where scylla-run was started (Hydra's original cwd), whatever the launcher."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    try:
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd()) / p
    except ValueError:  # not inside a Hydra app
        return p.resolve()


def prepare_job(job: ScyllaConfig, *, device: str, threads: int, tracker: Tracker) -> tuple[JobContext, PreparedModel]:
    """The context and draft of a validated job, ready to measure: tokenizer, the checks that need it
    (before any training), the target, then the draft (trained or loaded from the cache). `run_job`
    measures them; a study's validation (`scylla.harness.validation`) decodes chosen cells with them."""
    ctx = JobContext(cfg=job, cache_dir=resolve_path(job.paths.cache_dir), device=device, threads=threads,
                     tracker=tracker, progress=job.runtime.progress)
    with _timed(ctx, "tokenizer"):
        ctx.tokenizer = build_tokenizer(ctx)
    from scylla.preflight import check_job

    check_job(job, ctx.tokenizer)  # before any training: a mismatch found after it costs hours
    if job.target.source != "preset":  # a real model ends its answers (chat tasks) with its EOS
        ctx.eos_token_id = int(ctx.tokenizer.eos_token_id)
    family = draft_family(job.draft.family)
    if family.needs_target:
        with _timed(ctx, "target"):
            ctx.target = build_target(ctx)
    with _timed(ctx, "draft"):
        draft = family.build(ctx)
    return ctx, draft


def run_job(cfg: DictConfig | ScyllaConfig, *, launcher: Optional[dict[str, Any]] = None,
            sweep_jobs: Optional[int] = None, overrides: Optional[list[str]] = None,
            tracker: Optional[Tracker] = None) -> JobOutcome:
    """Run one job end to end and return its outcome (see the module docstring for the stages)."""
    t_start = time.perf_counter()
    job = validate(cfg)
    device = resolve_device(job.runtime.device)
    threads = resolve_threads(job.runtime.threads, launcher, sweep_jobs)
    torch.set_num_threads(threads)
    run_id = config_hash(job, device)
    store = ResultStore(resolve_path(job.paths.results_dir))
    if job.runtime.skip_existing and store.readable(run_id)[0]:
        log.debug("job %s: record exists at %s, skipped", run_id, store.path(run_id))
        return JobOutcome(run_id, "skipped", store.path(run_id), time.perf_counter() - t_start)

    with store.lock(run_id):  # the same job running elsewhere: wait for it, then skip
        ok, why = store.readable(run_id)
        if job.runtime.skip_existing and ok:
            return JobOutcome(run_id, "skipped", store.path(run_id), time.perf_counter() - t_start)
        # skip_existing=false replaces the old record; an unreadable one is re-measured and replaced
        replace = store.has(run_id)
        if replace and not ok:
            log.warning("job %s: the record at %s is unreadable (%s); re-measuring and replacing it",
                        run_id, store.path(run_id), why)
        elif replace:
            log.info("job %s: runtime.skip_existing=false, re-measuring and replacing %s", run_id, store.path(run_id))
        plain = to_plain_dict(job)
        d = job.draft
        tracker = tracker or make_tracker(
            job.logger, run_id=run_id, config=plain, group=job.logger.group or job.experiment,
            name=f"{d.name}-{d.tokens:g}tok-g{job.decode.gamma}",
            wandb_dir=str(resolve_path(job.logger.dir)) if job.logger.dir else None,
        )
        exit_code = 1
        try:
            created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            ctx, draft = prepare_job(job, device=device, threads=threads, tracker=tracker)
            with _timed(ctx, "eval"):
                measurements = measure(ctx, draft)
            ctx.timings["total_seconds"] = time.perf_counter() - t_start
            from scylla.training.checkpoints import code_version

            record = {
                "schema_version": SCHEMA_VERSION,
                "run_id": run_id,
                "created_at": created_at,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "config": plain,
                "overrides": list(overrides or []),
                "target": ctx.target.info,
                "draft": draft.info,
                "measurements": measurements,
                "timings": ctx.timings,
                **ctx.record_extra,
                "tau_definition": TAU_DEFINITION,
                "provenance": {
                    "code_version": code_version(),
                    "corpus_manifest_hash": _corpus_hash(ctx, draft.info, ctx.target.info),
                    "tokenizer_fingerprint": getattr(ctx.tokenizer, "fingerprint", None),
                    "versions": _versions(),
                    "device": device,
                    "threads": threads,
                    "host": platform.node(),
                    "platform": platform.platform(),
                    "launcher": str((launcher or {}).get("_target_", "basic")).rsplit(".", 1)[-1],
                },
            }
            record = scrub_secrets(record)
            path = store.write(record, replace=replace)  # the source of truth first; wandb is only the view
            tracker.log_record(record)
            exit_code = 0
        finally:
            tracker.finish(exit_code)
    log.debug("job %s done in %.1fs: %s", run_id, time.perf_counter() - t_start, path)
    return JobOutcome(run_id, "replaced" if replace else "done", path, time.perf_counter() - t_start, record)
