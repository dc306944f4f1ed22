"""Assembling a pulled revision into a directory: hard links for the cache's
own snapshots, hashed copies for a directory handed to the user (``pull -o``),
written by the one output-directory helper, :mod:`peft_hub.outdir`."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from peft_hub.client.names import BlobChangedError, check_name
from peft_hub.outdir import OutputDir

CHUNK = 1024 * 1024


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link a cached blob into a directory, copying across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _copy_checked(src: Path, dst: Path, sha256: str) -> None:
    """Copy a cached blob, hashing the bytes as they go: what lands in ``dst``
    is exactly the bytes named ``sha256``, or nothing is handed over."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(CHUNK):
            digest.update(block)
            fout.write(block)
    if digest.hexdigest() != sha256:
        raise BlobChangedError(f"the cached copy of {dst.name} changed: it hashes to {digest.hexdigest()}, "
                               f"not {sha256}", sha256)


def assemble(
    files: dict[str, Path], out: OutputDir, *, link: bool = False, digests: dict[str, str] | None = None,
    record: dict | None = None,
) -> Path:
    """Write ``files`` into the planned output directory ``out`` (see :mod:`peft_hub.outdir`).

    Snapshots inside the cache hard-link blobs (read-only); directories handed
    to the user get copies, so editing them can never corrupt the cache, and
    each copy named in ``digests`` is hashed on the way (raising
    :class:`BlobChangedError` for a blob that changed since it was checked).
    An ``out`` already staged (a pull that wrote some files there as they
    arrived) gets ``files`` beside those. On any failure the target is left
    as it was.
    """
    for name in files:  # callers check names already; this keeps every write inside the target
        check_name(name)
    staging = out.path if out.path is not None else out.stage()
    try:
        for name, src in files.items():
            if link:
                link_or_copy(src, staging / name)
            elif digests is not None and name in digests:
                _copy_checked(src, staging / name, digests[name])
            else:
                shutil.copyfile(src, staging / name)
        return out.commit(record)
    finally:
        out.abort()


def links(target: Path, blobs: dict[str, Path]) -> bool:
    """Whether ``target`` holds exactly ``blobs``' names, each a hard link to its cached blob."""
    try:
        return {p.name for p in target.iterdir()} == set(blobs) and all(
            os.path.samefile(target / name, blob) for name, blob in blobs.items()
        )
    except OSError:
        return False
