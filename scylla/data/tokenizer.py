"""Tokenizers shared by a target and its drafts.

Speculative decoding compares token ids, so target and drafts must share one tokenizer; every
checkpoint records the tokenizer's ``fingerprint`` (a hash of its full definition) and saves a copy of
it, and training refuses a model whose vocabulary is too small for it.

Kinds (`get_tokenizer(kind)`):

- ``bpe``                    byte-level BPE trained with `tokenizers` on the *training* split of the
                             given corpora, cached by corpus manifests and settings
- ``byte``                   raw UTF-8 bytes (256 ids) plus an end-of-text id; needs no training
- ``pretrained:<name|path>`` the tokenizer of a pretrained target (`transformers.AutoTokenizer`;
                             a local folder offline)
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from scylla.data.corpora import Corpus, load_corpus

EOS_TOKEN = "<|endoftext|>"
DEFAULT_CORPORA = ("pycode", "shakespeare", "kjv")
_META_FILE = "scylla_tokenizer.json"


class TokenizerError(ValueError):
    """A tokenizer kind, setting or file that cannot be used (the message says how to fix it)."""


def default_cache_dir() -> Path:
    """``$SCYLLA_CACHE`` or ``~/.cache/scylla``: where tokenizers, token streams and checkpoints go."""
    return Path(os.environ.get("SCYLLA_CACHE", Path.home() / ".cache" / "scylla")).expanduser()


class Tokenizer(ABC):
    """What the harness needs from a tokenizer: ids in, text out, an end-of-text id, a fingerprint."""

    kind: str

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eos_token_id(self) -> int: ...

    @property
    @abstractmethod
    def fingerprint(self) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def save(self, folder: str | Path) -> None:
        """Write the tokenizer into ``folder`` (next to a checkpoint) so `load_tokenizer` restores it."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_token_id": self.eos_token_id,
                "fingerprint": self.fingerprint}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r})"

    def _write_meta(self, folder: Path, **extra: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / _META_FILE).write_text(json.dumps({**self.describe(), **extra}, indent=2))


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255 and id 256 for end of text: no training, no unknown tokens."""

    kind = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eos_token_id(self) -> int:
        return 256

    @property
    def fingerprint(self) -> str:
        return "byte-v1"

    def save(self, folder: str | Path) -> None:
        self._write_meta(Path(folder))


class BPETokenizer(Tokenizer):
    """A byte-level BPE (`tokenizers`): lossless on any UTF-8 text."""

    kind = "bpe"

    def __init__(self, backend: Any, info: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.info = info or {}
        eos = backend.token_to_id(EOS_TOKEN)
        if eos is None:
            raise TokenizerError(f"BPE tokenizer has no {EOS_TOKEN!r} token; retrain it with get_tokenizer('bpe')")
        self._eos = int(eos)
        self._fingerprint = "bpe-" + hashlib.sha256(backend.to_str().encode()).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: str | Path, info: dict[str, Any] | None = None) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTok

        try:
            backend = HFTok.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on malformed files
            raise TokenizerError(f"cannot read tokenizer file {path}: {err}; delete it so it is rebuilt") from err
        return cls(backend, info)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def save(self, folder: str | Path) -> None:
        """tokenizer.json plus a `transformers` config, so `AutoTokenizer.from_pretrained(folder)` works."""
        from transformers import PreTrainedTokenizerFast

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        from tokenizers import Tokenizer as HFTok

        copy = HFTok.from_str(self.backend.to_str())  # transformers may adjust the object it wraps
        fast = PreTrainedTokenizerFast(tokenizer_object=copy, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN)
        fast.save_pretrained(str(folder))
        self.backend.save(str(folder / "tokenizer.json"))  # the exact definition the fingerprint hashes
        self._write_meta(folder, **self.info)


class PretrainedTokenizer(Tokenizer):
    """The tokenizer of a pretrained target model (`transformers.AutoTokenizer`)."""

    kind = "pretrained"

    def __init__(self, name_or_path: str) -> None:
        from transformers import AutoTokenizer

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        try:
            self.hf = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
        except (OSError, ValueError) as err:
            raise TokenizerError(
                f"could not load tokenizer {name_or_path!r}: {err}. Offline, pass a local folder that holds "
                "tokenizer files (e.g. a saved target checkpoint)."
            ) from err
        self.name = name_or_path
        eos = self.hf.eos_token_id
        if eos is None:
            raise TokenizerError(f"tokenizer {name_or_path!r} defines no eos_token; set one in its config")
        self._eos = int(eos)
        if getattr(self.hf, "backend_tokenizer", None) is not None:
            blob = self.hf.backend_tokenizer.to_str()
        else:
            blob = json.dumps(self.hf.get_vocab(), sort_keys=True)
        self._fingerprint = "hf-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(x) for x in self.hf(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def save(self, folder: str | Path) -> None:
        self.hf.save_pretrained(str(folder))
        self._write_meta(Path(folder), source=self.name)


def _resolve_corpora(corpora: Sequence[str | Corpus] | str | Corpus,
                     corpus_options: dict[str, dict[str, Any]] | None = None) -> list[Corpus]:
    """Names (or ready `Corpus` objects) to corpora; ``corpus_options`` maps a name to its options."""
    if isinstance(corpora, (str, Corpus)):
        corpora = [corpora]
    if not corpora:
        raise TokenizerError("no corpora given; pass at least one corpus name, e.g. ['pycode']")
    options = corpus_options or {}
    return [c if isinstance(c, Corpus) else load_corpus(c, **dict(options.get(c, {}))) for c in corpora]


def _training_texts(corpora: list[Corpus]) -> Iterator[str]:
    for corpus in corpora:
        yield from corpus.train


def train_bpe(corpora: list[Corpus], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE on the corpora's training splits (validation / eval text never seen)."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 2:
        raise TokenizerError(f"BPE vocab_size must be >= {len(alphabet) + 2} (256 bytes + end of text + "
                             f"one merge), got {vocab_size}; use kind='byte' for a byte vocabulary")
    backend = HFTok(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator(_training_texts(corpora), trainer=trainer)
    return BPETokenizer(backend)


def get_tokenizer(kind: str = "bpe", vocab_size: int = 4096,
                  corpora: Sequence[str | Corpus] | str = DEFAULT_CORPORA,
                  cache_dir: str | Path | None = None, *, min_frequency: int = 2,
                  corpus_options: dict[str, dict[str, Any]] | None = None) -> Tokenizer:
    """The tokenizer shared by a target and its drafts.

    ``bpe`` trains once per (corpora manifests + splits, vocab_size, min_frequency, tokenizers version)
    and caches ``tokenizer.json`` under ``cache_dir/tokenizers/<key>``; concurrent jobs take a file lock
    so only one trains. ``vocab_size`` and ``corpora`` are ignored by ``byte`` and ``pretrained:``.
    """
    if kind == "byte":
        return ByteTokenizer()
    if kind.startswith("pretrained:"):
        name = kind[len("pretrained:"):]
        if not name:
            raise TokenizerError("pretrained tokenizer needs a name or path: 'pretrained:<name_or_path>'")
        return PretrainedTokenizer(name)
    if kind != "bpe":
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; use 'bpe', 'byte' or 'pretrained:<name_or_path>'")
    import tokenizers

    resolved = _resolve_corpora(corpora, corpus_options)
    settings = {"kind": "bpe", "vocab_size": int(vocab_size), "min_frequency": min_frequency,
                "corpora": [[c.name, c.split_fingerprint] for c in resolved],
                "tokenizers": tokenizers.__version__}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir or default_cache_dir()) / "tokenizers" / f"bpe{vocab_size}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    with FileLock(str(folder / ".lock")):
        if not path.exists():
            tok = train_bpe(resolved, vocab_size, min_frequency)
            tmp = folder / "tokenizer.json.tmp"
            tok.backend.save(str(tmp))
            os.replace(tmp, path)
            (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    return BPETokenizer.from_file(path, info={"settings": settings})


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """Restore a tokenizer saved next to a checkpoint by `Tokenizer.save`."""
    folder = Path(folder)
    meta_path = folder / _META_FILE
    if not meta_path.exists():
        raise TokenizerError(f"no {_META_FILE} in {folder}; it was not saved by scylla (use "
                             "get_tokenizer('pretrained:<folder>') for a plain transformers tokenizer)")
    meta = json.loads(meta_path.read_text())
    if meta["kind"] == "byte":
        tok: Tokenizer = ByteTokenizer()
    elif meta["kind"] == "bpe":
        tok = BPETokenizer.from_file(folder / "tokenizer.json", info={k: v for k, v in meta.items() if k == "settings"})
    else:
        tok = PretrainedTokenizer(str(folder))
    if meta["kind"] != "pretrained" and tok.fingerprint != meta["fingerprint"]:
        raise TokenizerError(f"tokenizer in {folder} does not match its recorded fingerprint; the files were altered")
    return tok
