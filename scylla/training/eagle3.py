"""Training EAGLE-3 heads to token budgets: the training-time test, the target's features, the metrics.

One head size (number of draft layers) is one branched WSD run of `scylla.training.trainer.train_budgets`
(checkpoints at every budget, resumable, file-locked): `train_eagle3` wraps the head and its
*teacher* (the frozen target) in an `Eagle3Trainee`, the module the trainer optimises. Per batch:

1. **The target's features** (`Teacher`): the three aux hidden states, the final normed state (from which
   the target's logits over the draft vocabulary are recomputed with the LM-head rows of the draft
   vocabulary) and the target's full-vocabulary argmax. They come *online* (a no-grad target forward
   per batch) or *offline* (`FeatureStore`: computed once per chunk of tokens, stored as fp16
   safetensors keyed by the chunk's content and the target, checksummed, written atomically under a
   lock, read by every later run). Both round the states to fp16, so the source is a speed choice, not
   a modelling one (like the thread count, it is not part of the checkpoint key). ``auto`` measures,
   on the run's first batch, the target forward, the store's write and its read per token, and takes
   the source with the lower expected cost for the number of times the run (and the other head sizes
   of the sweep) will read each chunk: ``online = U t_fwd`` against ``offline = [t_fwd + t_write if
   not stored] + U t_read``. The choice and the measured costs go into provenance.
2. **The training-time test** (`Eagle3Draft.ttt`): the head is unrolled ``ttt_steps`` times; step k reads
   its own step k - 1 output, as decoding does at depth k. Step k's loss is weighted ``ttt_decay^(k-1)``
   (SpecForge: 7 steps, 0.8; ModelOpt: 3 steps, 0.9).
3. **The loss**: soft cross-entropy (``soft_ce``) or KL (``kl``; the same gradient, the target's entropy
   subtracted) against the target's distribution restricted to the draft vocabulary (renormalised
   there), at positions whose target argmax lies inside the draft vocabulary (SpecForge's position
   mask: the others can never be accepted greedily).
4. **Metrics**: per-step accuracy ``acc_k`` (the head's argmax equals the target's full-vocabulary argmax;
   out-of-vocabulary targets count as misses) and SpecForge's ``simulated_acc_len = sum_k prod_{i<=k}
   acc_i``, which **excludes the bonus token** (it compares with our ``tau - 1``; ``simulated_tau`` adds
   the 1). Logged every ``log_every`` steps and written into every checkpoint's provenance
   (``ttt_metrics``, on the validation chunks), where a job compares them with the tau the oracle and
   the engine measure.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from filelock import FileLock

from scylla.models.eagle3 import Eagle3Draft, build_eagle3, eagle3_parameter_counts, target_features
from scylla.models.llama import ModelSpec
from scylla.models.vocab import DraftVocab
from scylla.training.settings import TrainConfig, TrainError

log = logging.getLogger(__name__)

__all__ = ["HIDDEN_SOURCES", "LOSSES", "FeatureStore", "Teacher", "TeacherBatch", "Eagle3Trainee", "Eagle3Factory",
           "ttt_loss", "simulated_acc_len", "simulated_tau", "train_eagle3", "eagle3_spec", "expected_uses",
           "fit_eagle3"]

HIDDEN_SOURCES = ("auto", "online", "offline")
LOSSES = ("soft_ce", "kl")
STORE_FORMAT = "scylla-eagle3-features-v1"
ALGO_VERSION = 1  # bump when a change alters trained heads


def simulated_acc_len(acc: Sequence[float]) -> float:
    """SpecForge's ``eval/simulated_acc_len``: ``sum_k prod_{i<=k} acc_i``, **bonus token excluded**."""
    total, run = 0.0, 1.0
    for a in acc:
        run *= float(a)
        total += run
    return total


def simulated_tau(acc: Sequence[float], gamma: int | None = None) -> float:
    """Our tau (bonus token included) predicted from per-step accuracies for a chain of ``gamma``
    (default: every step given): ``1 + simulated_acc_len(acc[:gamma])``; steps beyond those measured
    repeat the last accuracy."""
    acc = list(acc)
    if gamma is not None and gamma > len(acc) and acc:
        acc = acc + [acc[-1]] * (gamma - len(acc))
    return 1.0 + simulated_acc_len(acc[:gamma] if gamma is not None else acc)


# ---------------------------------------------------------------------------------------------------
# The target's features


@dataclass
class TeacherBatch:
    """The target's view of a batch of rows [B, T]: ``aux`` [B, T, 3H] (fp16-rounded, as float),
    ``logits`` [B, T, V_d] over the draft vocabulary, ``argmax`` [B, T] the target's full-vocabulary
    argmax as a draft id (-1 when outside the draft vocabulary)."""

    aux: torch.Tensor
    logits: torch.Tensor
    argmax: torch.Tensor


class FeatureStore:
    """Offline features, one safetensors file per chunk of tokens, named by the chunk's content.

    ``<cache>/features/<key>/<h[:2]>/<h>.safetensors`` holds ``aux`` [T, 3H] and ``final`` [T, H] (fp16)
    and ``argmax`` [T] (int32 target ids), with the sha256 of those bytes in its metadata (checked on
    every read: a damaged file is deleted and recomputed). Files are written to a temporary name and
    renamed (atomic) under a lock per shard, so concurrent runs never read half a file and compute a
    chunk once. ``key`` hashes the target's fingerprint, the layer ids and the format."""

    def __init__(self, root: str | Path, key_parts: dict[str, Any]) -> None:
        from scylla.training.checkpoints import hash_key

        self.key = hash_key({"format": STORE_FORMAT, **key_parts})
        self.root = Path(root) / "features" / self.key
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.root / "store.json"
        if not manifest.exists():
            import json

            tmp = manifest.with_name(f".store.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps({"format": STORE_FORMAT, **key_parts}, indent=2, default=str))
            os.replace(tmp, manifest)

    @staticmethod
    def row_key(row: torch.Tensor) -> str:
        return hashlib.sha256(row.detach().cpu().to(torch.int64).numpy().tobytes()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    @staticmethod
    def _digest(tensors: dict[str, torch.Tensor]) -> str:
        h = hashlib.sha256()
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
                meta = fh.metadata() or {}
        except Exception as err:  # noqa: BLE001 (a truncated or foreign file: recompute it)
            log.warning("feature file %s is unreadable (%s); recomputing it", path, err)
            path.unlink(missing_ok=True)
            return None
        if meta.get("sha256") != self._digest(tensors):
            log.warning("feature file %s does not match its sha256; recomputing it", path)
            path.unlink(missing_ok=True)
            return None
        return tensors

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        with FileLock(str(path.parent) + ".lock"):
            if path.is_file():
                return
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
            save_file(tensors, str(tmp), metadata={"sha256": self._digest(tensors), "format": STORE_FORMAT})
            os.replace(tmp, path)

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()


class Teacher:
    """The frozen target seen by a training run: `TeacherBatch` for any rows of tokens (module doc).

    ``source`` is ``online``, ``offline`` or ``auto`` (decided by measurement on the first batch, see
    the module doc); ``decision`` records the choice and the measured costs per token."""

    def __init__(self, target: torch.nn.Module, layer_ids: Sequence[int], vocab: DraftVocab, *, source: str = "auto",
                 store: FeatureStore | None = None, expected_uses: float = 1.0) -> None:
        if source not in HIDDEN_SOURCES:
            raise TrainError(f"hidden-state source must be one of {list(HIDDEN_SOURCES)}, got {source!r}")
        if source != "online" and store is None:
            raise TrainError(f"hidden-state source {source!r} needs a FeatureStore (cache folder)")
        self.target = target.eval()
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.layer_ids = [int(i) for i in layer_ids]
        self.vocab = vocab
        self.store = store
        self.expected_uses = float(expected_uses)
        self.source = source
        self.decision: dict[str, Any] = {"hidden_source": source, "how": "forced"} if source != "auto" else {}
        head = target.get_output_embeddings()
        ids = vocab.draft_to_target.to(head.weight.device)
        self._head_w = head.weight.detach()[ids].float()
        bias = getattr(head, "bias", None)
        self._head_b = bias.detach()[ids].float() if bias is not None else None
        self._t2d = vocab.target_to_draft()
        self._memo: dict[str, dict[str, torch.Tensor]] = {}  # validation chunks, reused every checkpoint
        self.stats = {"online_rows": 0, "read_rows": 0, "written_rows": 0}

    def __deepcopy__(self, memo: dict) -> "Teacher":
        """A copy (what the training-precision probe times) draws random features instead of running the
        target: the target runs in fp32 whatever precision the head trains in, so only the head's own
        step decides the precision."""
        return _RandomTeacher(self)

    # -- computing ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _online(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        device = next(self.target.parameters()).device
        with torch.autocast(device.type, enabled=False):
            out = self.target(input_ids=rows.to(device), output_hidden_states=True)
        return {"aux": target_features(out, self.layer_ids).half().cpu(),
                "final": out.hidden_states[-1].half().cpu(),
                "argmax": out.logits.argmax(-1).to(torch.int32).cpu()}

    def _assemble(self, parts: list[dict[str, torch.Tensor]], device: torch.device) -> TeacherBatch:
        aux = torch.stack([p["aux"] for p in parts]).to(device).float()
        final = torch.stack([p["final"] for p in parts]).to(device).float()
        logits = final @ self._head_w.to(device).T
        if self._head_b is not None:
            logits = logits + self._head_b.to(device)
        argmax = torch.stack([p["argmax"] for p in parts]).long()
        return TeacherBatch(aux, logits, self._t2d[argmax].to(device))

    def _decide(self, rows: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """``auto``: time the online forward, the store's write and read on this batch; choose."""
        assert self.store is not None
        keys = [self.store.row_key(r) for r in rows]
        stored = all(k in self.store for k in keys)
        t0 = time.perf_counter()
        parts = self._split(self._online(rows))
        t_fwd = time.perf_counter() - t0
        t0 = time.perf_counter()
        for k, p in zip(keys, parts):
            self.store.put(k, p)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        read = [self.store.get(k) for k in keys]
        t_read = time.perf_counter() - t0
        n = rows.numel()
        u = max(self.expected_uses, 1.0)
        online = u * t_fwd
        offline = (0.0 if stored else t_fwd + t_write) + u * t_read
        self.source = "offline" if offline < online else "online"
        break_even = (t_fwd + t_write) / (t_fwd - t_read) if t_fwd > t_read else math.inf
        self.decision = {"hidden_source": self.source, "how": "measured", "already_stored": stored,
                         "target_seconds_per_token": t_fwd / n, "write_seconds_per_token": t_write / n,
                         "read_seconds_per_token": t_read / n, "expected_uses": u,
                         "break_even_uses": break_even if math.isfinite(break_even) else None,
                         "expected_cost_online_s_per_token": online / n,
                         "expected_cost_offline_s_per_token": offline / n, "measured_tokens": n}
        log.info("EAGLE-3 features: %s (online %.3g s/token x %.2f uses vs offline %.3g)", self.source,
                 t_fwd / n, u, offline / n)
        return [r if r is not None else p for r, p in zip(read, parts)]

    @staticmethod
    def _split(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        n = next(iter(batch.values())).shape[0]
        return [{k: v[i] for k, v in batch.items()} for i in range(n)]

    def features(self, rows: torch.Tensor, *, memo: bool = False) -> TeacherBatch:
        """The target's features for token rows [B, T] (see `TeacherBatch`); ``memo`` keeps them in
        memory (validation chunks, evaluated at every checkpoint)."""
        device = rows.device
        rows_cpu = rows.detach().cpu()
        if memo:
            keys = [FeatureStore.row_key(r) for r in rows_cpu]
            if all(k in self._memo for k in keys):
                return self._assemble([self._memo[k] for k in keys], device)
        if self.source == "auto":
            parts = self._decide(rows_cpu)
        elif self.source == "online":
            parts = self._split(self._online(rows_cpu))
            self.stats["online_rows"] += len(parts)
        else:
            parts = self._offline(rows_cpu)
        if memo:
            for k, p in zip(keys, parts):
                self._memo[k] = p
        return self._assemble(parts, device)

    def _offline(self, rows: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        assert self.store is not None
        keys = [self.store.row_key(r) for r in rows]
        parts: list[dict[str, torch.Tensor] | None] = [self.store.get(k) for k in keys]
        missing = [i for i, p in enumerate(parts) if p is None]
        self.stats["read_rows"] += len(parts) - len(missing)
        if missing:
            computed = self._split(self._online(rows[missing]))
            for i, p in zip(missing, computed):
                self.store.put(keys[i], p)
                parts[i] = p
            self.stats["written_rows"] += len(missing)
        return parts  # type: ignore[return-value]


class _RandomTeacher(Teacher):
    """Random features of the right shapes (see `Teacher.__deepcopy__`)."""

    def __init__(self, like: Teacher) -> None:  # noqa: D107 (no target, no store)
        self.layer_ids, self.vocab, self.source = like.layer_ids, like.vocab, "random"
        self.hidden = int(like.target.config.hidden_size)
        self.decision = {"hidden_source": "random"}
        self._memo = {}

    def features(self, rows: torch.Tensor, *, memo: bool = False) -> TeacherBatch:
        g = torch.Generator().manual_seed(0)
        b, t = rows.shape
        aux = torch.randn(b, t, 3 * self.hidden, generator=g).to(rows.device)
        logits = torch.randn(b, t, self.vocab.size, generator=g).to(rows.device)
        return TeacherBatch(aux, logits, logits.argmax(-1))


# ---------------------------------------------------------------------------------------------------
# The loss and the module the trainer optimises


@dataclass
class TTTResult:
    """What one training-time-test pass over a batch gives: the weighted loss, the step-1 loss, and per
    step the loss, the hits and the positions counted."""

    loss: torch.Tensor
    step_losses: list[torch.Tensor]
    hits: list[int]
    counted: list[int]
    loss_positions: list[int]

    @property
    def acc(self) -> list[float]:
        return [h / c if c else 0.0 for h, c in zip(self.hits, self.counted)]


def ttt_loss(draft: Eagle3Draft, input_ids: torch.Tensor, labels: torch.Tensor | None, teacher: TeacherBatch, *,
             steps: int, decay: float, kind: str = "soft_ce") -> TTTResult:
    """The training-time-test loss of ``draft`` on rows ``input_ids`` [B, T] (module doc).

    Slot p predicts token p + 2 from the target's state at p and token p + 1; its soft target is the
    target's distribution at position p + 1 restricted to the draft vocabulary. A slot counts when its
    input token carries a label (``labels[p + 1] != -100``: the exact-budget mask) and, at step k, when
    p >= k - 1 (its chain starts inside the row); it enters the loss when the target's argmax there is
    inside the draft vocabulary too."""
    if kind not in LOSSES:
        raise TrainError(f"EAGLE-3 loss must be one of {list(LOSSES)}, got {kind!r}")
    out = draft.ttt(input_ids, teacher.aux.to(draft.fc.weight.dtype), steps)
    tgt = teacher.logits[:, 1:].float()
    logp_t = torch.log_softmax(tgt, -1)
    p_t = logp_t.exp()
    entropy = -(p_t * logp_t).sum(-1) if kind == "kl" else None
    target_id = teacher.argmax[:, 1:]
    in_vocab = target_id >= 0
    p = tgt.shape[1]
    ok = labels[:, 1:] != -100 if labels is not None else torch.ones_like(in_vocab)
    slots = torch.arange(p, device=input_ids.device)
    total = tgt.new_zeros(())
    step_losses, hits, counted, positions = [], [], [], []
    for k in range(1, steps + 1):
        valid = ok & (slots >= k - 1)[None, :]
        mask = valid & in_vocab
        logq = torch.log_softmax(out.logits[k - 1].float(), -1)
        ce = -(p_t * logq).sum(-1)
        if entropy is not None:
            ce = ce - entropy
        n = int(mask.sum())
        step = (ce * mask).sum() / max(n, 1)
        step_losses.append(step)
        total = total + (decay ** (k - 1)) * step
        with torch.no_grad():
            hits.append(int(((logq.argmax(-1) == target_id) & valid).sum()))
        counted.append(int(valid.sum()))
        positions.append(n)
    return TTTResult(total, step_losses, hits, counted, positions)


@dataclass
class Eagle3TrainOutput:
    """What `Eagle3Trainee.forward` returns to the trainer: ``loss`` (weighted over steps),
    ``next_token_loss`` (step 1, the validation loss), ``metrics`` (per-step accuracy, simulated
    acceptance length) for the training log."""

    loss: torch.Tensor
    next_token_loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class Eagle3Trainee(torch.nn.Module):
    """The head plus its teacher, as `train_budgets` trains it: ``trainee(input_ids=x, labels=y).loss``.

    Only the head is a submodule (the teacher is not: its weights are neither trained nor saved); the
    checkpoint is the head's own (`Eagle3Draft.save_pretrained`, loaded back as an `Eagle3Draft`)."""

    checkpoint_class = Eagle3Draft

    def __init__(self, draft: Eagle3Draft, teacher: Teacher, *, ttt_steps: int, ttt_decay: float, loss: str) -> None:
        super().__init__()
        self.draft = draft
        self.teacher = teacher
        self.ttt_steps, self.ttt_decay, self.loss_kind = int(ttt_steps), float(ttt_decay), loss

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.draft.get_input_embeddings()

    def save_pretrained(self, folder: str, **kwargs: Any) -> None:
        self.draft.save_pretrained(folder, **kwargs)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> Eagle3TrainOutput:
        feats = self.teacher.features(input_ids, memo=not self.training)
        res = ttt_loss(self.draft, input_ids, labels, feats, steps=self.ttt_steps, decay=self.ttt_decay,
                       kind=self.loss_kind)
        acc = res.acc
        metrics = {f"acc_{k + 1}": a for k, a in enumerate(acc)}
        metrics["simulated_acc_len"] = simulated_acc_len(acc)
        return Eagle3TrainOutput(res.loss, res.step_losses[0], metrics)

    @torch.no_grad()
    def checkpoint_extras(self, val: dict[str, torch.Tensor], batch_size: int, device: torch.device) -> dict[str, Any]:
        """Training-time-test metrics on the validation chunks (per step: loss, accuracy; SpecForge's
        simulated acceptance length), how the features were computed, and the head's parameter counts."""
        hits = np.zeros(self.ttt_steps)
        counted = np.zeros(self.ttt_steps)
        loss_sum = np.zeros(self.ttt_steps)
        loss_n = np.zeros(self.ttt_steps)
        by_corpus: dict[str, list[float]] = {}
        for name, chunks in val.items():
            ch, cc = np.zeros(self.ttt_steps), np.zeros(self.ttt_steps)
            for i in range(0, len(chunks), batch_size):
                x = chunks[i:i + batch_size].to(device)
                feats = self.teacher.features(x, memo=True)
                res = ttt_loss(self.draft, x, None, feats, steps=self.ttt_steps, decay=self.ttt_decay,
                               kind=self.loss_kind)
                ch += res.hits
                cc += res.counted
                loss_sum += [float(s) * n for s, n in zip(res.step_losses, res.loss_positions)]
                loss_n += res.loss_positions
            hits += ch
            counted += cc
            by_corpus[name] = (ch / np.maximum(cc, 1)).tolist()
        acc = (hits / np.maximum(counted, 1)).tolist()
        metrics = {
            "steps": self.ttt_steps, "acc_per_step": acc,
            "loss_per_step": (loss_sum / np.maximum(loss_n, 1)).tolist(),
            "acc_per_step_by_corpus": by_corpus,
            "simulated_acc_len": simulated_acc_len(acc), "simulated_tau": simulated_tau(acc),
            "simulated_acc_len_convention": "SpecForge's eval/simulated_acc_len = sum_k prod_{i<=k} acc_k, bonus "
                                            "token excluded (compare with tau - 1); simulated_tau = 1 + it",
            "acc_definition": "head argmax == target's full-vocabulary argmax (out-of-vocabulary targets are "
                              "misses), teacher-forced on the data tokens, validation chunks",
            "positions": counted.tolist(),
        }
        return {"ttt_metrics": metrics, "hidden_source": dict(self.teacher.decision),
                "feature_stats": dict(getattr(self.teacher, "stats", {})),
                "eagle3": {"layer_ids": self.draft.layer_ids, "n_layers": self.draft.n_layers,
                           "ttt_steps": self.ttt_steps, "ttt_decay": self.ttt_decay, "loss": self.loss_kind,
                           "parameters": eagle3_parameter_counts(self.draft)}}


class Eagle3Factory:
    """``model_factory`` for `train_budgets`: a fresh head (``spec.n_layers`` layers) wrapped with its
    teacher. ``cache_key`` names everything that changes the trained weights besides the spec and the
    train config: the target's fingerprint, the layer ids, the draft vocabulary, the heads and MLP
    width, the training-time test (steps, decay, loss) and the algorithm version."""

    def __init__(self, target: torch.nn.Module, *, vocab: DraftVocab, layer_ids: Sequence[int] | None,
                 ttt_steps: int, ttt_decay: float, loss: str, hidden_source: str, store: FeatureStore | None,
                 expected_uses: float, target_key: str, n_heads: int | None = None, ffn_dim: int | None = None,
                 seed: int = 0) -> None:
        from scylla.models.eagle3 import resolve_layer_ids

        if ttt_steps < 1:
            raise TrainError(f"ttt_steps must be >= 1 (training-time-test steps), got {ttt_steps}")
        if not 0 < ttt_decay <= 1:
            raise TrainError(f"ttt_decay must lie in (0, 1], got {ttt_decay}")
        if loss not in LOSSES:
            raise TrainError(f"EAGLE-3 loss must be one of {list(LOSSES)}, got {loss!r}")
        self.target = target
        self.layer_ids = resolve_layer_ids(layer_ids, int(target.config.num_hidden_layers))
        self.vocab, self.ttt_steps, self.ttt_decay, self.loss = vocab, int(ttt_steps), float(ttt_decay), loss
        self.hidden_source, self.store, self.expected_uses = hidden_source, store, float(expected_uses)
        self.n_heads, self.ffn_dim, self.seed = n_heads, ffn_dim, seed
        self.cache_key = (f"scylla.training.eagle3.Eagle3Factory(v{ALGO_VERSION},target={target_key},"
                          f"layers={self.layer_ids},vocab={vocab.size}:{vocab.fingerprint()},ttt={self.ttt_steps}x"
                          f"{self.ttt_decay},loss={loss},heads={n_heads},ffn={ffn_dim})")
        self.teacher: Teacher | None = None

    def __call__(self, spec: ModelSpec) -> Eagle3Trainee:
        draft = build_eagle3(self.target.config, n_layers=spec.n_layers, draft_vocab=self.vocab,
                             layer_ids=self.layer_ids, n_heads=self.n_heads, ffn_dim=self.ffn_dim,
                             embeddings=self.target.get_input_embeddings().weight, seed=None)
        self.teacher = Teacher(self.target, self.layer_ids, self.vocab, source=self.hidden_source, store=self.store,
                               expected_uses=self.expected_uses)
        return Eagle3Trainee(draft, self.teacher, ttt_steps=self.ttt_steps, ttt_decay=self.ttt_decay, loss=self.loss)


def eagle3_spec(target: torch.nn.Module, n_layers: int, *, n_heads: int | None = None,
                ffn_dim: int | None = None) -> ModelSpec:
    """The `ModelSpec` that names a head's run and checkpoints: the target's width (and, unless given,
    heads and MLP width), ``n_layers`` draft layers, the target's vocabulary and positions."""
    tc = target.config
    return ModelSpec(d_model=int(tc.hidden_size), n_layers=int(n_layers), n_heads=int(n_heads or tc.num_attention_heads),
                     vocab_size=int(target.get_input_embeddings().weight.shape[0]),
                     ffn_dim=int(ffn_dim or tc.intermediate_size), max_seq_len=int(tc.max_position_embeddings),
                     tie_embeddings=False)


def expected_uses(budgets: Sequence[int], cfg: TrainConfig, stream_tokens: int, runs: int = 1) -> float:
    """How many times a run reads each chunk's features, times ``runs`` (head sizes sharing them): the
    tokens a branched run trains (the largest budget plus every other budget's cooldown, which the
    trunk later trains again) over the distinct tokens it visits (at most the stream)."""
    from scylla.training.trainer import plan_branch

    budgets = sorted(int(b) for b in budgets)
    largest = budgets[-1]
    trained = largest + sum(b - plan_branch(b, cfg).start_step * cfg.tokens_per_step for b in budgets[:-1])
    distinct = max(1, min(largest, int(stream_tokens)))
    return float(runs) * trained / distinct


def train_eagle3(target: torch.nn.Module, n_layers: int, corpus_names: Sequence[Any], tokenizer: Any,
                 budgets: Sequence[int] | int, cfg: TrainConfig, cache_dir: str | Path, *, vocab: DraftVocab | None = None,
                 layer_ids: Sequence[int] | None = None, ttt_steps: int = 7, ttt_decay: float = 0.8,
                 loss: str = "soft_ce", hidden_source: str = "auto", runs_sharing_features: int = 1,
                 n_heads: int | None = None, ffn_dim: int | None = None, target_key: str | None = None,
                 progress: bool = True, corpus_options: dict[str, dict[str, Any]] | None = None,
                 logger: Callable[[dict[str, Any]], None] | None = None,
                 device: str | torch.device | None = None) -> dict[int, Path]:
    """Train an ``n_layers``-layer EAGLE-3 head for ``target`` to every budget (tokens) in one branched
    run and return ``{budget: checkpoint folder}`` (load with `scylla.training.checkpoints.load_checkpoint`,
    which gives the `Eagle3Draft`). ``vocab`` is the draft vocabulary (None: the full target vocabulary).
    ``runs_sharing_features``: head sizes expected to read the same offline features (the ``auto``
    source decision weighs it)."""
    from scylla.training.trainer import token_stream, train_budgets

    if hidden_source not in HIDDEN_SOURCES:
        raise TrainError(f"hidden_source must be one of {list(HIDDEN_SOURCES)}, got {hidden_source!r}")
    vocab_size = int(target.get_input_embeddings().weight.shape[0])
    vocab = vocab or DraftVocab.full(vocab_size)
    if vocab.target_size != vocab_size:
        raise TrainError(f"draft vocabulary over {vocab.target_size} ids does not fit the target's {vocab_size}")
    if target_key is None:
        from scylla.measure.continuations import model_fingerprint

        target_key = model_fingerprint(target)
    spec = eagle3_spec(target, n_layers, n_heads=n_heads, ffn_dim=ffn_dim)
    budget_list = [int(budgets)] if isinstance(budgets, (int, float)) else [int(b) for b in budgets]
    from scylla.data.corpora import load_corpus

    opts = corpus_options or {}
    corpora = [c if not isinstance(c, str) else load_corpus(c, **dict(opts.get(c, {}))) for c in corpus_names]
    stream_tokens = sum(len(token_stream(c, tokenizer, "train", cache_dir)) for c in corpora)
    uses = expected_uses(budget_list, cfg, stream_tokens, runs=max(1, int(runs_sharing_features)))
    from scylla.models.eagle3 import resolve_layer_ids

    ids = resolve_layer_ids(layer_ids, int(target.config.num_hidden_layers))
    store = None
    if hidden_source != "online":
        store = FeatureStore(cache_dir, {"target": target_key, "layer_ids": ids, "dtype": "float16"})
    factory = Eagle3Factory(target, vocab=vocab, layer_ids=ids, ttt_steps=ttt_steps, ttt_decay=ttt_decay, loss=loss,
                            hidden_source=hidden_source, store=store, expected_uses=uses, target_key=target_key,
                            n_heads=n_heads, ffn_dim=ffn_dim, seed=cfg.seed)
    return train_budgets(spec, corpora, tokenizer, budget_list, cfg, cache_dir, model_factory=factory,
                         progress=progress, corpus_options=corpus_options, logger=logger, device=device)


def fit_eagle3(draft: Eagle3Draft, target: torch.nn.Module, rows: torch.Tensor, *, steps: int, batch_size: int = 16,
               ttt_steps: int = 3, ttt_decay: float = 0.8, loss: str = "soft_ce", lr: float = 3e-3,
               seed: int = 0) -> list[float]:
    """A minimal AdamW loop of the training-time-test loss on random batches of token ``rows`` [N, T]
    (features online); returns the loss per step. For tests, demos and benchmarks that need a briefly
    trained head in seconds; budgeted, cached, resumable training is `train_eagle3`."""
    layer_ids = draft.layer_ids
    teacher = Teacher(target, layer_ids, draft.draft_vocab, source="online")
    g = torch.Generator().manual_seed(seed)
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    draft.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, rows.shape[0], (min(batch_size, rows.shape[0]),), generator=g)
        x = rows[idx].to(next(draft.parameters()).device)
        res = ttt_loss(draft, x, None, teacher.features(x), steps=ttt_steps, decay=ttt_decay, kind=loss)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()
        losses.append(float(res.loss.detach()))
    draft.eval()
    return losses
