"""Getting bytes that an HF client sends into the blob store.

The HF client's LFS basic transfer is one bare ``PUT`` of the file to the
``href`` the batch endpoint gave it: no headers and no ``Authorization``. The
store's presigned S3 PUT cannot serve as that href, because it signs the
``x-amz-checksum-sha256`` and ``If-None-Match`` headers that this PUT never
sends (S3 answers SignatureDoesNotMatch). So the href is a URL on the hub,
signed with an HMAC that names the blob, its size, an expiry and the user it
was issued to (who gets the upload receipt, see ``hub.possession``), and the hub
streams the body into the store (:func:`peft_hub.hub.uploads.receive`),
checking size and sha256 before the blob becomes visible.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from peft_hub.errors import AuthenticationError
from peft_hub.hub import keys
from peft_hub.hub.config import Settings

# --- signed upload URLs -------------------------------------------------------


def signing_key(app_state: Any, settings: Settings) -> bytes:
    """The HMAC key for upload URLs (see :mod:`peft_hub.hub.keys`)."""
    return keys.signing_key(app_state, settings, "hf lfs upload")


def sign(key: bytes, sha256: str, size: int, expires: int, user: int) -> str:
    """The URL's signature: it names the blob, its size, the expiry and the
    user it was issued to, who gets the upload receipt."""
    return hmac.new(key, f"{sha256}:{size}:{expires}:{user}".encode(), hashlib.sha256).hexdigest()


def check_signature(key: bytes, sha256: str, size: int, expires: int, user: int, signature: str) -> None:
    """Accept only an unexpired URL this hub signed for exactly this blob and user."""
    if expires < time.time():
        raise AuthenticationError("this upload URL has expired; ask the LFS batch endpoint for a new one")
    if not hmac.compare_digest(sign(key, sha256, size, expires, user), signature):
        raise AuthenticationError("this upload URL is not valid for this blob")
