"""The data-source axis: the target's own answers to training-split chat requests as draft training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gguf_tiny import tiny_llama, write_tiny_gguf
from scylla.config import ConfigError, compose
from scylla.data.corpora import load_corpus
from scylla.data.responses import ResponseSettings, target_responses
from scylla.data.tasks import TASKS, chat_prompts, eval_prompts

CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
SETTINGS = ResponseSettings(tasks=("chat-qa", "chat-summarise"), n_prompts=6, prompt_tokens=32, max_new_tokens=6,
                            batch_size=4, shard_size=4)


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory: pytest.TempPathFactory):
    from scylla.data.tokenizer import get_tokenizer
    from scylla.models.gguf import convert_gguf
    from scylla.models.pretrained import load_causal_lm

    root = tmp_path_factory.mktemp("responses")
    path = write_tiny_gguf(root / "tiny.gguf", tiny_llama(max_positions=2048), chat_template=CHAT)
    folder = convert_gguf(path, root)
    return load_causal_lm(folder), get_tokenizer(f"pretrained:{folder}"), path


def _generate(model, tok, cache: Path, settings: ResponseSettings = SETTINGS):
    return target_responses(model, tok, settings, cache, target_key="tiny", eos_token_id=tok.eos_token_id,
                            progress=False)


def test_requests_come_from_training_documents_only(tiny_target) -> None:
    _, tok, _ = tiny_target
    train = chat_prompts("chat-qa", tok, 4, 48, seed=0, split="train")
    assert train == chat_prompts("chat-qa", tok, 4, 48, seed=0, split="train")  # seeded
    assert eval_prompts("chat-qa", tok, 4, 48) == chat_prompts("chat-qa", tok, 4, 48)  # eval prompts unchanged
    corpus = load_corpus(TASKS["chat-qa"].corpus)
    train_text, eval_text = "\n".join(corpus.train), "\n".join(corpus.eval)
    for ids in train:
        body = tok.decode(ids).split("Passage:\n", 1)[1].split("\n\nQuestion:", 1)[0]
        line = max(body.splitlines(), key=len).strip()
        assert line in train_text and (len(line) < 30 or line not in eval_text)


def test_responses_are_generated_once_cached_and_load_as_a_corpus(tiny_target, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import scylla.decode.engine as engine

    model, tok, _ = tiny_target
    calls: list[int] = []
    real = engine.speculative_generate

    def counting(*a, **k):
        calls.append(len(a[2]))
        return real(*a, **k)

    monkeypatch.setattr(engine, "speculative_generate", counting)
    first = _generate(model, tok, tmp_path)
    assert calls == [4, 2]  # two shards of at most shard_size requests
    assert first.n_prompts == 6 and 0 < first.response_tokens <= 6 * SETTINGS.max_new_tokens
    docs = [json.loads(line)["text"] for line in first.corpus_path.read_text().splitlines()]
    assert len(docs) == 6 and all(d.startswith("<|user|>") and "<|assistant|>" in d for d in docs)
    corpus = load_corpus(first.corpus_name)
    assert len(corpus.documents) == len(set(docs))
    again = _generate(model, tok, tmp_path)
    assert calls == [4, 2] and again.key == first.key and again.response_tokens == first.response_tokens
    other = _generate(model, tok, tmp_path, ResponseSettings(**{**SETTINGS.__dict__, "max_new_tokens": 3}))
    assert other.key != first.key  # different settings: a different set


def test_a_killed_or_damaged_generation_resumes_from_its_shards(tiny_target, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import scylla.decode.engine as engine

    model, tok, _ = tiny_target
    first = _generate(model, tok, tmp_path)
    text = first.corpus_path.read_text()
    # A run killed before publishing: the last shard and the corpus file are missing.
    (first.folder / "shard-00001.json").unlink()
    first.corpus_path.unlink()
    (first.folder / "manifest.json").unlink()
    calls: list[int] = []
    real = engine.speculative_generate
    monkeypatch.setattr(engine, "speculative_generate", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    resumed = _generate(model, tok, tmp_path)
    assert calls == [2] and resumed.corpus_path.read_text() == text  # only the missing shard, same result
    # A damaged shard (bytes changed after its checksum was written) is regenerated, not trained on.
    shard = first.folder / "shard-00000.json"
    shard.write_text(shard.read_text().replace("[", "[1, ", 1))
    first.corpus_path.write_text("changed")
    repaired = _generate(model, tok, tmp_path)
    assert calls == [2, 4] and repaired.corpus_path.read_text() == text


def test_a_job_trains_its_draft_on_the_targets_responses(tiny_target, tmp_path: Path) -> None:
    from scylla.harness.pipeline import run_job
    from scylla.harness.results import load

    _, _, gguf = tiny_target
    base = ["experiment=smoke", "target=smollm2", f"target.gguf_file={gguf}", f"paths.cache_dir={tmp_path / 'cache'}",
            "runtime.progress=false", "eval.tasks=[chat-qa]", "decode.batch_sizes=[1]",
            "data.responses.n_prompts=6", "data.responses.max_new_tokens=6", "data.responses.prompt_tokens=32",
            "data.responses.tasks=[chat-qa,chat-summarise]"]
    corpus = run_job(compose([*base, f"paths.results_dir={tmp_path / 'a'}"])).record
    responses = run_job(compose([*base, "data.source=responses", f"paths.results_dir={tmp_path / 'b'}"])).record
    assert corpus["draft"]["data_source"] == "corpus"
    assert responses["draft"]["data_source"] == "responses"
    assert responses["draft"]["responses"]["n_prompts"] == 6
    assert responses["draft"]["corpus_manifest_hash"] != corpus["draft"]["corpus_manifest_hash"]
    assert responses["draft"]["checkpoint"] != corpus["draft"]["checkpoint"]
    assert set(load(tmp_path / "b").data_source) == {"responses"}


def test_requests_longer_than_the_targets_positions_are_one_clear_error(tmp_path: Path) -> None:
    from scylla.data.corpora import CorpusError
    from scylla.data.tokenizer import get_tokenizer
    from scylla.models.gguf import convert_gguf
    from scylla.models.pretrained import load_causal_lm

    folder = convert_gguf(write_tiny_gguf(tmp_path / "short.gguf", tiny_llama(), chat_template=CHAT), tmp_path)
    model, tok = load_causal_lm(folder), get_tokenizer(f"pretrained:{folder}")
    with pytest.raises(CorpusError, match=r"max_position_embeddings=128.*lower data.responses.prompt_tokens"):
        _generate(model, tok, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("shard-*"))


def test_responses_need_a_chat_target_and_a_training_family() -> None:
    with pytest.raises(ConfigError, match="data.source: responses are the target's answers"):
        compose(["data.source=responses"])  # the self-trained preset target has no chat template
    with pytest.raises(ConfigError, match="draft.family=ngram does not train"):
        compose(["experiment=demo", "draft=ngram", "draft.vocab_size=null", "data.source=responses"])
    with pytest.raises(ConfigError, match="data.responses.n_prompts"):
        compose(["experiment=demo", "data.responses.n_prompts=0"])
