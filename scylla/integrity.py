"""sha256 checksums for cached files: written with the file, verified once per load.

A checkpoint folder gets ``checksums.json`` ({relative path: sha256} of every file in it), written
inside the temporary folder before the folder is published by an atomic rename, so a published
checkpoint always has checksums that match what it held when written. `verify_folder` re-hashes on
every load (one pass over the weights, cheap next to loading them) and raises `IntegrityError`
naming the first file whose bytes changed and how to fix it. A token-stream cache gets a sidecar
``<file>.sha256`` written before the file is published; a mismatch there is rebuilt, as tokenizing
again is cheap. Folders written before checksums existed load as before (nothing to compare with).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Optional

__all__ = ["CHECKSUMS", "IntegrityError", "sha256_file", "write_folder_checksums", "verify_folder",
           "write_sidecar", "verify_sidecar"]

CHECKSUMS = "checksums.json"
_CHUNK = 1 << 22


class IntegrityError(ValueError):
    """A cached file whose bytes no longer match the checksum written with it."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS and not p.name.endswith(".lock"))


def write_folder_checksums(folder: str | os.PathLike, exclude: tuple[str, ...] = ()) -> Path:
    """``checksums.json`` for every file under ``folder`` (call before publishing the folder)."""
    folder = Path(folder)
    sums = {p.relative_to(folder).as_posix(): sha256_file(p) for p in _files(folder)
            if p.relative_to(folder).as_posix() not in exclude}
    out = folder / CHECKSUMS
    tmp = folder / f".{CHECKSUMS}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"algorithm": "sha256", "files": sums}, indent=1, sort_keys=True))
    os.replace(tmp, out)
    return out


def verify_folder(folder: str | os.PathLike) -> Optional[int]:
    """Re-hash every file listed in ``checksums.json``; the number checked (None: a folder without
    checksums, written before they existed). Raises `IntegrityError` naming the bad file."""
    folder = Path(folder)
    listing = folder / CHECKSUMS
    if not listing.is_file():
        return None
    fix = f"delete the folder {folder} (rm -r) and re-run: the job rebuilds it"
    try:
        sums = json.loads(listing.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise IntegrityError(f"{listing} is corrupt (not the checksum list scylla writes); {fix}") from None
    for name, expected in sums.items():
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path} is missing from the cached checkpoint; {fix}")
        if sha256_file(path) != expected:
            raise IntegrityError(f"{path} does not match the sha256 recorded when it was written (the file was "
                                 f"changed or corrupted on disk); {fix}")
    return len(sums)


def write_sidecar(path: str | os.PathLike, digest: Optional[str] = None) -> Path:
    """``<path>.sha256`` holding the file's sha256 (``digest`` when already known)."""
    path = Path(path)
    side = path.with_name(path.name + ".sha256")
    tmp = side.with_name(f".{side.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text((digest or sha256_file(path)) + "\n")
    os.replace(tmp, side)
    return side


def verify_sidecar(path: str | os.PathLike, sidecar_for: Optional[str | os.PathLike] = None) -> Optional[bool]:
    """True when ``path`` matches its sidecar, False when not, None when there is no sidecar.
    ``sidecar_for`` names the published file whose sidecar applies (default: ``path`` itself)."""
    path = Path(path)
    base = Path(sidecar_for) if sidecar_for else path
    side = base.with_name(base.name + ".sha256")
    if not side.is_file():
        return None
    try:
        expected = side.read_text().strip()
    except OSError:
        return False
    return path.is_file() and sha256_file(path) == expected
