"""Shared test fixtures: offline everything, one torch thread, temporary caches and wandb folders.

Set ``SCYLLA_TEST_CACHE=/some/folder`` to keep the smoke target and drafts between pytest runs
(the default is a fresh temporary cache per session, so tests never touch ~/.cache).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Before anything imports transformers, datasets or wandb: no network, no hub, wandb offline.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["WANDB_DISABLE_GIT"] = "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture(scope="session", autouse=True)
def _offline_session(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A temporary WANDB_DIR and scylla cache for the whole session; torch on one thread."""
    os.environ["WANDB_DIR"] = str(tmp_path_factory.mktemp("wandb"))
    os.environ["SCYLLA_CACHE"] = os.environ.get("SCYLLA_TEST_CACHE") or str(tmp_path_factory.mktemp("scylla-cache"))
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def scylla_cache() -> Path:
    """The session's scylla cache (tokenizers, token streams, checkpoints)."""
    return Path(os.environ["SCYLLA_CACHE"])


@pytest.fixture
def python() -> str:
    """The interpreter running the tests (the project's venv), for subprocess CLIs."""
    return sys.executable


@pytest.fixture
def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a ``scylla-run`` subprocess: offline, one thread, the session cache."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env
