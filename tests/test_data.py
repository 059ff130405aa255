"""Corpora, document-level splits and evaluation prompts."""

from __future__ import annotations

import json

import pytest

from scylla.data.corpora import Corpus, CorpusError, Document, load_corpus
from scylla.data.tasks import TASKS, Task, eval_prompts, register_task
from scylla.data.tokenizer import ByteTokenizer


def _write_folder(root, n=12):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text(f"Document number {i}.\n" + f"line {i} of text\n" * (5 + i))
    return root


@pytest.mark.parametrize("name", ["pycode", "shakespeare", "kjv"])
def test_builtin_splits_are_disjoint_and_cover_everything(name):
    corpus = load_corpus(name)
    ids = corpus.split_ids
    train, val, ev = set(ids["train"]), set(ids["validation"]), set(ids["eval"])
    assert train and val and ev
    assert not train & val and not train & ev and not val & ev
    assert len(train) + len(val) + len(ev) == len(corpus.documents)
    # No text may sit in two splits, not even under two ids.
    texts = {s: set(corpus.split(s)) for s in ("train", "validation", "eval")}
    assert not texts["train"] & texts["eval"] and not texts["train"] & texts["validation"]
    assert len(corpus.manifest_hash) == 16 and len(corpus.manifest) == len(corpus.documents)


def test_builtin_corpora_have_expected_documents():
    kjv = load_corpus("kjv")
    assert len(kjv.documents) == 1189  # chapters of the KJV
    assert any(d.doc_id == "Genesis 1" and "In the beginning God created" in d.text for d in kjv.documents)
    plays = load_corpus("shakespeare")
    assert len(plays.documents) > 500  # one document per scene, not per play
    assert all("  \n" not in d.text for d in plays.documents)  # Markdown line breaks stripped
    code = load_corpus("pycode")
    names = {d.doc_id for d in code.documents}
    assert "argparse.py" in names
    assert not any(n.startswith(("test/", "site-packages/", "encodings/")) for n in names)
    assert code.source["python"]


def test_splits_are_deterministic_and_seeded(tmp_path):
    folder = _write_folder(tmp_path / "c", 40)
    a = load_corpus(f"local:{folder}")
    b = load_corpus(f"local:{folder}")
    c = load_corpus(f"local:{folder}", seed=1)
    assert a.split_ids == b.split_ids
    assert a.split_ids != c.split_ids
    assert a.manifest_hash == c.manifest_hash  # the seed changes the split, not the content
    assert a.split_fingerprint != c.split_fingerprint


@pytest.mark.parametrize("name", ["pycode", "shakespeare", "kjv"])
def test_subsets_and_other_split_settings_never_train_on_eval_prompts(name):
    """Prompts come from the full corpus' eval split (`eval_prompts`), while a model may be trained on
    a capped subset, another split seed or validation fraction: none of those may train on them."""
    full = load_corpus(name)
    prompts = set(full.split_ids["eval"])
    for opts in ({"max_docs": 10}, {"max_docs": 24}, {"max_docs": 50}, {"max_docs": 150}, {"max_docs": 400},
                 {"seed": 7}, {"validation_fraction": 0.02}, {"max_docs": 100, "seed": 3}):
        sub = load_corpus(name, **opts)
        assert not prompts & set(sub.split_ids["train"]), opts
        kept = {d.doc_id for d in sub.documents}
        if len(sub.split_ids["eval"]) > 1:  # not a tiny-corpus fallback: the same documents are held out
            assert set(sub.split_ids["eval"]) == prompts & kept, opts


def test_split_sizes_follow_fractions_and_tiny_corpora_get_every_split(tmp_path):
    big = load_corpus(f"local:{_write_folder(tmp_path / 'big', 400)}", validation_fraction=0.1, eval_fraction=0.2)
    sizes = {k: len(v) for k, v in big.split_ids.items()}
    assert 20 <= sizes["validation"] <= 60 and 50 <= sizes["eval"] <= 110, sizes
    tiny = load_corpus(f"local:{_write_folder(tmp_path / 'tiny', 3)}")
    assert all(len(v) == 1 for v in tiny.split_ids.values())


def test_manifest_hash_tracks_content(tmp_path):
    folder = _write_folder(tmp_path / "c")
    before = load_corpus(f"local:{folder}").manifest_hash
    (folder / "doc03.txt").write_text("changed text\n")
    assert load_corpus(f"local:{folder}").manifest_hash != before


def test_duplicate_documents_are_kept_once():
    docs = [Document(f"d{i}", "same text\n" if i < 3 else f"text {i}\n") for i in range(8)]
    corpus = Corpus("dups", docs)
    assert sum(d.text == "same text\n" for d in corpus.documents) == 1


def test_local_file_jsonl_and_max_docs(tmp_path):
    para = tmp_path / "book.txt"
    para.write_text("\n\n".join(f"Paragraph {i} with some words." for i in range(10)))
    assert len(load_corpus(f"local:{para}").documents) == 10
    jl = tmp_path / "rows.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(6)))
    assert len(load_corpus(f"local:{jl}").documents) == 6
    assert len(load_corpus(f"local:{para}", max_docs=4).documents) == 4
    assert len(load_corpus("kjv", max_docs=20).documents) == 20


def test_bad_corpora_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match="unknown corpus 'no-such-corpus'.*pycode"):
        load_corpus("no-such-corpus")
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(f"local:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("  \n\n")
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(f"local:{empty}")
    two = _write_folder(tmp_path / "two", 2)
    with pytest.raises(CorpusError, match="at least 3"):
        load_corpus(f"local:{two}")
    with pytest.raises(CorpusError, match="bad option"):
        load_corpus("kjv", no_such_option=1)


def test_dataset_view(tmp_path):
    corpus = load_corpus(f"local:{_write_folder(tmp_path / 'c')}")
    ds = corpus.dataset("train")
    assert ds.column_names == ["id", "text"] and list(ds["text"]) == corpus.train


def test_eval_prompts_come_from_eval_split_only():
    tok = ByteTokenizer()
    assert {"code", "shakespeare", "bible"} <= set(TASKS)
    for task in ("code", "shakespeare", "bible"):
        corpus = load_corpus(TASKS[task].corpus)
        prompts = eval_prompts(task, tok, n_prompts=12, prompt_tokens=64, seed=3)
        assert len(prompts) == 12
        assert all(32 <= len(p) <= 64 for p in prompts)
        assert len({len(p) for p in prompts}) > 1  # ragged
        for p in prompts:
            text = bytes(p).decode("utf-8", errors="ignore")[:-4]  # byte prompts may end mid-character
            assert any(text in doc for doc in corpus.eval)
        assert prompts == eval_prompts(task, tok, n_prompts=12, prompt_tokens=64, seed=3)
        assert prompts != eval_prompts(task, tok, n_prompts=12, prompt_tokens=64, seed=4)


def test_registered_local_task_and_errors(tmp_path):
    folder = _write_folder(tmp_path / "c", 20)
    register_task(Task("tiny-local", f"local:{folder}", "test corpus"))
    try:
        prompts = eval_prompts("tiny-local", ByteTokenizer(), 5, 16)
        assert len(prompts) == 5
        with pytest.raises(CorpusError, match="lower prompt_tokens"):
            eval_prompts("tiny-local", ByteTokenizer(), 2, 100_000)
    finally:
        TASKS.pop("tiny-local")
    with pytest.raises(CorpusError, match="unknown task"):
        eval_prompts("nope", ByteTokenizer(), 1, 8)
