"""Content-hashed checkpoint cache, provenance, and loading that never unpickles.

A checkpoint is a folder: the model's ``save_pretrained`` output (safetensors), the tokenizer it was
trained with, ``corpus_manifest.json`` (every document id and sha256 of its training corpora, so two
runs' data can be diffed file by file), and ``provenance.json`` (model spec, train config, exact tokens seen, corpus manifest
hash, tokenizer fingerprint, code version, validation loss). Its name ends in a hash of everything
that determines its weights, so any job asking for the same thing finds and reuses it. A folder is
complete only once ``provenance.json`` exists: it is written last and folders are published by an
atomic rename, so a killed job never leaves a half checkpoint that others would trust.

Resumable training state (weights + AdamW moments) is stored as plain tensors in safetensors files
plus JSON, so resuming also never unpickles anything.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from scylla.data.tokenizer import default_cache_dir

PROVENANCE = "provenance.json"
FORMAT = "scylla-checkpoint-v1"
# Modules whose classes `load_checkpoint` may import by the name recorded in provenance.
_TRUSTED_MODULE_PREFIXES = ("scylla.", "transformers.")
# Classes recorded by checkpoints written before the package moved into subpackages.
_MOVED_CLASSES = {"scylla.mtp.MTPForCausalLM": "scylla.models.mtp.MTPForCausalLM"}

__all__ = ["PROVENANCE", "default_cache_dir", "hash_key", "code_version", "is_complete", "read_provenance",
           "save_checkpoint", "load_checkpoint", "save_train_state", "load_train_state", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or of an unknown kind."""


def hash_key(obj: Any, length: int = 16) -> str:
    """Stable short hash of a JSON-able object (sorted keys): the cache key of a run or checkpoint."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def code_version() -> str:
    """``git describe`` of the source tree when it is a git checkout, else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=10, check=True)
        if out.stdout.strip():
            return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"scylla=={version('scylla')}"
    except Exception:  # not installed as a distribution
        return "unknown"


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / PROVENANCE).is_file()


def read_provenance(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / PROVENANCE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a complete scylla checkpoint (no {PROVENANCE}); "
                              "it may still be training, or was killed before finishing: re-run the training")
    return json.loads(path.read_text())


def save_checkpoint(model: torch.nn.Module, folder: str | Path, provenance: dict[str, Any],
                    tokenizer: Any | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Write model (+ tokenizer, + ``extra_files`` name -> text) + provenance into a temporary folder,
    then publish it atomically.

    Uses the model's ``save_pretrained`` when it has one (safetensors), else ``model.safetensors``.
    If another process published the same folder first, its copy is kept (same key = same content).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if hasattr(model, "save_pretrained"):
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint is noise
            try:
                model.save_pretrained(str(tmp), safe_serialization=True)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        else:
            save_model(model, str(tmp / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        # A training wrapper (an EAGLE-3 head with its teacher) names the class that loads what it saved.
        cls = getattr(model, "checkpoint_class", None) or type(model)
        record = {"format": FORMAT, "model_class": f"{cls.__module__}.{cls.__qualname__}",
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **provenance}
        (tmp / PROVENANCE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        from scylla.integrity import write_folder_checksums

        write_folder_checksums(tmp)  # inside the unpublished folder: published together, atomically
        if folder.exists() and is_complete(folder):
            shutil.rmtree(tmp)
            return folder
        if folder.exists():  # an incomplete leftover of a killed job
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _import_class(qualified: str) -> type:
    if not qualified.startswith(_TRUSTED_MODULE_PREFIXES):
        raise CheckpointError(f"checkpoint model class {qualified!r} is outside scylla/transformers; refusing "
                              "to import it. Load the weights yourself with safetensors.torch.load_model.")
    qualified = _MOVED_CLASSES.get(qualified, qualified)
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_checkpoint(path: str | Path, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, provenance) from a checkpoint folder; safetensors only, nothing unpickled.

    Llama checkpoints load through ``transformers``; other scylla models (e.g. multi-token prediction)
    through their class's ``from_pretrained``, the class named in provenance.
    """
    from scylla.models.pretrained import load_causal_lm

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    from scylla.integrity import IntegrityError, verify_folder

    try:
        verify_folder(folder)  # one hash pass per load: changed weights must never measure silently
    except IntegrityError as err:
        raise CheckpointError(str(err)) from None
    prov = read_provenance(folder)
    qualified = prov.get("model_class", "")
    if qualified.startswith("transformers.") or not qualified:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = load_causal_lm(folder, dtype=dtype, device=device, local_files_only=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
    else:
        cls = _import_class(qualified)
        if not hasattr(cls, "from_pretrained"):
            raise CheckpointError(f"{qualified} has no from_pretrained; load {folder}/model.safetensors with "
                                  "safetensors.torch.load_model into a model you build")
        model = cls.from_pretrained(str(folder))
        if dtype is not None:
            model.to(dtype)
        if device is not None:
            model.to(device)
        model.eval()
    return model, prov


# ---------------------------------------------------------------------------------------------------
# Resumable training state


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _state_files(prefix: Path, tag: str) -> tuple[Path, Path]:
    return (prefix.with_name(f"{prefix.name}.{tag}.model.safetensors"),
            prefix.with_name(f"{prefix.name}.{tag}.optim.safetensors"))


def save_train_state(prefix: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     meta: dict[str, Any]) -> None:
    """Weights, optimizer moments and a JSON ``meta`` under ``prefix``.

    The tensors go to new files named by a fresh tag; the JSON, which names that tag, is published last
    by an atomic rename, and only then are the previous tag's files removed. A kill at any instant thus
    leaves the JSON pointing at one complete, consistent (weights, moments, step) triple: overwriting
    the tensor files in place could pair new weights with an old step."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    model_path, optim_path = _state_files(prefix, tag)
    save_model(model, str(model_path))
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    save_file(tensors, str(optim_path))
    record = {"meta": meta, "param_groups": sd["param_groups"], "scalars": scalars, "tag": tag,
              "files": [model_path.name, optim_path.name]}
    _atomic_write_text(Path(f"{prefix}.json"), json.dumps(record, default=float))
    _remove_state_files(prefix, keep={model_path.name, optim_path.name})


def _remove_state_files(prefix: Path, keep: set[str] = frozenset()) -> None:
    """Tensor files of earlier saves (and of saves killed before their JSON was published)."""
    for path in prefix.parent.glob(f"{prefix.name}.*.safetensors"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    for path in prefix.parent.glob(f".{prefix.name}.*"):  # temporaries of older scylla versions
        path.unlink(missing_ok=True)


def read_train_state_meta(prefix: str | Path) -> dict[str, Any] | None:
    path = Path(f"{prefix}.json")
    if not path.is_file():
        return None
    return json.loads(path.read_text())["meta"]


def load_train_state(prefix: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     device: torch.device | str | None = None) -> dict[str, Any]:
    """Restore what `save_train_state` wrote into ``model`` and ``optimizer``; returns ``meta``."""
    prefix = Path(prefix)
    record = json.loads(Path(f"{prefix}.json").read_text())
    if "files" in record:
        model_path, optim_path = (prefix.with_name(name) for name in record["files"])
    else:  # written before states were tagged
        model_path, optim_path = Path(f"{prefix}.model.safetensors"), Path(f"{prefix}.optim.safetensors")
    load_model(model, str(model_path), strict=True, device=str(device or "cpu"))
    tensors = load_file(str(optim_path), device=str(device or "cpu"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = value
    for idx, extra in record["scalars"].items():
        state.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    return record["meta"]


def remove_train_state(prefix: str | Path) -> None:
    """Drop a state once its checkpoint is published (JSON first, so no reader finds missing files)."""
    prefix = Path(prefix)
    Path(f"{prefix}.json").unlink(missing_ok=True)
    _remove_state_files(prefix)
