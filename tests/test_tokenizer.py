"""Tokenizers: round trips, caching, saving next to checkpoints, clear errors."""

from __future__ import annotations

import pytest

import scylla.data.tokenizer as tokmod
from scylla.data.corpora import load_corpus
from scylla.data.tokenizer import ByteTokenizer, TokenizerError, get_tokenizer, load_tokenizer

SAMPLES = [
    "def f(x):\n    return x ** 2  # squares\n",
    "Thou art more lovely and more temperate:\n\tRough winds do shake",
    "caf\u00e9 \u2603 \u65e5\u672c\u8a9e \U0001f600 \x00 trailing   ",
    "",
]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (root / f"f{i}.py").write_text(f"def function_{i}(value):\n    return value + {i}\n\n" * 20)
    return load_corpus(f"local:{root}")


@pytest.fixture(scope="module")
def bpe(tiny_corpus, tmp_path_factory):
    return get_tokenizer("bpe", vocab_size=320, corpora=[tiny_corpus],
                         cache_dir=tmp_path_factory.mktemp("cache"))


def test_byte_round_trip():
    tok = ByteTokenizer()
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 257 and tok.eos_token_id == 256
    assert tok.decode(tok.encode("x") + [tok.eos_token_id]) == "x"


def test_bpe_round_trips_text_it_never_saw(bpe):
    for text in SAMPLES:
        assert bpe.decode(bpe.encode(text)) == text
    assert 258 < bpe.vocab_size <= 320  # fewer when the text has too few pairs to merge
    # Merges were learnt: the training text compresses below one token per byte.
    text = "def function_3(value):\n    return value + 3\n"
    assert len(bpe.encode(text)) < len(text.encode()) / 2


def test_bpe_is_cached_by_corpus_and_settings(tiny_corpus, tmp_path, monkeypatch):
    first = get_tokenizer("bpe", vocab_size=300, corpora=[tiny_corpus], cache_dir=tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(tokmod, "train_bpe", no_training)
    again = get_tokenizer("bpe", vocab_size=300, corpora=[tiny_corpus], cache_dir=tmp_path)
    assert again.fingerprint == first.fingerprint
    with pytest.raises(AssertionError, match="retrained"):  # a different vocab size is a different entry
        get_tokenizer("bpe", vocab_size=310, corpora=[tiny_corpus], cache_dir=tmp_path)


def test_bpe_training_is_deterministic(tiny_corpus, tmp_path, bpe):
    again = get_tokenizer("bpe", vocab_size=320, corpora=[tiny_corpus], cache_dir=tmp_path)
    assert again.fingerprint == bpe.fingerprint


def test_save_and_load_next_to_a_checkpoint(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert back.fingerprint == bpe.fingerprint
    # The same folder works as a transformers tokenizer (what a vLLM / HF user would load).
    hf = get_tokenizer(f"pretrained:{tmp_path / 'tok'}")
    for text in SAMPLES:
        assert hf.encode(text) == bpe.encode(text)
        assert hf.decode(hf.encode(text)) == text
    assert hf.eos_token_id == bpe.eos_token_id
    ByteTokenizer().save(tmp_path / "byte")
    assert isinstance(load_tokenizer(tmp_path / "byte"), ByteTokenizer)


def test_tampered_tokenizer_is_refused(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    path = tmp_path / "tok" / "tokenizer.json"
    original = path.read_text()
    assert '"add_prefix_space": false' in original
    path.write_text(original.replace('"add_prefix_space": false', '"add_prefix_space": true', 1))
    with pytest.raises(TokenizerError, match="fingerprint"):
        load_tokenizer(tmp_path / "tok")
    path.write_text(original.replace('"def"', '"dXf"', 1))  # a merge of unknown tokens: unreadable
    with pytest.raises(TokenizerError, match="cannot read tokenizer file"):
        load_tokenizer(tmp_path / "tok")


def test_bad_tokenizer_requests_fail_clearly(tiny_corpus, tmp_path):
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        get_tokenizer("wordpiece")
    with pytest.raises(TokenizerError, match="vocab_size must be >= 258"):
        get_tokenizer("bpe", vocab_size=100, corpora=[tiny_corpus], cache_dir=tmp_path)
    with pytest.raises(TokenizerError, match="could not load tokenizer"):
        get_tokenizer(f"pretrained:{tmp_path / 'nothing-here'}")
    with pytest.raises(TokenizerError, match="not saved by scylla"):
        load_tokenizer(tmp_path)
