"""The local cache: blobs by sha256, plus snapshot directories per revision.

A blob is written to ``<sha>.incomplete``, hashed as it arrives, and renamed
into place only when its digest matches, so the cache never holds a bad file.
Pulling again, or pulling another revision that shares files, reads from here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from peft_hub.paths import cache_dir


class BlobCache:
    """Blobs under ``root/blobs/<sha256>``; snapshots under ``root/snapshots``."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root else cache_dir()

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def has(self, sha256: str, size: int) -> bool:
        path = self.blob_path(sha256)
        return path.is_file() and path.stat().st_size == size

    def incomplete_path(self, sha256: str) -> Path:
        path = self.root / "blobs" / f"{sha256}.incomplete"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def snapshot_path(self, repo_id: str, revision: str) -> Path:
        return self.root / "snapshots" / repo_id / revision


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link a cached blob into a directory, copying across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def assemble(files: dict[str, Path], target: Path, *, link: bool = False) -> Path:
    """Atomically make ``target`` a directory holding exactly ``files``.

    The directory is built beside the target and renamed into place; an
    existing target is swapped out only after the new one is complete.
    Snapshots inside the cache hard-link blobs; directories handed to the
    user get copies, so editing them can never corrupt the cache.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".incomplete", dir=target.parent))
    try:
        for name, src in files.items():
            (link_or_copy if link else shutil.copyfile)(src, staging / name)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
