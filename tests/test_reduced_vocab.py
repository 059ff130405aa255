"""Reduced draft vocabularies (``draft.vocab_size``): training, checkpoints, engine, oracle, losslessness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lossless import chi2_pvalue, exact_joint
from scylla import acceptance_oracle
from scylla.decode.engine import speculative_generate
from scylla.models.reduced import ReducedVocabFactory, ReducedVocabLlama, vocab_from_streams
from scylla.models.vocab import DraftVocab
from scylla.testing import random_prompts, tiny_llama

VOCAB = 64


def reduced_copy(target: torch.nn.Module, ids: list[int], noise: float = 0.0, seed: int = 0) -> ReducedVocabLlama:
    """A draft that is the target restricted to ``ids`` (plus weight noise): accepts where the target's
    choice lies inside its vocabulary."""
    from scylla.models.llama import ModelSpec

    c = target.config
    spec = ModelSpec(d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
                     vocab_size=c.vocab_size, ffn_dim=c.intermediate_size)
    vocab = DraftVocab(torch.tensor(sorted(ids), dtype=torch.int64), c.vocab_size)
    draft = ReducedVocabFactory(vocab)(spec)
    sd = {k: v for k, v in target.state_dict().items() if k != "lm_head.weight"}
    sd["lm_head.weight"] = target.lm_head.weight.detach()[vocab.draft_to_target]
    g = torch.Generator().manual_seed(seed)
    sd = {k: v + noise * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in sd.items()}
    missing, unexpected = draft.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"draft_to_target"}
    return draft.eval()


@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, d_model=64, n_layers=2, seed=1)


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(8, VOCAB, 3, 20, seed=0)


def test_vocab_from_streams_and_training_loss_ignores_out_of_vocab_labels() -> None:
    stream = np.array([3, 3, 3, 5, 5, 7, 9, 9, 9, 9], dtype=np.uint16)
    vocab, covered = vocab_from_streams([stream], 16, 2, always=(0,))
    assert vocab.draft_to_target.tolist() == [0, 9] and covered == pytest.approx(4 / 10)
    vocab, covered = vocab_from_streams([stream], 16, 3)
    assert vocab.draft_to_target.tolist() == [3, 5, 9] and covered == pytest.approx(9 / 10)
    from scylla.models.llama import ModelSpec

    model = ReducedVocabFactory(vocab)(ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=16))
    x = torch.tensor([[3, 5, 7, 9, 11, 3]])
    out = model(input_ids=x, labels=x)
    assert out.logits.shape == (1, 6, 3)
    # Labels 5, 7, 9, 11, 3 -> draft ids 1, -, 2, -, 0: the loss is the mean over the three in-vocab ones.
    lp = torch.log_softmax(out.logits[0, :-1].float(), -1)
    expected = -(lp[0, 1] + lp[2, 2] + lp[4, 0]) / 3
    torch.testing.assert_close(out.loss, expected)
    assert float(model(input_ids=x[:, :2] * 0 + 7, labels=x[:, :2] * 0 + 7).loss.detach()) == 0.0


def test_checkpoint_round_trip_keeps_the_vocabulary(tmp_path: Path, target) -> None:
    from scylla.training.checkpoints import load_checkpoint, save_checkpoint

    draft = reduced_copy(target, list(range(0, VOCAB, 3)), noise=0.01)
    save_checkpoint(draft, tmp_path / "ck", {"val_loss": 1.0})
    loaded, _ = load_checkpoint(tmp_path / "ck")
    assert isinstance(loaded, ReducedVocabLlama)
    assert torch.equal(loaded.draft_vocab.draft_to_target, draft.draft_vocab.draft_to_target)
    x = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, draft(x).logits)


@pytest.mark.parametrize("shape", ["chain:3", "static:2x2x1", "dynamic:3x2x4"])
def test_greedy_output_is_plain_greedy_and_the_oracle_is_exact(target, prompts, shape) -> None:
    plain = speculative_generate(target, None, prompts, gamma=0, max_new_tokens=20)
    # The draft holds the tokens the target actually emits most, so it accepts often but not always.
    counts = np.bincount([t for s in plain.sequences for t in s], minlength=VOCAB)
    ids = np.argsort(-counts, kind="stable")[:24].tolist()
    draft = reduced_copy(target, ids, noise=0.01)
    for batch in (1, 8):
        out = speculative_generate(target, draft, prompts, tree=shape, max_new_tokens=20, batch_size=batch)
        assert out.sequences == plain.sequences
        assert 0 < out.stats.accepted < out.stats.drafted
    if not shape.startswith("dynamic"):
        expected = acceptance_oracle(target, draft, prompts, trees=[shape], gammas=[], max_new_tokens=20)[shape]
        got = speculative_generate(target, draft, prompts, tree=shape, max_new_tokens=20, batch_size=3).stats
        for key in ("prompt_accepted", "prompt_steps", "accepted_per_position", "accepted", "steps"):
            assert getattr(got, key) == getattr(expected, key), key


@pytest.mark.parametrize("shape", ["chain:3", "static:2x2"])
def test_sampling_with_a_reduced_vocabulary_is_lossless(shape) -> None:
    """The draft's q is zero outside its vocabulary; the residual covers those tokens. Exact chi-square
    of every position's marginal against the target's enumerated law (tests/lossless.py)."""
    vocab, n_tok, n_rows, temperature = 6, 3, 6000, 1.0
    target = tiny_llama(vocab, d_model=32, n_layers=1, n_heads=2, seed=11, init_std=0.3)
    draft = reduced_copy(target, [0, 2, 3], noise=0.05, seed=3)  # tokens 1, 4, 5 only from the residual
    prompt = [1, 4, 2]
    out = speculative_generate(target, draft, [prompt] * n_rows, tree=shape, max_new_tokens=n_tok,
                               temperature=temperature, seed=5, batch_size=2000)
    assert out.stats.accepted > 100
    samples = np.array(out.sequences)
    joint = exact_joint(target, prompt, n_tok, temperature)
    for pos in range(n_tok):
        other = tuple(a for a in range(n_tok) if a != pos)
        counts = np.bincount(samples[:, pos], minlength=vocab)
        assert counts[[1, 4, 5]].sum() > 0  # out-of-vocabulary tokens still appear
        assert chi2_pvalue(counts, joint.sum(other)) > 1e-4, f"position {pos}"
    counts = np.bincount(samples[:, 0] * vocab + samples[:, 1], minlength=vocab**2)
    assert chi2_pvalue(counts, joint.sum(2).ravel()) > 1e-4


def test_draft_vocab_larger_than_the_target_is_one_clear_error(tmp_path: Path) -> None:
    from scylla.config import ConfigError, compose
    from scylla.harness.pipeline import run_job

    cfg = compose(["experiment=smoke", "draft.vocab_size=300", f"paths.results_dir={tmp_path / 'r'}",
                   "runtime.progress=false"])
    with pytest.raises(ConfigError, match=r"draft.vocab_size: 300 is larger than the target's vocabulary \(257"):
        run_job(cfg)
    with pytest.raises(ConfigError, match="draft.vocab_size"):
        compose(["draft=ngram", "draft.vocab_size=100"])


def test_pipeline_records_coverage(tmp_path: Path) -> None:
    from scylla.config import compose
    from scylla.harness.pipeline import run_job

    cfg = compose(["experiment=smoke", "draft.vocab_size=64", f"paths.results_dir={tmp_path / 'r'}",
                   "runtime.progress=false"])
    rec = run_job(cfg).record
    d = rec["draft"]
    assert d["vocab_size"] == 64 and d["target_vocab_size"] == 257
    assert 0.5 < d["coverage"] < 1 and set(d["coverage_by_corpus"]) == set(rec["config"]["data"]["corpora"])
    assert rec["measurements"]
