"""Evaluation prompt tasks: prompt sets cut from the *eval* split of a corpus (never trained on).

Two kinds. *Continuation* tasks (``code``, ``shakespeare``, ``bible``) cut raw text: any target can
continue them. *Chat* tasks (``chat-summarise``, ``chat-qa``, ``chat-code``) wrap a passage of the
same eval split in a user request rendered with the target's own chat template, because an instruct
model serves requests, not raw text, and speculative decoding gains most on tasks whose answer copies
or paraphrases its context (summarisation, QA). A tokenizer without a chat template cannot build them.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from scylla.data.corpora import CorpusError, load_corpus

__all__ = ["Task", "TASKS", "CHAT_KINDS", "register_task", "eval_prompts", "chat_prompts", "chat_template_of"]


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
    chat: str | None = None  # None: a continuation task; else one of CHAT_KINDS


CHAT_KINDS = ("summarise", "qa", "code")

TASKS: dict[str, Task] = {
    "code": Task("code", "pycode", "Python standard-library source: continue a file from a line start"),
    "shakespeare": Task("shakespeare", "shakespeare", "Shakespeare's plays (verse and prose dialogue)"),
    "bible": Task("bible", "kjv", "King James Bible prose, verse by verse"),
    "chat-summarise": Task("chat-summarise", "shakespeare", "chat: summarise a passage of Shakespeare",
                           chat="summarise"),
    "chat-qa": Task("chat-qa", "kjv", "chat: answer a question about a King James Bible passage", chat="qa"),
    "chat-code": Task("chat-code", "pycode", "chat: explain or implement a standard-library function",
                      chat="code"),
}

_QUESTIONS = ("Who are the people named in this passage, and what does each of them do?",
              "What happens in this passage? Answer in two or three sentences.",
              "What is the main message of this passage?",
              "Which places and objects are mentioned in this passage?")
_SUMMARISE = ("Summarise this passage from a Shakespeare play in two or three sentences.",
              "Summarise what the speakers say in this passage, briefly.",
              "Give a one-paragraph summary of this scene excerpt.")


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
    if spec.chat is not None:
        return chat_prompts(task, tokenizer, n_prompts, prompt_tokens, seed)
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


# ---------------------------------------------------------------------------------------------------
# Chat tasks


def chat_template_of(tokenizer: Any, task: str = "a chat task") -> Any:
    """The transformers tokenizer that renders the chat template, or a clear error when there is none."""
    hf = getattr(tokenizer, "hf", None)
    if hf is None or not getattr(hf, "chat_template", None):
        kind = getattr(tokenizer, "kind", type(tokenizer).__name__)
        raise CorpusError(
            f"task {task!r} is a chat task and needs a tokenizer with a chat template (an instruct target's "
            f"own: target=smollm2, or tokenizer.kind=target); the {kind!r} tokenizer has none. Use the "
            f"continuation tasks {sorted(t for t, s in TASKS.items() if s.chat is None)} for this target.")
    return hf


def _functions(text: str) -> list[str]:
    """Top-level ``def`` blocks of a Python source file (a def line up to the next top-level line)."""
    out = []
    for m in re.finditer(r"^def \w+\(.*?(?=^\S|\Z)", text, flags=re.S | re.M):
        block = m.group(0).rstrip()
        if '"""' in block or "'''" in block:
            out.append(block)
    return out


def _cut(tokenizer: _Encoder, text: str, max_tokens: int) -> str:
    """The longest prefix of whole lines within ``max_tokens`` tokens (at least the first line)."""
    lines, out, used = text.splitlines(), [], 0
    for line in lines:
        n = len(tokenizer.encode(line + "\n"))
        if out and used + n > max_tokens:
            break
        out.append(line)
        used += n
    return "\n".join(out).strip()


def _docstring_stub(block: str) -> str | None:
    """A function's signature and docstring only (what an 'implement this' request gives)."""
    m = re.match(r"(def .*?:\s*\n\s*(\"\"\"|\'\'\')(.*?)\2)", block, flags=re.S)
    return m.group(1) if m else None


def _chat_request(spec: Task, doc: str, tokenizer: _Encoder, budget: int, rng: random.Random) -> str | None:
    if spec.chat == "code":
        funcs = _functions(doc)
        if not funcs:
            return None
        block = funcs[rng.randrange(len(funcs))]
        stub = _docstring_stub(block)
        if stub is not None and rng.random() < 0.5:
            return ("Implement this Python function from its signature and docstring. Reply with the code "
                    f"only.\n\n```python\n{_cut(tokenizer, stub, budget)}\n```")
        return f"Explain what this Python function does, step by step.\n\n```python\n{_cut(tokenizer, block, budget)}\n```"
    line_starts = [0] + [m.end() for m in re.finditer(r"\n(?=\S)", doc)]
    start = line_starts[rng.randrange(len(line_starts))]
    passage = _cut(tokenizer, doc[start:start + 64 * budget], budget)
    if len(tokenizer.encode(passage)) < max(8, budget // 2):
        return None
    if spec.chat == "summarise":
        return f"{_SUMMARISE[rng.randrange(len(_SUMMARISE))]}\n\n{passage}"
    if spec.chat == "qa":
        return f"Read this passage and answer the question.\n\nPassage:\n{passage}\n\nQuestion: " \
               f"{_QUESTIONS[rng.randrange(len(_QUESTIONS))]}"
    raise CorpusError(f"task {spec.name!r}: unknown chat kind {spec.chat!r}; use one of {list(CHAT_KINDS)}")


def chat_prompts(task: str, tokenizer: Any, n_prompts: int, prompt_tokens: int, seed: int = 0,
                 split: str = "eval") -> list[list[int]]:
    """Chat prompts: a request about a passage of ``split`` of at most ``prompt_tokens`` tokens, rendered
    with the tokenizer's chat template (generation prompt included, so the target starts its answer).

    ``split="eval"`` gives the task's evaluation prompts; ``split="train"`` gives requests about training
    documents only, for generating the target's own responses as draft training data
    (`scylla.data.responses`), which then never share a passage with an evaluation prompt."""
    if task not in TASKS or TASKS[task].chat is None:
        raise CorpusError(f"{task!r} is not a chat task; chat tasks: {sorted(t for t, s in TASKS.items() if s.chat)}")
    spec = TASKS[task]
    hf = chat_template_of(tokenizer, spec.name)
    corpus = load_corpus(spec.corpus, **spec.corpus_options)
    docs = corpus.split(split)
    rng = random.Random(f"{spec.name}:{seed}:{corpus.manifest_hash}" + ("" if split == "eval" else f":{split}"))
    order = list(range(len(docs)))
    rng.shuffle(order)
    prompts: list[list[int]] = []
    misses, i = 0, 0
    while len(prompts) < n_prompts:
        doc = docs[order[i % len(order)]]
        i += 1
        request = _chat_request(spec, doc, tokenizer, prompt_tokens, rng)
        if request is None:
            misses += 1
            if misses > 4 * len(order):
                raise CorpusError(f"task {spec.name!r}: no {split} document of {spec.corpus!r} yields a request "
                                  f"within prompt_tokens={prompt_tokens}; raise prompt_tokens")
            continue
        text = hf.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                      add_generation_prompt=True)
        prompts.append(list(tokenizer.encode(text)))
    return prompts
