"""Target continuations: the target's own output for a prompt set, generated once and cached on disk.

At temperature 0 a chain draft's whole accept/reject trace follows from the target's greedy
continuation of each prompt and the draft's teacher-forced predictions along it (docs/oracle.md);
at temperature > 0 the same holds in distribution along target *samples*. So the continuation is
generated once per (target, prompt set, max_new_tokens, temperature, seed, EOS, samples per prompt),
with the engine's plain path, and shared by every draft, tree shape and batch size.

The cache key names the target by a fingerprint of its configuration and weights, so a retrained
or different target never reuses another's continuations. Entries are published atomically under a
file lock (concurrent jobs wait for one another) and carry a sha256 that is checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from filelock import FileLock

__all__ = ["Continuations", "ContinuationError", "target_continuations", "model_fingerprint", "largest_batch"]

FORMAT = "scylla-continuations-v1"


class ContinuationError(ValueError):
    """A cached continuation file that is corrupt or does not match its request."""


@dataclass
class Continuations:
    """``tokens[i]`` is the target's continuation of ``prompts[row_prompt[i]]`` (first token from the
    prefill, ending at EOS or at ``max_new_tokens``); at temperature > 0 ``logprobs[i][t]`` is the
    target's log-probability (at that temperature) of ``tokens[i][t]``."""

    prompts: list[list[int]]
    tokens: list[list[int]]
    row_prompt: list[int]
    max_new_tokens: int
    temperature: float
    seed: int
    eos_token_id: int | None
    samples_per_prompt: int
    target: str
    logprobs: list[list[float]] | None = None
    seconds: float = 0.0
    batch_size: int = 0
    key: str = ""

    def subset(self, prompt_indices: Sequence[int]) -> "Continuations":
        """The continuations of some of the prompts (their samples), as a request of their own."""
        keep = list(prompt_indices)
        new_index = {p: i for i, p in enumerate(keep)}
        rows = [i for i, p in enumerate(self.row_prompt) if p in new_index]
        return Continuations(prompts=[self.prompts[p] for p in keep], tokens=[self.tokens[i] for i in rows],
                             row_prompt=[new_index[self.row_prompt[i]] for i in rows],
                             max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed,
                             eos_token_id=self.eos_token_id, samples_per_prompt=self.samples_per_prompt,
                             target=self.target, logprobs=[self.logprobs[i] for i in rows] if self.logprobs else None,
                             batch_size=self.batch_size, key=f"{self.key}[{len(keep)}]")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> "Continuations":
        if blob.get("format") != FORMAT:
            raise ContinuationError(f"unknown continuation format {blob.get('format')!r}")
        blob = {k: v for k, v in blob.items() if k != "format"}
        return cls(**blob)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over a model's configuration and every parameter and buffer (about 1 s per 500 MB)."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    h.update(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


def largest_batch(model: torch.nn.Module, n_rows: int, tokens_per_row: int, memory_fraction: float = 0.25) -> int:
    """The largest batch (at most ``n_rows``) whose KV cache and logits fit in a fraction of memory.

    Estimated from the model's own shape (layers, KV heads, head size, vocabulary, dtype), so it holds
    for any target on any machine; on a GPU the free device memory is used, else physical memory."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", 1) + getattr(cfg, "n_future", 0)
    heads = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", 1)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // max(getattr(cfg, "num_attention_heads", 1), 1)
    itemsize = next(model.parameters()).element_size()
    per_row = 2 * layers * heads * head_dim * itemsize * tokens_per_row + 8 * cfg.vocab_size
    device = next(model.parameters()).device
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(n_rows, int(memory_fraction * free // max(per_row, 1))))


def _prompt_hash(prompts: Sequence[Sequence[int]]) -> str:
    return hashlib.sha256(json.dumps([list(map(int, p)) for p in prompts]).encode()).hexdigest()[:16]


@torch.inference_mode()
def _teacher_forced_logprobs(target: torch.nn.Module, prompts: list[list[int]], tokens: list[list[int]],
                             row_prompt: list[int], temperature: float, batch: int) -> list[list[float]]:
    """log p(token | prefix) at ``temperature`` for every continuation token, in batched forwards."""
    from scylla.decode.target import left_pad

    device = next(target.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(tokens), batch):
        seqs = [prompts[row_prompt[i]] + tokens[i] for i in range(start, min(start + batch, len(tokens)))]
        ids, valid = left_pad(seqs, device)
        pos = (valid.long().cumsum(1) - 1).clamp_min(0)
        logits = target(input_ids=ids, attention_mask=valid.long(), position_ids=pos).logits.float()
        logp = torch.log_softmax(logits / temperature, -1)
        for j, i in enumerate(range(start, start + len(seqs))):
            n = len(tokens[i])
            width = ids.shape[1]
            idx = torch.arange(width - n - 1, width - 1, device=device)  # positions predicting each token
            out.append(logp[j, idx].gather(1, torch.tensor(tokens[i], device=device)[:, None]).squeeze(1).tolist())
    return out


def _write_atomic(path: Path, blob: dict[str, Any]) -> None:
    text = json.dumps(blob, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps({"sha256": digest, "payload": text}))
    os.replace(tmp, path)


def _read_checked(path: Path) -> dict[str, Any]:
    try:
        wrapper = json.loads(path.read_text())
        text = wrapper["payload"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ContinuationError(f"cached continuations {path} are unreadable ({err}); delete the file to "
                                "regenerate them") from None
    if hashlib.sha256(text.encode()).hexdigest() != wrapper.get("sha256"):
        raise ContinuationError(f"cached continuations {path} fail their sha256 check (the file was changed or "
                                "truncated); delete it to regenerate them")
    return json.loads(text)


def target_continuations(target: torch.nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                         temperature: float = 0.0, seed: int = 0, eos_token_id: int | None = None,
                         samples_per_prompt: int = 1, cache_dir: str | Path | None = None,
                         target_key: str | None = None, batch_size: int | None = None) -> Continuations:
    """The target's continuations of ``prompts`` (cached under ``cache_dir/continuations`` when given).

    Generated with `scylla.decode.engine.speculative_generate` (plain path, ``gamma=0``) at the largest
    batch that fits (`largest_batch`) unless ``batch_size`` is given: each row's continuation does not
    depend on the batch. At temperature > 0 each prompt gets ``samples_per_prompt`` seeded samples and
    their token log-probabilities. ``target_key`` names the target (default: `model_fingerprint`)."""
    from scylla.decode.engine import speculative_generate

    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    if temperature == 0 and samples_per_prompt != 1:
        raise ValueError("greedy continuations are deterministic: use samples_per_prompt=1 at temperature 0")
    prompts = [list(map(int, p)) for p in prompts]
    target_key = target_key or model_fingerprint(target)
    request = {"target": target_key, "prompts": _prompt_hash(prompts), "max_new_tokens": int(max_new_tokens),
               "temperature": float(temperature), "seed": int(seed), "eos": eos_token_id,
               "samples": int(samples_per_prompt), "format": FORMAT}
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    path = lock = None
    if cache_dir is not None:
        folder = Path(cache_dir).expanduser() / "continuations"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{key}.json"
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    try:
        if path is not None and path.exists():
            cont = Continuations.from_json(_read_checked(path))
            if cont.prompts != prompts or cont.key != key:
                raise ContinuationError(f"cached continuations {path} belong to another request; delete the file")
            return cont
        rows = [i for i in range(len(prompts)) for _ in range(samples_per_prompt)]
        batch = batch_size or largest_batch(target, len(rows), max(len(p) for p in prompts) + max_new_tokens)
        t0 = time.perf_counter()
        out = speculative_generate(target, None, [prompts[i] for i in rows], gamma=0, max_new_tokens=max_new_tokens,
                                   temperature=temperature, batch_size=batch, eos_token_id=eos_token_id, seed=seed)
        logprobs = None
        if temperature > 0:
            logprobs = _teacher_forced_logprobs(target, prompts, out.sequences, rows, temperature, batch)
        cont = Continuations(prompts=prompts, tokens=out.sequences, row_prompt=rows,
                             max_new_tokens=int(max_new_tokens), temperature=float(temperature), seed=int(seed),
                             eos_token_id=eos_token_id, samples_per_prompt=int(samples_per_prompt),
                             target=target_key, logprobs=logprobs, seconds=time.perf_counter() - t0,
                             batch_size=batch, key=key)
        if path is not None:
            _write_atomic(path, cont.to_json())
        return cont
    finally:
        if lock is not None:
            lock.release()
