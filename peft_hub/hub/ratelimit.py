"""Limits on failed authentication, per client address and per token lookup.

Counting uses the ``limits`` library's moving window over in-memory storage.
The limiter is built per app (``app.state.auth_limiter``), so each hub, and
each test's hub, starts with clean counters. Only failures count: after
``per_address`` failures from one address, or ``per_lookup`` failures for one
token lookup prefix, within the window, further attempts get 429 until the
oldest failure leaves the window, even with the right token.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Literal

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from peft_hub.errors import RateLimitedError
from peft_hub.hub.config import Settings

Kind = Literal["address", "lookup"]


class AuthLimiter:
    """Failed-authentication counters for one hub.

    Args:
        per_address: failures allowed from one client address per window.
        per_lookup: failures allowed for one token lookup per window.
        window_seconds: the window's length.
    """

    def __init__(self, *, per_address: int, per_lookup: int, window_seconds: int) -> None:
        self.window_seconds = window_seconds
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[Kind, RateLimitItemPerSecond] = {
            "address": RateLimitItemPerSecond(per_address, window_seconds),
            "lookup": RateLimitItemPerSecond(per_lookup, window_seconds),
        }
        # hit-then-test must be atomic, or two racing failures could both
        # report the trip (and write two audit rows).
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthLimiter:
        return cls(per_address=settings.auth_failures_per_address, per_lookup=settings.auth_failures_per_lookup,
                   window_seconds=settings.auth_failure_window_seconds)

    def _keys(self, address: str, lookup: str | None) -> list[tuple[Kind, str]]:
        keys: list[tuple[Kind, str]] = [("address", address or "unknown")]
        if lookup:
            keys.append(("lookup", lookup))
        return keys

    def check(self, *, address: str, lookup: str | None) -> None:
        """Raise RateLimitedError if this address or lookup is over its limit."""
        for kind, key in self._keys(address, lookup):
            item = self._items[kind]
            if not self._limiter.test(item, "auth-failed", kind, key):
                reset = self._limiter.get_window_stats(item, "auth-failed", kind, key).reset_time
                retry = max(1, math.ceil(reset - time.time()))
                what = "from this address" if kind == "address" else "for this token"
                raise RateLimitedError(f"too many failed authentication attempts {what}; retry in {retry} s",
                                       retry_after=retry)

    def failed(self, *, address: str, lookup: str | None) -> list[tuple[Kind, str]]:
        """Count one failure; return the (kind, key) limits this failure just filled."""
        tripped = []
        with self._lock:
            for kind, key in self._keys(address, lookup):
                item = self._items[kind]
                if self._limiter.hit(item, "auth-failed", kind, key) and not self._limiter.test(
                    item, "auth-failed", kind, key
                ):
                    tripped.append((kind, key))
        return tripped

    def limit_of(self, kind: Kind) -> int:
        return self._items[kind].amount
