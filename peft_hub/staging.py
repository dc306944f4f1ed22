"""Temporary files and directories that outlive no one: each is held under an
``flock`` by the process writing it, which the kernel drops when that process
dies (even by SIGKILL), so one that nobody holds is debris a killed pull left,
and the next run removes it. Where no lock can be taken (Windows), age decides.

Names carry the state: ``.new`` (being created, locked within moments),
``.incomplete`` (being written, locked), ``.old`` (swapped out, about to go).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: leftovers are recognised by age alone
    fcntl = None  # type: ignore[assignment]  # the module, or None where there is none

#: Where no lock can be taken, a temporary file this old (seconds) is abandoned:
#: a live download writes far more often, and fails after its read timeout.
STALE_SECONDS = 600
#: A file or directory still being created, before its lock is taken, is this young.
CREATING_SECONDS = 60
#: Staging and swapped-out directories beside an assembled directory.
STAGING_RE = re.compile(r"\..+\.peft-hub-[a-z0-9_]+\.(new|incomplete|old)")


def lock(fd: int) -> None:
    """Hold an exclusive ``flock`` on ``fd`` (the kernel drops it when the process
    dies, even by SIGKILL); fails if someone else holds it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Whether no live process owns the leftover ``path``; while True, this process holds it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        yield False
        return
    age = time.time() - st.st_mtime
    if path.name.endswith(".new"):  # its creator locks it and renames it within moments
        yield age > CREATING_SECONDS
        return
    if path.name.endswith(".old") or stat.S_ISLNK(st.st_mode):  # never locked; only ever transient
        yield True
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        yield False
        return
    try:
        lock(fd)
    except OSError:
        os.close(fd)
        yield False  # its writer is alive
        return
    try:
        yield fcntl is not None or age > STALE_SECONDS
    finally:
        os.close(fd)


def sweep(paths: Iterator[Path], remove: bool) -> list[Path]:
    """The ``paths`` no live process owns (deleted if ``remove``)."""
    found = []
    for path in paths:
        with claim(path) as free:
            if free:
                if remove:
                    delete(path)
                found.append(path)
    return found


def staging_leftovers(parent: Path, *, remove: bool = False) -> list[Path]:
    """Staging and swapped-out directories in ``parent`` that no live process owns
    (only names of the form ``.<name>.peft-hub-<random>.<state>``); ``remove`` deletes them."""
    dirs = (p for p in scandir(parent) if STAGING_RE.fullmatch(p.name) and p.is_dir() and not p.is_symlink())
    return sweep(dirs, remove)


def delete(path: Path) -> None:
    """Remove a file or a directory tree, read-only files included."""
    if path.is_dir() and not path.is_symlink():
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=_force)
        else:
            shutil.rmtree(path, onerror=_force)
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except PermissionError:  # Windows refuses to delete read-only files
        os.chmod(path, 0o644)
        path.unlink()


def _force(func: Callable[..., object], path: str | os.PathLike[str], _exc: object) -> None:
    """shutil.rmtree's error hook: make ``path`` writable, then retry the call that failed."""
    with suppress(OSError):
        os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
        func(path)


def scandir(path: Path) -> list[Path]:
    """A directory's entries, sorted; none if it does not exist."""
    try:
        return sorted(Path(entry.path) for entry in os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


@contextmanager
def staging_dir(parent: Path, name: str) -> Iterator[Path]:
    """A new directory beside ``parent / name``, locked while this process lives
    and removed on the way out unless it was renamed away."""
    path = Path(tempfile.mkdtemp(prefix=f".{name}.peft-hub-", suffix=".new", dir=parent))
    fd = os.open(path, os.O_RDONLY)
    try:
        lock(fd)
        path = path.rename(path.with_suffix(".incomplete"))
        yield path
    finally:
        if path.exists():
            delete(path)
        os.close(fd)
