"""HMAC keys for what the hub signs and later checks itself (upload URLs,
multipart tickets): derived from ``PEFT_HUB_SESSION_SECRET`` so every process
of a hub accepts what another signed, or else one random key per process."""

from __future__ import annotations

import hashlib
import secrets
import threading
from typing import Any

from peft_hub.hub.config import Settings

_lock = threading.Lock()


def signing_key(app_state: Any, settings: Settings, purpose: str) -> bytes:
    """The key for ``purpose`` (distinct purposes never share a key).

    Args:
        app_state: the app's ``state``, which keeps a per-process key when no
            session secret is set (a restart then invalidates what was signed).
        settings: the hub's settings.
        purpose: what the key signs, e.g. ``"hf lfs upload"``.
    """
    if settings.session_secret:
        return hashlib.sha256(f"peft-hub {purpose}\x00".encode() + settings.session_secret.encode()).digest()
    with _lock:
        keys = getattr(app_state, "signing_keys", None)
        if keys is None:
            keys = app_state.signing_keys = {}
        return keys.setdefault(purpose, secrets.token_bytes(32))
