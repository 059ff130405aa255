"""A secret in an override never reaches Hydra's dumps, multirun.yaml, logs, records or wandb's run files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SMOKE = ["experiment=smoke", "runtime.threads=1", "runtime.progress=false", "eval.tasks=[code]",
         "decode.batch_sizes=[1]"]


def _grep(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_url_password_in_an_override_is_scrubbed_everywhere(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    env = {**subprocess_env, "WANDB_DIR": str(wandb_dir), "WANDB_MODE": "offline"}
    secret = "S3cretPw-for-dumps-9f8e7d"
    proc = subprocess.run(
        [sys.executable, "-m", "scylla.harness.run", "-m", *SMOKE, "logger=wandb",
         f"logger.group=postgres://bob:{secret}@host/x", f"logger.dir={wandb_dir}",
         f"paths.results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    sweep = tmp_path / "sweep"
    assert (sweep / "multirun.yaml").is_file() and (sweep / "0" / ".hydra" / "overrides.yaml").is_file()
    assert list((tmp_path / "results").glob("*.json")), "the job wrote no record"
    assert list(wandb_dir.rglob("*.wandb")), "wandb wrote no offline run"
    assert secret not in proc.stdout + proc.stderr
    leaks = _grep(tmp_path, secret.encode())
    assert not leaks, f"secret found in {leaks}"
    text = (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    assert "logger.group=postgres" in text and "<redacted>" in text  # the setting is kept, the password is not
