"""The NDJSON commit ``huggingface_hub`` sends, turned into a full manifest.

A Hugging Face commit adds and deletes files on top of its parent. Here the
parent is the revision ``main`` points at; the result is a complete file list
that :func:`peft_hub.hub.publish.publish` then verifies and publishes whole.
The parsed commit and its operations are in :mod:`peft_hub.hub.hf.operations`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Any

from starlette.concurrency import run_in_threadpool

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import MAX_FILES, size_cap, validate_filename
from peft_hub.errors import InvalidAdapterError, InvalidInputError
from peft_hub.hub.hf.ndjson import StreamedBody
from peft_hub.hub.hf.operations import Operation, ParsedCommit
from peft_hub.hub.storage import BlobStore
from peft_hub.hub.uploads import put_small, put_staged
from peft_hub.model_files import MAX_MODEL_FILES
from peft_hub.safeparse import loads_json

#: Files up to this size are sent inline, base64 in the commit itself
#: (``uploadMode: regular``). That needs no LFS and, above all, no Xet, so a
#: client with ``hf_xet`` installed pushes a typical adapter without setting
#: ``HF_HUB_DISABLE_XET``. Larger files go through LFS.
INLINE_MAX_BYTES = 64 * 1024 * 1024
#: huggingface_hub >= 1.0 uploads every LFS file with Xet when ``hf_xet`` is
#: importable (a hard dependency), whatever the repo's ``xetEnabled`` says,
#: and peft-hub has no Xet. Such a client is told to send files inline up to
#: this size. It builds the base64 line in memory (3-4x the file, by its
#: source: the bytes, their base64, its text and the JSON line), so the bound
#: stays where a workstation copes; above it the Xet 501 names HF_HUB_DISABLE_XET=1.
XET_CLIENT_INLINE_MAX_BYTES = 2 * 1024**3
#: A commit line up to this length is parsed whole; a longer one must be an
#: inline file as huggingface_hub writes it, and is streamed (bounded memory).
WHOLE_LINE_MAX = 4 * 1024 * 1024
#: The JSON after an inline file's content (its path and encoding) is at most this long.
FILE_TAIL_MAX = 64 * 1024
#: Base64 decoded per worker-thread call. Small pieces: each thread's malloc
#: arena keeps what it last held, and a commit passes through many threads.
DECODE_BYTES = 256 * 1024
#: Git bookkeeping files an HF client may send; they mean nothing here and are skipped.
IGNORED_FILES = frozenset({".gitattributes", ".gitignore"})
#: The most files one commit may add: a model's limit (an adapter's, lower, is checked at publish).
MAX_COMMIT_FILES = max(MAX_FILES, MAX_MODEL_FILES)
#: The most lines besides the files added (its header, deletions, skipped git
#: files) one commit may hold. A deletion names a file or folder of the
#: parent, which holds at most MAX_COMMIT_FILES files, and a second deletion
#: of one fails; a commit past this could never land, so it is refused while
#: it streams instead of being read (and kept) up to the body cap.
MAX_COMMIT_OTHER_LINES = MAX_COMMIT_FILES + len(IGNORED_FILES) + 1
_SHA256 = re.compile(r"[0-9a-f]{64}")  # used with fullmatch
#: How huggingface_hub starts a ``file`` line (json.dumps of key, value, content in that order).
_FILE_HEAD = re.compile(rb'\s*\{\s*"key"\s*:\s*"file"\s*,\s*"value"\s*:\s*\{\s*"content"\s*:\s*"')
_FILE_KEYS = frozenset({"content", "path", "encoding"})
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")  # used with fullmatch, on pieces of 4k characters


def upload_mode(size: int, *, takes_xet: bool = False) -> str:
    """How the client should send a file: inline in the commit, or through LFS.

    ``takes_xet``: the client would send an LFS file through Xet (see
    :data:`XET_CLIENT_INLINE_MAX_BYTES`), so larger files go inline too.
    """
    limit = max(INLINE_MAX_BYTES, XET_CLIENT_INLINE_MAX_BYTES) if takes_xet else INLINE_MAX_BYTES
    return "regular" if size <= limit else "lfs"


def check_path(path: Any) -> str:
    """A file path the registry would store (pickles and other names refused)."""
    if not isinstance(path, str):
        raise InvalidInputError("every operation needs a string 'path'")
    return validate_filename(path)


async def read_commit(
    chunks: AsyncIterator[bytes], store: BlobStore, stored: list[str], *, max_files: int = MAX_FILES,
) -> ParsedCommit:
    """Parse the commit body; inline files are stored as blobs as they arrive.

    ``max_files`` caps the files added (the route passes
    :data:`MAX_COMMIT_FILES`, a model's limit; publishing checks the kind's own),
    and :data:`MAX_COMMIT_OTHER_LINES` every other line.

    Lines up to :data:`WHOLE_LINE_MAX` are parsed whole; a longer one is an
    inline file whose base64 is decoded into a staged file as it arrives
    (:func:`_streamed_file`), so a large file costs no memory.

    A refused file name (a pickle, say) stops the commit before its bytes are
    stored. The sha256 of each blob this call newly stored is appended to
    ``stored``, so a commit refused later can take them back.
    """
    parsed = ParsedCommit()
    body = StreamedBody(chunks)
    counted = {"add": 0, "other": 0}

    def check_count(kind: str = "add") -> None:
        counted[kind] += 1
        if kind == "add" and counted["add"] > max_files:
            raise InvalidInputError(f"a commit adds at most {max_files} files (an adapter has at most {MAX_FILES})")
        if counted["other"] > MAX_COMMIT_OTHER_LINES:
            raise InvalidInputError(f"a commit holds at most {MAX_COMMIT_OTHER_LINES} lines besides the files it "
                                    f"adds (a header and deletions; a parent holds at most {MAX_COMMIT_FILES} files)")

    while (line := await body.line(WHOLE_LINE_MAX)) is not None:
        if line is StreamedBody.LONG:
            check_count()
            streamed = await _streamed_file(body, store, stored)
            if streamed is not None:
                parsed.operations.append(Operation("add", streamed.path, streamed, inline=True))
            else:  # a skipped git file: it was counted as an add
                counted["add"] -= 1
                check_count("other")
            continue
        # Bounded depth, and no NUL or broken Unicode in the message and paths.
        item = loads_json(line, what="a commit line", strict_strings=True)
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise InvalidInputError("every commit line is an object with 'key' and 'value'")
        key, value = item.get("key"), item["value"]
        skipped = isinstance(value.get("path"), str) and value["path"] in IGNORED_FILES
        if key not in ("file", "lfsFile") or skipped:
            check_count("other")
        if key == "header":
            parsed.summary = str(value.get("summary") or "")
            parsed.description = str(value.get("description") or "")
            parsed.parent_commit = value.get("parentCommit")
        elif skipped:
            continue
        elif key == "file":
            check_count()
            entry = await _inline_file(value, store, stored)
            parsed.operations.append(Operation("add", value.get("path"), entry, inline=True))
        elif key == "lfsFile":
            check_count()
            parsed.operations.append(Operation("add", value.get("path"), _lfs_file(value)))
        elif key == "deletedFile":
            parsed.operations.append(Operation("delete", str(value.get("path", ""))))
        elif key == "deletedFolder":
            parsed.operations.append(Operation("delete_folder", str(value.get("path", ""))))
        else:
            raise InvalidInputError(f"unsupported commit operation {key!r}")
    return parsed


class _Staged:
    """An inline file's bytes, decoded from base64 into a temporary file as
    they arrive and hashed on the way; nothing reaches the store from here."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()
        self.digest, self.size, self.ended = hashlib.sha256(), 0, False

    def feed(self, text: bytes) -> None:
        """Decode a piece of 4k base64 characters (padding only in the last)."""
        if not text:
            return
        if self.ended or len(text) % 4 or not _BASE64.fullmatch(text):
            raise InvalidInputError("an inline file's content is not valid base64")
        data = base64.b64decode(text, validate=True)
        self.size += len(data)
        if self.size > XET_CLIENT_INLINE_MAX_BYTES:
            raise InvalidAdapterError(
                f"an inline file is larger than {XET_CLIENT_INLINE_MAX_BYTES} bytes; send it through LFS"
            )
        self.digest.update(data)
        self.file.write(data)
        self.ended = text.endswith(b"=")


async def _streamed_file(body: StreamedBody, store: BlobStore, stored: list[str]) -> FileEntry | None:
    """Read a long ``file`` line left in ``body``: the content streamed into a
    staged file, then the rest of the line parsed and checked, and only then
    the blob stored. None for a git file that is skipped."""
    head = _FILE_HEAD.match(body.buffer)
    if head is None:
        raise InvalidInputError(
            f"a commit line longer than {WHOLE_LINE_MAX} bytes must be an inline file written as huggingface_hub "
            'writes it: {"key": "file", "value": {"content": "<base64>", "path": ..., "encoding": "base64"}}'
        )
    del body.buffer[: head.end()]
    staged = await run_in_threadpool(_Staged)
    try:
        pending = bytearray()
        while True:
            quote = body.buffer.find(b'"')
            take = quote if quote >= 0 else len(body.buffer) - len(body.buffer) % 4
            pending += body.buffer[:take]
            del body.buffer[: take + (1 if quote >= 0 else 0)]
            if quote >= 0 or len(pending) >= DECODE_BYTES:
                piece = bytes(pending[: len(pending) - (0 if quote >= 0 else len(pending) % 4)])
                del pending[: len(piece)]
                await run_in_threadpool(staged.feed, piece)
            if quote >= 0:
                if pending:  # fewer than 4 characters left over
                    raise InvalidInputError("an inline file's content is not valid base64")
                break
            if not await body.more():
                raise InvalidInputError("the commit ended inside an inline file's content")
        value = _file_tail(await body.rest_of_line(FILE_TAIL_MAX, "the rest of an inline file's line"))
        if value["path"] in IGNORED_FILES:
            return None
        path = check_path(value["path"])
        if staged.size > size_cap(path):
            raise InvalidAdapterError(f"{path} is {staged.size} bytes, above the {size_cap(path)} byte cap")
        sha256 = staged.digest.hexdigest()
        if await run_in_threadpool(put_staged, store, sha256, staged.size, staged.file):
            stored.append(sha256)
        return FileEntry(path, staged.size, sha256)
    finally:
        await run_in_threadpool(staged.file.close)


def _file_tail(tail: bytes) -> dict[str, Any]:
    """The ``value`` of a streamed file line, from what follows its content:
    ``, "path": ..., "encoding": "base64"}}`` and nothing else."""

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise InvalidInputError("an inline file's line repeats a key (a second 'content'?)")
        return dict(pairs)

    item = loads_json(b'{"key": "file", "value": {"content": ""' + tail, what="an inline file's line",
                      strict_strings=True, object_pairs_hook=no_repeats)
    value = item.get("value") if isinstance(item, dict) else None
    if set(item) != {"key", "value"} or not isinstance(value, dict) or not set(value) <= _FILE_KEYS:
        raise InvalidInputError("an inline file's line holds only 'key' and a 'value' of content, path and encoding")
    if value.get("encoding", "base64") != "base64":
        raise InvalidInputError("an inline file's content must be base64")
    if not isinstance(value.get("path"), str):
        raise InvalidInputError("every operation needs a string 'path'")
    return value


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
