"""Loading pretrained causal LMs (targets nobody here trained) by hub id or local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

__all__ = ["load_causal_lm", "target_location"]


def load_causal_lm(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    local_files_only: bool | None = None,
) -> PreTrainedModel:
    """Load any `AutoModelForCausalLM` by hub id or local folder (safetensors only, never a pickle).

    Offline by default when HF_HUB_OFFLINE is set; a missing local folder fails with a clear message.
    """
    import os

    path = Path(str(name_or_path)).expanduser()
    looks_local = path.exists() or str(name_or_path).startswith((".", "/", "~"))
    if looks_local and not path.exists():
        raise FileNotFoundError(f"target model folder not found: {path}; pass an existing folder or a hub id")
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    kwargs: dict = {"use_safetensors": True, "local_files_only": local_files_only}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path if path.exists() else name_or_path), **kwargs)
    except OSError as err:
        raise OSError(
            f"could not load causal LM {name_or_path!r}: {err}. Offline runs need a local folder "
            "(save one with model.save_pretrained(folder)); unset HF_HUB_OFFLINE to download from a hub."
        ) from err
    if device is not None:
        model.to(device)
    model.eval()
    return model


def target_location(target: Any, cache_dir: str | Path) -> tuple[str, dict]:
    """Where a non-preset target's weights and tokenizer live, and what the record says about it.

    ``source: pretrained`` is ``target.path`` as given (a folder or hub id); ``source: gguf`` is the
    cached conversion of ``target.gguf_file`` (converted here on first use, see `scylla.models.gguf`).
    The tokenizer kind ``target`` reads its files from the same place, so drafts share the target's ids."""
    if target.source == "pretrained":
        return str(target.path), {"path": target.path}
    if target.source == "gguf":
        from scylla.models.gguf import convert_gguf, read_target_provenance, resolve_gguf

        gguf = resolve_gguf(target.gguf_file, target.package)
        folder = convert_gguf(gguf, cache_dir, package=target.package)
        prov = read_target_provenance(folder)
        keep = ("package", "package_version", "file", "quantization", "sha256")
        return str(folder), {"path": str(folder), "converted_from": {k: prov.get(k) for k in keep}}
    raise ValueError(f"target.source={target.source!r} has no pretrained location (a preset is trained)")
