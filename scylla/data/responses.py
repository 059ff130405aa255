"""The target's own responses as draft training data (the data-source axis).

A draft is accepted when it predicts what the *target* will say, not what a corpus says. SpecForge,
Medusa-2, ArcticTraining and IBM's speculator therefore train drafts on text the target generated
itself, and DistillSpec and SambaNova (arXiv 2503.07807) report it as a large lever. Here the requests
are the chat tasks' requests (`scylla.data.tasks.chat_prompts`) about *training-split* passages, so no
response shares a passage with an evaluation prompt; the target answers them with the engine's plain
path (greedy by default, EOS ends an answer).

Generation is the expensive part (a forward of the target per new token and batch), so it runs once
per (target weights, tokenizer, settings), in shards of ``shard_size`` requests under
``<cache>/responses/<key>/``: each shard is written atomically with a sha256 sidecar, a killed run
resumes at the first missing shard, a damaged shard is regenerated, and a file lock keeps two jobs from
generating the same set. The finished set is published as ``responses.jsonl`` (one ``text`` per line:
the rendered request followed by the answer), which the corpus registry reads as ``local:<path>``, so
the trainer, the token caches, the document splits and the reduced draft vocabulary treat it like any
other corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from scylla.data.corpora import SPLIT_VERSION, CorpusError

__all__ = ["ResponseSettings", "ResponseSet", "target_responses", "RESPONSES_VERSION"]

# Bump when the way requests or documents are built changes, so old response sets are not reused.
RESPONSES_VERSION = 1


@dataclass(frozen=True)
class ResponseSettings:
    """What a response set depends on besides the target and the tokenizer."""

    tasks: tuple[str, ...] = ("chat-summarise", "chat-qa", "chat-code")
    n_prompts: int = 768            # requests in all, split evenly over ``tasks``
    prompt_tokens: int = 96         # passage budget of one request
    max_new_tokens: int = 128       # answer length cap (EOS usually ends it first)
    temperature: float = 0.0        # 0: the target's greedy answers (what greedy serving verifies)
    seed: int = 0
    batch_size: int = 32
    shard_size: int = 64

    def __post_init__(self) -> None:
        if not self.tasks:
            raise CorpusError("data.responses.tasks is empty; list at least one chat task, e.g. [chat-qa]")
        for name, value in (("n_prompts", self.n_prompts), ("prompt_tokens", self.prompt_tokens),
                            ("max_new_tokens", self.max_new_tokens), ("batch_size", self.batch_size),
                            ("shard_size", self.shard_size)):
            if int(value) < 1:
                raise CorpusError(f"data.responses.{name} must be >= 1, got {value}")
        if self.n_prompts < len(self.tasks):
            raise CorpusError(f"data.responses.n_prompts={self.n_prompts} is fewer than its {len(self.tasks)} tasks")
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise CorpusError(f"data.responses.temperature must be a finite number >= 0, got {self.temperature}")

    def key_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d.pop("batch_size")  # how many rows decode together does not change greedy answers' meaning
        return d


@dataclass
class ResponseSet:
    """A finished response set: the corpus path and what it holds."""

    key: str
    folder: Path
    corpus_path: Path
    n_prompts: int
    prompt_tokens: int
    response_tokens: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def corpus_name(self) -> str:
        """The name the corpus registry loads (`scylla.data.corpora.load_corpus`)."""
        return f"local:{self.corpus_path}"

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "corpus": self.corpus_name, "n_prompts": self.n_prompts,
                "prompt_tokens": self.prompt_tokens, "response_tokens": self.response_tokens,
                "generation_seconds": self.seconds, "settings": self.settings}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_shard(path: Path) -> dict[str, Any] | None:
    """A shard whose sha256 matches its sidecar, else None (missing, half-written or damaged)."""
    side = path.with_name(path.name + ".sha256")
    if not path.is_file() or not side.is_file():
        return None
    if side.read_text().strip() != _sha256(path):
        print(f"scylla: response shard {path} does not match its sha256; regenerating it", file=sys.stderr)
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def _requests(tokenizer: Any, settings: ResponseSettings) -> list[list[int]]:
    from scylla.data.tasks import chat_prompts

    per_task = [settings.n_prompts // len(settings.tasks)] * len(settings.tasks)
    for i in range(settings.n_prompts - sum(per_task)):
        per_task[i] += 1
    out: list[list[int]] = []
    for task, n in zip(settings.tasks, per_task):
        out += chat_prompts(task, tokenizer, n, settings.prompt_tokens, seed=settings.seed, split="train")
    return out


def target_responses(target: Any, tokenizer: Any, settings: ResponseSettings, cache_dir: str | Path, *,
                     target_key: str, eos_token_id: int | None, progress: bool = True) -> ResponseSet:
    """The target's answers to ``settings.n_prompts`` training-split chat requests: generated once (in
    resumable, checksummed shards) and reused by every draft and job of this target."""
    from scylla.decode.engine import speculative_generate

    identity = {"version": RESPONSES_VERSION, "split_version": SPLIT_VERSION, "target": target_key,
                "tokenizer": tokenizer.fingerprint, "eos": eos_token_id, "settings": settings.key_dict()}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() / "responses" / key
    folder.mkdir(parents=True, exist_ok=True)
    corpus_path = folder / "responses.jsonl"
    manifest_path = folder / "manifest.json"
    with FileLock(str(folder / "generate.lock")):
        if manifest_path.is_file() and corpus_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
                if manifest.get("corpus_sha256") == _sha256(corpus_path):
                    return ResponseSet(key, folder, corpus_path, manifest["n_prompts"], manifest["prompt_tokens"],
                                       manifest["response_tokens"], manifest["seconds"], manifest["settings"])
            except (ValueError, KeyError):
                pass
            print(f"scylla: response set {folder} is damaged; rebuilding it from its shards", file=sys.stderr)
        (folder / "identity.json").write_text(json.dumps(identity, indent=2))
        requests = _requests(tokenizer, settings)
        limit = getattr(getattr(target, "config", None), "max_position_embeddings", None)
        longest = max(len(r) for r in requests) + settings.max_new_tokens
        if limit is not None and longest > int(limit):
            raise CorpusError(
                f"the longest chat request ({longest - settings.max_new_tokens} tokens) + "
                f"data.responses.max_new_tokens={settings.max_new_tokens} exceeds the target's "
                f"max_position_embeddings={limit}; lower data.responses.prompt_tokens or max_new_tokens")
        shards = [requests[i:i + settings.shard_size] for i in range(0, len(requests), settings.shard_size)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc=f"target responses ({len(shards)} shards)", unit="req",
                       dynamic_ncols=True, file=sys.stderr)
        t0 = time.perf_counter()
        seconds = 0.0
        results: list[dict[str, Any]] = []
        try:
            for i, shard in enumerate(shards):
                path = folder / f"shard-{i:05d}.json"
                done = _read_shard(path)
                if done is None or done.get("prompts") != shard:
                    t1 = time.perf_counter()
                    out = speculative_generate(target, None, shard, gamma=0, max_new_tokens=settings.max_new_tokens,
                                               temperature=settings.temperature, batch_size=settings.batch_size,
                                               eos_token_id=eos_token_id, seed=settings.seed + i)
                    done = {"prompts": shard, "responses": [list(map(int, r)) for r in out.sequences],
                            "seconds": time.perf_counter() - t1}
                    data = json.dumps(done).encode()
                    _write_atomic(path, data)
                    _write_atomic(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
                seconds += float(done.get("seconds", 0.0))
                results.append(done)
                if bar is not None:
                    bar.update(len(shard))
                    new = sum(len(r) for d in results for r in d["responses"])
                    bar.set_postfix(answer_tokens=new, refresh=False)
        finally:
            if bar is not None:
                bar.close()
        lines, n_prompt_tok, n_resp_tok = [], 0, 0
        for done in results:
            for prompt, response in zip(done["prompts"], done["responses"]):
                n_prompt_tok += len(prompt)
                n_resp_tok += len(response)
                lines.append(json.dumps({"text": tokenizer.decode(list(prompt) + list(response))}))
        _write_atomic(corpus_path, ("\n".join(lines) + "\n").encode())
        manifest = {"key": key, "identity": identity, "n_prompts": len(requests), "prompt_tokens": n_prompt_tok,
                    "response_tokens": n_resp_tok, "seconds": seconds, "wall_seconds": time.perf_counter() - t0,
                    "settings": settings.key_dict(), "corpus_sha256": _sha256(corpus_path)}
        _write_atomic(manifest_path, json.dumps(manifest, indent=2).encode())
    return ResponseSet(key, folder, corpus_path, len(requests), n_prompt_tok, n_resp_tok, seconds,
                       settings.key_dict())
