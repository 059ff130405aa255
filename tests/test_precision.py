"""train.bf16 = auto decides by measurement: the decision logic with a fake timer, the cache, the forced
settings, and one real (small) measurement. No assertion depends on how fast this machine is."""

from __future__ import annotations

import json

import pytest
import torch

from scylla.models.llama import ModelSpec, build_llama
from scylla.training.precision import DEFAULT_MARGIN, MEASURE_STEPS, PrecisionDecision, decide_precision

SPEC = ModelSpec(d_model=32, n_layers=1, n_heads=2, vocab_size=64, max_seq_len=64)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_llama(SPEC, seed=0)


class FakeTimer:
    """Step times by precision; counts calls so a test can tell whether anything was timed."""

    def __init__(self, fp32: float, bf16: float) -> None:
        self.seconds = {False: fp32, True: bf16}
        self.calls = 0

    def __call__(self, bf16: bool) -> float:
        self.calls += 1
        return self.seconds[bf16]


def _decide(model, cache, timer, setting="auto", **kw) -> PrecisionDecision:
    return decide_precision(setting, model, "cpu", seq_len=32, batch_size=4, cache_dir=cache, timer=timer, **kw)


def test_fp32_faster_chooses_fp32(model, tmp_path):
    timer = FakeTimer(fp32=1.0, bf16=3.0)
    d = _decide(model, tmp_path, timer)
    assert (d.bf16, d.precision, d.how) == (False, "fp32", "measured")
    assert d.ratio == pytest.approx(1 / 3)
    assert timer.calls == 2 * (MEASURE_STEPS + 1)  # one warm-up and MEASURE_STEPS timed passes each
    assert d.tokens_per_s(False) == pytest.approx(4 * 32 / 1.0)


def test_bf16_faster_chooses_bf16(model, tmp_path):
    d = _decide(model, tmp_path, FakeTimer(fp32=2.0, bf16=1.0))
    assert (d.bf16, d.precision, d.how) == (True, "bf16", "measured") and d.ratio == pytest.approx(2.0)


def test_a_tie_or_a_small_gain_keeps_fp32(model, tmp_path):
    gain = 1 + DEFAULT_MARGIN / 2
    assert not _decide(model, tmp_path / "a", FakeTimer(fp32=gain, bf16=1.0)).bf16
    assert not _decide(model, tmp_path / "b", FakeTimer(fp32=1.0, bf16=1.0)).bf16
    assert _decide(model, tmp_path / "c", FakeTimer(fp32=1.0 + 2 * DEFAULT_MARGIN, bf16=1.0)).bf16


def test_cache_hit_reuses_without_timing(model, tmp_path):
    first = _decide(model, tmp_path, FakeTimer(fp32=2.0, bf16=1.0))
    files = list((tmp_path / "precision").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["fp32_step_seconds"] == 2.0
    again = FakeTimer(fp32=1.0, bf16=5.0)  # would choose fp32 if it were asked
    second = _decide(model, tmp_path, again)
    assert again.calls == 0
    assert (second.bf16, second.how, second.key) == (True, "cached", first.key)
    # another architecture or batch shape is another question
    other = build_llama(ModelSpec(d_model=64, n_layers=1, n_heads=2, vocab_size=64, max_seq_len=64), seed=0)
    assert _decide(other, tmp_path, FakeTimer(1.0, 5.0)).how == "measured"
    assert decide_precision("auto", model, "cpu", seq_len=16, batch_size=4, cache_dir=tmp_path,
                            timer=FakeTimer(1.0, 5.0)).how == "measured"


def test_unreadable_cache_is_measured_again(model, tmp_path):
    key = _decide(model, tmp_path, FakeTimer(2.0, 1.0)).key
    (tmp_path / "precision" / f"{key}.json").write_text("{not json")
    d = _decide(model, tmp_path, FakeTimer(1.0, 3.0))
    assert (d.how, d.bf16) == ("measured", False)


@pytest.mark.parametrize("setting", [True, False])
def test_forced_settings_bypass_measurement(model, tmp_path, setting):
    timer = FakeTimer(1.0, 1.0)
    d = _decide(model, tmp_path, timer, setting=setting)
    assert (d.bf16, d.how, d.ratio) == (setting, "forced", None) and timer.calls == 0
    assert not (tmp_path / "precision").exists()
    assert "forced" in d.summary()


def test_bad_setting_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="auto"):
        _decide(model, tmp_path, FakeTimer(1.0, 1.0), setting="yes")


def test_real_measurement_returns_a_valid_result(model, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    d = decide_precision("auto", model, "cpu", seq_len=16, batch_size=2, cache_dir=tmp_path)
    assert d.how == "measured" and d.precision in ("fp32", "bf16")
    assert d.fp32_step_seconds > 0 and d.bf16_step_seconds > 0 and d.tokens_per_step == 32
    assert d.bf16 == (d.ratio >= 1 + d.margin)
    record = d.to_dict()
    assert record["precision"] == d.precision and record["how"] == "measured" and record["ratio"] == d.ratio
    assert json.dumps(record) and d.summary().startswith(f"training precision: {d.precision}")
    # measuring leaves the model, its gradients and the global RNG as they were
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())
