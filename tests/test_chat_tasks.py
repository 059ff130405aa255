"""Chat tasks: eval-split passages wrapped in a request and rendered with the target's chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from gguf_tiny import tiny_llama, write_tiny_gguf
from scylla.data.corpora import CorpusError, load_corpus
from scylla.data.tasks import TASKS, eval_prompts
from scylla.data.tokenizer import get_tokenizer

CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from scylla.models.gguf import convert_gguf

    root = tmp_path_factory.mktemp("chat")
    path = write_tiny_gguf(root / "tiny.gguf", tiny_llama(), chat_template=CHAT)
    return get_tokenizer(f"pretrained:{convert_gguf(path, root)}")


@pytest.mark.parametrize("task", ["chat-summarise", "chat-qa", "chat-code"])
def test_chat_prompts_use_the_template_and_eval_documents_only(chat_tokenizer, task: str) -> None:
    prompts = eval_prompts(task, chat_tokenizer, 6, 48, seed=3)
    assert len(prompts) == 6
    assert prompts == eval_prompts(task, chat_tokenizer, 6, 48, seed=3)  # seeded
    texts = [chat_tokenizer.decode(p) for p in prompts]
    assert all(t.startswith("<|user|>") and t.endswith("<|assistant|>") for t in texts)
    corpus = load_corpus(TASKS[task].corpus)
    train_text = "\n".join(corpus.train)
    eval_text = "\n".join(corpus.eval)
    for t in texts:
        # The passage's longest line comes from an eval document (never from a training one).
        body = t[len("<|user|>"):-len("<|assistant|>")]
        line = max((ln for ln in body.splitlines()[1:] if not ln.startswith(("```", "Question:", "Passage:"))), key=len)
        assert line.strip() in eval_text
        assert len(line.strip()) < 30 or line.strip() not in train_text
    if task == "chat-code":
        assert all("```python\ndef " in t for t in texts)


def test_chat_tasks_need_a_chat_template() -> None:
    with pytest.raises(CorpusError, match="needs a tokenizer with a chat template"):
        eval_prompts("chat-qa", get_tokenizer("byte"), 2, 32)
    # Continuation tasks still work on any tokenizer.
    assert len(eval_prompts("bible", get_tokenizer("byte"), 2, 32)) == 2
