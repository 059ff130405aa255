"""Cached weights and token streams carry sha256 checksums; a corrupted file never measures silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scylla.config import compose
from scylla.harness.pipeline import run_job
from scylla.integrity import CHECKSUMS, verify_folder

SMOKE = ["experiment=smoke", "runtime.threads=1", "runtime.progress=false", "eval.tasks=[code]",
         "decode.batch_sizes=[1]"]


def _corrupt_middle(path: Path, n: int = 4096) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(os.urandom(min(n, size // 4)))


def test_corrupted_draft_weights_fail_the_next_job_clearly(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    cache = tmp_path / "cache"
    env = {**subprocess_env, "SCYLLA_CACHE": str(cache)}
    os.environ["SCYLLA_CACHE"], old = str(cache), os.environ["SCYLLA_CACHE"]
    try:
        first = run_job(compose([*SMOKE, f"paths.results_dir={tmp_path / 'r1'}"]))
    finally:
        os.environ["SCYLLA_CACHE"] = old
    draft = Path(first.record["draft"]["checkpoint"])
    assert (draft / CHECKSUMS).is_file() and verify_folder(draft) >= 3  # weights, config, provenance...
    weights = draft / "model.safetensors"
    _corrupt_middle(weights)
    proc = subprocess.run([sys.executable, "-m", "scylla.harness.run", *SMOKE, f"paths.results_dir={tmp_path / 'r2'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{weights} does not match the sha256 recorded when it was written" in proc.stderr
    assert f"delete the folder {draft}" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "r2").glob("*.json"))  # no record with wrong numbers


def test_corrupted_token_cache_is_rebuilt(tmp_path: Path) -> None:
    from scylla.data.corpora import load_corpus
    from scylla.data.tokenizer import ByteTokenizer
    from scylla.training.trainer import token_stream

    corpus = load_corpus(compose(SMOKE).data.corpora[0])
    tok = ByteTokenizer()
    first = np.array(token_stream(corpus, tok, "train", tmp_path))
    (path,) = (tmp_path / "tokens").glob("*.npy")
    assert path.with_name(path.name + ".sha256").read_text().strip()
    _corrupt_middle(path, 64)
    again = np.array(token_stream(corpus, tok, "train", tmp_path))
    assert np.array_equal(first, again)  # rebuilt, not trained on changed ids
    path.write_bytes(b"not a numpy file")
    path.with_name(path.name + ".sha256").unlink()  # no checksum to compare: still a named error
    from scylla.training.trainer import TrainError

    with pytest.raises(TrainError, match=rf"token cache {path} cannot be read .* delete it and re-run"):
        token_stream(corpus, tok, "train", tmp_path)
