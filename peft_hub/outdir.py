"""Writing a command's output directory without ever losing a user's file.

One rule for every command that writes a directory (``pull -o``, compose,
interpolate, materialize), as ``git clone`` and ``hf download --local-dir``
taught users to expect:

- a new or empty directory is written atomically: files are staged in a
  hidden, locked ``.NAME.peft-hub-*.incomplete`` directory and renamed into
  place only when complete;
- a directory holding an earlier output of the same thing (the same adapter
  for ``pull``, an earlier output of the same command for the others) is
  updated in place: only the files that output wrote change, the others stay;
- any other non-empty directory is refused before any work, unless the
  caller passes ``into_existing`` (the CLI's flag), which writes the new
  files beside what is there and deletes nothing.

An earlier output is recognised by a record the command keeps in the
cache (``$PEFT_HUB_CACHE/outputs/<sha256 of the path>.json``): the
directory's path and inode, the command, what it wrote (``identity``, e.g.
``admin/support``) and the names of the files it wrote. Nothing is added to
the output directory itself, so a pulled adapter holds exactly the
adapter's files. A directory that was removed and made again, or moved,
no longer matches its record (the inode differs), and is refused as
anything else is. Only files a record lists are ever removed, so ``-o .``
or ``-o "$(pwd)"`` can never delete the user's work; the staging directory
of an existing directory lives inside it, never in its parent.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from peft_hub.errors import InvalidInputError, PeftHubError
from peft_hub.paths import cache_dir
from peft_hub.staging import delete, staging_dir, staging_leftovers

Mode = Literal["new", "fill", "update", "merge", "replace"]
_RECORD_LIMIT = 1024 * 1024


def _plain(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\x00" not in name


def _record_path(directory: Path) -> Path:
    key = hashlib.sha256(os.fsencode(directory)).hexdigest()
    return cache_dir() / "outputs" / f"{key}.json"


def read_record(directory: Path) -> dict | None:
    """The record of an earlier output written to ``directory``, if it is still that directory."""
    path = _record_path(directory)
    try:
        if path.stat().st_size > _RECORD_LIMIT:
            return None
        data = json.loads(path.read_text())
        st = os.stat(directory)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("path") != os.fsdecode(directory):
        return None
    if data.get("inode") != [st.st_dev, st.st_ino]:
        return None  # removed and made again, or another file system: not the directory we wrote
    if not isinstance(data.get("kind"), str) or not isinstance(data.get("identity"), str):
        return None
    files = data.get("files")
    if not isinstance(files, list) or not all(_plain(f) for f in files):
        return None
    return data


def _write_record(directory: Path, kind: str, identity: str, files: list[str], extra: dict | None) -> None:
    # Best effort: without a record (a read-only cache) the next run refuses the directory, which is safe.
    path = _record_path(directory)
    with suppress(OSError):
        st = os.stat(directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"path": os.fsdecode(directory), "inode": [st.st_dev, st.st_ino], "kind": kind,
                "identity": identity, "files": files, **(extra or {})}
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".new", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(body, fh, indent=2, sort_keys=True)
            os.replace(tmp, path)
        finally:
            delete(Path(tmp))


@dataclass
class OutputDir:
    """A planned output directory; :meth:`stage` it, write there, then :meth:`commit`.

    Build one with :func:`plan_output`, which refuses a directory it may not write.
    """

    target: Path
    mode: Mode
    kind: str
    identity: str
    previous: set[str] = field(default_factory=set)
    error: type[PeftHubError] = InvalidInputError
    flag: str = "--into-existing"
    record: bool = True  # keep a record in the cache (the cache's own snapshots need none)
    #: Run on the staging directory when :meth:`commit` starts, before anything
    #: is visible: raising leaves the target as it was (e.g. the sources changed).
    check: Callable[[Path], None] | None = None
    _staging: AbstractContextManager[Path] | None = None
    path: Path | None = None  # the staging directory, while staged

    def stage(self) -> Path:
        """Make the (locked, hidden) staging directory and return it."""
        home = self.target.parent if self.mode in ("new", "replace") else self.target
        home.mkdir(parents=True, exist_ok=True)
        staging_leftovers(home, remove=True)  # what a killed run left
        self._staging = staging_dir(home, self.target.name or "output")
        self.path = self._staging.__enter__()
        return self.path

    def abort(self) -> None:
        """Remove the staging directory; the target is as it was."""
        if self._staging is not None:
            self._staging.__exit__(None, None, None)
            self._staging = self.path = None

    def commit(self, extra: dict | None = None) -> Path:
        """Move the staged files into place (see the module's rules) and record what was written."""
        staged = self.path
        if staged is None:
            raise RuntimeError("commit() before stage()")
        try:
            if self.check is not None:
                self.check(staged)
            names = sorted(p.name for p in staged.iterdir())
            if self.mode == "replace" and (self.target.exists() or self.target.is_symlink()):
                self._swap(staged)
            elif self.mode in ("new", "replace"):
                try:
                    os.replace(staged, self.target)
                except OSError as exc:  # someone made it meanwhile
                    raise self.error(f"cannot write {self.target}: {exc.strerror or exc}") from None
            else:
                self._move_in(staged, names)
        finally:
            self.abort()
        if self.record:
            _write_record(self.target, self.kind, self.identity, names, extra)
        return self.target

    def _swap(self, staged: Path) -> None:
        # Only for directories this program owns whole (the cache's snapshots):
        # the old one is swapped out after the new one is complete.
        old = self.target.with_name(f".{self.target.name}.peft-hub-{secrets.token_hex(4)}.old")
        os.replace(self.target, old)
        try:
            os.replace(staged, self.target)
        except BaseException:
            os.replace(old, self.target)  # what was there stays
            raise
        delete(old)

    def _move_in(self, staged: Path, names: list[str]) -> None:
        for name in names:
            dest = self.target / name
            if dest.is_dir() and not dest.is_symlink():
                raise self.error(f"{dest} is a directory; move it away to write {self.target}")
            if self.mode == "update" and name not in self.previous and (dest.exists() or dest.is_symlink()):
                raise self.error(f"{dest} was not written by the earlier {self.kind}; move it away, or pass "
                                 f"{self.flag} to replace it")
        moved = []
        try:
            for name in names:
                os.replace(staged / name, self.target / name)  # a symlink there is replaced, never followed
                moved.append(name)
        except BaseException:
            if self.mode == "fill":  # the directory was empty: leave it empty
                for name in moved:
                    delete(self.target / name)
            raise
        for name in self.previous - set(names):  # files the earlier output wrote and this one does not
            old = self.target / name
            if old.is_file() or old.is_symlink():
                delete(old)


def plan_output(
    target: str | os.PathLike[str],
    *,
    kind: str,
    identity: str,
    into_existing: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    flag: str = "--into-existing",
    error: type[PeftHubError] = InvalidInputError,
) -> OutputDir:
    """Decide how ``target`` may be written, before any work is done.

    Args:
        target: the output directory as the user gave it (``.``, ``..`` and ``~`` included).
        kind: the command (``pull``, ``compose``, ``materialize``…), kept in the record.
        identity: what is written (``owner/name`` for a pull; the kind for the others).
        into_existing: write into a non-empty directory that holds something else.
        inputs: directories the output must not be (nor lie inside).
        flag: the command-line flag that sets ``into_existing``, for the message.
        error: the error class to raise.

    Returns:
        An :class:`OutputDir` to stage and commit.
    """
    shown = os.fspath(target)
    path = Path(os.path.abspath(Path(target).expanduser()))
    for item in inputs:
        src = Path(os.path.abspath(Path(item).expanduser()))
        if path == src or src in path.parents:
            raise error(f"{shown} is one of the inputs")
    if path.is_symlink() and not path.is_dir():
        raise error(f"{shown} is a symbolic link; choose a directory")
    if not path.exists():
        if path.is_symlink():
            raise error(f"{shown} is a dangling symbolic link; choose a directory")
        return OutputDir(path, "new", kind, identity, error=error, flag=flag)
    if not path.is_dir():
        raise error(f"{shown} already exists and is not a directory")
    entries = [p.name for p in path.iterdir() if not _ours_transient(p.name, path.name)]
    if not entries:
        return OutputDir(path, "fill", kind, identity, error=error, flag=flag)
    record = read_record(path)
    if record is not None and (record["kind"], record["identity"]) == (kind, identity):
        return OutputDir(path, "update", kind, identity, set(record["files"]), error=error, flag=flag)
    if into_existing:  # write beside what is there; delete nothing
        return OutputDir(path, "merge", kind, identity, error=error, flag=flag)
    held = f" (it holds the {record['kind']} of {record['identity']})" if record is not None else ""
    raise error(f"{shown} already exists and is not an empty directory{held}; choose a new or empty directory, "
                f"or pass {flag} to write into it (other files are kept)")


def replace_output(target: str | os.PathLike[str], *, kind: str, identity: str) -> OutputDir:
    """A directory this program owns whole (a cache snapshot), rebuilt beside and swapped in."""
    return OutputDir(Path(os.path.abspath(target)), "replace", kind, identity, record=False)


def _ours_transient(name: str, target_name: str) -> bool:
    """A staging directory a run of ours left inside an existing output (swept at stage time)."""
    return name.startswith(f".{target_name or 'output'}.peft-hub-")
