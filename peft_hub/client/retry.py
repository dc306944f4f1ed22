"""When a failed request is sent again: which failures may pass, and how
often and how long they are retried (tenacity, exponential backoff with jitter).

Only a repeat that is harmless is made: a request that is idempotent, or one
that provably never reached the server, or one refused unprocessed (429).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import tenacity

from peft_hub.errors import InvalidInputError

#: Methods whose repeat is harmless by definition (RFC 9110 9.2.2), DELETE aside:
#: a repeated DELETE that succeeded the first time answers 404.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT"})
#: Failures that prove the request never reached the server: any request may be sent again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Transport failures that will not pass by trying again.
_PERMANENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
#: A download that keeps getting further makes at most this many times the attempts.
PROGRESS_FACTOR = 4


def env_number(name: str, default: float, *, integer: bool = False, positive: bool = False) -> float:
    """``$name`` as a number (``default`` when unset); anything else is one clear error."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = -1
    if not (value > 0 if positive else value >= 0) or value >= 1e7:
        kind = "a whole number" if integer else "a number of seconds"
        raise InvalidInputError(f"${name} must be {kind} ({'more than 0' if positive else '0 or more'}), "
                                f"not {text!r:.40}")
    return value


def transient(exc: BaseException, *, idempotent: bool) -> bool:
    """Whether ``exc`` may pass on its own and the request may be sent again.

    A request that is not idempotent is sent again only when it provably
    never reached the server (no connection) or was refused unprocessed (429).
    """
    if isinstance(exc, httpx.TransportError):
        return not isinstance(exc, _PERMANENT) and (idempotent or isinstance(exc, _NOT_SENT))
    status = getattr(exc, "http_status", None)
    if status == 429:
        return True
    return idempotent and isinstance(status, int) and 500 <= status <= 599 and status not in (501, 505)


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how long, a failure that may pass is retried.

    Attributes:
        attempts: the most tries of one request in a row that make no
            progress, the first included (1: never retry). A download that
            got further before it failed starts counting again, but makes at
            most ``PROGRESS_FACTOR`` times as many tries in all.
        max_wait: the most seconds spent waiting between tries, in total.
            A Retry-After longer than what is left ends the retries at once.
        wait_initial: the first backoff; each further one doubles, plus up
            to ``jitter`` seconds at random, never more than ``wait_max``.
    """

    attempts: int = 5
    max_wait: float = 30.0
    wait_initial: float = 0.25
    wait_max: float = 8.0
    jitter: float = 0.25

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The defaults, or ``$PEFT_HUB_RETRIES`` (attempts), ``$PEFT_HUB_RETRY_MAX_WAIT``
        and ``$PEFT_HUB_RETRY_WAIT`` (the first backoff, in seconds)."""
        return cls(
            attempts=max(1, int(env_number("PEFT_HUB_RETRIES", cls.attempts, integer=True))),
            max_wait=env_number("PEFT_HUB_RETRY_MAX_WAIT", cls.max_wait),
            wait_initial=env_number("PEFT_HUB_RETRY_WAIT", cls.wait_initial),
        )

    def retrying(
        self, should_retry: Callable[[BaseException], bool], *, progress: Callable[[], int] | None = None
    ) -> tenacity.Retrying:
        """A tenacity loop (``for attempt in ...: with attempt: ...``) that retries
        what ``should_retry`` accepts and re-raises the last failure when it stops.

        Args:
            progress: how far the work has got (bytes held); a try that moved
                it forward does not count against ``attempts``.
        """
        state = {"failures": 0, "tries": 0, "mark": progress() if progress else 0}
        most = self.attempts * (PROGRESS_FACTOR if progress else 1)

        def retry(rs: tenacity.RetryCallState) -> bool:
            exc = rs.outcome.exception() if rs.outcome else None
            if exc is None or not should_retry(exc):
                return False
            now = progress() if progress else 0
            state["tries"] += 1
            state["failures"] = 1 if now > state["mark"] else state["failures"] + 1
            state["mark"] = max(now, state["mark"])
            return True

        def wait(rs: tenacity.RetryCallState) -> float:
            asked = getattr(rs.outcome.exception(), "retry_after_header", None) if rs.outcome else None
            if asked is not None:
                return float(asked)
            backoff = self.wait_initial * 2 ** (state["failures"] - 1) + random.uniform(0, self.jitter)
            return min(self.wait_max, backoff)

        def stop(rs: tenacity.RetryCallState) -> bool:
            return (state["failures"] >= self.attempts or state["tries"] >= most
                    or rs.idle_for + rs.upcoming_sleep > self.max_wait)

        return tenacity.Retrying(retry=retry, wait=wait, stop=stop, reraise=True, sleep=time.sleep)


NO_RETRY = RetryPolicy(attempts=1)
