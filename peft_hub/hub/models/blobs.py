"""Stored bytes: one row per blob, and the receipts that say who uploaded it.

The blob ledger (:mod:`peft_hub.hub.ledger`), publish, gc and fsck meet on
these rows; :mod:`peft_hub.hub.possession` reads the receipts.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger
from sqlmodel import Field, SQLModel

from peft_hub.hub.models.base import utcnow


class BlobUpload(SQLModel, table=True):
    """A receipt: ``user_id`` proved it holds the bytes of blob ``sha256``.

    Blobs are shared by sha256 across users, but access is not: a commit may
    name a blob only when its author has a receipt, or can already read a
    revision that holds the blob (see ``hub.possession``).
    """

    sha256: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="namespace.id", primary_key=True)
    size: int = Field(sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow)


class Blob(SQLModel, table=True):
    """One row per stored blob: the point where publish and gc agree.

    Both take the row's write lock first (an upsert that updates it), so a gc
    can never delete a blob between a publish's check and its commit, and a
    publish that comes after a gc sees the blob gone. ``checked_mtime`` is the
    store's modification time when the bytes last verified: a local file
    changed since is treated as unverified, so the next upload repairs it.
    ``corrupt`` is set by ``fsck`` when the stored bytes do not verify.
    ``claimed_until`` is a pending push's lease, which gc respects.
    """

    sha256: str = Field(primary_key=True, max_length=64)
    size: int = Field(sa_type=BigInteger)
    checked_mtime: float | None = None
    corrupt: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    #: A pending push's lease: preupload sets it for every blob it plans, and
    #: gc keeps the blob until then (the row may precede the blob's upload).
    claimed_until: datetime | None = None
