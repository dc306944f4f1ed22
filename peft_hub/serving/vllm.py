"""vLLM's side of the plugin: a ``LoRAResolver`` that serves hub adapters by ref.

Registered from the ``vllm.general_plugins`` entry point ``peft_hub``. vLLM asks
its resolvers for any model name it has not loaded, and only when
``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` is on. An exception raised here reaches
the client as vLLM's error response (a ``ValueError`` becomes a 400 with its
message), which is how a refusal says why; ``None`` means "not mine" and
becomes vLLM's 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vllm import envs
from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from peft_hub.errors import InvalidNameError, NotFoundError
from peft_hub.serving.resolve import (
    AdapterSource,
    Served,
    ServeLimits,
    parse_model_name,
)

logger = logging.getLogger("peft_hub.serving")
RESOLVER_NAME = "peft-hub"


class PeftHubResolver(LoRAResolver):
    """Resolves ``owner/name[@ref]`` through the hub (``PEFT_HUB_URL``, ``PEFT_HUB_TOKEN``)."""

    def __init__(self) -> None:
        self.source: AdapterSource | None = None
        #: model name -> what it resolved to; the rollout plugin reads and updates it.
        self.served: dict[str, Served] = {}
        self.on_change: Callable[[], None] | None = None

    def configure(self, limits: ServeLimits) -> None:
        """Set the server's limits (the rollout plugin knows ``--max-lora-rank``)."""
        if self.source is None:
            self.source = AdapterSource(limits)
        else:
            self.source.limits = limits

    def source_for(self, base_model_name: str) -> AdapterSource:
        if self.source is None:  # no rollout plugin: the base's name, and the env for the rank
            self.configure(ServeLimits.build([base_model_name], None))
        assert self.source is not None
        return self.source

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        try:
            parse_model_name(lora_name)
        except InvalidNameError:
            return None  # not a hub ref: leave it to other resolvers
        source = self.source_for(base_model_name)
        try:
            served = await asyncio.to_thread(source.fetch, lora_name)
        except NotFoundError as exc:
            logger.info("peft-hub: %s", exc)
            return None
        self.served[lora_name] = served
        logger.info("peft-hub: %s -> %s@%s", lora_name, served.repo, served.revision)
        if self.on_change is not None:
            self.on_change()
        # vLLM replaces lora_int_id with its own counter's next value.
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(served.path))


RESOLVER = PeftHubResolver()


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the resolver once per process."""
    if not envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING:
        logger.info("peft-hub: VLLM_ALLOW_RUNTIME_LORA_UPDATING is off, so adapters are not resolved by ref")
        return
    if RESOLVER_NAME not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver(RESOLVER_NAME, RESOLVER)
