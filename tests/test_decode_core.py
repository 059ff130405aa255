"""The decode core: one loop for chains, static and dynamic trees, n-gram lookup and MTP heads.

Tree verification goes through a 4D additive mask, per-node positions and a KV gather of the accepted
path; every test here compares against something computed another way (plain greedy decoding, a
teacher-forced forward, exact enumerated distributions, the pre-core engine's recorded counters).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scylla.decode.cache import CachedLM
from scylla.decode.engine import speculative_generate
from scylla.decode.proposers import NgramProposer
from scylla.decode.tree import TreeError, TreeSpec
from scylla.testing import perturbed_copy, random_prompts, tiny_llama

from lossless import chi2_pvalue, exact_joint

DATA = Path(__file__).parent / "data"
VOCAB = 64
TREES = ["static:2x2x1", "static:3x1x1x1", "dynamic:3x3x8", "dynamic:4x2x6"]


@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, d_model=64, n_layers=2, seed=1)


@pytest.fixture(scope="module")
def drafts(target):
    return {"perfect": target, "medium": perturbed_copy(target, noise=0.02, seed=5),
            "poor": tiny_llama(VOCAB, d_model=32, n_layers=1, n_heads=2, seed=2)}


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(8, VOCAB, 3, 20, seed=0)


GOLDEN = json.loads((DATA / "golden_chain_counters.json").read_text())["cases"]


@pytest.mark.parametrize("batch_size", [pytest.param(1, marks=pytest.mark.slow), 3, 8])
def test_chains_reproduce_the_pre_core_engine_exactly(target, drafts, prompts, batch_size):
    """Every counter and every output (hashed) of the engine before the core, recorded in
    tests/data/golden_chain_counters.json: greedy and seeded sampling, with and without EOS, gamma
    1/3/5, batch sizes 1/3/8. Sampling matches too because verification draws its random numbers in
    the same order for a chain. Batch size 1 (the slowest third) runs with the slow tests."""
    cases = [c for c in GOLDEN if c["batch_size"] == batch_size]
    assert len(cases) == 24
    for case in cases:
        out = speculative_generate(target, drafts[case["draft"]], prompts, gamma=case["gamma"], max_new_tokens=25,
                                   batch_size=case["batch_size"], temperature=case["temperature"],
                                   eos_token_id=case["eos"], seed=3)
        s = out.stats
        for key in ("drafted", "accepted", "steps", "prompt_drafted", "prompt_accepted", "prompt_steps",
                    "prompt_generated", "accepted_per_position", "reached_per_position", "target_forwards",
                    "draft_forwards"):
            assert getattr(s, key) == case[key], (key, case["draft"], case["gamma"], case["batch_size"],
                                                  case["temperature"], case["eos"])
        assert hashlib.sha256(json.dumps(out.sequences).encode()).hexdigest()[:16] == case["sequences_sha"]


@pytest.mark.parametrize("draft_name", ["perfect", "poor"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_tree_greedy_output_is_plain_greedy(target, drafts, prompts, draft_name, batch_size):
    plain = speculative_generate(target, None, prompts, gamma=0, max_new_tokens=20, batch_size=batch_size)
    plain_eos = speculative_generate(target, None, prompts, gamma=0, max_new_tokens=20, batch_size=batch_size,
                                     eos_token_id=plain.sequences[0][3])
    for shape in TREES:
        out = speculative_generate(target, drafts[draft_name], prompts, tree=shape, max_new_tokens=20,
                                   batch_size=batch_size)
        assert out.sequences == plain.sequences, shape
        eos = speculative_generate(target, drafts[draft_name], prompts, tree=shape, max_new_tokens=20,
                                   batch_size=batch_size, eos_token_id=plain.sequences[0][3])
        assert eos.sequences == plain_eos.sequences, shape
        s = out.stats
        assert s.tree == TreeSpec.parse(shape).describe() and s.tau == pytest.approx(1 + s.accepted / s.steps)
        assert s.generated_tokens == len(prompts) + s.steps + s.accepted
        if draft_name == "perfect" and shape.startswith("static"):
            # The target's own top-1 chain is inside every static tree: each step accepts the full depth.
            depth = TreeSpec.parse(shape).depth
            assert s.accepted_per_position[-1] > 0 and s.tau > depth * 0.8


def test_a_tree_accepts_at_least_what_its_chain_does(target, drafts, prompts):
    """A static tree contains the draft's greedy chain, so at temperature 0 it can only accept more."""
    chain = speculative_generate(target, drafts["medium"], prompts, gamma=3, max_new_tokens=24).stats
    tree = speculative_generate(target, drafts["medium"], prompts, tree="static:3x2x1", max_new_tokens=24).stats
    assert tree.tau >= chain.tau and tree.accepted > chain.accepted
    assert tree.verified_tokens > chain.verified_tokens  # 3 + 6 + 6 nodes against 3 per step


def test_tree_nodes_are_scored_as_if_decoded_alone(target):
    """Mask polarity, dtype and positions: the target's logits at each tree node equal a plain forward on
    prompt + that node's path, for eager and SDPA attention alike (an inverted or 0/1 mask, or a wrong
    position id, changes them)."""
    from scylla.decode.target import TargetRunner, left_pad
    from scylla.decode.tree import TokenTree

    spec = TreeSpec.parse("static:2x2")
    parents = torch.tensor(spec.static_parents())
    depth = torch.tensor([1, 1, 2, 2, 2, 2])
    tokens = torch.tensor([[5, 9, 1, 2, 3, 4], [7, 8, 11, 12, 13, 14]])
    tree = TokenTree(tokens, parents.expand(2, -1), depth.expand(2, -1), torch.ones(2, 6, dtype=torch.bool))
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    for impl in ("eager", "sdpa"):
        target.config._attn_implementation = impl
        try:
            runner = TargetRunner(target, 2, torch.device("cpu"))
            runner.prefill(*left_pad(prompts, torch.device("cpu")))
            root = torch.tensor([10, 20])
            with torch.no_grad():
                logits, _ = runner.verify(root, tree)
                for b in range(2):
                    for slot in range(7):
                        path, s = [], slot
                        while s > 0:
                            path.insert(0, int(tokens[b, s - 1]))
                            s = int(parents[s - 1])
                        ref = target(torch.tensor([prompts[b] + [int(root[b])] + path])).logits[0, -1]
                        torch.testing.assert_close(logits[b, slot], ref, atol=2e-4, rtol=1e-4)
        finally:
            target.config._attn_implementation = "sdpa"


def test_accepted_path_is_gathered_into_a_valid_cache(target):
    """After keeping a path that is not a suffix of the block, the cache holds exactly prompt + path:
    the next forward equals a fresh forward on that sequence."""
    cache = CachedLM(target, 1, torch.device("cpu"))
    prompt = [3, 1, 4, 1, 5]
    with torch.no_grad():
        cache.append(torch.tensor([prompt]), torch.ones(1, 5, dtype=torch.bool))
        block = torch.tensor([[9, 2, 6, 5, 3]])  # root 9; nodes 2, 6 (children of root), 5 (of 6), 3 (of 2)
        parents = [0, 0, 0, 2, 1]
        depth = [0, 1, 1, 2, 2]
        anc = torch.eye(5, dtype=torch.bool)
        for i in range(1, 5):
            anc[i] |= anc[parents[i]]
        visible = torch.cat([torch.ones(1, 5, 5, dtype=torch.bool), anc[None]], 2)
        cache.append(block, torch.ones(1, 5, dtype=torch.bool), positions=torch.tensor([[5 + d for d in depth]]),
                     visible=visible)
        cache.keep_block(5, torch.tensor([[True, False, True, True, False]]))  # root -> 6 -> 5
        assert cache.length == 8 and int(cache.next_pos) == 8
        nxt = cache.append(torch.tensor([[7]]), torch.ones(1, 1, dtype=torch.bool)).logits[0, -1]
        ref = target(torch.tensor([prompt + [9, 6, 5, 7]])).logits[0, -1]
    torch.testing.assert_close(nxt, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", ["static:2x2", "dynamic:3x2x4", "chain:3"])
def test_tree_sampling_is_lossless(shape):
    """Exact chi-square test of every position's marginal and adjacent pairs against the target's
    enumerated distribution; the same samples are rejected as the draft's own distribution."""
    vocab, n_tok, n_rows, temperature = 6, 4, 6000, 1.0
    target = tiny_llama(vocab, d_model=32, n_layers=1, n_heads=2, seed=11, init_std=0.3)
    draft = tiny_llama(vocab, d_model=32, n_layers=1, n_heads=2, seed=12, init_std=0.3)
    prompt = [1, 4, 2]
    out = speculative_generate(target, draft, [prompt] * n_rows, tree=shape, max_new_tokens=n_tok,
                               temperature=temperature, seed=5, batch_size=2000)
    assert 0 < out.stats.accepted and min(out.stats.accepted_per_position[:2]) > 100
    samples = np.array(out.sequences)
    joint_t, joint_d = exact_joint(target, prompt, n_tok, temperature), exact_joint(draft, prompt, n_tok, temperature)
    for pos in range(n_tok):
        other = tuple(a for a in range(n_tok) if a != pos)
        counts = np.bincount(samples[:, pos], minlength=vocab)
        assert chi2_pvalue(counts, joint_t.sum(other)) > 1e-4, f"position {pos}"
        assert chi2_pvalue(counts, joint_d.sum(other)) < 1e-6, f"position {pos}: cannot tell target from draft"
    for pos in range(n_tok - 1):
        other = tuple(a for a in range(n_tok) if a not in (pos, pos + 1))
        counts = np.bincount(samples[:, pos] * vocab + samples[:, pos + 1], minlength=vocab**2)
        assert chi2_pvalue(counts, joint_t.sum(other).ravel()) > 1e-4, f"positions {pos},{pos + 1}"


def test_ngram_lookup_and_lossless_decoding(target, prompts):
    assert NgramProposer.lookup([1, 2, 3, 9, 1, 2, 3], 3, 1, 2) == [9, 1]  # latest earlier "1 2 3" is at 0
    assert NgramProposer.lookup([5, 6, 7, 5, 6, 8, 5, 6], 3, 1, 3) == [8, 5, 6]  # "5 6" last seen before 8
    assert NgramProposer.lookup([1, 2, 3], 3, 1, 4) == []
    repetitive = [p * 3 for p in prompts]  # prompt lookup needs repeats to find anything
    plain = speculative_generate(target, None, repetitive, gamma=0, max_new_tokens=20)
    for bs in (1, 8):
        out = speculative_generate(target, NgramProposer(4), repetitive, max_new_tokens=20, batch_size=bs)
        assert out.sequences == plain.sequences
        assert out.stats.proposer == "ngram" and out.stats.draft_forwards == 0 and out.stats.drafted > 0


def test_ngram_sampling_is_lossless():
    """Deterministic candidates verified as point masses: the emitted tokens keep the target's law."""
    vocab, n_tok, n_rows = 5, 4, 6000
    target = tiny_llama(vocab, d_model=32, n_layers=1, n_heads=2, seed=11, init_std=0.3)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    out = speculative_generate(target, NgramProposer(3, n_max=2), [prompt] * n_rows, max_new_tokens=n_tok,
                               temperature=1.0, seed=2, batch_size=3000)
    assert out.stats.accepted > 500
    samples = np.array(out.sequences)
    joint = exact_joint(target, prompt, n_tok, 1.0)
    for pos in range(n_tok):
        other = tuple(a for a in range(n_tok) if a != pos)
        assert chi2_pvalue(np.bincount(samples[:, pos], minlength=vocab), joint.sum(other)) > 1e-4


def test_tree_shapes_parse_and_bad_ones_are_refused(target, prompts):
    assert TreeSpec.parse("static:3x2x1").size == 3 + 6 + 6
    assert TreeSpec.parse("4") == TreeSpec.chain(4) and TreeSpec.parse("chain:2").depth == 2
    assert TreeSpec.parse("dynamic:4x4x16").describe() == "dynamic:4x4x16"
    for bad in ("static:0x2", "tree:3", "dynamic:2x2x99", "static:"):
        with pytest.raises(TreeError):
            TreeSpec.parse(bad)
    with pytest.raises(ValueError, match="not both"):
        speculative_generate(target, target, prompts, gamma=2, tree="static:2", max_new_tokens=4)
    target.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="custom 4D mask"):
            speculative_generate(target, target, prompts, tree="static:2x2", max_new_tokens=4)
    finally:
        target.config._attn_implementation = "sdpa"


@pytest.mark.parametrize("vocab", [64, 2048, 3000, 8192, 49_152])
def test_greedy_tokens_is_argmax_including_ties(vocab):
    """The sliced argmax behind greedy verification gives torch.argmax's index, first maximum on ties,
    for vocabularies with and without a shorter last slice and for non-contiguous views."""
    from scylla.decode.vocab_ops import greedy_tokens

    g = torch.Generator().manual_seed(vocab)
    noisy = torch.randn(4, 6, vocab, generator=g)
    tied = torch.randint(0, 3, (4, 6, vocab), generator=g).float()  # the maximum recurs in many slices
    late = torch.full((5, vocab), -1.0)
    late[torch.arange(5), torch.tensor([vocab - 1, vocab - 2, 0, vocab // 2, vocab - 1])] = 2.0
    late[4, vocab - 3] = 2.0  # a tie inside the shorter last slice
    for logits in (noisy, tied, noisy[:, 1:4], tied[:, ::2], late):
        assert torch.equal(greedy_tokens(logits), logits.argmax(-1))


@pytest.mark.parametrize("vocab", [64, 8192, 9000, 49_152])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_top_k_tokens_is_topk(vocab, k):
    """The sliced top-k behind tree proposers returns torch.topk's values and indices (distinct values),
    also when the k largest share one slice or sit in a shorter last slice."""
    from scylla.decode.vocab_ops import top_k_tokens

    g = torch.Generator().manual_seed(vocab + k)
    noisy = torch.randn(3, 5, vocab, generator=g)
    crowded = noisy.clone()
    crowded[0, 0, 5:5 + k] = 10 + torch.arange(k, dtype=torch.float)  # all in the first slice
    crowded[1, 2, vocab - k:] = 10 + torch.arange(k, dtype=torch.float)  # all at the end
    for logits in (noisy, crowded, noisy[:, ::2]):
        values, idx = top_k_tokens(logits, k)
        want_values, want_idx = logits.topk(k, dim=-1)
        assert torch.equal(idx, want_idx) and torch.equal(values, want_values)
