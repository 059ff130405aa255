"""EAGLE-3 heads: architecture, training-time test, decoding (lossless), the oracle, export, training, fits.

A tiny target trained for a second on a synthetic Markov stream, and a head trained on it for a few
seconds, give partial acceptance (neither none nor all), so every path of the decoder is exercised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lossless import chi2_pvalue, exact_joint
from scylla import acceptance_oracle
from scylla.decode.engine import speculative_generate
from scylla.models.eagle3 import (Eagle3Draft, Eagle3Error, build_eagle3, check_target, default_layer_ids,
                                  eagle3_parameter_counts, export_eagle3, import_eagle3, resolve_layer_ids,
                                  specforge_layer_ids, target_features)
from scylla.models.llama import ModelSpec, build_llama
from scylla.models.mtp import synthetic_stream, train_on_stream
from scylla.models.vocab import DraftVocab
from scylla.testing import perturbed_copy, random_prompts, tiny_llama
from scylla.training.eagle3 import (FeatureStore, Teacher, fit_eagle3, simulated_acc_len, simulated_tau, ttt_loss)

V = 32
IDS = [1, 2, 3]
COUNTERS = ("prompt_drafted", "prompt_accepted", "prompt_steps", "prompt_generated", "accepted_per_position",
            "reached_per_position", "drafted", "accepted", "steps", "generated_tokens")


@pytest.fixture(scope="module")
def stream() -> torch.Tensor:
    return synthetic_stream(8000, V, determinism=0.9, seed=0)


@pytest.fixture(scope="module")
def target(stream):
    model = build_llama(ModelSpec(d_model=32, n_layers=4, n_heads=2, vocab_size=V, tie_embeddings=False,
                                  max_seq_len=256), seed=0)
    train_on_stream(model, stream, steps=150, seq_len=32, batch_size=16, lr=1e-2)
    return model.eval()


def _head(target, stream, *, n_layers: int, vocab: DraftVocab | None = None, steps: int = 120, seed: int = 0):
    vocab = vocab or DraftVocab.full(V)
    head = build_eagle3(target.config, n_layers=n_layers, draft_vocab=vocab, layer_ids=IDS,
                        embeddings=target.get_input_embeddings().weight, seed=seed)
    rows = stream[: (len(stream) // 32) * 32].view(-1, 32)
    fit_eagle3(head, target, rows, steps=steps, ttt_steps=3, lr=1e-2, seed=seed)
    return head


@pytest.fixture(scope="module")
def heads(target, stream):
    """A trained 1-layer head, a noisier copy (lower acceptance) and a 2-layer head over a reduced vocabulary."""
    one = _head(target, stream, n_layers=1)
    reduced = DraftVocab(torch.tensor(sorted(set(range(0, V, 2)) | {1, 3, 5})), V)
    two = _head(target, stream, n_layers=2, vocab=reduced, steps=100, seed=1)
    return {"l1": one, "l1-noisy": perturbed_copy(one, noise=0.05, seed=3), "l2-reduced": two}


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(8, V, 3, 20, seed=0)  # ragged: 3..20 tokens


# ---------------------------------------------------------------------------------------------------
# Architecture


def test_layout_matches_specforge_and_counts_parameters(target, heads) -> None:
    head = heads["l2-reduced"]
    h = target.config.hidden_size
    sd = head.state_dict()
    assert sd["fc.weight"].shape == (h, 3 * h) and head.fc.bias is None
    for p in ("q", "k", "v"):
        assert sd[f"midlayer.self_attn.{p}_proj.weight"].shape[1] == 2 * h  # embedding + fused state
    assert sd["layers.0.self_attn.q_proj.weight"].shape[1] == h  # deeper layers are plain Llama layers
    assert {"midlayer.hidden_norm.weight", "midlayer.input_layernorm.weight",
            "midlayer.post_attention_layernorm.weight", "norm.weight"} <= set(sd)
    assert sd["lm_head.weight"].shape == (head.draft_vocab.size, h)
    assert not head.embed_tokens.weight.requires_grad
    assert torch.equal(head.embed_tokens.weight, target.get_input_embeddings().weight)
    counts = eagle3_parameter_counts(head)
    assert counts["draft"] == counts["total"] - V * h
    assert counts["non_embedding"] == counts["draft"] - head.draft_vocab.size * h
    assert eagle3_parameter_counts(heads["l1"])["non_embedding"] < counts["non_embedding"]


def test_layer_id_conventions_and_clear_errors(target) -> None:
    assert default_layer_ids(30) == [2, 15, 27] == specforge_layer_ids(30)  # the same layers, two conventions
    assert resolve_layer_ids(None, 8) == [2, 4, 5]
    with pytest.raises(Eagle3Error, match=r"target with 2 decoder layers.*\[0, 1\]"):
        resolve_layer_ids(None, 2)
    with pytest.raises(Eagle3Error, match="three"):
        resolve_layer_ids([1, 2], 8)
    with pytest.raises(Eagle3Error, match="outside"):
        build_eagle3(target.config, n_layers=1, draft_vocab=DraftVocab.full(V), layer_ids=[1, 2, 4])
    head = build_eagle3(target.config, n_layers=1, draft_vocab=DraftVocab.full(V), layer_ids=IDS)
    wider = tiny_llama(V, d_model=48, n_layers=4, n_heads=2)
    with pytest.raises(Eagle3Error, match="hidden size 32 but the target's is 48"):
        check_target(head.config, wider)
    shallower = tiny_llama(V, d_model=32, n_layers=3, n_heads=2)
    with pytest.raises(Eagle3Error, match="3 decoder layers"):
        check_target(head.config, shallower)
    with pytest.raises(Eagle3Error, match="covers 64 target ids but the target has 32"):
        build_eagle3(target.config, n_layers=1, draft_vocab=DraftVocab.full(2 * V), layer_ids=IDS)
    with pytest.raises(Eagle3Error, match="exactly one of aux_hidden_states"):
        head(input_ids=torch.zeros(1, 2, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------
# The training-time test


def test_step_k_reads_the_heads_own_step_k_minus_1_output(target, heads) -> None:
    """Step k of the unrolled pass at slot p equals a cached decoding chain: the committed slots hold the
    target's states up to p - k + 1, and depth j is fed the head's own depth j - 1 output; feeding the
    target's fused state there instead gives different logits (so the test would catch it)."""
    from transformers import DynamicCache

    head = heads["l2-reduced"]
    x = torch.randint(0, V, (2, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        aux = target_features(target(x, output_hidden_states=True), IDS)
        tt = head.ttt(x, aux, steps=4)
        for m in (1, 5, 9):  # the root token sits at position m
            cache = DynamicCache()
            out = head(input_ids=x[:, 1:m + 1], aux_hidden_states=aux[:, :m], attention_mask=torch.ones(2, m), cache=cache,
                       use_cache=True)
            torch.testing.assert_close(out.logits[:, -1], tt.logits[0][:, m - 1])
            h = out.last_hidden_state[:, -1:]
            for k in range(2, 5):
                p = m + k - 2
                wrong = head(input_ids=x[:, p + 1:p + 2], aux_hidden_states=aux[:, p:p + 1],
                             attention_mask=torch.ones(2, p + 1), use_cache=False,
                             position_ids=torch.full((2, 1), p))
                out = head(input_ids=x[:, p + 1:p + 2], hidden_states=h, attention_mask=torch.ones(2, p + 1), cache=cache,
                           use_cache=True, position_ids=torch.full((2, 1), p))
                torch.testing.assert_close(out.logits[:, 0], tt.logits[k - 1][:, p], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(out.last_hidden_state[:, 0], tt.hidden[k - 1][:, p], atol=1e-5, rtol=1e-4)
                assert (wrong.logits[:, 0] - tt.logits[k - 1][:, p]).abs().max() > 1e-3
                h = out.last_hidden_state


def test_ttt_loss_masks_weights_and_kinds(target, heads) -> None:
    head = heads["l2-reduced"]
    vocab = head.draft_vocab
    teacher = Teacher(target, IDS, vocab, source="online")
    x = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(1))
    feats = teacher.features(x)
    assert feats.aux.shape == (3, 12, 3 * 32) and feats.logits.shape == (3, 12, vocab.size)
    # the target's logits over the draft vocabulary are its own logits at those ids (from fp16 states)
    full = target(x).logits
    torch.testing.assert_close(feats.logits, full[..., vocab.draft_to_target], atol=2e-2, rtol=2e-2)
    outside = feats.argmax < 0
    assert bool(outside.any()) and bool((~outside).any())
    soft = ttt_loss(head, x, None, feats, steps=3, decay=0.5, kind="soft_ce")
    kl = ttt_loss(head, x, None, feats, steps=3, decay=0.5, kind="kl")
    assert float(soft.loss.detach()) == pytest.approx(sum(0.5 ** k * float(s.detach()) for k, s in enumerate(soft.step_losses)))
    assert all(float(s.detach()) > float(k.detach()) >= -1e-5 for s, k in zip(soft.step_losses, kl.step_losses))
    # step k counts slots p >= k - 1 only; a -100 label on the input token removes its slot
    assert soft.counted == [3 * 11, 3 * 10, 3 * 9]
    labels = x.clone()
    labels[0, 5:] = -100
    masked = ttt_loss(head, x, labels, feats, steps=3, decay=0.5)
    assert masked.counted[0] == soft.counted[0] - 7
    assert masked.loss_positions[0] < soft.loss_positions[0] == int((~outside[:, 1:]).sum())
    assert simulated_acc_len([0.5, 0.5]) == pytest.approx(0.75)
    assert simulated_tau([0.8, 0.5], gamma=3) == pytest.approx(1 + 0.8 + 0.4 + 0.2)


def test_feature_store_is_content_addressed_checksummed_and_decided_by_measurement(target, tmp_path) -> None:
    vocab = DraftVocab.full(V)
    store = FeatureStore(tmp_path, {"target": "t", "layer_ids": IDS})
    rows = torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(2))
    teacher = Teacher(target, IDS, vocab, source="auto", store=store, expected_uses=1.0)
    first = teacher.features(rows)
    d = teacher.decision
    assert d["how"] == "measured" and d["hidden_source"] in ("online", "offline") and not d["already_stored"]
    for key in ("target_seconds_per_token", "write_seconds_per_token", "read_seconds_per_token"):
        assert d[key] > 0
    # the decision is the cheaper expected cost, whichever it is on this machine
    assert (d["hidden_source"] == "offline") == (d["expected_cost_offline_s_per_token"]
                                                 < d["expected_cost_online_s_per_token"])
    offline = Teacher(target, IDS, vocab, source="offline", store=store)
    again = offline.features(rows)
    assert offline.stats == {"online_rows": 0, "read_rows": 4, "written_rows": 0}
    for a, b in ((first.aux, again.aux), (first.logits, again.logits), (first.argmax, again.argmax)):
        assert torch.equal(a, b)
    online = Teacher(target, IDS, vocab, source="online").features(rows)
    assert torch.equal(online.aux, again.aux)  # both sources round the states to fp16: same inputs
    path = store.path(store.row_key(rows[0]))
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF  # damage the data: the checksum catches it and the chunk is recomputed
    path.write_bytes(bytes(blob))
    fresh = Teacher(target, IDS, vocab, source="offline", store=store)
    assert torch.equal(fresh.features(rows).aux, again.aux) and fresh.stats["written_rows"] == 1


# ---------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("shape", ["chain:3", "static:2x2x1", "dynamic:3x2x4"])
def test_greedy_output_is_plain_greedy_at_batch_1_and_8(target, heads, prompts, shape) -> None:
    plain = speculative_generate(target, None, prompts, gamma=0, max_new_tokens=20)
    for name in ("l1", "l2-reduced"):
        for batch in (1, 8):
            out = speculative_generate(target, heads[name], prompts, tree=shape, max_new_tokens=20, batch_size=batch)
            assert out.sequences == plain.sequences, (name, batch)
            assert 0 < out.stats.accepted < out.stats.drafted, (name, batch)


@pytest.mark.parametrize("with_eos", [False, True])
def test_oracle_equals_the_engine_per_prompt_at_temperature_zero(target, heads, prompts, with_eos) -> None:
    """Every counter per prompt for chains and static trees at batch sizes 1, 3 and 8: ragged prompts,
    an EOS some rows accept inside a draft, rows cut by max_new_tokens."""
    max_new = 24
    eos = None
    if with_eos:
        plain = speculative_generate(target, None, prompts, gamma=0, max_new_tokens=max_new).sequences
        counts = np.bincount([t for s in plain for t in s[2:-2]], minlength=V)
        eos = int(counts.argmax())
    eos_inside = 0
    for name in ("l1-noisy", "l2-reduced"):
        oracle = acceptance_oracle(target, heads[name], prompts, gammas=[1, 3, 5], trees=["static:2x2x1"],
                                   max_new_tokens=max_new, eos_token_id=eos)
        for shape, expected in oracle.items():
            assert 0 < expected.accepted < expected.drafted, (name, shape)
            for batch in (1, 3, 8):
                got = speculative_generate(target, heads[name], prompts, tree=shape, max_new_tokens=max_new,
                                           batch_size=batch, eos_token_id=eos).stats
                for key in COUNTERS:
                    assert getattr(got, key) == getattr(expected, key), (name, shape, batch, key)
                eos_inside += got.generated_tokens < got.n_prompts + got.steps + got.accepted
    if with_eos:
        assert eos_inside > 0, "the EOS case must include an EOS accepted inside a draft"


@pytest.mark.parametrize("shape", ["chain:2", "static:2x1"])
def test_sampling_is_exact_under_the_chi_square_test(shape) -> None:
    """Every position's marginal and the first pair's joint against the target's enumerated law; the
    head proposes from a reduced vocabulary, so tokens 1, 4 and 5 come from the residual only."""
    vocab, n_tok, n_rows, temperature = 6, 3, 6000, 1.0
    target = tiny_llama(vocab, d_model=32, n_layers=4, n_heads=2, seed=11, init_std=0.3)
    head = build_eagle3(target.config, n_layers=1, draft_vocab=DraftVocab(torch.tensor([0, 2, 3]), vocab),
                        layer_ids=IDS, embeddings=target.get_input_embeddings().weight, seed=3, init_std=0.3)
    prompt = [1, 4, 2]
    out = speculative_generate(target, head, [prompt] * n_rows, tree=shape, max_new_tokens=n_tok,
                               temperature=temperature, seed=5, batch_size=2000)
    assert out.stats.accepted > 100
    samples = np.array(out.sequences)
    joint = exact_joint(target, prompt, n_tok, temperature)
    for pos in range(n_tok):
        other = tuple(a for a in range(n_tok) if a != pos)
        counts = np.bincount(samples[:, pos], minlength=vocab)
        assert counts[[1, 4, 5]].sum() > 0
        assert chi2_pvalue(counts, joint.sum(other)) > 1e-4, f"position {pos}"
    counts = np.bincount(samples[:, 0] * vocab + samples[:, 1], minlength=vocab ** 2)
    assert chi2_pvalue(counts, joint.sum(2).ravel()) > 1e-4
    # the head's own law fails the same test (so the test can fail)
    draft_first = torch.zeros(vocab)
    with torch.no_grad():
        ids = torch.tensor([prompt])
        aux = target_features(target(ids, output_hidden_states=True), IDS)
        logits = head.ttt(torch.tensor([prompt + [int(samples[0, 0])]]), torch.cat([aux, aux[:, -1:]], 1), 1).logits[0]
    q = torch.softmax(logits[0, -1], -1)
    draft_first[head.draft_vocab.draft_to_target] = q
    assert chi2_pvalue(np.bincount(samples[:, 1], minlength=vocab), draft_first.numpy() + 1e-9) < 1e-4


# ---------------------------------------------------------------------------------------------------
# Export


@pytest.mark.parametrize("name", ["l1", "l2-reduced"])
def test_export_keys_shapes_and_round_trip(target, heads, prompts, tmp_path, name) -> None:
    from safetensors.torch import load_file

    head = heads[name]
    folder = export_eagle3(head, tmp_path / name)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"]
    assert cfg["draft_vocab_size"] == head.draft_vocab.size and cfg["vocab_size"] == V
    assert cfg["num_hidden_layers"] == head.n_layers and cfg["hidden_size"] == 32
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == IDS == cfg["eagle_aux_hidden_state_layer_ids"]
    w = load_file(str(folder / "model.safetensors"))
    h, vd = 32, head.draft_vocab.size
    assert not any(k.startswith("embed_tokens") for k in w)
    assert w["fc.weight"].shape == (h, 3 * h) and w["lm_head.weight"].shape == (vd, h) and w["norm.weight"].shape == (h,)
    assert w["d2t"].dtype == torch.int64 and w["d2t"].shape == (vd,)
    assert w["t2d"].dtype == torch.bool and w["t2d"].shape == (V,) and int(w["t2d"].sum()) == vd
    assert torch.equal(torch.arange(vd) + w["d2t"], head.draft_vocab.draft_to_target)
    for part in ("q", "k", "v"):
        assert w[f"midlayer.self_attn.{part}_proj.weight"].shape[1] == 2 * h
    for key in ("midlayer.hidden_norm.weight", "midlayer.input_layernorm.weight", "midlayer.mlp.gate_proj.weight"):
        assert key in w
    deeper = sorted({k.split(".")[1] for k in w if k.startswith("layers.")})
    assert deeper == [str(i) for i in range(1, head.n_layers)]  # vLLM's names for layers 1..L-1
    back = import_eagle3(folder, target)
    x = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        aux = target_features(target(x, output_hidden_states=True), IDS)
        a, b = head.ttt(x, aux, 3), back.ttt(x, aux, 3)
    for la, lb in zip(a.logits, b.logits):
        assert torch.equal(la, lb)
    for shape in ("chain:3", "static:2x2x1"):
        one = speculative_generate(target, head, prompts, tree=shape, max_new_tokens=16, batch_size=4)
        two = speculative_generate(target, back, prompts, tree=shape, max_new_tokens=16, batch_size=4)
        assert one.sequences == two.sequences and one.stats.accepted == two.stats.accepted
    bf16 = export_eagle3(head, tmp_path / f"{name}-bf16", dtype=torch.bfloat16)
    assert load_file(str(bf16 / "model.safetensors"))["fc.weight"].dtype == torch.bfloat16
    other = tiny_llama(V, d_model=48, n_layers=4, n_heads=2)
    with pytest.raises(Eagle3Error, match="hidden_size 32 differs"):
        import_eagle3(folder, other)


# ---------------------------------------------------------------------------------------------------
# Cost composition and fits


def test_the_first_draft_block_is_priced_at_one_plus_the_accepted_tokens() -> None:
    from scylla.decode.stats import DecodeStats
    from scylla.decode.tree import TreeSpec
    from scylla.measure.compose import first_block_widths, required_widths, step_plan

    stats = DecodeStats(gamma=3, temperature=0.0, batch_size=1, n_prompts=1, tree="chain:3", steps=10,
                        accepted_per_position=[6, 3, 1])
    eagle = step_plan(TreeSpec.chain(3), True, reprocess_accepted=True)
    assert first_block_widths(stats, eagle) == pytest.approx({1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1})
    assert first_block_widths(stats, step_plan(TreeSpec.chain(3), True)) == pytest.approx({1: 0.9, 2: 0.1})
    assert required_widths([TreeSpec.chain(3)], True, True)["draft"]["decode"] == {1, 2, 3, 4}
    assert required_widths([TreeSpec.chain(3)], True)["draft"]["decode"] == {1, 2}


def _synthetic_eagle3_frame() -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    rows = []
    for layers in (1, 2, 3, 4):
        for tokens in (1e5, 2e5, 4e5):
            a = 0.3 + 0.08 * math.log(layers) + 0.05 * math.log(tokens / 1e5)
            acc = [int(200 * a ** (j + 1)) for j in range(3)]
            for batch in (1, 8):
                for source in ("oracle", "engine"):
                    rows.append(dict(run_id=f"r{layers}-{tokens:g}", family="eagle3", draft_name=f"eagle3-l{layers}",
                                     draft_params=1e5 * layers + 5e4, draft_n_layers=layers, draft_tokens=tokens,
                                     task="code", temperature=0.0, batch_size=batch, gamma=3, tree="chain:3",
                                     source=source, drafted=600, accepted=sum(acc), steps=200,
                                     accepted_1=acc[0], accepted_2=acc[1], accepted_3=acc[2], reached_1=200,
                                     reached_2=acc[0], reached_3=acc[1], draft_train_tau=1 + 2.2 * a, speedup=1.0))
    return pd.DataFrame(rows)


def test_laws_against_ln_layers_params_and_tokens_are_fitted(tmp_path) -> None:
    from scylla.fit.cli import fit_results

    frame = _synthetic_eagle3_frame()
    oracle, engine = frame[frame["source"] == "oracle"], frame[frame["source"] == "engine"]
    (summary,) = fit_results(oracle, tmp_path, n_bootstrap=20, plots=False, checks=engine).values()
    fits = summary["fits"]
    for axis in ("layers", "params", "tokens"):
        assert f"eagle3_tau_vs_{axis}/log_linear" in fits and f"eagle3_alpha_vs_{axis}/log_linear" in fits
    slope = fits["eagle3_tau_vs_layers/log_linear"]["params"]["b"]
    assert slope > 0.1  # acceptance rises with ln layers in the synthetic data
    gap = summary["eagle3"]["training_vs_served"]
    assert len(gap) == 12 and all(g["oracle_tau"] is not None and g["engine_tau"] is not None for g in gap)
    assert all(g["accepted_over_train"] < 1 for g in gap)  # served below the training-time prediction here
    assert "Training-time metrics against served acceptance" in (tmp_path / "report.md").read_text()


def test_records_carry_the_training_time_tau_beside_served_tau() -> None:
    from scylla.harness.results import record_rows

    record = {"run_id": "r", "config": {}, "target": {}, "provenance": {},
              "draft": {"family": "eagle3", "n_layers": 2, "train_acc_per_step": [0.8, 0.5],
                        "train_simulated_acc_len": 1.2},
              "measurements": [{"task": "code", "tree": "chain:3", "gamma": 3, "source": "oracle",
                                "speculative": {"tau": 1.5}},
                               {"task": "code", "tree": "static:2x1", "gamma": 2, "source": "oracle",
                                "speculative": {"tau": 1.5}}]}
    rows = record_rows(record)
    assert rows[0]["draft_train_tau"] == pytest.approx(1 + 0.8 + 0.4 + 0.2) and rows[0]["draft_n_layers"] == 2
    assert math.isnan(rows[1]["draft_train_tau"])


def test_config_presets_and_errors() -> None:
    from scylla.config import ConfigError, compose, config_hash, identity, validate

    for layers in (1, 2, 3, 4, 6, 8):
        job = validate(compose([f"draft=eagle3-l{layers}"]))
        assert job.draft.family == "eagle3" and job.draft.n_layers == layers and job.draft.d_model is None
        assert (job.draft.ttt_steps, job.draft.ttt_decay, job.draft.loss) == (7, 0.8, "soft_ce")
    with pytest.raises(ConfigError, match="draft.layer_ids"):
        compose(["draft=eagle3-l1", "draft.layer_ids=[1,2]"])
    with pytest.raises(ConfigError, match="draft.hidden_source"):
        compose(["draft=eagle3-l1", "draft.hidden_source=disk"])
    with pytest.raises(ConfigError, match="draft.layer_ids"):
        compose(["draft.layer_ids=[1,2,3]"])  # a llama draft reads no target layers
    # the new keys stay out of other families' identities; the feature source is not part of any
    plain = compose([])
    assert "layer_ids" not in identity(plain, "cpu")["draft"]
    from scylla.harness.pipeline import eagle3_presets_in_sweep

    sweep = validate(compose(["experiment=eagle3", "draft=eagle3-l2"]))
    assert sweep.target.source == "gguf" and sweep.draft.vocab_size == 8192 and sweep.draft.ttt_steps == 3
    assert eagle3_presets_in_sweep(sweep) == 4  # four head sizes will read the same target features
    assert eagle3_presets_in_sweep(validate(compose(["draft=eagle3-l2"]))) == 1
    a = config_hash(compose(["draft=eagle3-l1", "draft.hidden_source=online"]), "cpu")
    assert a == config_hash(compose(["draft=eagle3-l1", "draft.hidden_source=offline"]), "cpu")
    assert a != config_hash(compose(["draft=eagle3-l1", "draft.ttt_steps=3"]), "cpu")


# ---------------------------------------------------------------------------------------------------
# Training to token budgets through the pipeline


def test_pipeline_trains_budgets_records_metrics_and_checks_the_oracle(tmp_path, scylla_cache: Path) -> None:
    """One smoke job: a 1-layer head on a 4-layer tiny target, two budgets from one branched run; the
    record carries the layers, parameters, training-time metrics and the feature-source decision, and
    the engine check's counters equal the oracle's. A bad layer id is one clear error before training."""
    from scylla.config import ConfigError, compose
    from scylla.harness.pipeline import run_job
    from scylla.training.checkpoints import load_checkpoint, read_provenance

    base = ["experiment=smoke", "runtime.threads=1", "runtime.progress=false", f"paths.results_dir={tmp_path}",
            "target.n_layers=4", "draft=tiny-eagle3", "draft.tokens=4096", "draft.token_budgets=[2048,4096]",
            "eval.tasks=[code]", "decode.batch_sizes=[1,4]"]
    with pytest.raises(ConfigError, match=r"draft.layer_ids.*target with 4 decoder layers"):
        run_job(compose(base + ["draft.layer_ids=[1,2,4]"]))
    with pytest.raises(ConfigError, match=r"draft.d_model.*target's hidden size \(64\)"):
        run_job(compose(base + ["draft.d_model=32"]))
    with pytest.raises(ConfigError, match=r"draft.vocab_size.*larger than the target's vocabulary"):
        run_job(compose(base + ["draft.vocab_size=1000"]))
    out = run_job(compose(base))
    draft = out.record["draft"]
    assert draft["family"] == "eagle3" and draft["n_layers"] == 1 and draft["layer_ids"] == [2, 2, 1]
    assert draft["params"] < draft["params_total"] and draft["params_non_embedding"] < draft["params"]
    assert len(draft["train_acc_per_step"]) == 2 and draft["train_simulated_tau"] >= 1
    assert draft["hidden_source"]["how"] == "measured"
    assert draft["hidden_source"]["expected_uses"] == pytest.approx(1.125)  # the 2048 cooldown is trained twice
    checks = out.record["checks"]
    assert checks and all(c["oracle_match"] for c in checks)
    paths = [Path(p) for p in [draft["checkpoint"]]]
    prov = read_provenance(paths[0])
    assert prov["budget"] == 4096 and prov["ttt_metrics"]["steps"] == 2
    assert prov["model_class"] == "scylla.models.eagle3.Eagle3Draft"
    model, _ = load_checkpoint(paths[0])
    assert isinstance(model, Eagle3Draft) and not model.embed_tokens.weight.requires_grad
    twin = list((scylla_cache / "checkpoints").glob(f"d64-L1-h4-f*-v*-2048-*"))
    assert twin and (twin[0] / "provenance.json").is_file()  # the smaller budget of the same run
    from scylla.export import main as export_main

    assert export_main([draft["checkpoint"], "--out", str(tmp_path / "export")]) == 0
    assert json.loads((tmp_path / "export" / "config.json").read_text())["architectures"] == ["LlamaForCausalLMEagle3"]
    assert out.record["reprocess_accepted"] is True  # pricing the serving recommender reads from the record
    from scylla.fit import deploy

    served = deploy.export_draft(out.record, tmp_path / "served")
    assert served.family == "eagle3" and served.servable == {"vllm": None, "sglang": None}  # one layer: both
    assert (tmp_path / "served" / "model.safetensors").is_file()
