"""Token-budgeted training of targets and drafts: one run per model size, checkpoints along the token axis.

Schedule: warmup-stable-decay (WSD). A *trunk* trains at constant learning rate (after a linear
warmup); for each token budget ``D`` a *cooldown* branches off the trunk at ``(1 - f) * D`` tokens
(``f`` = ``cooldown_fraction``, rounded down to a whole step) and decays the learning rate to
``min_lr_ratio * lr`` exactly at ``D`` tokens. The trunk does not depend on the budgets, so a sweep of
K budgets costs the largest budget plus ``f`` times the others (about 1.1-1.3x the largest for
log-spaced budgets), and the checkpoint for ``D`` is the same whichever other budgets were asked for.

Exact budgets: a step is ``batch_size * seq_len`` tokens. When ``D`` is not a multiple of that, the last
step of its cooldown takes only the rows it needs and masks the labels of the last row past the
budget (``-100``), so exactly ``D`` tokens carry loss. ``tokens_seen`` in provenance counts label
tokens, which is ``D``.

Data order: the training streams of all corpora (documents joined with end-of-text) are concatenated,
cut into ``seq_len`` chunks, and visited in a seeded permutation per epoch; the rows of step ``i`` are
a pure function of (seed, i). Together with safetensors-saved AdamW state this makes resumption exact:
a run killed at any point and re-run ends bit-identical to an uninterrupted one on the same device and
thread count (CPU kernels with a different thread count may differ in the last bits).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from scylla.training.checkpoints import code_version, hash_key, is_complete, load_train_state, read_provenance, read_train_state_meta, remove_train_state, save_checkpoint, save_train_state
from scylla.data.corpora import Corpus, load_corpus
from scylla.models.llama import ModelSpec, build_llama, count_parameters, default_device
from scylla.data.tokenizer import Tokenizer
from scylla.training.precision import PrecisionDecision, decide_precision

log = logging.getLogger(__name__)

ALGO_VERSION = 1  # bump when a change alters trained weights, so old cache entries are not reused
MANIFEST_FILE = "corpus_manifest.json"  # in every checkpoint folder, next to provenance.json


from scylla.training.settings import TrainConfig, TrainError  # noqa: E402  (re-exported: the public home)


# ---------------------------------------------------------------------------------------------------
# Token streams


def token_stream(corpus: Corpus, tokenizer: Tokenizer, split: str, cache_dir: Path) -> np.ndarray:
    """A split's documents as one id array, each document followed by end-of-text; cached on disk
    (``.npy``, loaded without pickle) by corpus split fingerprint and tokenizer fingerprint."""
    folder = Path(cache_dir) / "tokens"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{corpus.name.replace('/', '_').replace(':', '_')[:40]}-{corpus.split_fingerprint}-" \
                    f"{tokenizer.fingerprint}-{split}.npy"
    from scylla.integrity import sha256_file, verify_sidecar, write_sidecar

    with FileLock(str(path) + ".lock"):
        if path.exists() and verify_sidecar(path) is False:  # changed on disk: rebuild, never train on it
            log.warning("token cache %s does not match its sha256; rebuilding it", path)
            path.unlink()
        if not path.exists():
            dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
            eos = tokenizer.eos_token_id
            pieces = [np.asarray(ids + [eos], dtype=dtype) for ids in tokenizer.encode_batch(corpus.split(split))]
            arr = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
            np.save(tmp, arr, allow_pickle=False)
            write_sidecar(path, sha256_file(tmp))  # checksum first, so a published file always has one
            os.replace(tmp, path)
        elif verify_sidecar(path) is None:  # written before checksums: record what is there now
            write_sidecar(path)
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise TrainError(f"token cache {path} cannot be read ({err}); delete it and re-run to rebuild it") from None


class BatchSampler:
    """Rows of step ``i`` as a pure function of (seed, i): chunks of ``seq_len`` tokens visited in a
    seeded permutation per epoch, so no chunk repeats before all were seen."""

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int) -> None:
        self.n_chunks = len(stream) // seq_len
        if self.n_chunks < 1:
            raise TrainError(f"training text has {len(stream)} tokens, fewer than one sequence of seq_len={seq_len}; "
                             "use a larger corpus or a smaller seq_len")
        self.chunks = torch.from_numpy(np.asarray(stream[: self.n_chunks * seq_len]).astype(np.int64)).view(
            self.n_chunks, seq_len)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed

    @lru_cache(maxsize=4)
    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash_int(self.seed, epoch))
        return torch.randperm(self.n_chunks, generator=g)

    def batch(self, step: int, n_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(input_ids, labels, tokens carrying loss) for ``step``; ``n_tokens`` < a full step takes only
        the rows needed and masks labels past it."""
        full = self.batch_size * self.seq_len
        n_tokens = full if n_tokens is None else n_tokens
        rows = math.ceil(n_tokens / self.seq_len)
        first = step * self.batch_size
        idx = [int(self._perm((first + r) // self.n_chunks)[(first + r) % self.n_chunks]) for r in range(rows)]
        x = self.chunks[idx]
        y = x.clone()
        tail = rows * self.seq_len - n_tokens
        if tail:
            y[-1, self.seq_len - tail:] = -100
        return x, y, n_tokens

    def epochs(self, tokens: int) -> float:
        return tokens / (self.n_chunks * self.seq_len)


def hash_int(*parts: Any) -> int:
    return int(hash_key(list(parts), 15), 16)


# ---------------------------------------------------------------------------------------------------
# Schedule


@dataclass(frozen=True)
class Branch:
    """The cooldown that ends at ``budget`` tokens: it starts after ``start_step`` trunk steps and runs
    ``n_steps`` steps, the last one partial when the budget is not a multiple of a step."""

    budget: int
    start_step: int
    n_steps: int
    tokens_per_step: int

    @property
    def end_step(self) -> int:
        return self.start_step + self.n_steps

    def step_tokens(self, step: int) -> int:
        return min(self.tokens_per_step, self.budget - step * self.tokens_per_step)


def plan_branch(budget: int, cfg: TrainConfig) -> Branch:
    tps = cfg.tokens_per_step
    total_steps = math.ceil(budget / tps)
    start = math.floor((1 - cfg.cooldown_fraction) * budget / tps)
    start = min(start, total_steps - 1)  # at least one cooldown step
    return Branch(budget, start, total_steps - start, tps)


def trunk_lr(step: int, cfg: TrainConfig) -> float:
    warm = cfg.resolved_warmup_steps()
    return cfg.lr * min(1.0, (step + 1) / warm) if warm else cfg.lr


def branch_lr(step: int, branch: Branch, cfg: TrainConfig) -> float:
    """Decay from the trunk's rate at the branch point to ``min_lr_ratio * lr`` at the budget, by tokens."""
    start_lr = trunk_lr(branch.start_step, cfg)
    floor = cfg.min_lr_ratio * cfg.lr
    done = (step - branch.start_step) * branch.tokens_per_step
    progress = done / (branch.budget - branch.start_step * branch.tokens_per_step)
    shape = 1 - math.sqrt(progress) if cfg.cooldown_shape == "1-sqrt" else 1 - progress
    return floor + (start_lr - floor) * shape


# ---------------------------------------------------------------------------------------------------
# Training


def resolve_bf16(cfg: TrainConfig, model: torch.nn.Module, device: torch.device,
                 vocab_size: int | None = None) -> PrecisionDecision:
    """``cfg.bf16`` resolved for this model on this device: forced, by CUDA bf16 support, or measured
    on this machine (cached), see `scylla.training.precision`."""
    return decide_precision(cfg.bf16, model, device, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                            vocab_size=vocab_size)


def _factory_id(model_factory: Callable | None) -> str:
    if model_factory is None:
        return "scylla.models.llama.build_llama"
    if hasattr(model_factory, "cache_key"):
        return str(model_factory.cache_key)
    import functools

    if isinstance(model_factory, functools.partial):
        inner = model_factory.func
        return f"{inner.__module__}.{inner.__qualname__}{model_factory.args!r}{sorted(model_factory.keywords.items())!r}"
    return f"{getattr(model_factory, '__module__', '?')}.{getattr(model_factory, '__qualname__', repr(model_factory))}"


def _architecture(model: torch.nn.Module) -> list[list[Any]]:
    """Parameter names and shapes: part of the cache key, so two factories that build different models
    (e.g. a different number of prediction heads) never share checkpoints."""
    return [[name, list(p.shape), str(p.dtype)] for name, p in model.state_dict().items()]


def lm_loss(out: Any) -> torch.Tensor:
    loss = out["loss"] if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is None:
        raise TrainError("the model returned no .loss; model(input_ids=..., labels=...) must return an object "
                         "with a .loss (as transformers causal LMs do)")
    return loss


def output_metrics(out: Any) -> dict[str, float]:
    """Numbers a model's training output carries besides its loss (``out.metrics``, a dict of floats,
    e.g. an EAGLE-3 head's per-step accuracy): they join the training log records."""
    metrics = out.get("metrics") if isinstance(out, dict) else getattr(out, "metrics", None)
    return {str(k): float(v) for k, v in (metrics or {}).items()}


def checkpoint_extras(model: torch.nn.Module, val: dict[str, torch.Tensor], batch_size: int,
                      device: torch.device) -> dict[str, Any]:
    """What a model adds to each checkpoint's provenance (and log) besides its validation loss: the
    result of ``model.checkpoint_extras(val, batch_size, device)`` when the model has that method (an
    EAGLE-3 head's training-time-test metrics and how its features were computed), else nothing."""
    hook = getattr(model, "checkpoint_extras", None)
    if hook is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        extras = hook(val, batch_size, device)
    finally:
        model.train(was_training)
    return dict(extras or {})


def _flat_numbers(obj: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(_flat_numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _next_token_loss(out: Any) -> torch.Tensor:
    """Head-1 loss of a multi-token model (its ``.loss`` sums every head), else ``.loss``: validation
    losses of MTP models and plain drafts stay comparable."""
    loss = out.get("next_token_loss") if isinstance(out, dict) else getattr(out, "next_token_loss", None)
    return loss if loss is not None else lm_loss(out)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, val: dict[str, torch.Tensor], batch_size: int,
                    device: torch.device) -> tuple[float, dict[str, float]]:
    """Mean next-token loss over fixed validation chunks (fp32), overall (token-weighted) and per corpus."""
    was_training = model.training
    model.eval()
    per: dict[str, float] = {}
    total, count = 0.0, 0
    for name, chunks in val.items():
        s, n = 0.0, 0
        for i in range(0, len(chunks), batch_size):
            x = chunks[i : i + batch_size].to(device)
            preds = x.numel() - x.shape[0]
            s += float(_next_token_loss(model(input_ids=x, labels=x))) * preds
            n += preds
        per[name] = s / max(n, 1)
        total, count = total + s, count + n
    model.train(was_training)
    return total / max(count, 1), per


def _validation_chunks(streams: dict[str, np.ndarray], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """``eval_tokens`` split evenly over corpora; per corpus, chunks spread evenly over its stream."""
    per_corpus = max(1, cfg.eval_tokens // max(1, len(streams)))
    out = {}
    for name, stream in streams.items():
        length = min(cfg.seq_len, len(stream))
        if length < 2:
            raise TrainError(f"validation split of corpus {name!r} has {len(stream)} tokens; it needs at least 2")
        n_avail = len(stream) // length
        n = max(1, min(n_avail, per_corpus // length))
        starts = np.linspace(0, (n_avail - 1) * length, n).astype(np.int64) // length * length
        out[name] = torch.from_numpy(np.stack([np.asarray(stream[s : s + length]) for s in starts]).astype(np.int64))
    return out


@dataclass
class _Run:
    """Everything one training run needs; built once by `train_budgets`."""

    spec: ModelSpec
    cfg: TrainConfig
    tokenizer: Tokenizer
    corpora: list[Corpus]
    sampler: BatchSampler
    val: dict[str, torch.Tensor]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    bf16: bool
    run_dir: Path
    run_key: str
    base_provenance: dict[str, Any]
    logger: Callable[[dict[str, Any]], None] | None
    progress: Any = None
    step: int = 0
    last_save: float = field(default_factory=time.monotonic)
    recent_losses: list[float] = field(default_factory=list)

    # -- one optimisation step -------------------------------------------------------------------
    def train_step(self, step: int, lr: float, n_tokens: int, phase: str, budget: int | None) -> None:
        x, y, n = self.sampler.batch(step, n_tokens)
        x, y = x.to(self.device), y.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(input_ids=x, labels=y)
            loss = lm_loss(out)
        if not torch.isfinite(loss):
            raise TrainError(f"non-finite training loss at step {step} ({phase}); lower lr (now {lr:.3g})")
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        value = float(loss.detach())
        self.recent_losses = (self.recent_losses + [value])[-20:]
        if self.progress is not None:
            self.progress.update(n)
            self.progress.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}", phase=phase, refresh=False)
        if self.logger is not None and (step + 1) % max(1, self.cfg.log_every) == 0:
            self.logger({"phase": phase, "budget": budget, "step": step + 1,
                         "tokens": step * self.cfg.tokens_per_step + n, "loss": value, "lr": lr,
                         "tokens_per_s": n / dt, **output_metrics(out)})
        if phase == "trunk" and self.cfg.eval_every and (step + 1) % self.cfg.eval_every == 0:
            vl, _ = validation_loss(self.model, self.val, self.cfg.batch_size, self.device)
            self._log_line({"phase": phase, "step": step + 1, "val_loss": vl})
            if self.logger is not None:
                self.logger({"phase": phase, "step": step + 1, "tokens": (step + 1) * self.cfg.tokens_per_step,
                             "val_loss": vl})

    def _log_line(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _due_save(self, step: int) -> bool:
        every = self.cfg.save_every_steps
        return bool(every and step % every == 0) or (time.monotonic() - self.last_save >= self.cfg.save_every_seconds)

    # -- trunk and branches ----------------------------------------------------------------------
    def save_trunk(self) -> None:
        """Resume state of the trunk; never replaced by an earlier step (a re-run from scratch for an
        early budget must not throw away a longer trunk)."""
        prefix = self.run_dir / "trunk"
        meta = read_train_state_meta(prefix)
        if meta is None or meta["step"] <= self.step:
            save_train_state(prefix, self.model, self.optimizer, {"step": self.step, "run_key": self.run_key})
        self.last_save = time.monotonic()

    def advance_trunk(self, to_step: int) -> None:
        while self.step < to_step:
            self.train_step(self.step, trunk_lr(self.step, self.cfg), self.cfg.tokens_per_step, "trunk", None)
            self.step += 1
            if self.step < to_step and self._due_save(self.step):
                self.save_trunk()

    def run_branch(self, branch: Branch, out_dir: Path) -> Path:
        """Cooldown from the trunk's current state (its step must be ``branch.start_step``) to the budget,
        then validation and the checkpoint. Leaves the model in the cooled-down state."""
        assert self.step == branch.start_step
        self.recent_losses = []  # train_loss_recent is this cooldown's, not an earlier branch's
        prefix = self.run_dir / f"branch-{branch.budget}"
        step = branch.start_step
        meta = read_train_state_meta(prefix)
        if meta is not None and meta.get("run_key") == self.run_key and branch.start_step < meta["step"] <= branch.end_step:
            step = load_train_state(prefix, self.model, self.optimizer, self.device)["step"]
        t0 = time.perf_counter()
        while step < branch.end_step:
            self.train_step(step, branch_lr(step, branch, self.cfg), branch.step_tokens(step), "cooldown", branch.budget)
            step += 1
            if step < branch.end_step and self._due_save(step):
                save_train_state(prefix, self.model, self.optimizer, {"step": step, "run_key": self.run_key})
                self.last_save = time.monotonic()
        vl, per = validation_loss(self.model, self.val, self.cfg.batch_size, self.device)
        extras = checkpoint_extras(self.model, self.val, self.cfg.batch_size, self.device)
        tokens_seen = sum(branch.step_tokens(s) for s in range(branch.end_step))
        assert tokens_seen == branch.budget
        prov = {
            **self.base_provenance,
            "budget": branch.budget,
            "tokens_seen": tokens_seen,
            "steps": branch.end_step,
            "branch_step": branch.start_step,
            "trunk_tokens": branch.start_step * self.cfg.tokens_per_step,
            "cooldown_tokens": branch.budget - branch.start_step * self.cfg.tokens_per_step,
            "epochs": self.sampler.epochs(tokens_seen),
            "val_loss": vl,
            "val_loss_by_corpus": per,
            "train_loss_recent": float(np.mean(self.recent_losses)) if self.recent_losses else None,
            "cooldown_seconds": time.perf_counter() - t0,
            **extras,
        }
        self._log_line({"phase": "checkpoint", "budget": branch.budget, "val_loss": vl, "val_loss_by_corpus": per,
                        **extras})
        if self.logger is not None:
            self.logger({"phase": "checkpoint", "budget": branch.budget, "tokens": tokens_seen, "val_loss": vl,
                         **{f"val_loss/{k}": v for k, v in per.items()}, **_flat_numbers(extras)})
        path = save_checkpoint(self.model, out_dir, prov, tokenizer=self.tokenizer,
                               extra_files={MANIFEST_FILE: corpus_manifest_json(self.corpora)})
        remove_train_state(prefix)
        return path


def corpus_manifest_json(corpora: Sequence[Corpus]) -> str:
    """Every document id and sha256 per corpus, with its hashes: the file-level record behind
    ``corpus_manifest_hash`` (compact JSON: a few hundred kB for the three built-in corpora)."""
    return json.dumps({c.name: {"manifest_hash": c.manifest_hash, "split_fingerprint": c.split_fingerprint,
                                "source": c.source, "documents": c.manifest} for c in corpora},
                      separators=(",", ":"), default=str)


def _resolve_corpora(corpus_names: Sequence[str | Corpus] | str | Corpus,
                     corpus_options: dict[str, dict[str, Any]] | None) -> list[Corpus]:
    if isinstance(corpus_names, (str, Corpus)):
        corpus_names = [corpus_names]
    if not corpus_names:
        raise TrainError("no training corpus given; pass e.g. ['pycode', 'shakespeare', 'kjv']")
    opts = corpus_options or {}
    return [c if isinstance(c, Corpus) else load_corpus(c, **dict(opts.get(c, {}))) for c in corpus_names]


def _normalise_budgets(budgets: Sequence[int] | int, cfg: TrainConfig) -> list[int]:
    if isinstance(budgets, (int, float)):
        budgets = [budgets]
    if not budgets:
        raise TrainError("no token budgets given; pass e.g. budgets=[250_000, 1_000_000]")
    out = []
    for b in budgets:
        if isinstance(b, float) and not b.is_integer():
            raise TrainError(f"token budget {b} is not a whole number of tokens")
        b = int(b)
        if b < cfg.tokens_per_step:
            raise TrainError(f"token budget {b} is smaller than one batch (batch_size {cfg.batch_size} x seq_len "
                             f"{cfg.seq_len} = {cfg.tokens_per_step} tokens); raise the budget or lower batch_size/seq_len")
        out.append(b)
    return sorted(set(out))


def checkpoint_name(spec: ModelSpec, budget: int, key: str) -> str:
    return f"d{spec.d_model}-L{spec.n_layers}-h{spec.n_heads}-f{spec.ffn}-v{spec.vocab_size}-{budget}-{key}"


def train_budgets(spec: ModelSpec, corpus_names: Sequence[str | Corpus] | str | Corpus, tokenizer: Tokenizer,
                  budgets: Sequence[int] | int, cfg: TrainConfig, cache_dir: str | Path, *,
                  model_factory: Callable[[ModelSpec], torch.nn.Module] | None = None, progress: bool = True,
                  corpus_options: dict[str, dict[str, Any]] | None = None,
                  logger: Callable[[dict[str, Any]], None] | None = None,
                  device: str | torch.device | None = None) -> dict[int, Path]:
    """Train one model size to every budget in ``budgets`` (tokens) and return ``{budget: checkpoint}``.

    Checkpoints already in ``cache_dir`` are reused; the rest come from one WSD run (see module doc).
    A file lock per run makes concurrent callers (joblib workers, SLURM array jobs on a shared
    filesystem) wait for one another and reuse instead of training twice. Killed runs resume from the
    last saved state under ``cache_dir/runs/<run key>``. ``model_factory(spec)`` builds another module
    (e.g. multi-token prediction); it must accept ``model(input_ids=..., labels=...)`` and return ``.loss``.
    """
    cfg.validate()
    if cfg.seq_len > spec.max_seq_len:
        raise TrainError(f"seq_len {cfg.seq_len} is larger than the model supports (max_seq_len "
                         f"{spec.max_seq_len}); lower TrainConfig.seq_len or raise ModelSpec.max_seq_len")
    if tokenizer.vocab_size > spec.vocab_size:
        raise TrainError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {spec.vocab_size}; "
                         "build the spec with vocab_size=tokenizer.vocab_size")
    wanted = _normalise_budgets(budgets, cfg)
    corpora = _resolve_corpora(corpus_names, corpus_options)
    cache_dir = Path(cache_dir)
    dev = torch.device(device) if device is not None else default_device()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # The model is built before the key is known: its architecture is part of the key.
    torch.manual_seed(cfg.seed)
    model = model_factory(spec) if model_factory is not None else build_llama(spec, seed=cfg.seed)
    params = count_parameters(model)
    corpus_key = [[c.name, c.split_fingerprint] for c in corpora]
    architecture = hash_key(_architecture(model))

    def keyed(bf16: bool) -> tuple[dict[str, Any], str, dict[int, Path]]:
        identity = {
            "algo": ALGO_VERSION, "spec": spec.to_dict(), "factory": _factory_id(model_factory),
            "architecture": architecture, "train": cfg.key_dict(), "bf16": bf16,
            "corpora": corpus_key, "tokenizer": tokenizer.fingerprint,
        }
        key = hash_key(identity)
        return identity, key, {b: cache_dir / "checkpoints" / checkpoint_name(spec, b, hash_key([key, b, "ckpt"]))
                               for b in wanted}

    if cfg.bf16 == "auto":
        # "auto" does not care which precision trained a checkpoint: reuse finished ones of either
        # without measuring (and without retraining when another machine type chose the other one).
        for candidate in (False, True):
            found = keyed(candidate)[2]
            if all(is_complete(p) for p in found.values()):
                return found
    decision = resolve_bf16(cfg, model, dev, spec.vocab_size)
    bf16 = decision.bf16
    if progress:
        print(decision.summary(), file=sys.stderr, flush=True)
    run_identity, run_key, targets = keyed(bf16)
    if all(is_complete(p) for p in targets.values()):
        return targets

    run_dir = cache_dir / "runs" / run_key
    run_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(run_dir / "run.lock")):
        todo = [b for b in wanted if not is_complete(targets[b])]  # another job may have finished them
        if not todo:
            return targets
        (run_dir / "run.json").write_text(json.dumps(run_identity, indent=2, default=str))
        train_streams = [token_stream(c, tokenizer, "train", cache_dir) for c in corpora]
        stream = np.concatenate([np.asarray(s) for s in train_streams])
        sampler = BatchSampler(stream, cfg.seq_len, cfg.batch_size, cfg.seed)
        val = _validation_chunks({c.name: token_stream(c, tokenizer, "validation", cache_dir) for c in corpora}, cfg)
        model.to(dev)
        model.train()
        optimizer = make_optimizer(model, cfg)
        corpus_hash = hash_key(corpus_key)
        base_prov = {
            "model_spec": spec.to_dict(), "model_factory": _factory_id(model_factory), "parameters": params,
            "train_config": {**dataclasses.asdict(cfg), "warmup_steps": cfg.resolved_warmup_steps(),
                             "tokens_per_step": cfg.tokens_per_step},
            "bf16": bf16, "precision": decision.to_dict(), "device": str(dev), "threads": torch.get_num_threads(),
            "corpora": [c.describe() for c in corpora], "corpus_manifest_hash": corpus_hash,
            "tokenizer": tokenizer.describe(), "tokenizer_fingerprint": tokenizer.fingerprint,
            "run_key": run_key, "code_version": code_version(),
            "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
            "train_stream_tokens": int(len(stream)),
        }
        run = _Run(spec, cfg, tokenizer, corpora, sampler, val, model, optimizer, dev, bf16, run_dir, run_key,
                   base_prov, logger)
        branches = sorted((plan_branch(b, cfg) for b in todo), key=lambda br: (br.start_step, br.budget))
        meta = read_train_state_meta(run_dir / "trunk")
        if meta is not None and meta.get("run_key") == run_key and meta["step"] <= branches[0].start_step:
            run.step = load_train_state(run_dir / "trunk", model, optimizer, dev)["step"]
        total = sum(br.budget - br.start_step * cfg.tokens_per_step for br in branches)
        total += (branches[-1].start_step - run.step) * cfg.tokens_per_step
        if progress:
            from tqdm.auto import tqdm

            run.progress = tqdm(total=total, unit="tok", unit_scale=True, dynamic_ncols=True,
                                desc=f"train d{spec.d_model}xL{spec.n_layers} -> {len(todo)} budget(s)")
        try:
            for i, br in enumerate(branches):
                run.advance_trunk(br.start_step)
                last = i == len(branches) - 1
                run.save_trunk()  # a kill during the cooldown resumes from here
                # The last cooldown runs in place; earlier ones on the live model, then the trunk is restored.
                snapshot = None if last else _snapshot(model, optimizer)
                targets[br.budget] = run.run_branch(br, targets[br.budget])
                if snapshot is not None:
                    _restore(model, optimizer, snapshot)
        finally:
            if run.progress is not None:
                run.progress.close()
    return targets


def _version(package: str) -> str:
    from importlib.metadata import version

    try:
        return version(package)
    except Exception:
        return "unknown"


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only (norm gains stay undecayed), as in nanoGPT."""
    seen: set[int] = set()
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, foreach=False)


def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """In-memory copy of the trunk so a branch can cool down in place and the trunk continue after it."""
    model_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt_sd = optimizer.state_dict()
    opt_state = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()} for i, st in opt_sd["state"].items()}
    return model_sd, {"state": opt_state, "param_groups": [dict(g) for g in opt_sd["param_groups"]]}


def _restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, snapshot: tuple[dict, dict]) -> None:
    model.load_state_dict(snapshot[0])
    optimizer.load_state_dict(snapshot[1])


__all__ = ["TrainConfig", "TrainError", "train_budgets", "plan_branch", "trunk_lr", "branch_lr", "lm_loss", "make_optimizer",
           "token_stream", "BatchSampler", "validation_loss", "read_provenance", "output_metrics", "checkpoint_extras",
           "checkpoint_name"]
