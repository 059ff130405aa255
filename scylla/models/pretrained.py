"""Loading pretrained causal LMs (targets nobody here trained) by hub id or local folder."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

__all__ = ["load_causal_lm"]


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
