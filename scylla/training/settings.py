"""Training settings: the one definition of `TrainConfig`, its range checks and its cache key.

Kept free of torch so that the Hydra schema (`scylla.config.TrainSchema`, generated from this class)
and command-line help stay fast to import.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainConfig", "TrainError"]


class TrainError(ValueError):
    """A training request that cannot run as given (the message says how to fix it)."""


@dataclass
class TrainConfig:
    """Optimisation settings shared by targets and drafts.

    Warmup is absolute (``warmup_tokens`` or ``warmup_steps``), not a fraction of the budget: it lies in
    the shared trunk, so it cannot depend on which budget a branch ends at.
    """

    seq_len: int = 256
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    warmup_tokens: int | None = None  # overrides warmup_steps when set (rounded up to whole steps)
    warmup_steps: int = 20
    cooldown_fraction: float = 0.2
    cooldown_shape: str = "1-sqrt"  # or "linear" (Hägele et al. 2024 find 1-sqrt slightly better)
    seed: int = 0
    bf16: str | bool = "auto"  # autocast; "auto": bf16 on a GPU that has it, else by measurement (precision.py)
    log_every: int = 10
    eval_every: int = 0  # trunk steps between validation losses in the log (0: only at checkpoints)
    eval_tokens: int = 32_768  # validation tokens per evaluation, spread evenly over corpora
    save_every_steps: int = 0  # resume state every N steps (0: time-based only)
    save_every_seconds: float = 120.0
    threads: int | None = None  # torch.set_num_threads for this run (None: leave as is)

    # Fields that do not change the weights or the recorded validation loss stay out of cache keys.
    _NON_KEY = ("log_every", "eval_every", "save_every_steps", "save_every_seconds", "threads")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def resolved_warmup_steps(self) -> int:
        if self.warmup_tokens is not None:
            return math.ceil(self.warmup_tokens / self.tokens_per_step)
        return self.warmup_steps

    def problems(self) -> list[tuple[str, str]]:
        """Every out-of-range field as ``(field, message)``; the one list of range checks, used by
        `validate` and by the Hydra schema (`scylla.config`), which names the key as ``train.<field>``."""
        out = []
        for name in ("seq_len", "batch_size", "eval_tokens", "log_every"):
            if getattr(self, name) < 1:
                out.append((name, f"must be >= 1, got {getattr(self, name)}"))
        if self.lr <= 0:
            out.append(("lr", f"must be > 0, got {self.lr}"))
        if not 0 <= self.min_lr_ratio < 1:
            out.append(("min_lr_ratio", f"must lie in [0, 1), got {self.min_lr_ratio}"))
        if self.weight_decay < 0:
            out.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                out.append((name, f"must lie in [0, 1), got {getattr(self, name)}"))
        if self.grad_clip < 0:
            out.append(("grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}"))
        if self.warmup_tokens is not None and self.warmup_tokens < 0:
            out.append(("warmup_tokens", f"must be >= 0 or null (use warmup_steps), got {self.warmup_tokens}"))
        if self.warmup_steps < 0:
            out.append(("warmup_steps", f"must be >= 0, got {self.warmup_steps}"))
        if not 0 < self.cooldown_fraction <= 1:
            out.append(("cooldown_fraction", f"must lie in (0, 1], got {self.cooldown_fraction}"))
        if self.cooldown_shape not in ("linear", "1-sqrt"):
            out.append(("cooldown_shape", f"use linear or 1-sqrt, got {self.cooldown_shape!r}"))
        if self.bf16 not in ("auto", True, False):
            out.append(("bf16", f"use auto, true or false, got {self.bf16!r}"))
        for name in ("eval_every", "save_every_steps", "save_every_seconds"):
            if getattr(self, name) < 0:
                out.append((name, f"must be >= 0, got {getattr(self, name)}"))
        return out

    def validate(self) -> None:
        """Raise `TrainError` for the first out-of-range field."""
        for name, message in self.problems():
            raise TrainError(f"TrainConfig.{name} {message}")

    def key_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in self._NON_KEY}
        d["warmup_steps"] = self.resolved_warmup_steps()
        d.pop("warmup_tokens")
        return d
