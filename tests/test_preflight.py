"""Bad settings that used to surface only after training (or never): refused before any work starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scylla.config import ConfigError, compose
from scylla.harness.pipeline import run_job

SMOKE = ["experiment=smoke", "runtime.threads=1", "runtime.progress=false"]


def test_batch_larger_than_prompts_is_refused_in_validation() -> None:
    with pytest.raises(ConfigError, match=r"decode.batch_sizes: batch size\(s\) \[8\] exceed eval.n_prompts=2"):
        compose([*SMOKE, "eval.n_prompts=2", "decode.batch_sizes=[1,8]"])
    compose([*SMOKE, "eval.n_prompts=8", "decode.batch_sizes=[1,8]"])  # fillable: accepted
    compose(["experiment=demo"])  # the shipped presets stay valid


def test_batch_larger_than_prompts_exits_2_on_the_cli(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "scylla.harness.run", *SMOKE, "eval.n_prompts=2",
                           "decode.batch_sizes=[1,8]", f"paths.results_dir={tmp_path / 'r'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                          env=subprocess_env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "exceed eval.n_prompts=2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_non_finite_temperature_is_refused() -> None:
    for value in ("inf", "nan", "-1"):
        with pytest.raises(ConfigError, match="decode.temperature: must be a finite number"):
            compose([*SMOKE, f"decode.temperature={value}"])


def test_sequence_beyond_the_targets_positions_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"1000 \+ 30 \+ 3 = 1033 positions exceed the preset target's 1024"):
        compose([*SMOKE, "eval.prompt_tokens=1000", "decode.max_new_tokens=30"])
    with pytest.raises(ConfigError, match=r"1000 \+ 16 \+ 9 = 1025"):  # the deepest shape counts
        compose([*SMOKE, "eval.prompt_tokens=1000", "decode.gammas=[2,9]"])


def _tiny_pretrained(folder: Path, vocab: int, positions: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=positions)
    LlamaForCausalLM(cfg).save_pretrained(str(folder), safe_serialization=True)
    return folder


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import scylla.training.trainer as trainer

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the preflight check")

    monkeypatch.setattr(trainer, "train_budgets", refuse)


def test_pretrained_target_vocab_and_positions_checked_before_training(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _no_training(monkeypatch)
    base = [*SMOKE, "target=pretrained", "tokenizer=byte", f"paths.results_dir={tmp_path / 'r'}"]
    wrong_vocab = _tiny_pretrained(tmp_path / "vocab", vocab=1000, positions=512)
    with pytest.raises(ConfigError, match=r"tokenizer.kind: the 'byte' tokenizer has \d+ tokens but target .* "
                                          r"vocabulary of 1000.*tokenizer.kind=pretrained:"):
        run_job(compose([*base, f"target.path={wrong_vocab}"]))
    short = _tiny_pretrained(tmp_path / "short", vocab=1000, positions=24)
    with pytest.raises(ConfigError, match=r"16 \+ 16 \+ 3 = 35 positions exceed target .*short's 24 positions"):
        run_job(compose([*base, f"target.path={short}"]))
    assert not list((tmp_path / "r").glob("*.json"))  # no record
