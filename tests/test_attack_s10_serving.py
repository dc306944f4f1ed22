"""The vLLM resolver's hub side (``AdapterSource``) against a hub that lies.

A real loopback server plays the hub: its description of a revision (what
``check_servable`` reads) and the files it then serves are chosen per test,
and may disagree. The resolver must refuse with a peft-hub error, never let
the hub steer a write out of its cache, and never serve files it did not check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from services import serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from peft_hub.client import HubClient
from peft_hub.errors import (
    ChecksumMismatchError,
    IncompatibleAdaptersError,
    InvalidAdapterError,
    InvalidNameError,
    RankLimitError,
    RevisionNotFoundError,
    UnsupportedAdapterError,
)
from peft_hub.serving.resolve import AdapterSource, ServeLimits, parse_model_name

TOKEN = "phub_s10serving000000000000000000000000000000000000000"
REV, OTHER_REV = "1" * 40, "2" * 40
LIMITS = ServeLimits(frozenset({"tiny"}), 32)
META = {"method": "LORA", "base_model": "tiny", "max_rank": 2, "use_dora": False}
WEIGHTS = b"\0" * 64


def _config(**fields: Any) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": "tiny",
                       "target_modules": ["q_proj"], **fields}).encode()


class Hub:
    """What the hostile hub answers: ``describe(revision asked) -> JSON``, and files by name."""

    def __init__(self) -> None:
        self.url = ""
        self.reset()

    def reset(self) -> None:
        self.describe: Callable[[str], Any] = lambda asked: {}
        self.files: dict[str, bytes] = {}
        self.by_revision: dict[str, dict[str, bytes]] = {}  # files served for one revision instead
        self.redirect_to: str | None = None
        self.seen: list[tuple[str, dict[str, str]]] = []

    def honest(self, config: bytes = _config(), meta: dict[str, Any] | None = None) -> None:
        self.files = {"adapter_config.json": config, "adapter_model.safetensors": WEIGHTS}
        self.describe = lambda asked: detail(REV, self.files, meta or META)


def detail(revision: Any, files: dict[str, bytes], meta: Any = None, listing: Any = None) -> dict[str, Any]:
    entries = listing if listing is not None else [
        {"path": n, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in files.items()]
    return {"id": "acme/support", "owner": "acme", "name": "support", "revision": revision,
            "meta": META if meta is None else meta, "tags": {"main": REV}, "files": entries}


def _app(hub: Hub) -> Starlette:
    async def show(request: Request) -> Any:
        hub.seen.append((request.url.path, dict(request.headers)))
        return JSONResponse(hub.describe(request.query_params.get("revision", "main")))

    async def resolve(request: Request) -> Any:
        hub.seen.append((request.url.path, dict(request.headers)))
        name = request.path_params["path"]
        files = hub.by_revision.get(request.path_params.get("revision", ""), hub.files)
        if hub.redirect_to is not None and not request.url.path.startswith("/elsewhere"):
            return RedirectResponse(f"{hub.redirect_to}/elsewhere/{name}", status_code=302)
        if name not in files:
            return JSONResponse({"error": "entry_not_found", "detail": name}, status_code=404)
        return Response(files[name], media_type="application/octet-stream")

    return Starlette(routes=[
        Route("/api/adapters/{owner}/{name}", show),
        Route("/api/adapters/{owner}/{name}/resolve/{revision}/{path:path}", resolve),
        Route("/elsewhere/{path:path}", resolve),
    ])


def _serve(hub: Hub) -> Iterator[Hub]:
    with serve_in_thread(_app(hub), "loopback hub") as url:
        hub.url = url
        yield hub


@pytest.fixture(scope="module")
def _hubs() -> Iterator[tuple[Hub, Hub]]:
    gen_a, gen_b = _serve(Hub()), _serve(Hub())
    yield next(gen_a), next(gen_b)
    for gen in (gen_a, gen_b):
        next(gen, None)


@pytest.fixture
def hub(_hubs) -> Hub:
    for each in _hubs:
        each.reset()
    return _hubs[0]


@pytest.fixture
def source(hub, tmp_path) -> AdapterSource:
    return AdapterSource(LIMITS, HubClient(hub.url, TOKEN, cache_dir=tmp_path / "cache"))


def _outside(tmp_path: Path) -> set[str]:
    """Every path under tmp_path but the cache's."""
    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not str(p.relative_to(tmp_path)).startswith(
        "cache")}


def test_an_honest_hub_is_served_from_inside_the_cache(hub, source, tmp_path):
    hub.honest()
    served = source.fetch("acme/support")
    assert served.revision == REV and (served.path / "adapter_config.json").read_bytes() == _config()
    assert (tmp_path / "cache") in served.path.parents and _outside(tmp_path) == set()


@pytest.mark.parametrize(("config", "error", "words"), [
    (_config(r=64, rank_pattern={"q_proj": 64}), RankLimitError, "rank 64"),
    (_config(base_model_name_or_path="other/model"), IncompatibleAdaptersError, "other/model"),
    (_config(peft_type="IA3"), UnsupportedAdapterError, "IA3"),
    (_config(modules_to_save=5), UnsupportedAdapterError, r"modules_to_save \(5\)"),
    (_config(modules_to_save={"lm_head": 1}), UnsupportedAdapterError, "modules_to_save"),
    (_config(use_dora=True), UnsupportedAdapterError, "DoRA"),
], ids=["rank 64", "another base", "IA3", "modules_to_save 5", "modules_to_save dict", "DoRA"])
def test_the_pulled_config_is_checked_whatever_the_hubs_description_said(hub, source, config, error, words):
    """The hub described a servable rank-2 LoRA of tiny; the files it sent say otherwise."""
    hub.honest(config=config)
    with pytest.raises(error, match=words):
        source.fetch("acme/support")


@pytest.mark.parametrize("meta", [[1], "LORA", 5, None])
def test_a_description_of_the_wrong_type_is_a_refusal_not_a_crash(hub, source, meta):
    hub.honest()
    hub.describe = lambda asked: {**detail(REV, hub.files), "meta": meta}
    with pytest.raises(UnsupportedAdapterError):
        source.fetch("acme/support")


@pytest.mark.parametrize("answer", [[1, 2], "x", {"revision": "main"}, {"revision": "1" * 39}])
def test_an_answer_that_is_not_a_revision_is_not_found(hub, source, answer):
    hub.describe = lambda asked: answer
    with pytest.raises(RevisionNotFoundError):
        source.fetch("acme/support")


def test_the_files_of_another_revision_than_the_one_checked_are_refused(hub, source, tmp_path):
    """The description of main says REV (servable); asked for REV's files, the hub sends OTHER_REV's."""
    hub.honest()
    evil = {"adapter_config.json": _config(r=64), "adapter_model.safetensors": WEIGHTS}
    hub.describe = lambda asked: detail(REV, hub.files) if asked == "main" else detail(OTHER_REV, evil)
    hub.by_revision = {OTHER_REV: evil}
    with pytest.raises(RevisionNotFoundError, match="another|files of revision|answered revision"):
        source.fetch("acme/support")
    hub.describe = lambda asked: detail(OTHER_REV, hub.files)
    with pytest.raises(RevisionNotFoundError, match="pinned"):
        source.fetch(f"acme/support@{REV}")
    assert _outside(tmp_path) == set()


@pytest.mark.parametrize("listing", [
    [{"path": "../evil.json", "sha256": "0" * 64, "size": 1}],
    [{"path": "/tmp/peft-hub-s10-evil.json", "sha256": "0" * 64, "size": 1}],
    [{"path": "sub/adapter_config.json", "sha256": "0" * 64, "size": 1}],
    [{"path": f"f{i}.json", "sha256": "0" * 64, "size": 1} for i in range(100_000)],
    [{"path": "adapter_model.safetensors", "sha256": "0" * 64, "size": 1 << 62}],
])
def test_hostile_file_lists_are_refused_and_nothing_leaves_the_cache(hub, source, tmp_path, listing):
    hub.honest()
    hub.describe = lambda asked: detail(REV, {}, listing=listing)
    with pytest.raises(InvalidAdapterError):
        source.fetch("acme/support")
    assert _outside(tmp_path) == set() and not Path("/tmp/peft-hub-s10-evil.json").exists()


def test_a_redirect_to_another_host_gets_no_token_and_only_verified_bytes(hub, _hubs, source, tmp_path):
    other = _hubs[1]
    hub.honest()
    other.files = dict(hub.files)
    hub.redirect_to = other.url
    served = source.fetch("acme/support")
    assert (served.path / "adapter_config.json").read_bytes() == _config()
    assert other.seen and not any("authorization" in headers for _, headers in other.seen)
    other.files = {**hub.files, "adapter_config.json": _config(r=4)}  # another host's other bytes
    with pytest.raises(ChecksumMismatchError):
        AdapterSource(LIMITS, HubClient(hub.url, TOKEN, cache_dir=tmp_path / "c2")).fetch("acme/support")


@pytest.mark.parametrize("name", ["acme/../x", "../acme/x", "acme/x/..", "acme/x@..", "acme/x@../../y",
                                  "acme/x@a/../b", "acme/%2e%2e", "acme/x\n", "/etc/passwd", "acme/.x"])
def test_lora_names_that_are_paths_are_not_hub_refs(name):
    with pytest.raises(InvalidNameError):
        parse_model_name(name)
