"""Webhook signatures: HMAC-SHA256 of the exact body bytes, as GitHub and the
HF Hub sign theirs. Shared by the hub (signing) and receivers (verifying)."""

from __future__ import annotations

import hashlib
import hmac

#: The header a delivery carries its signature in.
SIGNATURE_HEADER = "X-PeftHub-Signature-256"
PREFIX = "sha256="


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``body`` under ``secret``."""
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant time)."""
    if not header or not header.startswith(PREFIX):
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())
