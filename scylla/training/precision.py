"""Training precision (fp32 or bf16 autocast) decided by measurement on the machine that trains.

Whether bf16 autocast speeds training up depends on the hardware, not on the model alone: on a CPU with
native bf16 (AVX512-BF16, AMX) it is faster from a few million parameters; on a CPU that emulates it
(AVX2 only) it can be many times slower; on a GPU with bf16 it is the normal choice. A fixed rule
measured on one machine (the former "bf16 from 2M parameters on CPU") is therefore wrong elsewhere.

``train.bf16: auto`` now times forward + backward passes of the model that is about to train (a
private copy, on a batch of its own training shape, at most 4096 tokens) in fp32 and in bf16 autocast,
interleaved: at least 3 rounds, more (up to 12) while they take under 4 s, so small models, whose
ratio lies near 1, get more samples. bf16 is kept only when it is at least ``margin`` (5 %) faster:
on a tie fp32 wins, being exact and portable. The answer is cached as a small JSON under
``<cache>/precision/`` per machine type (CPU model, core count, CPU capability), device, torch version,
thread count and model architecture, so each shape is measured once per machine; concurrent jobs take a file lock, so one measures and the others
reuse. On CUDA, ``auto`` is bf16 where ``torch.cuda.is_bf16_supported()``, without timing.

The AdamW step is left out of the timing: it runs in fp32 under both precisions, so it adds the same
time to both sides and cannot change which one is faster.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from scylla.training.checkpoints import default_cache_dir, hash_key

__all__ = ["PrecisionDecision", "StepTimer", "decide_precision", "model_step_timer", "precision_cache_key",
           "DEFAULT_MARGIN", "MEASURE_STEPS", "MEASURE_TOKENS"]

PRECISION_FORMAT = 1  # bump when the measurement changes, so old cached answers are not reused
DEFAULT_MARGIN = 0.05  # bf16 must be at least this much faster (tokens/s) to be chosen
MEASURE_STEPS = 3  # timed forward+backward passes per precision at least (after one warm-up each)
MEASURE_MAX_STEPS = 12  # ... and at most, while the measurement stays within MEASURE_SECONDS
MEASURE_SECONDS = 4.0  # a small model gets more passes (its ratio is near 1, noise matters more)
MEASURE_TOKENS = 4096  # tokens per timed pass at most: the training batch itself up to this size

StepTimer = Callable[[bool], float]
"""``timer(bf16)`` -> seconds of one forward+backward pass; injected by tests, built by `model_step_timer`."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecisionDecision:
    """What ``train.bf16`` resolved to and why.

    ``how`` is ``forced`` (bf16 set to true/false), ``cuda`` (auto on a GPU: its bf16 support decides),
    ``measured`` (auto, timed now) or ``cached`` (auto, timed earlier on this machine type). Step times
    are the fastest of the timed passes (interference only slows a pass); ``ratio`` is bf16 tokens/s
    over fp32 tokens/s (> 1: bf16 is faster)."""

    bf16: bool
    how: str
    fp32_step_seconds: float | None = None
    bf16_step_seconds: float | None = None
    tokens_per_step: int | None = None
    margin: float = DEFAULT_MARGIN
    key: str | None = None

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @property
    def ratio(self) -> float | None:
        if not self.fp32_step_seconds or not self.bf16_step_seconds:
            return None
        return self.fp32_step_seconds / self.bf16_step_seconds

    def tokens_per_s(self, bf16: bool) -> float | None:
        seconds = self.bf16_step_seconds if bf16 else self.fp32_step_seconds
        return self.tokens_per_step / seconds if seconds and self.tokens_per_step else None

    def to_dict(self) -> dict[str, Any]:
        """The provenance form: chosen precision, how, both rates and their ratio."""
        return {"precision": self.precision, "how": self.how, "ratio": self.ratio,
                "fp32_tokens_per_s": self.tokens_per_s(False), "bf16_tokens_per_s": self.tokens_per_s(True),
                **asdict(self)}

    def summary(self) -> str:
        """One log line."""
        if self.ratio is None:
            why = "set in the config" if self.how == "forced" else "CUDA device" + (
                " with bf16 support" if self.bf16 else " without bf16 support")
            return f"training precision: {self.precision} ({self.how}: {why})"
        return (f"training precision: {self.precision} ({self.how}: bf16/fp32 tokens/s = {self.ratio:.2f}, "
                f"fp32 {self.tokens_per_s(False):.0f} tok/s, bf16 {self.tokens_per_s(True):.0f} tok/s; "
                f"bf16 needs >= {1 + self.margin:.2f})")


def _machine() -> dict[str, Any]:
    """What the fp32/bf16 speed ratio depends on besides the model (not the host name: identical nodes
    on a shared filesystem share one answer, and so train under the same run key)."""
    info: dict[str, Any] = {"arch": platform.machine(), "cpu_count": os.cpu_count(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        info["cpu_model"] = platform.processor()
    return info


def _architecture(model: torch.nn.Module) -> list[Any]:
    return [type(model).__qualname__] + [[n, list(p.shape), str(p.dtype)] for n, p in model.state_dict().items()]


def precision_cache_key(model: torch.nn.Module, device: torch.device, tokens_shape: tuple[int, int]) -> str:
    """Hash of everything the measured answer depends on: machine type, device, torch version, threads,
    model architecture and the timed batch shape."""
    dev = {"device": device.type}
    if device.type == "cuda":
        dev["name"] = torch.cuda.get_device_name(device)
    return hash_key({"format": PRECISION_FORMAT, "machine": _machine(), **dev, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "architecture": hash_key(_architecture(model)),
                     "shape": list(tokens_shape)})


def _vocab_size(model: torch.nn.Module) -> int:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and hasattr(emb, "num_embeddings"):
        return int(emb.num_embeddings)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "vocab_size", None):
        return int(config.vocab_size)
    raise ValueError("cannot tell the model's vocabulary size; pass a timer to decide_precision")


def model_step_timer(model: torch.nn.Module, device: torch.device, tokens_shape: tuple[int, int],
                     vocab_size: int | None = None, seed: int = 0) -> StepTimer:
    """A timer of one forward+backward pass of a private copy of ``model`` on random ids of
    ``tokens_shape`` (rows, seq_len). The copy keeps the real model's weights, gradients and the
    global RNG untouched, so measuring never changes what training produces."""
    probe = copy.deepcopy(model).to(device).train()
    for p in probe.parameters():
        p.grad = None
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab_size or _vocab_size(probe), tokens_shape, generator=g).to(device)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = probe(input_ids=x, labels=x)
        loss = out["loss"] if isinstance(out, dict) else out.loss
        loss.backward()
        probe.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    return step


def _time_both(timer: StepTimer, steps: int, max_steps: int | None = None,
               budget_seconds: float = MEASURE_SECONDS) -> tuple[float, float]:
    """Fastest pass of each precision: one warm-up each, then at least ``steps`` rounds in alternating
    order (drifting load from other processes hits both alike), more rounds up to ``max_steps`` while
    the timed passes took less than ``budget_seconds``. Interference only slows a pass, so the
    fastest pass is the best estimate of the cost on a shared machine."""
    max_steps = max(steps, max_steps if max_steps is not None else steps)
    timer(False)
    timer(True)
    best = {False: math.inf, True: math.inf}
    spent = 0.0
    for i in range(max_steps):
        if i >= steps and spent >= budget_seconds:
            break
        for bf16 in ((False, True) if i % 2 == 0 else (True, False)):
            t = timer(bf16)
            spent += t
            best[bf16] = min(best[bf16], t)
    return best[False], best[True]


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _read_cached(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        if data.get("format") == PRECISION_FORMAT and data["fp32_step_seconds"] > 0 and data["bf16_step_seconds"] > 0:
            return data
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: measure again and replace it
    return None


def decide_precision(setting: str | bool, model: torch.nn.Module, device: torch.device | str, *, seq_len: int,
                     batch_size: int, vocab_size: int | None = None, cache_dir: str | Path | None = None,
                     timer: StepTimer | None = None, steps: int = MEASURE_STEPS,
                     margin: float = DEFAULT_MARGIN) -> PrecisionDecision:
    """Resolve ``train.bf16`` (``"auto"``, True or False) for training ``model`` on ``device``.

    ``auto`` measures (or reuses the cached measurement under ``cache_dir/precision``, default the
    scylla cache) and picks bf16 only when it is at least ``margin`` faster. ``timer`` replaces the
    real measurement (tests); the model is then not run at all. ``vocab_size`` bounds the random ids
    of the timed batch (default: read from the model's input embedding)."""
    device = torch.device(device)
    if setting is True or setting is False:
        return PrecisionDecision(bool(setting), "forced", margin=margin)
    if setting != "auto":
        raise ValueError(f"bf16 must be 'auto', True or False, got {setting!r}")
    if device.type == "cuda":
        return PrecisionDecision(bool(torch.cuda.is_bf16_supported()), "cuda", margin=margin)

    rows = max(1, min(batch_size, MEASURE_TOKENS // seq_len))
    shape = (rows, seq_len)
    key = precision_cache_key(model, device, shape)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "precision" / f"{key}.json"

    def decided(data: dict[str, Any], how: str) -> PrecisionDecision:
        fp32, bf16 = data["fp32_step_seconds"], data["bf16_step_seconds"]
        return PrecisionDecision(fp32 / bf16 >= 1 + margin, how, fp32, bf16, rows * seq_len, margin, key)

    cached = _read_cached(path)
    if cached is not None:
        return decided(cached, "cached")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # one job measures; the others wait and reuse its answer
        cached = _read_cached(path)
        if cached is not None:
            return decided(cached, "cached")
        t0 = time.perf_counter()
        fp32, bf16 = _time_both(timer or model_step_timer(model, device, shape, vocab_size), steps,
                                max(steps, MEASURE_MAX_STEPS))
        data = {"format": PRECISION_FORMAT, "fp32_step_seconds": fp32, "bf16_step_seconds": bf16,
                "tokens_per_step": rows * seq_len, "min_steps": steps, "machine": _machine(), "device": str(device),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "model_class": type(model).__qualname__, "measure_seconds": time.perf_counter() - t0,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _atomic_write_json(path, data)
    decision = decided(data, "measured")
    _log.info(decision.summary())
    return decision
