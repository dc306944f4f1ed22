"""Blobs uploaded in parts: the multipart plan a preupload answers with, and
its completion (``POST /api/adapters/{owner}/{name}/uploads/complete``).

A plan names its S3 upload id and a *ticket*: an HMAC over the blob, its
size, the part layout (with the parts' sha256s, when the client sent them),
the upload id and the user it was issued to. Only that user can re-plan
(resume) or complete the upload, and a wrong ticket, another user's, or an
upload that does not exist (any more) all get the same 404. The hub keeps no
row per upload: the store's sweeper aborts what is never completed.

The ticket's key is the session secret, else one per hub process: a hub run
as several processes must set ``PEFT_HUB_SESSION_SECRET``, and a resume after
a restart without one starts the upload again (the old one is swept).

A store without multipart (local files) gets the same plan, with every part
sent to the hub itself (:func:`_hub_plan`): each part is a blob of its own,
PUT to the upload route, which verifies it against its sha256 (the client
must propose the part digests) and gives the sender a receipt. The client
remembers which parts went (``"resume": "client"``) and a push run again
after a kill sends only the others; completion joins the sender's own parts
(its receipts, never another user's: the answer does not depend on what
anyone else staged), hashing the whole before it is stored, and drops them.
Parts never completed are unreferenced blobs: gc collects them after its
grace period, as it does any upload that was never committed.

A client may leave the part digests out and say it will send them when a
plan needs them (``"digests_later": true``): a blob the hub takes in one
upload then costs the client no hashing of its parts, and one the hub wants
in parts is answered ``{"digests": "wanted"}``, with no upload created, for
the client to ask again with them.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from typing import Any

from pydantic import BaseModel, Field, StrictBool, StrictInt
from sqlalchemy import exists
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import WEIGHTS_MAX_BYTES
from peft_hub.errors import ChecksumMismatchError, InvalidInputError, NotFoundError, UploadRequiredError
from peft_hub.hub import keys, ledger, possession
from peft_hub.hub.config import Settings
from peft_hub.hub.models import Blob, BlobUpload, RevisionFile
from peft_hub.hub.schemas import FileSpec, PreuploadRequest
from peft_hub.hub.storage import BlobStore, MultipartStore
from peft_hub.hub.uploads import join_parts
from peft_hub.model_files import MAX_MODEL_FILES

MIN_PART = 5 * 1024 * 1024
MAX_PART = 5 * 1024**3
MAX_PARTS = 10_000
SHA256 = r"^[0-9a-f]{64}$"
#: The plan for a blob wanted in parts whose client has not sent the part digests yet.
WANTED: dict[str, Any] = {"digests": "wanted"}


class MultipartSpec(BaseModel):
    """What the client proposes for one blob: a part size and each part's
    sha256 (so every part URL is signed with its checksum), and, to resume,
    the upload id and ticket of an earlier plan."""

    part_size: StrictInt = Field(ge=MIN_PART, le=MAX_PART)
    parts: list[str] | None = Field(None, max_length=MAX_PARTS)
    upload_id: str | None = Field(None, min_length=1, max_length=1024, pattern=r"^[\x21-\x7e]+$")
    ticket: str | None = Field(None, pattern=SHA256)
    #: No ``parts`` yet: the client sends them if a plan in parts is wanted.
    digests_later: StrictBool = False

    def digests(self) -> list[str] | None:
        if self.parts is not None and not all(len(p) == 64 and set(p) <= set("0123456789abcdef") for p in self.parts):
            raise InvalidInputError("multipart.parts must be 64-hex sha256 digests")
        return self.parts


class UploadFileSpec(FileSpec):
    multipart: MultipartSpec | None = None


class UploadPreuploadRequest(PreuploadRequest):
    files: list[UploadFileSpec] = Field(max_length=MAX_MODEL_FILES)  # type: ignore[assignment]  # a FileSpec with more


class CompleteRequest(BaseModel):
    sha256: str = Field(pattern=SHA256, strict=True)
    size: StrictInt = Field(ge=0, le=WEIGHTS_MAX_BYTES)
    multipart: MultipartSpec


def signing_key(app_state: Any, settings: Settings) -> bytes:
    """The tickets' HMAC key (see :mod:`peft_hub.hub.keys`)."""
    return keys.signing_key(app_state, settings, "multipart ticket")


def _ticket(key: bytes, entry: FileEntry, user: str, part_size: int, digests: list[str] | None, upload_id: str) -> str:
    layout = hashlib.sha256(",".join(digests).encode()).hexdigest() if digests is not None else "-"
    text = f"{entry.sha256}:{entry.size}:{user}:{part_size}:{layout}:{upload_id}"
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _part_size(number: int, count: int, part_size: int, size: int) -> int:
    return part_size if number < count else size - part_size * (count - 1)


def _layout(entry: FileEntry, spec: MultipartSpec | None, settings: Settings) -> tuple[int, list[str] | None]:
    """The part size and part digests: the client's when they describe this
    blob, else the hub's part size and no digests."""
    if spec is not None:
        digests = spec.digests()
        fits = math.ceil(entry.size / spec.part_size) <= MAX_PARTS
        if fits and (digests is None or len(digests) == math.ceil(entry.size / spec.part_size)):
            return spec.part_size, digests
    return max(settings.multipart_part_bytes, math.ceil(entry.size / MAX_PARTS)), None


def plan(
    store: BlobStore, settings: Settings, key: bytes, user: str, entry: FileEntry, spec: MultipartSpec | None
) -> dict[str, Any] | None:
    """A multipart plan for one blob, or None for a single upload (a small
    blob, or a store without multipart). With the ticket of the caller's own
    earlier plan it resumes that upload: URLs only for the parts S3 lacks.
    A store without multipart gets parts sent to the hub (:func:`_hub_plan`)."""
    if entry.size <= settings.multipart_threshold:
        return None
    if spec is not None and spec.digests_later and spec.parts is None:
        return dict(WANTED)  # nothing is created until the client sends them
    if not isinstance(store, MultipartStore):
        return _hub_plan(key, user, entry, spec)
    part_size, digests = _layout(entry, spec, settings)
    count = math.ceil(entry.size / part_size)
    done: set[int] = set()
    upload_id = None
    if (
        spec is not None
        and spec.upload_id
        and spec.ticket
        and hmac.compare_digest(spec.ticket, _ticket(key, entry, user, part_size, digests, spec.upload_id))
    ):
        listed = store.multipart_parts(entry.sha256, spec.upload_id)
        if listed is not None:
            upload_id = spec.upload_id
            done = {
                p.number
                for p in listed
                if p.number <= count and p.size == _part_size(p.number, count, part_size, entry.size)
            }
    if upload_id is None:
        upload_id = store.multipart_create(entry.sha256, user, checksums=digests is not None)
    parts = []
    for number in range(1, count + 1):
        if number in done:
            continue
        target = store.multipart_part_url(
            entry.sha256,
            upload_id,
            number,
            _part_size(number, count, part_size, entry.size),
            digests[number - 1] if digests else None,
            settings.presign_expiry,
        )
        parts.append({"number": number, "url": target.url, "headers": target.headers or {}})
    return {
        "upload_id": upload_id,
        "ticket": _ticket(key, entry, user, part_size, digests, upload_id),
        "part_size": part_size,
        "checksums": digests is not None,
        "parts": parts,
    }


def _valid_ticket(key: bytes, entry: FileEntry, user: str, spec: MultipartSpec, digests: list[str] | None) -> bool:
    return bool(spec.upload_id and spec.ticket) and hmac.compare_digest(
        spec.ticket or "", _ticket(key, entry, user, spec.part_size, digests, spec.upload_id or ""))


def _hub_plan(key: bytes, user: str, entry: FileEntry, spec: MultipartSpec | None) -> dict[str, Any] | None:
    """Every part as an upload of its own blob to the hub, or None (a single
    upload) unless the client proposed digests that tile the blob exactly.
    The hub lists every part each time: the client skips what it sent."""
    digests = spec.digests() if spec is not None else None
    if spec is None or digests is None or len(digests) != math.ceil(entry.size / spec.part_size):
        return None
    count = len(digests)
    resumed = _valid_ticket(key, entry, user, spec, digests)
    upload_id = spec.upload_id if resumed and spec.upload_id else "hub-" + secrets.token_hex(16)
    parts = [  # relative: the client resolves them against the hub's URL, whatever its path prefix
        {"number": n, "url": f"api/blobs/{d}?size={_part_size(n, count, spec.part_size, entry.size)}", "headers": {}}
        for n, d in enumerate(digests, 1)
    ]
    return {
        "upload_id": upload_id,
        "ticket": _ticket(key, entry, user, spec.part_size, digests, upload_id),
        "part_size": spec.part_size,
        "checksums": True,
        "resume": "client",
        "parts": parts,
    }


def _complete_hub(store: BlobStore, key: bytes, user: str, body: CompleteRequest, *, engine: Engine,
                  missing: NotFoundError) -> dict[str, Any]:
    """Join the caller's parts received by the hub (see :func:`_hub_plan`)
    into the blob, hashed whole before it is stored; the parts are dropped
    whether it verifies or not. Parts the caller has not sent (or that gc
    collected meanwhile) are an UploadRequiredError: send them again."""
    entry, spec = FileEntry("", body.size, body.sha256), body.multipart
    digests = spec.digests()
    if digests is None or not _valid_ticket(key, entry, user, spec, digests):
        raise missing
    count = len(digests)
    if count != math.ceil(body.size / spec.part_size):  # no plan signs such a layout
        raise missing
    with Session(engine) as session:
        held = set(session.exec(select(BlobUpload.sha256).where(
            BlobUpload.user_id == int(user), col(BlobUpload.sha256).in_(sorted(set(digests))))).all())
    absent, wrong = [], []
    for number, digest in enumerate(digests, 1):
        stat = store.stat(digest) if digest in held else None
        if stat is None:
            absent.append(number)
        elif stat.size != _part_size(number, count, spec.part_size, body.size):
            wrong.append(number)
    if absent:
        raise UploadRequiredError(
            f"blob {body.sha256}: parts {absent[:10]} ({len(absent)} of {count}) have not been uploaded by you")
    parts = sorted(set(digests) - {body.sha256})
    if wrong:
        _drop_parts(engine, store, user, parts)
        raise ChecksumMismatchError(
            f"blob {body.sha256}: parts {wrong[:10]} do not have the planned sizes for {body.size} bytes; "
            "the upload was dropped, push again")
    try:
        join_parts(store, body.sha256, body.size, digests)
    except ChecksumMismatchError:
        _drop_parts(engine, store, user, parts)
        raise ChecksumMismatchError(
            f"blob {body.sha256}: its {count} uploaded parts do not make up these bytes; "
            "the upload was dropped, push again") from None
    except FileNotFoundError:  # a part collected while it was read
        raise UploadRequiredError(f"blob {body.sha256}: a part went away while it was joined; push again") from None
    with Session(engine) as session:
        possession.record_upload(session, store, user_id=int(user), sha256=body.sha256, size=body.size)
        session.commit()
    _drop_parts(engine, store, user, parts)
    return {"sha256": body.sha256, "size": body.size, "stored": True}


def _drop_parts(engine: Engine, store: BlobStore, user: str, parts: list[str]) -> None:
    """Drop the caller's receipts for its parts, then each part unless a
    revision, a pending push's lease or another receipt still holds it."""
    with Session(engine) as session:
        session.exec(BlobUpload.__table__.delete().where(  # type: ignore[attr-defined]  # a table model's __table__ exists at run time
            BlobUpload.user_id == int(user), col(BlobUpload.sha256).in_(parts)))
        session.commit()
    possession.discard_unclaimed(engine, store, parts)


def clear_unverified(engine: Engine, store: BlobStore, sha256: str, size: int) -> bool:
    """Delete an object stored under ``sha256`` whose bytes do not hash to it
    (someone completed an upload of other bytes under that name), so that a
    completion of the real bytes can take its place. The object is hashed
    streaming, outside any transaction, unless the ledger or the store already
    vouches for it; it is deleted under the blob's ledger lock, and kept if a
    revision references it or it changed meanwhile. True when it was deleted."""
    stat = store.stat(sha256)
    if stat is None:
        return False
    with Session(engine) as session:
        row = session.get(Blob, sha256)
        if ledger.trusted(row, stat):
            return False
    if stat.size == size and ledger.hash_stored(store, sha256) == sha256:
        with Session(engine) as session:
            ledger.note_verified(session, store, sha256, size)
            session.commit()
        return False
    with Session(engine) as session:
        ledger.lock(session, {sha256: size})
        referenced = session.exec(select(exists().where(col(RevisionFile.sha256) == sha256))).one()
        now = store.stat(sha256)
        if referenced or now is None or (now.size, now.modified) != (stat.size, stat.modified):
            session.rollback()
            return False
        store.delete(sha256)
        possession.forget(session, sha256=sha256)
        session.commit()
    return True


def complete(
    store: BlobStore, key: bytes, user: str, body: CompleteRequest, *, engine: Engine
) -> dict[str, Any]:
    """Join the caller's uploaded parts into the blob, refusing unless every
    part is there with the planned size. An object already under the blob's
    name that the hub has not verified is hashed first, and dropped when its
    bytes are not the blob's (see :func:`clear_unverified`).
    The blob is then unverified (only S3's composite checksum): publish hashes
    it once before any revision holds it."""
    entry, spec = FileEntry("", body.size, body.sha256), body.multipart
    digests = spec.digests()
    missing = NotFoundError(f"no upload {(spec.upload_id or '')[:80]!r} of blob {body.sha256} of yours is in progress")
    if not isinstance(store, MultipartStore):
        return _complete_hub(store, key, user, body, engine=engine, missing=missing)
    if (
        not spec.upload_id
        or not spec.ticket
        or not hmac.compare_digest(spec.ticket, _ticket(key, entry, user, spec.part_size, digests, spec.upload_id))
    ):
        raise missing
    listed = store.multipart_parts(body.sha256, spec.upload_id)
    if listed is None:
        raise missing
    count = math.ceil(body.size / spec.part_size)
    sizes = {p.number: p.size for p in listed}
    absent = [n for n in range(1, count + 1) if n not in sizes]
    if absent:
        raise InvalidInputError(f"blob {body.sha256}: parts {absent[:10]} are not uploaded yet; push again to resume")
    wrong = [
        p.number for p in listed if p.number > count or p.size != _part_size(p.number, count, spec.part_size, body.size)
    ]
    if wrong:
        store.multipart_abort(body.sha256, spec.upload_id)
        raise ChecksumMismatchError(
            f"blob {body.sha256}: parts {wrong[:10]} do not have the planned sizes "
            f"for {body.size} bytes; the upload was dropped, push again"
        )
    clear_unverified(engine, store, body.sha256, body.size)
    stored = store.multipart_complete(body.sha256, spec.upload_id, listed, digests)
    return {"sha256": body.sha256, "size": body.size, "stored": stored}
