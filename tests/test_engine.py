"""The engine: lossless output, exact counters, ragged rows, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from scylla import speculative_generate
from scylla.measure import measure_speedup
from scylla.models import load_causal_lm
from scylla.testing import perturbed_copy, random_prompts, tiny_llama

VOCAB = 64


@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, d_model=64, n_layers=2, seed=1)


@pytest.fixture(scope="module")
def drafts(target):
    return {
        "perfect": target,
        "medium": perturbed_copy(target, noise=0.02, seed=5),
        "poor": tiny_llama(VOCAB, d_model=32, n_layers=1, n_heads=2, seed=2),
    }


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(8, VOCAB, 3, 20, seed=0)


def hf_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def references(target, prompts):
    return [hf_greedy(target, p, 25) for p in prompts]


@pytest.mark.parametrize("draft_name", ["perfect", "medium", "poor"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_greedy_matches_target_generate(target, drafts, prompts, references, draft_name, batch_size):
    out = speculative_generate(target, drafts[draft_name], prompts, gamma=4, max_new_tokens=25,
                               batch_size=batch_size)
    assert out.sequences == references
    assert out.stats.generated_tokens == 25 * len(prompts)


def test_perfect_draft_has_alpha_one_and_tau_gamma_plus_one(target, prompts):
    gamma = 4
    # 1 token from prefill + 5 full steps of gamma+1 tokens: no step is shortened by the cap.
    out = speculative_generate(target, target, prompts, gamma=gamma, max_new_tokens=1 + 5 * (gamma + 1), batch_size=3)
    assert out.stats.alpha == 1.0
    assert out.stats.tau == gamma + 1
    assert out.stats.alpha_n == [1.0] * gamma
    assert out.stats.steps == 5 * len(prompts)


def test_plain_decoding_is_the_same_path(target, prompts, references):
    for out in (speculative_generate(target, None, prompts, gamma=3, max_new_tokens=25),
                speculative_generate(target, target, prompts, gamma=0, max_new_tokens=25)):
        assert out.sequences == references
        assert out.stats.tau == 1.0 and out.stats.drafted == 0 and out.stats.draft_forwards == 0
        assert out.stats.steps == 24 * len(prompts)  # the first token comes from the prefill


def simulate_greedy_trace(target_out: list[int], draft_pred: list[int], gamma: int, max_new: int):
    """Independent accept/reject trace: draft_pred[j] is the draft's argmax for target_out[j]
    given the prompt and target_out[:j] (teacher forcing along the target's greedy output)."""
    i, steps, accepted = 1, 0, 0
    acc_pos, reach_pos = [0] * gamma, [0] * gamma
    while i < max_new:
        gb = min(gamma, max_new - i - 1)
        n = 0
        while n < gb:
            reach_pos[n] += 1
            if draft_pred[i + n] != target_out[i + n]:
                break
            acc_pos[n] += 1
            n += 1
        steps += 1
        accepted += n
        i += n + 1
    return steps, accepted, acc_pos, reach_pos


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_counters_match_teacher_forced_simulation(target, drafts, prompts, references, batch_size):
    gamma, max_new = 3, 25
    draft = drafts["medium"]
    exp_steps = exp_acc = 0
    exp_acc_pos, exp_reach = np.zeros(gamma, int), np.zeros(gamma, int)
    for prompt, ref in zip(prompts, references):
        with torch.no_grad():
            logits = draft(torch.tensor([prompt + ref])).logits[0]
        pred = logits[len(prompt) - 1 : len(prompt) - 1 + len(ref)].argmax(-1).tolist()
        s, a, ap, rp = simulate_greedy_trace(ref, pred, gamma, max_new)
        exp_steps += s
        exp_acc += a
        exp_acc_pos += ap
        exp_reach += rp
    out = speculative_generate(target, draft, prompts, gamma=gamma, max_new_tokens=max_new, batch_size=batch_size)
    st = out.stats
    assert 0.05 < st.alpha < 0.95, "the medium draft should give ragged acceptance"
    assert st.steps == exp_steps
    assert st.accepted == exp_acc
    assert st.accepted_per_position == exp_acc_pos.tolist()
    assert st.reached_per_position == exp_reach.tolist()
    assert st.tau == pytest.approx(1 + exp_acc / exp_steps)
    assert st.alpha == pytest.approx(exp_acc / st.drafted)
    assert sum(st.prompt_accepted) == st.accepted and sum(st.prompt_steps) == st.steps
    # Every generated token is the prefill token, an accepted draft token or a correction/bonus.
    assert st.generated_tokens == len(prompts) + st.steps + st.accepted


def test_rows_stop_independently_at_eos(target, drafts, prompts, references):
    eos = references[0][6]
    expected = []
    for ref in references:
        expected.append(ref[: ref.index(eos) + 1] if eos in ref else ref)
    assert len({len(e) for e in expected}) > 1, "rows should stop at different lengths"
    out = speculative_generate(target, drafts["medium"], prompts, gamma=4, max_new_tokens=25, batch_size=8,
                               eos_token_id=eos)
    assert out.sequences == expected
    assert out.stats.generated_tokens == sum(len(e) for e in expected)


def test_long_generation_with_cache_compaction(target, drafts):
    """Rows accepting different amounts leave holes; compaction must keep outputs exact."""
    prompts = random_prompts(6, VOCAB, 2, 30, seed=9)
    refs = [hf_greedy(target, p, 120) for p in prompts]
    out = speculative_generate(target, drafts["medium"], prompts, gamma=5, max_new_tokens=120, batch_size=6)
    assert out.sequences == refs


def test_target_not_built_by_us_loaded_from_folder(tmp_path):
    """Any AutoModelForCausalLM works through the public forward API (here GPT-2, saved locally)."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4, n_positions=256, initializer_range=0.5)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2-tiny")
    target = load_causal_lm(tmp_path / "gpt2-tiny")
    draft = perturbed_copy(target, noise=0.02, seed=1)
    prompts = random_prompts(5, VOCAB, 3, 15, seed=3)
    refs = [hf_greedy(target, p, 20) for p in prompts]
    out = speculative_generate(target, draft, prompts, gamma=3, max_new_tokens=20, batch_size=5)
    assert out.sequences == refs
    assert 0 < out.stats.alpha < 1


def test_missing_target_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_causal_lm(tmp_path / "nope")


def _exact_marginals(model, prompt: list[int], n_tokens: int, temperature: float) -> list[np.ndarray]:
    """Exact marginal distribution of each generated position by enumerating all continuations."""
    vocab = model.config.vocab_size
    with torch.no_grad():
        prefixes = [[]]
        weights = torch.ones(1)
        marginals = []
        for _ in range(n_tokens):
            batch = torch.tensor([prompt + p for p in prefixes])
            probs = torch.softmax(model(batch).logits[:, -1].float() / temperature, -1)
            joint = weights[:, None] * probs
            marginals.append(joint.sum(0).numpy())
            prefixes = [p + [v] for p in prefixes for v in range(vocab)]
            weights = joint.reshape(-1)
    return marginals


def test_sampling_is_lossless():
    vocab = 6
    target = tiny_llama(vocab, d_model=32, n_layers=1, n_heads=2, seed=11, init_std=0.3)
    draft = tiny_llama(vocab, d_model=32, n_layers=1, n_heads=2, seed=12, init_std=0.3)
    prompt = [1, 4, 2]
    n_rows, n_tok, temp = 6000, 3, 1.0
    out = speculative_generate(target, draft, [prompt] * n_rows, gamma=2, max_new_tokens=n_tok, temperature=temp,
                               seed=123)
    samples = np.array(out.sequences)
    t_marg = _exact_marginals(target, prompt, n_tok, temp)
    d_marg = _exact_marginals(draft, prompt, n_tok, temp)
    assert 0.05 < out.stats.alpha < 0.95
    for pos in range(n_tok):
        emp = np.bincount(samples[:, pos], minlength=vocab) / n_rows
        tv_target = 0.5 * np.abs(emp - t_marg[pos]).sum()
        tv_draft = 0.5 * np.abs(emp - d_marg[pos]).sum()
        assert tv_target < 0.03, f"position {pos}: empirical differs from the target's distribution"
        assert tv_draft > 0.1, f"position {pos}: the test cannot tell target from draft here"
    # Same seed, same samples: sampling is reproducible.
    again = speculative_generate(target, draft, [prompt] * 50, gamma=2, max_new_tokens=n_tok, temperature=temp, seed=7)
    again2 = speculative_generate(target, draft, [prompt] * 50, gamma=2, max_new_tokens=n_tok, temperature=temp, seed=7)
    assert again.sequences == again2.sequences


def test_measure_speedup_reports_consistent_ratios(target, drafts, prompts):
    m = measure_speedup(target, drafts["perfect"], prompts, gamma=3, batch_size=4, max_new_tokens=17)
    assert m.baseline.tau == 1.0 and m.speculative.tau == 4.0
    assert m.speedup == pytest.approx(m.speculative_tps / m.baseline_tps)
    assert m.c == pytest.approx(m.draft_step_seconds / m.target_step_seconds)
    assert math.isfinite(m.c) and m.c > 0
    d = m.to_dict()
    assert d["tau"] == 4.0 and "tau_definition" in d


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(gamma=-1), "gamma"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(prompts=[]), "prompts is empty"),
        (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
        (dict(prompts=[[1, VOCAB + 5]]), "outside the target vocabulary"),
        (dict(temperature=-1.0), "temperature"),
    ],
)
def test_bad_inputs_raise_one_clear_error(target, kwargs, message):
    args = dict(prompts=[[1, 2, 3]], gamma=2, max_new_tokens=5)
    args.update(kwargs)
    prompts = args.pop("prompts")
    with pytest.raises(ValueError, match=message):
        speculative_generate(target, target, prompts, **args)


def test_vocabulary_mismatch_is_rejected(target):
    other = tiny_llama(VOCAB + 1, d_model=32, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match="vocabulary size"):
        speculative_generate(target, other, [[1, 2, 3]], gamma=2, max_new_tokens=5)


def test_too_long_for_the_target_is_rejected():
    small = tiny_llama(VOCAB, d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        speculative_generate(small, None, [[1] * 10], gamma=0, max_new_tokens=10)
