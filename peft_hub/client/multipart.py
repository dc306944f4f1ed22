"""Large files sent to S3 in parts, straight from the file, resumable.

For a file larger than one part the client proposes a part size and each
part's sha256 in its preupload request; the hub answers a plan with one
presigned URL per part still missing (each signed with its part's
checksum, so S3 refuses other bytes), and the client PUTs the parts, a few
at a time, each streamed from the file with a fixed buffer: memory stays
bounded whatever the file's size. Then the hub joins the parts.

A small state file per blob (``<cache>/uploads/<sha256>.json``) keeps the
part digests and the upload id and ticket of the plan; a push run again
after a kill sends them, and the hub plans only the parts S3 does not hold.

On a hub that stores blobs as local files, the plan's parts go to the hub
itself, each as a blob of its own, and the plan says ``"resume": "client"``:
the state file then also lists the parts sent, each noted as the hub
acknowledges it, and a push run again sends only the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from peft_hub.adapter import FileEntry
from peft_hub.client.put import put_file
from peft_hub.client.retry import NO_RETRY, RetryPolicy
from peft_hub.errors import InvalidInputError, StorageError, UploadRequiredError
from peft_hub.progress import tqdm

CHUNK = 1024 * 1024
MIN_PART = 5 * 1024 * 1024
#: Default part size: S3's limit of 10,000 parts makes it at least size / 10,000.
PART_BYTES = 16 * 1024 * 1024
MAX_PARTS = 10_000
WORKERS = 4
_ALLOWED_HEADERS = frozenset({"x-amz-checksum-sha256"})


@dataclass(frozen=True)
class Part:
    number: int
    url: httpx.URL
    headers: dict[str, str]


@dataclass(frozen=True)
class MultipartTarget:
    """A checked multipart plan for one file of this push."""

    entry: FileEntry
    upload_id: str
    ticket: str
    part_size: int
    parts: list[Part]
    #: Whether each part URL is signed with the part's sha256 that this client proposed.
    checksums: bool = False
    #: The hub lists every part and the client skips those it sent (parts sent to the hub itself).
    client_resume: bool = False

    def spec(self, digests: list[str] | None) -> dict[str, Any]:
        return {"part_size": self.part_size, "parts": digests, "upload_id": self.upload_id, "ticket": self.ticket}


class UploadState:
    """The state file of one blob's upload in parts."""

    def __init__(self, root: Path, entry: FileEntry, path: Path) -> None:
        self.file = root / "uploads" / f"{entry.sha256}.json"
        self.entry, self.path = entry, path
        self.data: dict[str, Any] = {}
        self._lock = threading.Lock()

    def spec(self, part_bytes: int, *, now: bool = True) -> dict[str, Any]:
        """The ``multipart`` field of the preupload request: the saved one
        when it still describes the file, else part digests computed now, or
        (``now`` False) none yet: the hub answers :func:`wanted` for a blob it
        takes in parts, and a blob it takes whole costs no hashing of parts."""
        stat = self.path.stat()
        stamp = {"size": self.entry.size, "mtime_ns": stat.st_mtime_ns}
        part_size = max(part_bytes, MIN_PART, math.ceil(self.entry.size / MAX_PARTS))
        try:
            saved = json.loads(self.file.read_text())
            if (
                isinstance(saved, dict)
                and {k: saved.get(k) for k in stamp} == stamp
                and saved.get("part_size") == part_size
            ):
                self.data = saved
        except (OSError, ValueError):
            pass
        if not self.data:
            if not now:
                return {"part_size": part_size, "parts": None, "digests_later": True}
            self.data = {**stamp, "part_size": part_size, "parts": part_digests(self.path, part_size)}
        return {k: self.data.get(k) for k in ("part_size", "parts", "upload_id", "ticket")}

    def save(self, target: MultipartTarget) -> None:
        """Remember the plan, so that a push run again resumes it."""
        self.data.update(upload_id=target.upload_id, ticket=target.ticket, part_size=target.part_size)
        self._write()

    def sent(self) -> set[int]:
        """The parts the hub acknowledged (for a ``client_resume`` plan)."""
        sent = self.data.get("sent")
        return {n for n in sent if type(n) is int} if isinstance(sent, list) else set()

    def mark_sent(self, number: int) -> None:
        """Note that the hub acknowledged part ``number``."""
        with self._lock:
            self.data["sent"] = sorted(self.sent() | {number})
            self._write()

    def unmark_sent(self, numbers: set[int]) -> None:
        """Forget that these parts were sent (the hub no longer holds them)."""
        with self._lock:
            self.data["sent"] = sorted(self.sent() - numbers)
            self._write()

    def _write(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.file)

    def clear(self) -> None:
        self.file.unlink(missing_ok=True)


def part_digests(path: Path, part_size: int) -> list[str]:
    """The sha256 of each ``part_size`` slice of a file, a few slices at once
    (hashlib releases the GIL), each read with a fixed buffer."""
    size = path.stat().st_size
    count = math.ceil(size / part_size)

    def one(number: int) -> str:
        digest, left = hashlib.sha256(), min(part_size, size - number * part_size)
        with open(path, "rb") as fh:
            fh.seek(number * part_size)
            while left and (block := fh.read(min(CHUNK, left))):
                digest.update(block)
                left -= len(block)
        if left:
            raise StorageError(f"{path.name} changed while its parts were hashed")
        return digest.hexdigest()

    with ThreadPoolExecutor(max_workers=max(1, min(count, os.cpu_count() or 1))) as pool:
        return list(pool.map(one, range(count)))


def wanted(plan: Any) -> set[str]:
    """The blobs a preupload answer wants in parts, for a request that left
    their part digests for later (see :meth:`UploadState.spec`)."""
    items = plan.get("uploads") if isinstance(plan, dict) else None
    return {
        item["sha256"] for item in items if isinstance(item, dict) and isinstance(item.get("sha256"), str)
        and item.get("multipart") == {"digests": "wanted"}
    } if isinstance(items, list) else set()


def without(plan: Any, blobs: set[str]) -> Any:
    """A preupload answer less its items for ``blobs``."""
    if not isinstance(plan, dict) or not isinstance(plan.get("uploads"), list):
        return plan  # refused as it is by ``upload_plan``
    if not blobs:
        return plan
    named = [i.get("sha256") if isinstance(i, dict) else None for i in plan["uploads"]]
    return {**plan, "uploads": [i for i, sha256 in zip(plan["uploads"], named, strict=True)
                                if not (isinstance(sha256, str) and sha256 in blobs)]}


def parse_plan(item: dict[str, Any], entry: FileEntry, absolute: Any) -> MultipartTarget:
    """A preupload answer's ``multipart`` plan, refused unless it fits the file."""
    plan = item.get("multipart")
    if not isinstance(plan, dict):
        raise InvalidInputError("the hub's multipart plan is not an object")
    if plan == {"digests": "wanted"}:
        raise InvalidInputError(f"the hub wants the part digests of {entry.path} again, after they were sent")
    upload_id, ticket, part_size = plan.get("upload_id"), plan.get("ticket"), plan.get("part_size")
    if (
        not isinstance(upload_id, str)
        or not 0 < len(upload_id) <= 1024
        or not isinstance(ticket, str)
        or len(ticket) > 128
    ):
        raise InvalidInputError("the hub's multipart plan has no valid upload id and ticket")
    if type(part_size) is not int or not MIN_PART <= part_size <= 5 * 1024**3:
        raise InvalidInputError(f"the hub's multipart part size {part_size!r:.20} is not allowed")
    count = math.ceil(entry.size / part_size)
    parts: dict[int, Part] = {}
    for raw in plan.get("parts") or []:
        number = raw.get("number") if isinstance(raw, dict) else None
        if type(number) is not int or not 1 <= number <= count or number in parts:
            raise InvalidInputError(f"the hub's multipart plan names part {number!r:.20} of {count}")
        headers = raw.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise InvalidInputError("the hub's part headers are not a mapping of strings")
        parts[number] = Part(
            number, absolute(raw.get("url")), {k: v for k, v in headers.items() if str(k).lower() in _ALLOWED_HEADERS}
        )
    return MultipartTarget(
        entry, upload_id, ticket, part_size, [parts[n] for n in sorted(parts)], checksums=plan.get("checksums") is True,
        client_resume=plan.get("resume") == "client",
    )


def upload_parts(
    session: httpx.Client,
    target: MultipartTarget,
    path: Path,
    bar: tqdm,
    *,
    retry: RetryPolicy = NO_RETRY,
    workers: int = WORKERS,
    parts: list[Part] | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """PUT every part the plan lists (or ``parts`` of them), ``workers`` at a
    time, calling ``on_sent`` with each part's number once it is acknowledged;
    returns the bytes sent."""
    count = math.ceil(target.entry.size / target.part_size)

    def send(part: Part) -> int:
        offset = (part.number - 1) * target.part_size
        length = target.part_size if part.number < count else target.entry.size - offset
        status = put_file(session, part.url, part.headers, path, bar, what=f"part {part.number} of {path.name}",
                          offset=offset, length=length, retry=retry)
        if status == 412:  # no condition is sent with a part: a store that says so is not to be believed
            raise StorageError(f"part {part.number} of {path.name}: the store answered 412 to an unconditional PUT")
        if on_sent is not None:
            on_sent(part.number)
        return length

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return sum(pool.map(send, target.parts if parts is None else parts))


def send_in_parts(
    session: httpx.Client,
    call: Any,
    repo_id: str,
    target: MultipartTarget,
    path: Path,
    state: UploadState | None,
    bar: tqdm,
    *,
    retry: RetryPolicy = NO_RETRY,
) -> bool:
    """Send the missing parts and have the hub join them; False when the hub
    already stores this blob from someone else (then send it through the hub,
    which proves the caller holds it).

    ``call`` is the client's JSON request function.
    """
    from peft_hub.errors import NotFoundError

    digests = state.data.get("parts") if state is not None and target.checksums else None
    if state is not None:
        state.save(target)
    resume = target.client_resume and state is not None
    todo = [p for p in target.parts if p.number not in state.sent()] if resume and state is not None else target.parts
    bar.update(target.entry.size - sum(_lengths(target, todo)))  # parts the store already holds
    on_sent = state.mark_sent if resume and state is not None else None
    upload_parts(session, target, path, bar, retry=retry, parts=todo, on_sent=on_sent)
    body = {"sha256": target.entry.sha256, "size": target.entry.size, "multipart": target.spec(digests)}
    url = f"/api/adapters/{repo_id}/uploads/complete"
    try:
        answer = call("POST", url, json=body, idempotent=True)
    except UploadRequiredError:
        if not resume or state is None or todo == target.parts:
            raise
        # Parts sent by an earlier push are gone (gc collected them): send those again.
        earlier = [p for p in target.parts if p not in todo]
        state.unmark_sent({p.number for p in earlier})
        bar.update(-sum(_lengths(target, earlier)))
        upload_parts(session, target, path, bar, retry=retry, parts=earlier, on_sent=state.mark_sent)
        answer = call("POST", url, json=body, idempotent=True)
    except NotFoundError:
        # A retried completion whose first try went through finds no upload;
        # the commit says whether the blob is there (else the push plans again).
        answer = {"stored": True}
    if state is not None:
        state.clear()
    return not isinstance(answer, dict) or answer.get("stored") is not False


def _lengths(target: MultipartTarget, parts: list[Part]) -> list[int]:
    count = math.ceil(target.entry.size / target.part_size)
    return [
        target.part_size if p.number < count else target.entry.size - target.part_size * (count - 1)
        for p in parts
    ]
