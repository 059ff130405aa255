"""Token-budgeted WSD training: exact budgets, branch reproducibility, resume, caching, clear errors."""

from __future__ import annotations

import json
import multiprocessing as mp
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from scylla.training.checkpoints import CheckpointError, load_checkpoint, read_provenance
from scylla.data.corpora import CorpusError
from scylla.models.llama import ModelSpec, build_llama
from scylla.data.tokenizer import ByteTokenizer
from scylla.training.trainer import TrainConfig, TrainError, branch_lr, plan_branch, train_budgets, trunk_lr

CORPUS = ["shakespeare"]
OPTIONS = {"shakespeare": {"max_docs": 24}}
TOK = ByteTokenizer()
SPEC = ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=TOK.vocab_size, max_seq_len=64)
# 4 rows x 32 tokens = 128 tokens per step; budgets below are 3..12 steps.
CFG = TrainConfig(seq_len=32, batch_size=4, lr=3e-3, warmup_steps=2, eval_tokens=256, save_every_steps=2,
                  save_every_seconds=1e9, log_every=1)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical comparisons need the same thread count everywhere
    yield
    torch.set_num_threads(threads)


def _train(cache, budgets, cfg=CFG, **kw):
    return train_budgets(SPEC, CORPUS, TOK, budgets, cfg, cache, corpus_options=OPTIONS, progress=False, **kw)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _same(a, b):
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class CountingLM(torch.nn.Module):
    """A `model_factory` product that counts the label tokens the loop trains on."""

    cache_key = "tests.CountingLM"

    def __init__(self, spec):
        super().__init__()
        self.inner = build_llama(spec, seed=0)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, input_ids, labels=None):
        if self.training:
            self.seen += int((labels != -100).sum())
        return self.inner(input_ids=input_ids, labels=labels)


def test_schedule_is_wsd_and_trunk_is_shared():
    cfg = TrainConfig(seq_len=32, batch_size=4, warmup_steps=3, cooldown_fraction=0.25)
    small, large = plan_branch(1280, cfg), plan_branch(5000, cfg)
    assert (small.start_step, small.n_steps) == (7, 3)
    assert large.end_step == 40 and large.step_tokens(large.end_step - 1) == 5000 - 39 * 128
    assert [trunk_lr(s, cfg) for s in range(4)] == pytest.approx([1e-3, 2e-3, 3e-3, 3e-3])
    # The cooldown starts at the trunk's rate and ends near zero, decreasing.
    lrs = [branch_lr(s, large, cfg) for s in range(large.start_step, large.end_step)]
    assert lrs[0] == pytest.approx(cfg.lr) and lrs[-1] < 0.3 * cfg.lr
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    # A K-budget sweep costs the largest budget plus the other cooldowns.
    budgets = [2**k * 100_000 for k in range(6)]
    cfg = TrainConfig()
    cost = max(budgets) + sum(b - plan_branch(b, cfg).start_step * cfg.tokens_per_step for b in budgets[:-1])
    assert cost / max(budgets) < 1.25


def test_budgets_are_hit_exactly(tmp_path):
    out = _train(tmp_path, [300, 1000], model_factory=CountingLM)
    for budget, path in out.items():
        prov = read_provenance(path)
        assert prov["tokens_seen"] == budget and prov["budget"] == budget
        assert prov["steps"] == -(-budget // 128)
        assert prov["val_loss"] > 0 and set(prov["val_loss_by_corpus"]) == {"shakespeare"}
    # Counted inside the model (a buffer, so it is snapshotted and restored with the trunk): each
    # checkpoint was trained on exactly its budget of label tokens, the last step partial.
    for budget, path in out.items():
        assert int(_weights(path)["seen"]) == budget


def test_branch_is_reproducible_and_independent_of_other_budgets(tmp_path):
    together = _train(tmp_path / "a", [384, 768, 1536])
    alone = _train(tmp_path / "b", [768])
    assert _same(together[768], alone[768])
    assert not _same(together[768], together[1536])
    again = _train(tmp_path / "c", [768])
    assert _same(alone[768], again[768])


def test_cache_reuses_checkpoints(tmp_path):
    first = _train(tmp_path, [384, 768])
    stamp = {b: (p / "provenance.json").stat().st_mtime_ns for b, p in first.items()}
    second = _train(tmp_path, [768, 384])
    assert second == first
    assert {b: (p / "provenance.json").stat().st_mtime_ns for b, p in second.items()} == stamp
    # Extending the token axis later continues the saved trunk instead of restarting it.
    log = []
    _train(tmp_path, [384, 768, 1536], logger=log.append)
    trunk_steps = [r["step"] for r in log if r.get("phase") == "trunk" and "loss" in r]
    assert trunk_steps and min(trunk_steps) > plan_branch(768, CFG).start_step
    prov = read_provenance(first[768])
    for key in ("model_spec", "train_config", "corpus_manifest_hash", "tokenizer_fingerprint", "code_version",
                "val_loss", "parameters", "run_key"):
        assert key in prov
    assert prov["precision"]["precision"] == ("bf16" if prov["bf16"] else "fp32")
    assert prov["precision"]["how"] in ("measured", "cached") and prov["precision"]["ratio"] > 0


def test_auto_precision_reuses_checkpoints_of_either_precision(tmp_path, monkeypatch):
    """Checkpoints that auto trained in bf16 (as a machine type where bf16 measured faster would) are
    reused by auto with no measurement: auto does not care which precision trained them, so another
    machine type's choice is not retrained."""
    import scylla.training.trainer as trainer
    from scylla.training.precision import PrecisionDecision

    monkeypatch.setattr(trainer, "decide_precision",
                        lambda *a, **k: PrecisionDecision(True, "measured", 2.0, 1.0, 128))
    other_machine = _train(tmp_path, [384])
    prov = read_provenance(other_machine[384])
    assert prov["bf16"] is True and prov["precision"]["ratio"] == 2.0

    def no_measuring(*args, **kwargs):
        raise AssertionError("auto measured although a finished checkpoint was there")

    monkeypatch.setattr(trainer, "decide_precision", no_measuring)
    assert _train(tmp_path, [384]) == other_machine


class Killed(Exception):
    pass


def _killer(phase, step):
    def log(record):
        if record.get("phase") == phase and record.get("step") == step and "loss" in record:
            raise Killed
    return log


@pytest.mark.parametrize("phase,step,first_logged", [("trunk", 7, ("trunk", 7)), ("cooldown", 11, ("cooldown", 11))])
def test_resume_after_kill_matches_uninterrupted(tmp_path, phase, step, first_logged):
    # Branch points at steps 4 and 9; the 1536 cooldown runs steps 9..11 (logged as 10..12). State is
    # saved every 2 steps, so a kill at logged step 7 resumes the trunk from 6, one at 11 the cooldown from 10.
    budgets = [640, 1536]
    reference = _train(tmp_path / "ref", budgets)
    with pytest.raises(Killed):
        _train(tmp_path / "run", budgets, logger=_killer(phase, step))
    run_dir = next((tmp_path / "run" / "runs").iterdir())
    assert (run_dir / "trunk.json").exists()
    log = []
    resumed = _train(tmp_path / "run", budgets, logger=log.append)
    trained = [(r["phase"], r["step"]) for r in log if "loss" in r]
    assert trained[0] == first_logged  # it continued from saved state, it did not start over
    for b in budgets:
        assert _same(reference[b], resumed[b]), f"budget {b} differs after resume"
        assert read_provenance(reference[b])["val_loss"] == read_provenance(resumed[b])["val_loss"]


KILL_BUDGETS = [640, 1536]


def _sigkilled_job(cache: str, mode: str, at: Any) -> None:
    """Child process that SIGKILLs itself: no `finally`, no lock release, no cleanup, as a real kill.

    ``mode="step"``: right after the logged training step ``at`` = (phase, step). ``mode="save"``: inside
    the ``at``-th resume-state save, after its tensor files are written and before its JSON is published
    (the instant where in-place files would pair new weights with an old step)."""
    import os
    import signal

    import scylla.training.checkpoints as ckpt

    torch.set_num_threads(1)
    logger = None
    if mode == "step":
        def logger(record):
            if (record.get("phase"), record.get("step")) == tuple(at) and "loss" in record:
                os.kill(os.getpid(), signal.SIGKILL)
    else:
        write, calls = ckpt._atomic_write_text, [0]

        def dying_write(path, text):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            write(path, text)

        ckpt._atomic_write_text = dying_write
    _train(cache, KILL_BUDGETS, logger=logger)


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(tmp_path_factory.mktemp("kill-ref"), KILL_BUDGETS)
    finally:
        torch.set_num_threads(threads)


# State saves (every 2 steps, at branch points, in cooldowns): 1 trunk@2, 2 trunk@4 (branch point of 640),
# 3 trunk@6, 4 trunk@8, 5 trunk@9 (branch point of 1536), 6 cooldown@10.
@pytest.mark.parametrize("mode,at,first_logged", [
    ("step", ("trunk", 7), ("trunk", 7)),  # resumes from the trunk state of step 6
    ("step", ("cooldown", 11), ("cooldown", 11)),  # from the cooldown state of step 10
    ("save", 3, ("trunk", 5)),  # the step-6 save never published: from step 4, not a mix of 4 and 6
    ("save", 6, ("cooldown", 10)),  # from the branch point
])
def test_resume_after_sigkill_matches_uninterrupted(tmp_path, kill_reference, mode, at, first_logged):
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_sigkilled_job, args=(str(tmp_path), mode, at))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -9, f"child was not killed (exit code {child.exitcode})"
    log = []
    resumed = _train(tmp_path, KILL_BUDGETS, logger=log.append)
    trained = [(r["phase"], r["step"]) for r in log if "loss" in r]
    assert trained[0] == first_logged  # it continued from saved state, it did not start over
    for b in KILL_BUDGETS:
        assert _same(kill_reference[b], resumed[b]), f"budget {b} differs after a SIGKILL and resume"
        assert read_provenance(kill_reference[b])["val_loss"] == read_provenance(resumed[b])["val_loss"]
    # What the killed save left behind is cleaned up: one trunk state (for a later, larger budget), no
    # branch state, no temporaries.
    run_dir = next((tmp_path / "runs").iterdir())
    left = sorted(p.name for p in run_dir.iterdir() if p.name not in ("run.json", "run.lock", "log.jsonl"))
    assert len(left) == 3 and left[0].startswith("trunk.") and "trunk.json" in left, left


def test_train_state_files_are_replaced_not_overwritten(tmp_path):
    from scylla.training.checkpoints import load_train_state, save_train_state

    model = build_llama(SPEC, seed=0)
    opt = torch.optim.AdamW(model.parameters())
    save_train_state(tmp_path / "s", model, opt, {"step": 1})
    first = sorted(p.name for p in tmp_path.glob("s.*.safetensors"))
    save_train_state(tmp_path / "s", model, opt, {"step": 2})
    second = sorted(p.name for p in tmp_path.glob("s.*.safetensors"))
    assert len(first) == len(second) == 2 and not set(first) & set(second)
    assert load_train_state(tmp_path / "s", model, opt)["step"] == 2


def test_load_checkpoint_round_trip_and_refusals(tmp_path):
    path = _train(tmp_path, [384])[384]
    model, prov = load_checkpoint(path)
    assert prov["tokens_seen"] == 384 and not model.training
    x = torch.tensor([[1, 2, 3, 4]])
    assert model(input_ids=x).logits.shape == (1, 4, SPEC.vocab_size)
    assert (path / "tokenizer" / "scylla_tokenizer.json").exists()
    # The file-level corpus manifest travels with the checkpoint and matches the recorded hash.
    from scylla.data.corpora import load_corpus

    manifest = json.loads((path / "corpus_manifest.json").read_text())
    corpus = load_corpus("shakespeare", **OPTIONS["shakespeare"])
    assert manifest["shakespeare"]["manifest_hash"] == corpus.manifest_hash == prov["corpora"][0]["manifest_hash"]
    assert [tuple(x) for x in manifest["shakespeare"]["documents"]] == corpus.manifest
    record = json.loads((path / "provenance.json").read_text())
    record["model_class"] = "os.system"
    (path / "provenance.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="provenance.json does not match the sha256"):
        load_checkpoint(path)  # an edited file is caught by its checksum first
    from scylla.integrity import write_folder_checksums

    write_folder_checksums(path)  # even with matching checksums, the class is refused
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a complete"):
        load_checkpoint(tmp_path)


def test_bad_requests_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(TrainError, match="smaller than one batch"):
        _train(tmp_path, [100])
    with pytest.raises(TrainError, match="larger than the model supports"):
        _train(tmp_path, [1024], cfg=TrainConfig(seq_len=128, batch_size=2))
    with pytest.raises(TrainError, match="vocab_size"):
        train_budgets(ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=100), CORPUS, TOK, [1024], CFG,
                      tmp_path, corpus_options=OPTIONS, progress=False)
    with pytest.raises(TrainError, match="no token budgets"):
        _train(tmp_path, [])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match="unknown corpus"):
        train_budgets(SPEC, ["not-a-corpus"], TOK, [1024], CFG, tmp_path, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("\n")
    with pytest.raises(CorpusError, match="empty"):
        train_budgets(SPEC, [f"local:{empty}"], TOK, [1024], CFG, tmp_path, progress=False)
    with pytest.raises(TrainError, match="cooldown_fraction"):
        _train(tmp_path, [1024], cfg=TrainConfig(seq_len=32, batch_size=4, cooldown_fraction=0))


def _concurrent_job(cache, queue):
    torch.set_num_threads(1)
    log = []
    out = _train(cache, [384, 768], logger=log.append)
    queue.put((str(out[768]), sum(1 for r in log if r.get("phase") == "checkpoint")))


def test_concurrent_jobs_train_once(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_concurrent_job, args=(tmp_path, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0][0] == results[1][0]
    assert sorted(n for _, n in results) == [0, 2]  # one job trained both budgets, the other reused them


@pytest.mark.slow
def test_real_corpora_draft_learns(tmp_path):
    """A preset draft on the three built-in corpora with the 4k BPE learns well below a uniform guess."""
    from scylla.harness.presets import spec_for
    from scylla.data.tokenizer import get_tokenizer

    corpora = ["pycode", "shakespeare", "kjv"]
    tok = get_tokenizer("bpe", 4096, corpora, cache_dir=tmp_path)
    cfg = TrainConfig(seq_len=128, batch_size=8, eval_tokens=8192)
    out = train_budgets(spec_for("draft-w32", tok.vocab_size), corpora, tok, [40_960, 163_840], cfg, tmp_path,
                        progress=False)
    small, large = (read_provenance(out[b])["val_loss"] for b in (40_960, 163_840))
    assert large < small < 8.0  # ln(4096) = 8.3
    assert set(read_provenance(out[163_840])["val_loss_by_corpus"]) == set(corpora)
