"""The webhook delivery worker, and the checks a hook's URL must pass.

One asyncio task per hub process (started and stopped by the app's lifespan)
takes due rows from the outbox (:mod:`peft_hub.hub.events`), sends them
signed, and records the outcome. Taking a row moves its ``next_attempt_at``
past the longest a send can last, in a conditional UPDATE (and, on
PostgreSQL, after ``SELECT ... FOR UPDATE SKIP LOCKED``), so two replicas
never send one row at once, and a row whose worker died comes due again. A
failed send is retried with exponential backoff until
``webhook_max_attempts``; pending rows outlive a restart. A second task
prunes the finished history at start and every ``webhook_prune_seconds``
(:mod:`peft_hub.hub.webhook_history`), beside the sends, never delaying them.

A hook's URL is checked (:mod:`peft_hub.hub.webhook_urls`) when the hook is
added and again at each send, which connects to the address it checked (so
DNS cannot change between the check and the connection). Redirects are not
followed, and at most :data:`MAX_RESPONSE_BYTES` of an answer are read.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import anyio
import httpx
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from peft_hub import __version__
from peft_hub.errors import InvalidInputError
from peft_hub.hub import events, webhook_history
from peft_hub.hub.auth import Principal, can_read
from peft_hub.hub.config import Settings
from peft_hub.hub.models import (
    Adapter,
    Membership,
    Namespace,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
    utcnow,
)
from peft_hub.hub.webhook_urls import (
    DEFAULT_PORTS,
    resolve,
    shown,
)
from peft_hub.safeparse import one_line
from peft_hub.signing import SIGNATURE_HEADER, signature

log = logging.getLogger("peft_hub.hub.webhooks")

EVENT_HEADER, DELIVERY_HEADER = "X-PeftHub-Event", "X-PeftHub-Delivery"
#: Rows taken per pass, sent concurrently.
BATCH = 16
MAX_RESPONSE_BYTES = 4096
MAX_BACKOFF_SECONDS = 3600.0


# --- the outbox, from the worker's side --------------------------------------


@dataclass
class Job:
    """One claimed delivery: everything a send needs, read in the claim."""

    delivery_id: str
    attempt: int
    hook_id: int
    url: str
    secret: str
    kind: str
    body: bytes


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds before the retry that follows failed attempt ``attempt`` (1-based)."""
    return min(settings.webhook_retry_base_seconds * 2 ** min(attempt - 1, 30), MAX_BACKOFF_SECONDS)


def _creator_may_read(session: Session, hook: Webhook, event: WebhookEvent) -> bool:
    user = session.get(Namespace, hook.user_id)
    if user is None:
        return False
    orgs = set(session.exec(select(Namespace.name).join(Membership, col(Membership.org_id) == Namespace.id)
                            .where(Membership.user_id == user.id)).all())
    principal = Principal(user=user, scope="admin" if user.is_admin else "read", orgs=orgs)
    adapter = session.exec(select(Adapter).where(Adapter.owner == event.owner, Adapter.name == event.name)).first()
    # a transient row that can_read looks at, never stored
    stand_in = Adapter(owner=event.owner, name=event.name, private=event.private)
    return can_read(principal, adapter or stand_in)


def claim(engine: Engine, settings: Settings, limit: int = BATCH) -> tuple[list[Job], int]:
    """Take up to ``limit`` due deliveries; mark skipped those whose hook's
    creator cannot read the adapter now.

    Returns:
        The jobs to send, and how many rows were taken or skipped in all.
    """
    now = utcnow()
    postgres = engine.dialect.name == "postgresql"
    due = (col(WebhookDelivery.status) == "pending") & (col(WebhookDelivery.next_attempt_at) <= now)
    jobs, handled = [], 0
    with Session(engine) as session:
        query = select(WebhookDelivery).where(due).order_by(col(WebhookDelivery.next_attempt_at)).limit(limit)
        if postgres:
            query = query.with_for_update(skip_locked=True)
        for row in list(session.exec(query)):
            # read before the UPDATE refreshes ``row``
            delivery_id, attempt, hook_id = row.id, row.attempts + 1, row.webhook_id
            hook, event = session.get(Webhook, row.webhook_id), session.get(WebhookEvent, row.event_id)
            mine = due & (col(WebhookDelivery.id) == delivery_id) & (col(WebhookDelivery.attempts) == attempt - 1)
            if hook is None or event is None or not _creator_may_read(session, hook, event):
                values = {"status": "skipped", "finished_at": now,
                          "last_error": "not sent: the hook's creator cannot read this adapter"}
            else:
                claimed = now + timedelta(seconds=settings.webhook_claim_seconds)
                values = {"attempts": attempt, "next_attempt_at": claimed}
            result = session.execute(update(WebhookDelivery).where(mine).values(**values))
            won = result.rowcount == 1  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
            if not postgres:  # SQLite: each claim is its own short write, atomic by its condition
                session.commit()
            handled += won
            if won and hook is not None and event is not None and "attempts" in values:
                jobs.append(Job(delivery_id, attempt, hook_id, hook.url, hook.secret, event.kind, events.body(event)))
        session.commit()
    return jobs, handled


def record(engine: Engine, settings: Settings, job: Job, code: int | None, error: str) -> str:
    """Store a send's outcome (if the row is still this job's); return the new status."""
    now = utcnow()
    if not error:
        values, status = {"status": "delivered", "finished_at": now, "last_error": ""}, "delivered"
    elif job.attempt >= settings.webhook_max_attempts:
        values, status = {"status": "failed", "finished_at": now, "last_error": error[:500]}, "failed"
    else:
        values = {"last_error": error[:500], "next_attempt_at": now + timedelta(seconds=backoff(settings, job.attempt))}
        status = "pending"
    mine = ((col(WebhookDelivery.id) == job.delivery_id) & (col(WebhookDelivery.attempts) == job.attempt)
            & (col(WebhookDelivery.status) == "pending"))
    with Session(engine) as session:
        session.execute(update(WebhookDelivery).where(mine).values(response_code=code, **values))
        session.commit()
    return status


# --- the worker ----------------------------------------------------------------


class DeliveryWorker:
    """Sends the outbox of one database from one hub process."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self._wake, self._stopping = asyncio.Event(), False
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._stopped = asyncio.Event()
        self._pruner: asyncio.Task | None = None

    def start(self) -> None:
        """Start sending (call from the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.settings.webhook_timeout),
                                         follow_redirects=False, trust_env=False)
        events.register_waker(self.engine, self.wake)
        self._task = asyncio.create_task(self._run(), name="peft-hub webhook deliveries")
        self._pruner = asyncio.create_task(self._prune_loop(), name="peft-hub webhook history")

    def wake(self) -> None:
        """Look at the outbox now (callable from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self._wake.set)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop; sends still running after ``grace`` seconds are cut off (their rows come due again)."""
        events.register_waker(self.engine, None)
        self._stopping = True
        self._wake.set()
        self._stopped.set()
        if self._pruner is not None:  # a pass in its thread finishes alone (its batches are whole); no wait
            self._pruner.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await self._pruner
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except (asyncio.TimeoutError, Exception):  # stopping regardless
                self._task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                jobs, handled = await anyio.to_thread.run_sync(claim, self.engine, self.settings)
            except Exception as exc:  # the database may be down for a while; keep trying
                log.warning("cannot read the webhook outbox: %s", one_line(str(exc), 300))
                jobs, handled = [], 0
            if jobs:
                await asyncio.gather(*(self._deliver(job) for job in jobs))
            if handled:
                continue
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.webhook_poll_seconds)

    async def _prune_loop(self) -> None:
        """Prune the history now and every ``webhook_prune_seconds``; again soon if a pass left rows."""
        while not self._stopping:
            more = False
            try:
                done = await anyio.to_thread.run_sync(webhook_history.prune, self.engine, self.settings,
                                                      abandon_on_cancel=True)
                more = done.more
                if done.deliveries or done.events:
                    log.info("webhook history: pruned %d deliveries by age, %d over their hook's cap, %d events",
                             done.by_age, done.over_cap, done.events)
            except Exception as exc:  # a later pass tries again; sends go on meanwhile
                log.warning("cannot prune the webhook history: %s", one_line(str(exc), 300))
            pause = self.settings.webhook_poll_seconds if more else self.settings.webhook_prune_seconds
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), pause)

    async def _deliver(self, job: Job) -> None:
        code, error = None, ""
        try:
            code, answer = await asyncio.wait_for(self._send(job), 2 * self.settings.webhook_timeout + 5)
            if not 200 <= code < 300:
                error = f"HTTP {code}" + (f": {answer}" if answer else "")
        except InvalidInputError as exc:
            error = exc.message
        except asyncio.TimeoutError:
            error = "the receiver did not answer in time"
        except Exception as exc:  # any failure of a send is recorded, never raised
            error = f"{type(exc).__name__}: {one_line(str(exc), 300)}" if str(exc) else type(exc).__name__
        try:
            status = await anyio.to_thread.run_sync(record, self.engine, self.settings, job, code, error)
        except Exception as exc:  # the row comes due again when its claim ends
            log.warning("cannot record webhook delivery %s: %s", job.delivery_id, one_line(str(exc), 300))
            return
        if error:
            log.warning("webhook %d delivery %s to %s: attempt %d failed (%s); %s", job.hook_id, job.delivery_id,
                        shown(job.url), job.attempt, error, status)

    async def _send(self, job: Job) -> tuple[int, str]:
        """POST the signed body to an address checked just now; the status and the answer's start."""
        url = httpx.URL(job.url)
        port = url.port or DEFAULT_PORTS[url.scheme]
        addresses = await anyio.to_thread.run_sync(
            partial(resolve, url.host, port, allow_private=self.settings.webhook_allow_private))
        headers = {
            "Content-Type": "application/json", "User-Agent": f"peft-hub/{__version__}", EVENT_HEADER: job.kind,
            DELIVERY_HEADER: job.delivery_id, SIGNATURE_HEADER: signature(job.secret, job.body),
            "Host": url.netloc.decode("ascii"),
        }
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        client = self._client
        assert client is not None, "the worker sends only once started"
        for number, address in enumerate(addresses):
            try:
                async with client.stream("POST", url.copy_with(host=address), content=job.body,
                                               headers=headers, extensions=extensions) as response:
                    answer = b""
                    async for chunk in response.aiter_raw():
                        answer += chunk
                        if len(answer) >= MAX_RESPONSE_BYTES:
                            break
                    return response.status_code, one_line(answer[:200].decode("utf-8", "replace"), 200)
            except httpx.ConnectError:
                if number == len(addresses) - 1:
                    raise
        raise InvalidInputError(f"the webhook host {url.host!r} has no address")
