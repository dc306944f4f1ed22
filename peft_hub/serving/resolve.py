"""Turn a vLLM model name into a checked, pulled adapter snapshot (no vLLM here).

A model name is an adapter ref: ``owner/name`` (meaning ``main``),
``owner/name@tag``, or ``owner/name@<full or short revision id>``. The name
vLLM keys its loaded adapters by is the ref exactly as the request spelled it,
so ``acme/support@prod`` keeps following ``prod`` while a revision id is pinned.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_hub.adapter import parse_config, vllm_max_lora_rank
from peft_hub.adapter_files import CONFIG_NAME
from peft_hub.client import HubClient, Ref, parse_ref
from peft_hub.errors import (
    IncompatibleAdaptersError,
    InvalidNameError,
    RankLimitError,
    RevisionNotFoundError,
    UnsupportedAdapterError,
)
from peft_hub.names import shown

FULL_SHA = re.compile(r"\A[0-9a-f]{40}\Z")
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A short revision id: at least 7 hex digits, as git abbreviates them.
SHORT_SHA = re.compile(r"\A[0-9a-f]{7,39}\Z")


def parse_model_name(model: str) -> Ref:
    """An adapter ref from a request's ``model``; the owner is required.

    Raises:
        InvalidNameError: not ``owner/name[@ref]``.
    """
    if not isinstance(model, str) or len(model) > 300:
        raise InvalidNameError(f"invalid adapter ref {shown(model)}")
    ref = parse_ref(model)
    if ref.owner is None:
        raise InvalidNameError(f"{shown(model)}: name the adapter as owner/name[@tag-or-revision]")
    # The hub's tag rule (and a revision id is hex): no "..", a letter or digit first.
    if ref.revision is not None and (not TAG.fullmatch(ref.revision) or ".." in ref.revision):
        raise InvalidNameError(f"{shown(model)}: invalid tag or revision")
    return Ref(ref.owner, ref.name, ref.revision or "main")


def base_names(value: str) -> set[str]:
    """The names a base model goes by: as given, and its last path component."""
    value = value.rstrip("/")
    return {value, value.rsplit("/", 1)[-1]} - {""}


@dataclass(frozen=True)
class ServeLimits:
    """What the running server can take.

    Args:
        base_models: names the served base goes by (model path, served names,
            or the operator's ``PEFT_HUB_BASE_MODEL`` list).
        max_lora_rank: the server's ``--max-lora-rank``; None skips the check.
    """

    base_models: frozenset[str]
    max_lora_rank: int | None = None

    @classmethod
    def build(cls, served: list[str], max_lora_rank: int | None) -> ServeLimits:
        """From the served model's names, unless ``PEFT_HUB_BASE_MODEL`` overrides them."""
        override = [v.strip() for v in os.environ.get("PEFT_HUB_BASE_MODEL", "").split(",") if v.strip()]
        names: set[str] = set()
        for value in override or served:
            names |= base_names(value)
        env_rank = os.environ.get("PEFT_HUB_MAX_LORA_RANK")
        rank = max_lora_rank if max_lora_rank is not None else (int(env_rank) if env_rank else None)
        return cls(frozenset(names), rank)


def check_servable(meta: dict[str, Any], limits: ServeLimits, *, label: str) -> None:
    """Refuse an adapter vLLM cannot serve on this base, from the hub's description.

    Raises:
        UnsupportedAdapterError: not LoRA, or DoRA.
        IncompatibleAdaptersError: trained on another base model.
        RankLimitError: rank above ``--max-lora-rank``.
    """
    method = meta.get("method")
    if method != "LORA":
        raise UnsupportedAdapterError(f"{label} is a {shown(method, 40)} adapter: vLLM serves LoRA adapters only")
    if meta.get("use_dora"):
        raise UnsupportedAdapterError(f"{label} uses DoRA, which vLLM cannot serve")
    base = meta.get("base_model")
    if not isinstance(base, str) or not base_names(base) & limits.base_models:
        served = ", ".join(sorted(n for n in limits.base_models if "/" not in n)) or "?"
        raise IncompatibleAdaptersError(
            f"{label} was trained on {shown(base, 120)}, not on the served base ({served}); "
            "set PEFT_HUB_BASE_MODEL if they are the same model"
        )
    rank = meta.get("max_rank")
    if limits.max_lora_rank is not None and isinstance(rank, int) and rank > limits.max_lora_rank:
        need = vllm_max_lora_rank(rank)
        hint = f"start vLLM with --max-lora-rank {need}" if need else "vLLM cannot serve a rank this large"
        raise RankLimitError(
            f"{label} has rank {rank}, above this server's --max-lora-rank {limits.max_lora_rank}: {hint}"
        )


def check_config_servable(config: dict[str, Any], *, label: str, limits: ServeLimits | None = None) -> None:
    """Refuse what only the config shows: ``modules_to_save`` (vLLM ignores them silently).

    With ``limits``, also run :func:`check_servable` on what the pulled config
    itself says (method, DoRA, base model, ranks): the hub's description of a
    revision is a hub's word, and a hostile or stale hub can describe other files.
    """
    modules = config.get("modules_to_save")
    if modules:
        names = modules if isinstance(modules, list) else [modules]
        raise UnsupportedAdapterError(
            f"{label} trains modules_to_save ({', '.join(map(str, names))[:80]}), which vLLM cannot serve"
        )
    if config.get("use_dora"):
        raise UnsupportedAdapterError(f"{label} uses DoRA, which vLLM cannot serve")
    if limits is not None:
        ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
        meta = {"method": config.get("peft_type"), "use_dora": bool(config.get("use_dora")),
                "base_model": config.get("base_model_name_or_path"),
                "max_rank": max((r for r in ranks if isinstance(r, int) and not isinstance(r, bool)), default=None)}
        check_servable(meta, limits, label=label)


@dataclass(frozen=True)
class Served:
    """One adapter ref as a server serves it."""

    name: str  # the model name requests use
    repo: str
    ref_name: str
    revision: str
    path: Path

    def report(self) -> dict[str, str]:
        """The entry the hub's deployments API takes."""
        return {"ref": self.name, "repo": self.repo, "ref_name": self.ref_name, "revision": self.revision}


class AdapterSource:
    """Resolves, checks and pulls adapters for one server (thread safe).

    Args:
        limits: the server's base model names and rank limit.
        hub: a client; default one from ``PEFT_HUB_URL``/``PEFT_HUB_TOKEN``.
    """

    def __init__(self, limits: ServeLimits, hub: HubClient | None = None) -> None:
        self.limits = limits
        self.hub = hub or HubClient()
        self._lock = threading.Lock()

    def full_revision(self, ref: Ref) -> dict[str, Any]:
        """The hub's description of ``ref``; a short revision id is expanded first."""
        try:
            return self.hub.info(ref)
        except RevisionNotFoundError:
            if not ref.revision or not SHORT_SHA.fullmatch(ref.revision):
                raise
            matches = [r["revision"] for r in self.hub.revisions(ref)
                       if isinstance(r.get("revision"), str) and r["revision"].startswith(ref.revision)]
            if len(matches) != 1:
                why = "matches no revision" if not matches else f"is ambiguous ({len(matches)} revisions)"
                raise RevisionNotFoundError(f"{ref}: short revision id {why}") from None
            return self.hub.info(Ref(ref.owner, ref.name, matches[0]))

    def fetch(self, model: str) -> Served:
        """Resolve ``model`` to a revision, refuse what vLLM cannot serve, pull it.

        Raises:
            NotFoundError: no such adapter, tag or revision, or not readable with this token.
            UnsupportedAdapterError, IncompatibleAdaptersError, RankLimitError: refused.
        """
        ref = parse_model_name(model)
        with self._lock:
            detail = self.full_revision(ref)
            revision = detail.get("revision") if isinstance(detail, dict) else None
            if not isinstance(revision, str) or not FULL_SHA.fullmatch(revision):
                raise RevisionNotFoundError(f"{ref}: the hub answered no revision id")
            if FULL_SHA.fullmatch(ref.revision or "") and revision != ref.revision:
                raise RevisionNotFoundError(f"{ref}: the hub answered revision {revision[:12]} for this pinned one")
            label = f"{ref.repo_id}@{revision[:12]}"
            meta = detail.get("meta")
            check_servable(meta if isinstance(meta, dict) else {}, self.limits, label=label)
            pulled = self.hub.pull(Ref(ref.owner, ref.name, revision))
        if pulled.revision != revision:  # the files of another revision than the one just checked
            raise RevisionNotFoundError(f"{label}: the hub sent the files of revision {str(pulled.revision)[:12]}")
        config = parse_config((Path(pulled.path) / CONFIG_NAME).read_bytes())
        check_config_servable(config, label=label, limits=self.limits)
        return Served(model, ref.repo_id, ref.revision or "main", revision, Path(pulled.path))
