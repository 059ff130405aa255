"""The engine: lossless output, exact counters, ragged rows, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from scylla import speculative_generate
from scylla.measure.speedup import measure_speedup
from scylla.models.pretrained import load_causal_lm
from scylla.testing import perturbed_copy, random_prompts, tiny_llama

from lossless import chi2_pvalue, exact_joint

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
    if draft_name == "perfect":
        assert out.stats.alpha == 1.0
    elif draft_name == "poor":
        assert out.stats.alpha < 0.3, "a random draft should be rejected most of the time"


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


def simulate_greedy_trace(target_out: list[int], draft_pred: list[int], gamma: int, max_new: int,
                          eos: int | None = None) -> dict:
    """Independent accept/reject trace: draft_pred[j] is the draft's argmax for target_out[j]
    given the prompt and target_out[:j] (teacher forcing along the target's greedy output, which
    ends at its first EOS when ``eos`` is given). An accepted EOS ends the sequence: later draft
    positions are past its end and not judged."""
    i, steps, accepted, drafted, eos_in_draft = 1, 0, 0, 0, False
    acc_pos, reach_pos = [0] * gamma, [0] * gamma
    while i < len(target_out):
        gb = min(gamma, max_new - i - 1)
        n, judged = 0, gb
        while n < gb:
            reach_pos[n] += 1
            if draft_pred[i + n] != target_out[i + n]:
                break
            acc_pos[n] += 1
            n += 1
            if eos is not None and target_out[i + n - 1] == eos:
                judged, eos_in_draft = n, True
                break
        steps += 1
        accepted += n
        drafted += judged
        i += n + 1
    return dict(steps=steps, accepted=accepted, drafted=drafted, acc_pos=np.array(acc_pos),
                reach_pos=np.array(reach_pos), eos_in_draft=eos_in_draft)


def _teacher_forced(draft, prompts, refs, gamma, max_new, eos=None) -> list[dict]:
    traces = []
    for prompt, ref in zip(prompts, refs):
        with torch.no_grad():
            logits = draft(torch.tensor([prompt + ref])).logits[0]
        pred = logits[len(prompt) - 1 : len(prompt) - 1 + len(ref)].argmax(-1).tolist()
        out = ref[: ref.index(eos) + 1] if eos is not None and eos in ref else ref
        traces.append(simulate_greedy_trace(out, pred, gamma, max_new, eos))
    return traces


def _assert_counters_match(st, traces, n_prompts):
    assert st.prompt_steps == [t["steps"] for t in traces]
    assert st.prompt_accepted == [t["accepted"] for t in traces]
    assert st.prompt_drafted == [t["drafted"] for t in traces]
    assert st.steps == sum(t["steps"] for t in traces)
    assert st.accepted == sum(t["accepted"] for t in traces)
    assert st.drafted == sum(t["drafted"] for t in traces)
    assert st.accepted_per_position == sum(t["acc_pos"] for t in traces).tolist()
    assert st.reached_per_position == sum(t["reach_pos"] for t in traces).tolist()
    assert st.tau == pytest.approx(1 + st.accepted / st.steps)
    assert st.alpha == pytest.approx(sum(t["accepted"] for t in traces) / sum(t["drafted"] for t in traces))
    assert st.alpha_n == pytest.approx([a / r for a, r in zip(st.accepted_per_position, st.reached_per_position)])
    # Every generated token is the prefill token, an accepted draft token or a correction/bonus;
    # a row whose EOS was an accepted draft token gets no correction after it.
    assert st.generated_tokens == n_prompts + st.steps + st.accepted - sum(t["eos_in_draft"] for t in traces)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_counters_match_teacher_forced_simulation(target, drafts, prompts, references, batch_size):
    gamma, max_new = 3, 25
    draft = drafts["medium"]
    traces = _teacher_forced(draft, prompts, references, gamma, max_new)
    out = speculative_generate(target, draft, prompts, gamma=gamma, max_new_tokens=max_new, batch_size=batch_size)
    st = out.stats
    assert 0.05 < st.alpha < 0.95, "the medium draft should give ragged acceptance"
    assert len(set(st.prompt_accepted)) > 1
    _assert_counters_match(st, traces, len(prompts))


@pytest.mark.parametrize("draft_name", ["perfect", "medium"])
def test_eos_counters_match_teacher_forced_simulation(target, drafts, prompts, references, draft_name):
    """EOS as an accepted draft token (perfect draft) or as the correction (medium draft), batched."""
    gamma, max_new = 4, 25
    eos = references[0][6]
    traces = _teacher_forced(drafts[draft_name], prompts, references, gamma, max_new, eos)
    out = speculative_generate(target, drafts[draft_name], prompts, gamma=gamma, max_new_tokens=max_new,
                               batch_size=3, eos_token_id=eos)
    if draft_name == "perfect":
        assert any(t["eos_in_draft"] for t in traces), "the test should cover EOS inside accepted drafts"
        assert out.stats.alpha == 1.0 and out.stats.alpha_n == [1.0] * gamma
    _assert_counters_match(out.stats, traces, len(prompts))


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
    """Any AutoModelForCausalLM works through the public forward API (here GPT-2, saved locally), with a
    draft of its own architecture or a Llama draft sharing only the vocabulary."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4, n_positions=256, initializer_range=0.5)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2-tiny")
    target = load_causal_lm(tmp_path / "gpt2-tiny")
    assert type(target).__name__ == "GPT2LMHeadModel"
    prompts = random_prompts(5, VOCAB, 3, 15, seed=3)
    refs = [hf_greedy(target, p, 40) for p in prompts]
    for draft in (perturbed_copy(target, noise=0.02, seed=1), tiny_llama(VOCAB, d_model=32, n_layers=1, n_heads=2)):
        for batch_size in (1, 5):
            out = speculative_generate(target, draft, prompts, gamma=3, max_new_tokens=40, batch_size=batch_size)
            assert out.sequences == refs
            assert 0 <= out.stats.alpha < 1
        sampled = speculative_generate(target, draft, prompts, gamma=3, max_new_tokens=10, temperature=1.0, seed=0)
        assert [len(s) for s in sampled.sequences] == [10] * len(prompts)


def test_missing_target_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_causal_lm(tmp_path / "nope")


@pytest.mark.parametrize("draft_kind, temperature", [("random", 1.0), ("perturbed", 0.7)])
def test_sampling_is_lossless(draft_kind, temperature):
    """Every position's marginal and every adjacent pair's joint match the target's exact distribution
    (and are rejected for the draft's own). gamma=3 over 5 tokens gives multi-token acceptances, residual
    resampling after accepted tokens, bonus tokens, and rows with fewer remaining tokens than gamma."""
    vocab, n_tok, gamma, n_rows = 6, 5, 3, 6000
    target = tiny_llama(vocab, d_model=32, n_layers=1, n_heads=2, seed=11, init_std=0.3)
    if draft_kind == "random":
        draft = tiny_llama(vocab, d_model=32, n_layers=1, n_heads=2, seed=12, init_std=0.3)
    else:
        draft = perturbed_copy(target, noise=0.1, seed=3)
    prompt = [1, 4, 2]
    out = speculative_generate(target, draft, [prompt] * n_rows, gamma=gamma, max_new_tokens=n_tok,
                               temperature=temperature, seed=123, batch_size=2000)
    st = out.stats
    assert 0.1 < st.alpha < 0.9 and min(st.accepted_per_position) > 100, "acceptance should be ragged"
    samples = np.array(out.sequences)
    joint_t = exact_joint(target, prompt, n_tok, temperature)
    joint_d = exact_joint(draft, prompt, n_tok, temperature)
    checks = []
    for pos in range(n_tok):
        other = tuple(a for a in range(n_tok) if a != pos)
        checks.append((f"position {pos}", np.bincount(samples[:, pos], minlength=vocab),
                       joint_t.sum(other), joint_d.sum(other)))
    for pos in range(n_tok - 1):
        other = tuple(a for a in range(n_tok) if a not in (pos, pos + 1))
        checks.append((f"positions {pos},{pos + 1}", np.bincount(samples[:, pos] * vocab + samples[:, pos + 1],
                       minlength=vocab**2), joint_t.sum(other).ravel(), joint_d.sum(other).ravel()))
    for name, counts, p_target, p_draft in checks:
        assert chi2_pvalue(counts, p_target) > 1e-4, f"{name}: samples differ from the target's distribution"
        assert chi2_pvalue(counts, p_draft) < 1e-6, f"{name}: the test cannot tell target from draft here"
    # Same seed, same samples: sampling is reproducible.
    again = speculative_generate(target, draft, [prompt] * 50, gamma=2, max_new_tokens=n_tok, temperature=1.0, seed=7)
    again2 = speculative_generate(target, draft, [prompt] * 50, gamma=2, max_new_tokens=n_tok, temperature=1.0, seed=7)
    assert again.sequences == again2.sequences


def test_measure_speedup_reports_consistent_ratios(target, drafts, prompts):
    m = measure_speedup(target, drafts["perfect"], prompts, gamma=3, batch_size=4, max_new_tokens=17)
    assert m.baseline.tau == 1.0 and m.speculative.tau == 4.0
    assert m.speedup == pytest.approx(m.speculative_tps / m.baseline_tps)
    assert m.c == pytest.approx(m.draft_step_seconds / m.target_step_seconds)
    assert math.isfinite(m.c) and m.c > 0
    d = m.to_dict()
    assert d["tau"] == 4.0 and "tau_definition" in d


def test_measure_speedup_summarises_repeats_by_medians(target, drafts, prompts):
    """Step times and tokens/s are medians over the interleaved repeats, not the last run's timers."""
    m = measure_speedup(target, drafts["poor"], prompts, gamma=2, batch_size=4, max_new_tokens=9, repeats=3)
    assert len(m.speculative_runs) == len(m.baseline_runs) == 3
    assert m.speculative is m.speculative_runs[-1] and m.baseline is m.baseline_runs[-1]
    per_run = sorted(b.verify_seconds / b.verify_forwards for b in m.baseline_runs)
    assert m.target_step_seconds == per_run[1]
    assert m.baseline_tps == sorted(b.tokens_per_second for b in m.baseline_runs)[1]


def test_measure_speedup_decodes_contended_pairs_again(target, drafts, prompts, monkeypatch):
    """A (plain, speculative) pair timed while other processes used the CPU is decoded again, at most
    ``repeats`` times; the kept pairs' contention and the re-timed count reach the record."""
    import scylla.measure.probes as probes

    monkeypatch.setattr(probes.CpuContention, "MIN_WALL", 0.0)  # a tiny model's pair is shorter than a tick
    monkeypatch.setattr(probes, "foreign_core_limit", lambda threads=None: -1.0)  # every pair counts as contended
    m = measure_speedup(target, drafts["poor"], prompts, gamma=2, batch_size=4, max_new_tokens=9, repeats=2)
    assert len(m.speculative_runs) == len(m.baseline_runs) == 2 and m.pairs_retimed == 2
    assert len(m.foreign_cores) == 2
    from scylla.measure.rows import from_speedup

    entry = from_speedup("t", m, temperature=0.0, max_new_tokens=9)
    assert entry["pairs_retimed"] == 2 and len(entry["foreign_cores"]) == 2
    monkeypatch.setattr(probes, "foreign_core_limit", lambda threads=None: 1e9)
    quiet = measure_speedup(target, drafts["poor"], prompts, gamma=2, batch_size=4, max_new_tokens=9, repeats=2)
    assert quiet.pairs_retimed == 0 and len(quiet.speculative_runs) == 2


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
        (dict(temperature=float("nan")), "temperature"),
        (dict(gamma=True), "gamma"),
        (dict(gamma=2.0), "gamma"),
        (dict(eos_token_id=VOCAB), "eos_token_id"),
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


def test_numpy_integers_are_accepted(target, references, prompts):
    """Sweeps hand numpy integers; they are as good as Python ints."""
    out = speculative_generate(target, target, prompts[:2], gamma=np.int64(3), max_new_tokens=np.int64(25),
                               batch_size=np.int64(2))
    assert out.sequences == references[:2]


def test_draft_with_a_shorter_context_is_rejected(target):
    short = tiny_llama(VOCAB, d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    with pytest.raises(ValueError, match="draft's max_position_embeddings"):
        speculative_generate(target, short, [[1] * 10], gamma=2, max_new_tokens=10)
    # Plain decoding never runs the draft, so its context does not matter there.
    speculative_generate(target, short, [[1] * 10], gamma=0, max_new_tokens=10)


def test_stats_of_different_gammas_do_not_merge(target, prompts):
    a = speculative_generate(target, target, prompts[:2], gamma=2, max_new_tokens=5).stats
    b = speculative_generate(target, target, prompts[:2], gamma=3, max_new_tokens=5).stats
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(b)


def test_sampling_unchanged_by_cache_compaction(target, drafts, monkeypatch):
    """Compaction moves cache slots (positions stay in the keys): with the same seed, sampled outputs
    and counters must be those of a run that never compacts."""
    from scylla.decode.cache import CachedLM

    prompts = random_prompts(6, VOCAB, 2, 30, seed=9)
    kwargs = dict(gamma=5, max_new_tokens=50, batch_size=6, temperature=1.0, seed=4)
    compactions = []
    original = CachedLM.maybe_compact

    def counting(self, *args, **kw):
        before = self.valid.shape[1]
        original(self, *args, **kw)
        compactions.append(self.valid.shape[1] < before)

    monkeypatch.setattr(CachedLM, "maybe_compact", counting)
    compacted = speculative_generate(target, drafts["medium"], prompts, **kwargs)
    assert any(compactions), "the run should compact its caches"
    monkeypatch.setattr(CachedLM, "maybe_compact", lambda self, *a, **k: None)
    plain = speculative_generate(target, drafts["medium"], prompts, **kwargs)
    assert compacted.sequences == plain.sequences
    assert compacted.stats.accepted_per_position == plain.stats.accepted_per_position


def test_best_of_summary_takes_each_sides_fastest_run(target, drafts, prompts):
    m = measure_speedup(target, drafts["poor"], prompts, gamma=2, batch_size=4, max_new_tokens=9, repeats=3)
    best = m.summarised("best")
    assert best.baseline_tps == max(b.tokens_per_second for b in m.baseline_runs)
    assert best.speculative_tps == max(s.tokens_per_second for s in m.speculative_runs)
    assert best.target_step_seconds == min(b.verify_seconds / b.verify_forwards for b in m.baseline_runs)
    assert best.summarised("median").speedup == pytest.approx(m.speedup)
    with pytest.raises(ValueError, match="summary"):
        m.summarised("mean")


def test_block_forward_ratio_times_a_raw_cached_forward(target, prompts):
    """The benchmarks' hardware bound: cached forward on W tokens over 1 token; the cache is restored."""
    from transformers import DynamicCache

    from benchmarks.common import block_forward_ratio
    from scylla.models.hf_compat import cache_kwarg

    caches = []

    def forward_for(width):
        def forward(ids, cache):
            caches.append(cache)
            return target(input_ids=ids, use_cache=True, **cache_kwarg(target, cache))
        return forward

    x = block_forward_ratio(forward_for, list(prompts[0]) + [1, 2, 3, 4, 5], 5, DynamicCache, repeats=3)
    assert 0 < x < float("inf")
    assert {c.get_seq_length() for c in caches} == {len(prompts[0]) + 5}  # every block was cropped off again
