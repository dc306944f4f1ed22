"""The NDJSON commit ``huggingface_hub`` sends, turned into a full manifest.

A Hugging Face commit adds and deletes files on top of its parent. Here the
parent is the revision ``main`` points at; the result is a complete file list
that :func:`peft_hub.hub.publish.publish` then verifies and publishes whole.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.concurrency import run_in_threadpool

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import MAX_FILES, size_cap, validate_filename
from peft_hub.errors import EntryNotFoundError, InvalidAdapterError, InvalidInputError, PeftHubError
from peft_hub.hub.storage import BlobStore
from peft_hub.hub.uploads import put_small
from peft_hub.model_files import MAX_MODEL_FILES
from peft_hub.safeparse import loads_json

#: Files up to this size are sent inline, base64 in the commit itself
#: (``uploadMode: regular``). That needs no LFS and, above all, no Xet, so a
#: client with ``hf_xet`` installed pushes a typical adapter without setting
#: ``HF_HUB_DISABLE_XET``. Larger files go through LFS (and need Xet off).
INLINE_MAX_BYTES = 64 * 1024 * 1024
#: Git bookkeeping files an HF client may send; they mean nothing here and are skipped.
IGNORED_FILES = frozenset({".gitattributes", ".gitignore"})
MAX_MESSAGE = 4000
#: The most files one commit may add: a model's limit (an adapter's, lower, is checked at publish).
MAX_COMMIT_FILES = max(MAX_FILES, MAX_MODEL_FILES)
_SHA256 = re.compile(r"[0-9a-f]{64}")  # used with fullmatch


@dataclass
class Operation:
    kind: Literal["add", "delete", "delete_folder"]
    path: str
    entry: FileEntry | None = None
    #: The bytes came inline in the commit (the hub received them itself).
    inline: bool = False

    @property
    def added(self) -> FileEntry:
        """The file an ``add`` puts in place (every ``add`` has one)."""
        if self.entry is None:
            raise PeftHubError(f"the {self.kind} of {self.path} carries no file")
        return self.entry


@dataclass
class ParsedCommit:
    summary: str = ""
    description: str = ""
    parent_commit: str | None = None
    operations: list[Operation] = field(default_factory=list)

    @property
    def message(self) -> str:
        text = self.summary if not self.description else f"{self.summary}\n\n{self.description}"
        return text[:MAX_MESSAGE]


def upload_mode(size: int) -> str:
    """How the client should send a file: inline in the commit, or through LFS."""
    return "regular" if size <= INLINE_MAX_BYTES else "lfs"


#: A ``.gitignore`` longer than this is refused (patterns beyond it would not be read).
GITIGNORE_MAX = 64 * 1024


def gitignore_matcher(text: Any) -> Callable[[str], bool]:
    """Whether a path is ignored by the ``.gitignore`` a client sends with its
    preupload (``gitIgnore``), as huggingface.co answers ``shouldIgnore``.

    The common subset of gitignore: blank lines and ``#`` comments skipped, a
    pattern with a ``/`` (or ending in one) matches from the root, one without
    matches any path component; ``!`` negations are not supported and refused.
    """
    if text is None:
        return lambda path: False
    if not isinstance(text, str) or len(text) > GITIGNORE_MAX:
        raise InvalidInputError(f"'gitIgnore' must be a string of at most {GITIGNORE_MAX} characters")
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise InvalidInputError(f"the .gitignore line {line[:80]!r}: negations ('!') are not supported")
        patterns.append(line)

    def ignored(path: str) -> bool:
        parts = path.split("/")
        for pattern in patterns:
            directory = pattern.endswith("/")
            pat = pattern.strip("/")
            if "/" in pattern.rstrip("/"):  # anchored at the root
                depth = pat.count("/") + 1
                prefixes = ["/".join(parts[:i]) for i in range(depth, len(parts) + (0 if directory else 1))]
                if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
                    return True
            elif any(fnmatch.fnmatchcase(part, pat) for part in (parts[:-1] if directory else parts)):
                return True
        return False

    return ignored


def check_path(path: Any) -> str:
    """A file path the registry would store (pickles and other names refused)."""
    if not isinstance(path, str):
        raise InvalidInputError("every operation needs a string 'path'")
    return validate_filename(path)


async def ndjson_lines(chunks: AsyncIterator[bytes], max_line: int) -> AsyncIterator[bytes]:
    """Split a streamed body into lines without holding more than one line."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield line
        if len(buffer) > max_line:
            raise InvalidInputError(f"a commit line is longer than {max_line} bytes; send large files through LFS")
    if bytes(buffer).strip():
        yield bytes(buffer)


async def read_commit(
    chunks: AsyncIterator[bytes], store: BlobStore, stored: list[str], *, max_files: int = MAX_FILES,
) -> ParsedCommit:
    """Parse the commit body; inline files are stored as blobs as they arrive.

    ``max_files`` caps the files added (the route passes
    :data:`MAX_COMMIT_FILES`, a model's limit; publishing checks the kind's own).

    A refused file name (a pickle, say) stops the commit before its bytes are
    stored. The sha256 of each blob this call newly stored is appended to
    ``stored``, so a commit refused later can take them back.
    """
    parsed = ParsedCommit()
    max_line = INLINE_MAX_BYTES * 4 // 3 + 64 * 1024
    async for line in ndjson_lines(chunks, max_line):
        # Bounded depth, and no NUL or broken Unicode in the message and paths.
        item = loads_json(line, what="a commit line", strict_strings=True)
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise InvalidInputError("every commit line is an object with 'key' and 'value'")
        key, value = item.get("key"), item["value"]
        if key == "header":
            parsed.summary = str(value.get("summary") or "")
            parsed.description = str(value.get("description") or "")
            parsed.parent_commit = value.get("parentCommit")
        elif isinstance(value.get("path"), str) and value["path"] in IGNORED_FILES:
            continue
        elif key in ("file", "lfsFile") and sum(op.kind == "add" for op in parsed.operations) >= max_files:
            raise InvalidInputError(f"a commit adds at most {max_files} files (an adapter has at most {MAX_FILES})")
        elif key == "file":
            entry = await _inline_file(value, store, stored)
            parsed.operations.append(Operation("add", value.get("path"), entry, inline=True))
        elif key == "lfsFile":
            parsed.operations.append(Operation("add", value.get("path"), _lfs_file(value)))
        elif key == "deletedFile":
            parsed.operations.append(Operation("delete", str(value.get("path", ""))))
        elif key == "deletedFolder":
            parsed.operations.append(Operation("delete_folder", str(value.get("path", ""))))
        else:
            raise InvalidInputError(f"unsupported commit operation {key!r}")
    return parsed


async def _inline_file(value: dict[str, Any], store: BlobStore, stored: list[str]) -> FileEntry:
    path = check_path(value.get("path"))
    if value.get("encoding", "base64") != "base64" or not isinstance(value.get("content"), str):
        raise InvalidInputError(f"{path}: inline content must be a base64 string")
    try:
        data = base64.b64decode(value["content"], validate=True)
    except binascii.Error as exc:
        raise InvalidInputError(f"{path}: content is not valid base64 ({exc})") from None
    if len(data) > size_cap(path):
        raise InvalidAdapterError(f"{path} is {len(data)} bytes, above the {size_cap(path)} byte cap")
    sha256 = hashlib.sha256(data).hexdigest()
    if await run_in_threadpool(put_small, store, sha256, data):
        stored.append(sha256)
    return FileEntry(path, len(data), sha256)


def _lfs_file(value: dict[str, Any]) -> FileEntry:
    """An LFS file by oid. A missing size (copies omit it) is left as None and
    filled in from what the author holds: never from the store, which would
    tell anyone whether a blob exists."""
    path = check_path(value.get("path"))
    oid = value.get("oid")
    if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not _SHA256.fullmatch(oid):
        raise InvalidInputError(f"{path}: an lfsFile needs a sha256 'oid'")
    size = value.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= size_cap(path)):
        raise InvalidInputError(f"{path}: 'size' must be an integer between 0 and {size_cap(path)}")
    # size may be None (huggingface_hub omits it): the commit route fills it in from the upload receipt.
    return FileEntry(path, size, oid)  # type: ignore[arg-type]


def apply_operations(parent: list[FileEntry], operations: list[Operation]) -> list[FileEntry]:
    """The parent's files with the commit's additions and deletions applied, in order."""
    files = {e.path: e for e in parent}
    for op in operations:
        if op.kind == "add":
            files[op.path] = op.added
        elif op.kind == "delete":
            if files.pop(op.path, None) is None:
                raise EntryNotFoundError(f"A file with this name doesn't exist: {op.path}")
        else:
            prefix = op.path.strip("/")
            gone = [p for p in files if not prefix or p == prefix or p.startswith(prefix + "/")]
            if not gone:
                raise EntryNotFoundError(f"A folder with this name doesn't exist: {op.path}")
            for p in gone:
                del files[p]
    return sorted(files.values(), key=lambda e: e.path)
