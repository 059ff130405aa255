"""The acceptance oracle against the engine: exact at temperature 0, unbiased at temperature > 0.

The oracle prices every gamma and static tree from one teacher-forced draft pass along the target's
cached continuations; these tests decode the same cells for real and compare counters per prompt.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import scylla.measure.oracle as oracle_mod
from scylla import acceptance_oracle
from scylla.decode.engine import speculative_generate
from scylla.decode.proposers import NgramProposer
from scylla.measure.continuations import ContinuationError, target_continuations
from scylla.measure.oracle import OracleError, TeacherForced
from scylla.testing import bigram_llama, perturbed_copy, random_prompts, tiny_llama

VOCAB = 64
COUNTERS = ("prompt_drafted", "prompt_accepted", "prompt_steps", "prompt_generated", "accepted_per_position",
            "reached_per_position", "drafted", "accepted", "steps", "generated_tokens")


@pytest.fixture(scope="module")
def pair():
    target = tiny_llama(VOCAB, d_model=64, n_layers=2, seed=1)
    return target, perturbed_copy(target, noise=0.02, seed=5)


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(8, VOCAB, 3, 20, seed=0)  # ragged: 3..20 tokens


@pytest.mark.parametrize("with_eos", [False, True])
def test_exact_at_temperature_zero_per_prompt(pair, prompts, with_eos):
    """Every counter, per prompt, for chains of several lengths and static trees, at batch sizes 1, 3
    and 8; with an EOS that some rows accept inside a draft, and rows cut by max_new_tokens."""
    target, draft = pair
    max_new = 25
    eos = None
    if with_eos:  # a token the target emits mid-sequence in several rows
        plain = speculative_generate(target, None, prompts, gamma=0, max_new_tokens=max_new).sequences
        counts = np.bincount([t for s in plain for t in s[2:-2]], minlength=VOCAB)
        eos = int(counts.argmax())
    oracle = acceptance_oracle(target, draft, prompts, gammas=[1, 3, 5], trees=["static:2x2x1", "static:3x1"],
                               max_new_tokens=max_new, eos_token_id=eos)
    assert set(oracle) == {"chain:1", "chain:3", "chain:5", "static:2x2x1", "static:3x1"}
    eos_inside = 0
    for shape, expected in oracle.items():
        for batch in (1, 3, 8):
            got = speculative_generate(target, draft, prompts, tree=shape, max_new_tokens=max_new, batch_size=batch,
                                       eos_token_id=eos).stats
            for key in COUNTERS:
                assert getattr(got, key) == getattr(expected, key), (shape, batch, key)
            eos_inside += got.generated_tokens < got.n_prompts + got.steps + got.accepted
        assert expected.tau == pytest.approx(1 + expected.accepted / expected.steps)
        assert 0 < expected.alpha < 1
    if with_eos:
        assert eos_inside > 0, "the EOS case must include an EOS accepted inside a draft"
        assert any(n < max_new for n in oracle["chain:3"].prompt_generated)
    assert all(n <= max_new for n in oracle["chain:3"].prompt_generated)


def test_ngram_lookup_is_priced_exactly(pair, prompts):
    target, _ = pair
    repetitive = [p * 3 for p in prompts]
    expected = acceptance_oracle(target, NgramProposer(4), repetitive, gammas=[4], max_new_tokens=20)["chain:4"]
    got = speculative_generate(target, NgramProposer(4), repetitive, max_new_tokens=20, batch_size=3).stats
    for key in COUNTERS:
        assert getattr(got, key) == getattr(expected, key), key
    assert expected.drafted > 0


def test_both_per_position_conventions_are_reported(pair, prompts):
    target, draft = pair
    st = acceptance_oracle(target, draft, prompts, gammas=[3], max_new_tokens=20)["chain:3"]
    d = st.to_dict()
    assert d["alpha_n"] == pytest.approx([a / r for a, r in zip(st.accepted_per_position, st.reached_per_position)])
    assert d["alpha_n_unconditional"] == pytest.approx([a / st.steps for a in st.accepted_per_position])
    assert "conditional" in d["alpha_n_definition"] and "vLLM" in d["alpha_n_unconditional_definition"]
    assert all(u <= c + 1e-12 for u, c in zip(d["alpha_n_unconditional"], d["alpha_n"]))


# ---------------------------------------------------------------------------------------------------
# Temperature > 0


def _bigram_pair():
    """Target: P(A) = 0.7 after every token. Draft: always A after A, the target's law after B. After
    an A, the draft's token is accepted exactly when the emitted token is A, which makes the next
    position an A-context again: acceptance at consecutive positions is correlated through the emitted
    token, which an oracle that ignores the emitted token gets wrong."""
    lp = [math.log(0.7), math.log(0.3)]
    return bigram_llama(torch.tensor([lp, lp])), bigram_llama(torch.tensor([[0.0, -40.0], lp]))


def _wrong_teacher_forced(target, draft):
    """The deliberately wrong oracle: per position, acceptance sum_v min(p, q) (the unconditional rate)
    instead of min(1, q(y) / p(y)) for the emitted token y."""
    real = oracle_mod.teacher_forced

    def scorer(d, cont, temperature, **kwargs):
        tf = real(d, cont, temperature, **kwargs)
        logq = []
        for i, y in enumerate(cont.tokens):
            seq = torch.tensor([cont.prompts[cont.row_prompt[i]] + y])
            with torch.no_grad():
                p = torch.softmax(target(seq).logits[0] / temperature, -1)
                q = torch.softmax(draft(seq).logits[0] / temperature, -1)
            start = seq.shape[1] - len(y)
            overlap = torch.minimum(p, q).sum(-1)[start: start + len(y) - 1]
            logq.append((overlap.log() + torch.tensor(cont.logprobs[i][1:])).numpy())
        return TeacherForced(tf.top1, tf.rank, logq)

    return scorer


def test_unbiased_at_temperature_above_zero_and_a_wrong_oracle_is_caught(monkeypatch):
    """tau and alpha of many seeded engine runs against the oracle's expectation (z-test, 4 sigma); the
    wrong oracle that sums min(p, q) over the vocabulary fails the same test."""
    target, draft = _bigram_pair()
    prompts = [[0], [1], [0, 0], [1, 0]] * 4
    gamma, max_new, runs = 5, 20, 100
    engine = np.array([[s.tau, s.alpha] for s in (
        speculative_generate(target, draft, prompts, gamma=gamma, max_new_tokens=max_new, temperature=1.0,
                             seed=seed).stats for seed in range(runs))])
    mean, se = engine.mean(0), engine.std(0, ddof=1) / np.sqrt(runs)

    def oracle_estimates() -> np.ndarray:
        reps = [acceptance_oracle(target, draft, prompts, gammas=[gamma], max_new_tokens=max_new, temperature=1.0,
                                  samples_per_prompt=25, seed=1000 + r)[f"chain:{gamma}"] for r in range(4)]
        return np.array([[s.tau, s.alpha] for s in reps])

    good = oracle_estimates()
    z_good = np.abs(good.mean(0) - mean) / np.sqrt(se**2 + good.var(0, ddof=1) / len(good))
    assert (z_good < 4).all(), (good.mean(0), mean, z_good)
    monkeypatch.setattr(oracle_mod, "teacher_forced", _wrong_teacher_forced(target, draft))
    wrong = oracle_estimates()
    z_wrong = np.abs(wrong.mean(0) - mean) / np.sqrt(se**2 + wrong.var(0, ddof=1) / len(wrong))
    assert z_wrong[0] > 4, (wrong.mean(0), mean, z_wrong)  # tau is off by many standard errors


# ---------------------------------------------------------------------------------------------------
# Continuations


def test_cached_continuations_are_reused_not_regenerated(pair, prompts, tmp_path, monkeypatch):
    target, draft = pair
    first = target_continuations(target, prompts, max_new_tokens=12, cache_dir=tmp_path)
    files = list((tmp_path / "continuations").glob("*.json"))
    assert len(files) == 1

    def no_decoding(*a, **k):
        raise AssertionError("cached continuations were regenerated")

    monkeypatch.setattr("scylla.decode.engine.speculative_generate", no_decoding)
    again = target_continuations(target, prompts, max_new_tokens=12, cache_dir=tmp_path)
    assert again.tokens == first.tokens and again.key == first.key
    stats = acceptance_oracle(target, draft, prompts, gammas=[2], max_new_tokens=12, cache_dir=str(tmp_path))
    assert stats["chain:2"].steps > 0
    # A different request (another max_new_tokens, another target) is another entry.
    monkeypatch.undo()
    target_continuations(target, prompts, max_new_tokens=13, cache_dir=tmp_path)
    target_continuations(draft, prompts, max_new_tokens=12, cache_dir=tmp_path)
    assert len(list((tmp_path / "continuations").glob("*.json"))) == 3


def test_a_corrupt_cached_continuation_is_one_clear_error(pair, prompts, tmp_path):
    target, _ = pair
    target_continuations(target, prompts, max_new_tokens=8, cache_dir=tmp_path)
    path = next((tmp_path / "continuations").glob("*.json"))
    blob = json.loads(path.read_text())
    blob["payload"] = blob["payload"].replace("[", "[1,", 1)
    path.write_text(json.dumps(blob))
    with pytest.raises(ContinuationError, match="sha256.*delete it"):
        target_continuations(target, prompts, max_new_tokens=8, cache_dir=tmp_path)
    path.write_text("{not json")
    with pytest.raises(ContinuationError, match="unreadable"):
        target_continuations(target, prompts, max_new_tokens=8, cache_dir=tmp_path)


def test_requests_the_oracle_cannot_price_are_refused(pair, prompts):
    target, draft = pair
    with pytest.raises(OracleError, match="dynamic tree"):
        acceptance_oracle(target, draft, prompts, trees=["dynamic:3x2x4"], max_new_tokens=8)
    with pytest.raises(OracleError, match="at least one"):
        acceptance_oracle(target, draft, prompts, max_new_tokens=8)
    cont = target_continuations(target, prompts, max_new_tokens=8)
    with pytest.raises(OracleError, match="max_new_tokens=8"):
        acceptance_oracle(target, draft, prompts, gammas=[2], max_new_tokens=9, continuations=cont)
