"""The rollout receiver, as a vLLM endpoint plugin (``vllm.endpoint_plugins``
entry point ``peft_hub_rollout``, loaded only when ``VLLM_PLUGINS`` names it).

``POST /peft-hub/webhook`` takes the hub's signed deliveries. For each served
name a tag move makes stale, it resolves and pulls the new revision, loads it
into the engine under a fresh adapter id, and only then points the name at
it. Requests already running keep the old adapter id (vLLM's engine keeps it
until its LRU evicts it, and reloads it from its immutable snapshot if a
running request still needs it), so a switch fails none of them. The server
reports what it serves to the hub's deployments API after every change and
every ``PEFT_HUB_REPORT_SECONDS`` (default 30).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from argparse import Namespace
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from vllm.lora.request import LoRARequest

from peft_hub.errors import (
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PeftHubError,
)
from peft_hub.serving.receiver import (
    MAX_BODY,
    SeenDeliveries,
    parse_delivery,
    stale_names,
    webhook_secret,
)
from peft_hub.serving.resolve import ServeLimits
from peft_hub.serving.vllm import RESOLVER

logger = logging.getLogger("peft_hub.serving")
WEBHOOK_PATH = "/peft-hub/webhook"


def _error(status: int, exc: PeftHubError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "detail": str(exc)}, status_code=status)


class RolloutPlugin:
    """Switches served adapters when their tag moves; reports deployments."""

    name = "peft_hub_rollout"
    required_tasks = None

    def __init__(self) -> None:
        self.models: Any = None  # vLLM's OpenAIServingModels
        self.seen = SeenDeliveries()
        self.server_id = os.environ.get("PEFT_HUB_SERVER_ID", "")
        self.url = ""
        self.base_model = ""
        self._wake: asyncio.Event | None = None

    def attach_router(self, app: FastAPI) -> None:
        router = APIRouter()
        router.add_api_route(WEBHOOK_PATH, self.webhook, methods=["POST"], include_in_schema=False)
        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        self.models = getattr(state, "openai_serving_models", None)
        served = [args.model, *(getattr(args, "served_model_name", None) or [])]
        RESOLVER.configure(ServeLimits.build(served, getattr(args, "max_lora_rank", None)))
        host = getattr(args, "host", None) or "127.0.0.1"
        self.url = os.environ.get("PEFT_HUB_SERVER_URL") or f"http://{host}:{args.port}"
        self.server_id = self.server_id or f"{socket.gethostname()}:{args.port}"
        self.base_model = served[-1]
        self._wake = asyncio.Event()
        RESOLVER.on_change = self._wake.set
        asyncio.get_running_loop().create_task(self._report_loop())

    # --- the webhook --------------------------------------------------------

    async def webhook(self, request: Request) -> JSONResponse:
        """Verify one delivery, switch or unload what it makes stale."""
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return _error(413, InvalidInputError(f"delivery body above {MAX_BODY} bytes"))
        body = await request.body()
        try:
            event = parse_delivery(webhook_secret(), body, {k.lower(): v for k, v in request.headers.items()})
        except AuthenticationError as exc:
            return _error(401, exc)
        except InvalidInputError as exc:
            return _error(400, exc)
        if event.delivery in self.seen:
            return JSONResponse({"status": "duplicate"})
        switch, unload = stale_names(event, self._live())
        switched, failed = [], []
        for name in switch:
            try:
                if await self.switch(name):
                    switched.append(name)
            except (NotFoundError, ValueError) as exc:  # the tag now points at something unservable
                logger.warning("peft-hub: %s can no longer be served: %s", name, exc)
                unload.append(name)
            except Exception as exc:  # the hub retries a failed delivery
                logger.warning("peft-hub: switching %s failed: %s", name, exc)
                failed.append(name)
        for name in unload:
            await self.unload(name)
        if self._wake is not None:
            self._wake.set()
        if failed:
            return JSONResponse({"error": "switch_failed", "detail": f"could not switch {', '.join(failed)}"},
                                status_code=503)
        self.seen.add(event.delivery)
        return JSONResponse({"switched": switched, "unloaded": unload})

    def _live(self) -> list:
        loaded = self.models.lora_requests if self.models is not None else {}
        return [s for name, s in list(RESOLVER.served.items()) if name in loaded]

    async def switch(self, name: str) -> bool:
        """Load where ``name`` points now, then point ``name`` at it; False if unchanged."""
        if self.models is None or RESOLVER.source is None:
            return False
        new = await asyncio.to_thread(RESOLVER.source.fetch, name)
        old = RESOLVER.served.get(name)
        if old is not None and old.revision == new.revision:
            return False
        request = LoRARequest(lora_name=name, lora_int_id=self.models.lora_id_counter.inc(1), lora_path=str(new.path))
        await self.models.engine_client.add_lora(request)  # loaded before the switch: no request waits on it
        async with self.models.lora_resolver_lock[name]:
            if name not in self.models.lora_requests:
                return False  # unloaded meanwhile: the resolver loads it afresh on demand
            self.models.lora_requests[name] = request
            RESOLVER.served[name] = new
        logger.info("peft-hub: %s switched to %s", name, new.revision)
        return True

    async def unload(self, name: str) -> None:
        """Forget ``name``: the next request resolves it again (or is refused)."""
        async with self.models.lora_resolver_lock[name]:
            self.models.lora_requests.pop(name, None)
            RESOLVER.served.pop(name, None)

    # --- deployments --------------------------------------------------------

    async def _report_loop(self) -> None:
        period = float(os.environ.get("PEFT_HUB_REPORT_SECONDS", "30"))
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=period)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await asyncio.to_thread(self.report)
            except Exception as exc:  # the hub may be down; report again later
                logger.warning("peft-hub: deployment report failed: %s", exc)

    def report(self) -> None:
        """Tell the hub what this server serves, with revisions."""
        from peft_hub.client.events import put_deployment  # the hub engineer's module

        if RESOLVER.source is None:
            return
        put_deployment(RESOLVER.source.hub, self.server_id, url=self.url, base_model=self.base_model,
                       adapters=[s.report() for s in self._live()])
