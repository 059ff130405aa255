"""Multi-token prediction: model, loss, cache paths, save/load, training, self-speculative decoding."""

from __future__ import annotations

import pytest
import torch

from scylla.measure.speedup import SpeedupMeasurement
from scylla.models.llama import ModelSpec, build_llama, count_parameters
from scylla.models.mtp import MTPConfig, MTPForCausalLM, build_mtp, mtp_factory, mtp_parameter_counts, synthetic_stream, train_on_stream, trunk_layers_for
from scylla.decode.mtp import measure_self_speculative, measure_self_speculative_ks, self_speculative_generate

VOCAB = 32
SPEC = ModelSpec(d_model=32, n_layers=2, n_heads=4, vocab_size=VOCAB, tie_embeddings=False, max_seq_len=256)
N_FUTURE = 4


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stream() -> torch.Tensor:
    return synthetic_stream(20_000, VOCAB, determinism=0.85, seed=0)


@pytest.fixture(scope="module")
def trained(stream) -> tuple[MTPForCausalLM, list[float]]:
    """A briefly trained 4-head model (~3 s): accepts some of its heads' guesses, not all."""
    torch.set_num_threads(1)
    model = build_mtp(SPEC, N_FUTURE, seed=0)
    losses = train_on_stream(model, stream, steps=150, seq_len=32, batch_size=8, seed=0)
    return model, losses


@pytest.fixture(scope="module")
def prompts(stream) -> list[list[int]]:
    """Eight prompts of ragged lengths (3..17) cut from the training language."""
    return [stream[1000 * i : 1000 * i + 3 + 2 * i].tolist() for i in range(8)]


def naive_greedy(model: torch.nn.Module, prompt: list[int], n: int, eos: int | None = None) -> list[int]:
    """Reference: full forward over the whole sequence per token, no cache, no batching."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == eos:
                break
    return ids[len(prompt):]


def reference_self_speculative(model: MTPForCausalLM, prompt: list[int], k: int, n: int,
                               eos: int | None = None) -> tuple[list[int], dict]:
    """Reference self-speculative greedy decoding of one row, written independently of the engine.

    No cache, no batching, per-head layers (not the fused decoding path): one full forward per step
    over prompt + emitted + guesses gives head 1's verdict at every guess and heads 2..k's next
    guesses at the last kept position. Returns the tokens and the counters the engine must report,
    plus ``eos_inside``: steps whose EOS was a kept guess (counters stop at the sequence's end)."""
    def argmax_heads(seq: list[int]) -> list[list[int]]:
        with torch.no_grad():
            lg = model(input_ids=torch.tensor([seq]), n_heads=k, return_head_logits=True).head_logits
        return [h[0].argmax(-1).tolist() for h in lg]

    best = argmax_heads(list(prompt))
    out, guesses = [best[0][-1]], [best[j][-1] for j in range(1, k)]
    c = {"drafted": 0, "accepted": 0, "steps": 0, "acc": [0] * (k - 1), "reached": [0] * (k - 1), "eos_inside": 0}
    while len(out) < n and out[-1] != eos:
        gb = min(k - 1, n - len(out) - 1)  # never offer more guesses than the row may still emit
        last = len(prompt) + len(out) - 1  # position of the last emitted token
        best = argmax_heads(list(prompt) + out + guesses[:gb])
        n_acc = 0
        while n_acc < gb and guesses[n_acc] == best[0][last + n_acc]:
            n_acc += 1
        emitted = guesses[:n_acc] + [best[0][last + n_acc]]
        counted, judged = n_acc, gb
        if eos in emitted:
            e = emitted.index(eos)
            emitted = emitted[: e + 1]
            if e < n_acc:  # EOS was a kept guess: guesses after it lie past the sequence's end
                counted = judged = e + 1
                c["eos_inside"] += 1
        reached = min(counted + 1, judged)
        c["drafted"] += judged
        c["accepted"] += counted
        c["steps"] += 1
        for j in range(counted):
            c["acc"][j] += 1
        for j in range(reached):
            c["reached"][j] += 1
        guesses = [best[j][last + n_acc] for j in range(1, k)]
        out += emitted
    return out, c


def assert_matches_reference(stats, refs: list[tuple[list[int], dict]], k: int) -> None:
    """Per-prompt and per-head counters of an engine run equal those of `reference_self_speculative`."""
    assert stats.prompt_drafted == [c["drafted"] for _, c in refs]
    assert stats.prompt_accepted == [c["accepted"] for _, c in refs]
    assert stats.prompt_steps == [c["steps"] for _, c in refs]
    assert stats.prompt_generated == [len(o) for o, _ in refs]
    assert stats.accepted_per_position == [sum(c["acc"][j] for _, c in refs) for j in range(k - 1)]
    assert stats.reached_per_position == [sum(c["reached"][j] for _, c in refs) for j in range(k - 1)]
    assert (stats.drafted, stats.accepted, stats.steps) == (sum(stats.prompt_drafted), sum(stats.prompt_accepted),
                                                            sum(stats.prompt_steps))


# ---------------------------------------------------------------------------------------------------
# Model


def test_depth_convention_and_parameter_counts():
    spec = ModelSpec(d_model=32, n_layers=4, n_heads=4, vocab_size=VOCAB, tie_embeddings=False)
    llama = count_parameters(build_llama(spec))
    one = build_mtp(spec, 1)
    assert one.n_trunk == 3 and count_parameters(one) == llama  # n_future=1 is the spec's Llama
    matched = build_mtp(spec, 3, parameter_matched=True)
    assert matched.n_trunk == 1 and count_parameters(matched) == llama
    wide = build_mtp(spec, 3)
    counts = mtp_parameter_counts(wide)
    assert wide.n_trunk == 3 and counts["trunk_layers"] == 3 and counts["n_future"] == 3
    assert counts["total"] - llama["total"] == 2 * counts["per_head"]
    assert counts["non_embedding"] == counts["trunk_non_embedding"] + 3 * counts["per_head"] + 32  # + final norm
    assert counts["total"] - counts["non_embedding"] == 2 * VOCAB * 32  # untied embedding + unembedding
    tied = build_mtp(ModelSpec(d_model=32, n_layers=2, n_heads=4, vocab_size=VOCAB), 2)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert count_parameters(tied)["total"] - count_parameters(tied)["non_embedding"] == VOCAB * 32


def test_bad_model_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="n_future must be an integer >= 1"):
        build_mtp(SPEC, 0)
    with pytest.raises(ValueError, match="parameter_matched needs spec.n_layers >= n_future"):
        build_mtp(SPEC, 3, parameter_matched=True)
    assert trunk_layers_for(SPEC, 2, parameter_matched=True) == 0
    with pytest.raises(Exception, match="n_future"):
        MTPConfig(hidden_size=32, num_attention_heads=4, n_future=0)


def test_one_head_model_is_exactly_a_llama():
    """Same weights in a plain Llama give the same logits: the trunk + head-1 path is a causal LM."""
    spec = ModelSpec(d_model=32, n_layers=3, n_heads=4, vocab_size=VOCAB, tie_embeddings=False)
    mtp = build_mtp(spec, 1, seed=1, init_std=0.5)
    llama = build_llama(spec, seed=2)
    mapped = {"model.embed_tokens.weight": mtp.embed_tokens.weight, "model.norm.weight": mtp.norm.weight,
              "lm_head.weight": mtp.lm_head.weight}
    for name, p in mtp.named_parameters():
        if name.startswith("layers."):
            mapped["model." + name] = p
        elif name.startswith("heads.0."):
            mapped["model.layers.2." + name[len("heads.0."):]] = p
    assert set(mapped) == set(llama.state_dict())
    llama.load_state_dict(mapped)
    x = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(mtp(input_ids=x).logits, llama(input_ids=x).logits)


def test_loss_is_sum_of_shifted_head_cross_entropies():
    model = build_mtp(SPEC, 3, init_std=0.5)
    x = torch.randint(0, VOCAB, (2, 10))
    labels = x.clone()
    labels[1, 7:] = -100
    out = model(input_ids=x, labels=labels)
    assert out.logits.shape == (2, 10, VOCAB) and len(out.head_logits) == 3
    for i, logits in enumerate(out.head_logits, start=1):
        manual = torch.nn.functional.cross_entropy(logits[:, :-i].reshape(-1, VOCAB), labels[:, i:].reshape(-1),
                                                   ignore_index=-100)
        torch.testing.assert_close(out.head_losses[i - 1], manual)
    torch.testing.assert_close(out.loss, out.head_losses.sum())
    torch.testing.assert_close(out.next_token_loss, out.head_losses[0])
    # A sequence too short for the far heads still trains head 1 (no NaN).
    short = model(input_ids=x[:, :2], labels=x[:, :2])
    assert torch.isfinite(short.loss) and float(short.head_losses[2].detach()) == 0.0


def test_fused_heads_match_per_head_layers_with_cache_and_padding():
    """The decoding path (k heads as one batched layer, fused cache) equals the per-head layers."""
    model = build_mtp(ModelSpec(d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=VOCAB,
                                tie_embeddings=False), 3, init_std=0.5)
    from transformers import DynamicCache

    x = torch.randint(0, VOCAB, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :3] = 0  # left padding on row 1
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        ref = model(input_ids=x, attention_mask=mask, position_ids=pos, return_head_logits=True).head_logits
        fused, cache = model.fused_heads(3), DynamicCache()
        a = model.fused_head_states(x[:, :6], mask[:, :6], pos[:, :6], cache, fused)
        b = model.fused_head_states(x[:, 6:], mask, pos[:, 6:], cache, fused)
        states = torch.cat([a, b], dim=2)
        assert len(cache.layers) == model.n_trunk + 1 and cache.layers[-1].keys.shape[1] == 3 * 2
        for i in range(3):
            torch.testing.assert_close(model.lm_head(states[i])[mask.bool()], ref[i][mask.bool()],
                                       atol=1e-4, rtol=1e-4)
        # The per-head cached path (HF layout: one cache layer per head) agrees too.
        cache = DynamicCache()
        o1 = model(input_ids=x[:, :6], attention_mask=mask[:, :6], position_ids=pos[:, :6], past_key_values=cache,
                   use_cache=True, return_head_logits=True)
        o2 = model(input_ids=x[:, 6:], attention_mask=mask, position_ids=pos[:, 6:], past_key_values=cache,
                   use_cache=True, return_head_logits=True)
        assert len(cache.layers) == model.n_trunk + 3
        torch.testing.assert_close(torch.cat([o1.head_logits[2], o2.head_logits[2]], 1)[mask.bool()],
                                   ref[2][mask.bool()], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="n_future=3"):
        model.fused_heads(4)


def test_save_load_round_trip(tmp_path, trained, prompts):
    from transformers import AutoModelForCausalLM

    model, _ = trained
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = MTPForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.n_future == N_FUTURE and loaded.n_trunk == model.n_trunk
    sd, ld = model.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys() and all(torch.equal(sd[k], ld[k]) for k in sd)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), MTPForCausalLM)
    a = self_speculative_generate(model, prompts[:3], k=3, max_new_tokens=12)
    b = self_speculative_generate(loaded.eval(), prompts[:3], k=3, max_new_tokens=12)
    assert a.sequences == b.sequences


def test_training_reduces_every_head_loss(trained, stream):
    model, losses = trained
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:5]) / 5
    fresh = build_mtp(SPEC, N_FUTURE, seed=0)
    x = stream[-16 * 32:].view(16, 32)  # windows the loop saw rarely, if at all
    with torch.no_grad():
        before, after = fresh(input_ids=x, labels=x).head_losses, model(input_ids=x, labels=x).head_losses
    assert bool((after < before).all())


def test_hf_generate_is_plain_greedy(trained, prompts):
    model, _ = trained
    ids = torch.tensor([prompts[2]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                         pad_token_id=0)
    assert out[0, ids.shape[1]:].tolist() == naive_greedy(model, prompts[2], 10)


# ---------------------------------------------------------------------------------------------------
# Self-speculative decoding


@pytest.mark.parametrize("batch_size", [1, 8])
def test_greedy_output_identical_to_plain_greedy(trained, prompts, batch_size):
    """Every k, batch sizes 1 and 8, ragged prompts; chains and trees of each head's top-k."""
    model, _ = trained
    n_new = 24
    reference = [naive_greedy(model, p, n_new) for p in prompts]
    plain = self_speculative_generate(model, prompts, k=1, max_new_tokens=n_new, batch_size=batch_size)
    assert plain.sequences == reference
    for k in range(2, N_FUTURE + 1):
        out = self_speculative_generate(model, prompts, k=k, max_new_tokens=n_new, batch_size=batch_size)
        assert out.sequences == reference, f"k={k}"
    tree = self_speculative_generate(model, prompts, k=N_FUTURE, max_new_tokens=n_new, batch_size=batch_size,
                                     tree="static:2" + "x2" * (N_FUTURE - 2))
    assert tree.sequences == reference
    assert tree.stats.tau >= self_speculative_generate(model, prompts, k=N_FUTURE, max_new_tokens=n_new,
                                                       batch_size=batch_size).stats.tau


def test_k1_takes_exactly_one_forward_per_token(trained, prompts):
    model, _ = trained
    out = self_speculative_generate(model, prompts[:1], k=1, max_new_tokens=17, batch_size=1)
    s = out.stats
    assert s.generated_tokens == 17 and s.target_forwards == 17  # prefill emits the first token
    assert (s.steps, s.drafted, s.accepted, s.tau, s.draft_forwards) == (16, 0, 0, 1.0, 0)
    # Batched, ragged prompts: still one forward per token (every row gains exactly one per forward).
    batched = self_speculative_generate(model, prompts, k=1, max_new_tokens=17, batch_size=8).stats
    assert batched.target_forwards == 17 and batched.steps == 8 * 16 and batched.prompt_steps == [16] * 8
    assert batched.generated_tokens == 8 * 17 and batched.tau == 1.0


def test_k1_never_runs_the_extra_heads(trained, prompts):
    """k = 1 is plain decoding of head 1: scrambling heads 2..n changes neither tokens nor counters."""
    import copy

    model, _ = trained
    scrambled = copy.deepcopy(model)
    with torch.no_grad():
        for head in scrambled.heads[1:]:
            for p in head.parameters():
                p.normal_(0, 1.0)
    a = self_speculative_generate(model, prompts, k=1, max_new_tokens=12, batch_size=8)
    b = self_speculative_generate(scrambled, prompts, k=1, max_new_tokens=12, batch_size=8)
    assert a.sequences == b.sequences and a.stats.steps == b.stats.steps
    # ... while with k = 2 the scrambled head 2 is what drafts, so acceptance collapses.
    good = self_speculative_generate(model, prompts, k=2, max_new_tokens=12, batch_size=8).stats
    bad = self_speculative_generate(scrambled, prompts, k=2, max_new_tokens=12, batch_size=8)
    assert bad.sequences == a.sequences and bad.stats.accepted < good.accepted


@pytest.mark.parametrize("batch_size", [1, 8])
def test_counters_equal_an_independent_reference(trained, prompts, batch_size):
    """Exact per-prompt and per-head counters against a cache-free one-row reference, for every k and
    budgets shorter than k - 1 guesses (rows offered fewer guesses than the block holds)."""
    model, _ = trained
    for k in range(1, N_FUTURE + 1):
        for n_new in (3, 4, 21):
            refs = [reference_self_speculative(model, p, k, n_new) for p in prompts]
            out = self_speculative_generate(model, prompts, k=k, max_new_tokens=n_new, batch_size=batch_size)
            assert out.sequences == [o for o, _ in refs], (k, n_new)
            assert_matches_reference(out.stats, refs, k)


def test_counters_consistent_with_tokens_per_forward(trained, prompts):
    model, _ = trained
    n_new = 30
    out = self_speculative_generate(model, prompts, k=N_FUTURE, max_new_tokens=n_new, batch_size=8)
    s = out.stats
    assert 0 < s.accepted < s.drafted, "the fixture must accept some guesses and reject others"
    assert s.tau == pytest.approx(1 + s.accepted / s.steps)
    assert s.generated_tokens == len(prompts) * n_new == len(prompts) + s.steps + s.accepted  # no EOS
    assert sum(s.accepted_per_position) == s.accepted
    # tau from the per-head counters: 1 + sum_j accepted_j / steps.
    assert s.tau == pytest.approx(1 + sum(s.accepted_per_position) / s.steps)
    assert s.reached_per_position[0] <= s.steps and s.drafted == sum(s.prompt_drafted)
    assert len(s.alpha_n) == N_FUTURE - 1 and all(0 <= a <= 1 for a in s.alpha_n)
    assert all(a <= r for a, r in zip(s.accepted_per_position, s.reached_per_position))
    # Chain acceptance: head j+1 is reached only when head j was accepted (and the row's budget
    # still allows a guess there, which near max_new_tokens it may not).
    assert all(r <= a for r, a in zip(s.reached_per_position[1:], s.accepted_per_position[:-1]))
    assert s.reached_per_position[0] > 0
    assert s.accepted_per_position == sorted(s.accepted_per_position, reverse=True)
    assert s.gamma == N_FUTURE - 1 and s.draft_forwards == 0 and s.draft_seconds == 0
    assert s.verify_forwards == s.target_forwards - 1 <= max(s.prompt_steps)
    for i in range(len(prompts)):
        assert s.prompt_generated[i] == 1 + s.prompt_steps[i] + s.prompt_accepted[i]
    # Per-prompt tokens per forward: fewer forwards than tokens when guesses are accepted.
    assert s.tau > 1.2 and s.steps < len(prompts) * (n_new - 1)
    # Same counters whether rows share a batch or not (acceptance does not depend on batching).
    single = self_speculative_generate(model, prompts, k=N_FUTURE, max_new_tokens=n_new, batch_size=1).stats
    assert (single.accepted, single.drafted, single.steps) == (s.accepted, s.drafted, s.steps)


def test_eos_inside_the_kept_guesses_is_counted_exactly(trained, prompts):
    """A row whose EOS is a kept guess: the guesses after it lie past the sequence's end and count as
    neither drafted, reached nor accepted (else they would read as rejections of those heads)."""
    model, _ = trained
    for eos in range(VOCAB):
        refs = [reference_self_speculative(model, p, N_FUTURE, 24, eos=eos) for p in prompts]
        if sum(c["eos_inside"] for _, c in refs):
            break
    else:
        pytest.fail("the fixture never keeps an EOS guess; the test has no power")
    for batch_size in (1, 8):
        out = self_speculative_generate(model, prompts, k=N_FUTURE, max_new_tokens=24, batch_size=batch_size,
                                        eos_token_id=eos)
        assert out.sequences == [o for o, _ in refs]
        assert_matches_reference(out.stats, refs, N_FUTURE)


def test_eos_and_short_budgets_stop_rows_independently(trained, prompts):
    model, _ = trained
    plain = [naive_greedy(model, p, 20) for p in prompts]
    eos = plain[0][5]  # a token the first row emits, so at least one row stops early
    reference = [naive_greedy(model, p, 20, eos=eos) for p in prompts]
    assert any(len(r) < 20 for r in reference)
    out = self_speculative_generate(model, prompts, k=3, max_new_tokens=20, batch_size=8, eos_token_id=eos)
    assert out.sequences == reference
    s = out.stats
    assert s.tau == pytest.approx(1 + s.accepted / s.steps)
    assert s.generated_tokens == sum(len(r) for r in reference)
    # max_new_tokens smaller than k: rows never emit more than asked.
    tiny = self_speculative_generate(model, prompts, k=N_FUTURE, max_new_tokens=2, batch_size=8)
    assert tiny.sequences == [r[:2] for r in plain] and tiny.stats.generated_tokens == 16


def test_sampling_is_lossless_and_seeded(trained, prompts):
    """The 2nd and 3rd tokens (guessed by heads 2 and 3, verified by head 1) follow head 1's own
    ancestral-sampling distribution exactly, up to sampling noise."""
    model, _ = trained
    prompt = prompts[3]
    temperature = 1.0
    with torch.no_grad():
        def next_probs(seqs: list[list[int]]) -> torch.Tensor:
            return torch.softmax(model(input_ids=torch.tensor(seqs)).logits[:, -1] / temperature, -1)

        p1 = next_probs([prompt])[0]
        p2_given = next_probs([prompt + [a] for a in range(VOCAB)])  # [x1, x2]
        exact2 = p1 @ p2_given  # p(x2) = sum_x1 p(x1) p(x2 | x1)
        p3_given = next_probs([prompt + [a, b] for a in range(VOCAB) for b in range(VOCAB)]).view(VOCAB, VOCAB, VOCAB)
        exact3 = torch.einsum("a,ab,abc->c", p1, p2_given, p3_given)
        heads = model(input_ids=torch.tensor([prompt]), return_head_logits=True).head_logits
        q2, q3 = (torch.softmax(heads[j][0, -1] / temperature, -1) for j in (1, 2))
    n = 4000
    # Four tokens: the first step offers heads 2 and 3's guesses for tokens 2 and 3.
    out = self_speculative_generate(model, [prompt] * n, k=N_FUTURE, max_new_tokens=4, temperature=temperature,
                                    seed=0)
    s = out.stats
    assert s.accepted_per_position[0] > 0.1 * n and s.accepted_per_position[1] > 0.05 * n  # both heads exercised
    for pos, exact, q in ((1, exact2, q2), (2, exact3, q3)):
        emp = torch.bincount(torch.tensor([seq[pos] for seq in out.sequences]), minlength=VOCAB).float() / n
        tv = 0.5 * float((emp - exact).abs().sum())
        assert tv < 0.06, f"token {pos + 1}: total variation {tv:.3f} from head 1's distribution"
        # The test has power: trusting the head's guess blindly would be far off.
        assert 0.5 * float((q - exact).abs().sum()) > 0.12
    again = self_speculative_generate(model, [prompt] * 20, k=3, max_new_tokens=8, temperature=0.8, seed=5)
    same = self_speculative_generate(model, [prompt] * 20, k=3, max_new_tokens=8, temperature=0.8, seed=5)
    assert again.sequences == same.sequences


def test_bad_decoding_inputs_raise_clear_errors(trained, prompts):
    model, _ = trained
    with pytest.raises(ValueError, match=r"k=5 exceeds the model's n_future=4"):
        self_speculative_generate(model, prompts, k=5, max_new_tokens=4)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        self_speculative_generate(model, prompts, k=0, max_new_tokens=4)
    with pytest.raises(TypeError, match="MTPForCausalLM"):
        self_speculative_generate(build_llama(SPEC), prompts, k=1, max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        self_speculative_generate(model, [[]], k=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        self_speculative_generate(model, [[1] * 250], k=4, max_new_tokens=10)
    with pytest.raises(ValueError, match="eos_token_id must be a token id"):
        self_speculative_generate(model, prompts, k=2, max_new_tokens=4, eos_token_id=VOCAB)
    import numpy as np

    # A numpy k (as numpy-built sweeps hand it) is fine.
    out = self_speculative_generate(model, prompts[:2], k=np.int64(2), max_new_tokens=4)
    assert [len(s) for s in out.sequences] == [4, 4] and out.stats.gamma == 1


def test_measurement_has_the_engine_record_schema(trained, prompts):
    model, _ = trained
    m = measure_self_speculative(model, prompts, k=3, batch_size=4, max_new_tokens=10)
    d = m.to_dict()
    base = SpeedupMeasurement(gamma=2, batch_size=4, speculative=m.speculative, baseline=m.baseline,
                              speculative_tps=1.0, baseline_tps=1.0).to_dict()
    assert set(base) <= set(d) and {"k", "n_future", "draft_family"} <= set(d)
    assert d["c"] == 0.0 and d["draft_step_seconds"] == 0.0 and d["k"] == 3 and d["gamma"] == 2
    assert d["speedup"] == pytest.approx(d["tokens_per_second"] / d["baseline_tokens_per_second"])
    assert m.baseline.tau == 1.0 and d["tau"] == pytest.approx(m.speculative.tau)
    assert d["target_step_seconds"] > 0 and d["verify_step_seconds"] > 0


def test_one_measurement_per_head_count_with_a_shared_baseline(trained, prompts):
    model, _ = trained
    ms = measure_self_speculative_ks(model, prompts, ks=range(2, N_FUTURE + 1), batch_size=4, max_new_tokens=10,
                                     repeats=2)
    assert [m.k for m in ms] == [2, 3, 4] and [m.gamma for m in ms] == [1, 2, 3]
    assert len({id(m.baseline) for m in ms}) == 1 and len({m.baseline_tps for m in ms}) == 1
    for m in ms:
        ref = self_speculative_generate(model, prompts, k=m.k, max_new_tokens=10, batch_size=4).stats
        assert m.speculative.gamma == m.k - 1 and len(m.speculative.alpha_n) == m.k - 1
        assert (m.speculative.accepted, m.speculative.steps) == (ref.accepted, ref.steps)  # greedy: deterministic
        assert m.speculative.tau == pytest.approx(1 + ref.accepted / ref.steps)
    single = measure_self_speculative(model, prompts, k=3, batch_size=4, max_new_tokens=10)
    assert single.k == 3 and single.speculative.accepted == ms[1].speculative.accepted
    with pytest.raises(ValueError, match="exceeds"):
        measure_self_speculative_ks(model, prompts, ks=[2, 5], batch_size=4, max_new_tokens=4)


def test_pipeline_job_writes_one_row_per_head_count(trained, prompts, tmp_path, monkeypatch):
    """An MTP job measures every k' in 2..k inside the job; `load` gives each its gamma, tau and per-head columns."""
    import scylla.data.tasks
    from scylla.config import compose
    from scylla.harness.pipeline import JobContext, PreparedModel, measure, mtp_measure_fn
    from scylla.harness.results import records_to_frame
    from scylla.harness.tracking import Tracker

    model, _ = trained
    cfg = compose(["experiment=smoke", "draft=tiny-mtp", f"draft.k={N_FUTURE}", "eval.tasks=[bible]",
                   "decode.batch_sizes=[2,4]", "decode.max_new_tokens=10", "runtime.progress=false"])
    from scylla.config import validate

    job = validate(cfg)
    monkeypatch.setattr(scylla.data.tasks, "eval_prompts", lambda *a, **k: prompts)
    ctx = JobContext(cfg=job, cache_dir=tmp_path, device="cpu", threads=1, tracker=Tracker(), progress=False,
                     target=PreparedModel(model, {}))
    rows = measure(ctx, PreparedModel(model, {}, measure=mtp_measure_fn(N_FUTURE)))
    assert [(r["batch_size"], r["gamma"], r["k"]) for r in rows] == [
        (b, k - 1, k) for b in (2, 4) for k in range(2, N_FUTURE + 1)]
    record = {"run_id": "mtp-job", "config": {"experiment": "unit"}, "target": {"name": "tiny-mtp"},
              "draft": {"name": "tiny-mtp", "family": "mtp", "params": 1, "tokens": 4096}, "provenance": {},
              "measurements": rows}
    frame = records_to_frame([record])
    assert len(frame) == 2 * (N_FUTURE - 1) and (frame.family == "mtp").all()
    assert sorted(frame.gamma.unique()) == [1, 2, 3]
    assert ((frame.tau - (1 + frame.accepted / frame.steps)).abs() < 1e-12).all() and (frame.tau >= 1).all()
    assert {"alpha_1", "alpha_2", "alpha_3", "accepted_3", "reached_3"} <= set(frame.columns)
    assert frame.loc[frame.gamma < 3, "reached_3"].isna().all()
    assert frame.loc[frame.gamma == 3, "reached_3"].notna().all()
    assert (frame.c == 0).all()
    for _, g in frame.groupby("batch_size"):  # one plain baseline per (task, batch size), shared by every k'
        assert g.baseline_tokens_per_second.nunique() == 1


def test_benchmark_reports_measured_ratios(trained, prompts):
    """bench_mtp's table and goal line come from measurements: k = 1..n per batch size, speedup / tau
    recomputed from the row, the goal from the best measured batch-1 k (not a constant)."""
    from benchmarks import bench_mtp

    model, _ = trained
    lines: list[str] = []
    result = bench_mtp.run(model, prompts, batches=[1, 2], max_new=10, repeats=1, echo=lines.append)
    rows = result["rows"]
    assert [(r["batch_size"], r["k"]) for r in rows] == [(b, k) for b in (1, 2) for k in range(1, N_FUTURE + 1)]
    for r in rows:
        assert r["speedup_over_tau"] == pytest.approx(r["speedup"] / r["tau"]) and r["speedup"] > 0
        assert r["tau"] == 1.0 if r["k"] == 1 else r["tau"] > 1.0
        assert len(r["alpha_n"]) == r["k"] - 1
    for b in (1, 2):  # one shared plain baseline per batch size
        assert len({r["baseline_tokens_per_second"] for r in rows if r["batch_size"] == b}) == 1
    goal = result["goal"]
    best = max((r for r in rows if r["batch_size"] == 1 and r["k"] > 1), key=lambda r: r["speedup"])
    assert (goal["best_k"], goal["ratio"], goal["met"]) == (best["k"], best["speedup_over_tau"],
                                                            best["speedup_over_tau"] >= 0.85)
    assert any(line.startswith("goal (batch 1") and f"{best['speedup_over_tau']:.2f} x tokens per forward" in line
               for line in lines)
    # The hardware bound is measured for every k > 1 (a raw forward ratio, positive and finite).
    raw = goal["raw_forward_ratio"]
    assert sorted(raw) == list(range(2, N_FUTURE + 1)) and all(0 < x < float("inf") for x in raw.values())
    assert any(line.startswith("raw forward") and f"k=2: {raw[2]:.2f}" in line for line in lines)


# ---------------------------------------------------------------------------------------------------
# Through the project's training loop


def test_train_budgets_trains_branches_resumes_and_reloads_an_mtp_model(tmp_path):
    """Token budgets, branched checkpoints and resume of the project's loop, with the summed MTP loss."""
    from scylla.training.checkpoints import load_checkpoint, read_provenance
    from scylla.data.tokenizer import ByteTokenizer
    from scylla.training.trainer import TrainConfig, train_budgets

    tok = ByteTokenizer()
    spec = ModelSpec(d_model=32, n_layers=2, n_heads=2, vocab_size=tok.vocab_size, max_seq_len=64)
    cfg = TrainConfig(seq_len=32, batch_size=4, lr=3e-3, warmup_steps=2, eval_tokens=256, save_every_seconds=1e9)
    opts = {"corpus_options": {"shakespeare": {"max_docs": 24}}, "progress": False}
    paths = train_budgets(spec, ["shakespeare"], tok, [1024, 2048], cfg, tmp_path / "a",
                          model_factory=mtp_factory(3), **opts)
    model, prov = load_checkpoint(paths[1024])
    assert isinstance(model, MTPForCausalLM) and model.n_future == 3
    assert prov["tokens_seen"] == 1024 and "build_mtp" in prov["model_factory"]
    assert prov["parameters"] == count_parameters(model)
    assert (tmp_path / "a" / "checkpoints").is_dir() and not list((tmp_path / "a").rglob("*.bin"))
    long_prov = read_provenance(paths[2048])
    assert long_prov["tokens_seen"] == 2048 and long_prov["run_key"] == prov["run_key"]  # one branched run
    assert 0 < long_prov["branch_step"] < 2048 // cfg.tokens_per_step
    out = self_speculative_generate(model, [[65, 66, 67]], k=3, max_new_tokens=6)
    assert len(out.sequences[0]) == 6
    # A later, larger budget resumes the saved trunk (weights + AdamW moments of the MTP model) and
    # ends exactly where training it from scratch ends.
    resumed = train_budgets(spec, ["shakespeare"], tok, [3072], cfg, tmp_path / "a", model_factory=mtp_factory(3),
                            **opts)[3072]
    scratch = train_budgets(spec, ["shakespeare"], tok, [3072], cfg, tmp_path / "b", model_factory=mtp_factory(3),
                            **opts)[3072]
    a, b = load_checkpoint(resumed)[0].state_dict(), load_checkpoint(scratch)[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A different head count, or the parameter-matched trunk, never shares the cache entry.
    other = train_budgets(spec, ["shakespeare"], tok, [1024], cfg, tmp_path / "a", model_factory=mtp_factory(2),
                          **opts)
    assert other[1024] != paths[1024] and read_provenance(other[1024])["run_key"] != prov["run_key"]
    matched = train_budgets(spec, ["shakespeare"], tok, [1024], cfg, tmp_path / "a",
                            model_factory=mtp_factory(2, parameter_matched=True), **opts)
    m, _ = load_checkpoint(matched[1024])
    assert m.n_trunk == 0 and m.config.parameter_matched and matched[1024] != other[1024]


def test_validation_loss_of_an_mtp_model_is_its_next_token_loss():
    """Provenance val_loss must compare with a plain draft's: head 1 only, not the sum over heads."""
    from scylla.training.trainer import validation_loss

    spec = ModelSpec(d_model=32, n_layers=3, n_heads=4, vocab_size=VOCAB)
    model = build_mtp(spec, 3, seed=0)
    chunks = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))
    overall, per = validation_loss(model, {"c": chunks}, batch_size=2, device=torch.device("cpu"))
    with torch.no_grad():
        out = model(input_ids=chunks, labels=chunks)
    assert overall == pytest.approx(float(out.next_token_loss), rel=1e-5)
    assert overall < float(out.loss) / 2  # the sum over three heads is about three times larger
    assert per["c"] == pytest.approx(overall)
