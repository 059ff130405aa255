"""Evaluation prompt tasks: prompt sets cut from the *eval* split of a corpus (never trained on)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from scylla.data.corpora import CorpusError, load_corpus

__all__ = ["Task", "TASKS", "register_task", "eval_prompts"]


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Task:
    """An evaluation prompt set: prompts cut from the *eval* split of one corpus."""

    name: str
    corpus: str
    description: str
    corpus_options: dict[str, Any] = field(default_factory=dict)
    version: int = 1


TASKS: dict[str, Task] = {
    "code": Task("code", "pycode", "Python standard-library source: continue a file from a line start"),
    "shakespeare": Task("shakespeare", "shakespeare", "Shakespeare's plays (verse and prose dialogue)"),
    "bible": Task("bible", "kjv", "King James Bible prose, verse by verse"),
}


def register_task(task: Task) -> None:
    """Add a prompt task (e.g. on a ``local:`` corpus) so `eval_prompts(task.name, ...)` finds it."""
    TASKS[task.name] = task


def eval_prompts(task: str, tokenizer: _Encoder, n_prompts: int, prompt_tokens: int, seed: int = 0,
                 min_tokens: int | None = None) -> list[list[int]]:
    """``n_prompts`` token-id prompts drawn from the task corpus' eval split only.

    Each prompt starts at a line start of a seeded random eval document and is cut to a seeded length
    in ``[min_tokens, prompt_tokens]`` (default min: half of ``prompt_tokens``), so prompts are ragged
    like real traffic. Documents are visited round-robin in a seeded order, so prompts spread over as
    many documents as there are.
    """
    if task not in TASKS:
        raise CorpusError(f"unknown task {task!r}; known tasks: {sorted(TASKS)} (add one with register_task)")
    if n_prompts < 1 or prompt_tokens < 1:
        raise CorpusError(f"n_prompts and prompt_tokens must be >= 1, got {n_prompts}, {prompt_tokens}")
    lo = max(1, prompt_tokens // 2) if min_tokens is None else min_tokens
    if not 1 <= lo <= prompt_tokens:
        raise CorpusError(f"min_tokens must lie in [1, prompt_tokens={prompt_tokens}], got {lo}")
    spec = TASKS[task]
    corpus = load_corpus(spec.corpus, **spec.corpus_options)
    docs = corpus.eval
    rng = random.Random(f"{task}:{seed}:{corpus.manifest_hash}")
    order = list(range(len(docs)))
    rng.shuffle(order)
    encoded: dict[int, list[int]] = {}

    def whole(k: int) -> list[int]:
        if k not in encoded:
            encoded[k] = tokenizer.encode(docs[k])
        return encoded[k]

    prompts: list[list[int]] = []
    misses = 0
    i = 0
    while len(prompts) < n_prompts:
        d = order[i % len(order)]
        i += 1
        length = rng.randint(lo, prompt_tokens)
        text = docs[d]
        line_starts = [0] + [m.end() for m in re.finditer(r"\n(?=\S)", text)]
        start = line_starts[rng.randrange(len(line_starts))]
        # Encode a window, not the rest of a long file: 32 characters per token is ~10x the average,
        # so the window holds more than `length` tokens (else the fallback below applies).
        end = text.find("\n", start + 32 * length)
        ids = tokenizer.encode(text[start:] if end < 0 else text[start : end + 1])
        if len(ids) < length:
            ids = whole(d)  # fall back to the document's start
        if len(ids) >= length:
            prompts.append(list(ids[:length]))
            misses = 0
        else:
            misses += 1
            if misses > 4 * len(order):
                raise CorpusError(
                    f"task {task!r}: no eval document has {length} tokens; lower prompt_tokens "
                    f"(longest eval document: {max(len(whole(k)) for k in order)} tokens)"
                )
    return prompts
