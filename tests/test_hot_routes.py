"""The metadata reads answered on the event loop (native ``show``, HF
``model_info``, tree, refs) send byte for byte what the plain ORM reads and
FastAPI's JSON encoder send; a warm one takes no thread; a resolve answered
from a reused URL or a local file still holds a storage slot; and the server
runs on uvloop and httptools, as the ``hub`` extra installs them."""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
import threading

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from raw_adapters import tiny_lora_dir
from services import live_hub
from sqlmodel import Session
from starlette.requests import Request

from peft_hub.client import HubClient
from peft_hub.errors import StorageUnavailableError
from peft_hub.hub import cache, crud, hot
from peft_hub.hub.hf import shapes


def _push(hub, tmp_path, name: str, card: str) -> str:
    lora = tiny_lora_dir(tmp_path / secrets.token_hex(4) / "lora", "x")
    (lora / "README.md").write_text(card)
    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "client-cache") as client:
        return client.push(lora, name=name).revision


CARD = "---\nlicense: mit\ntags: [hot, 'ü']\nbase_model: org/base\n---\n# Hot — ünïcode\n"


def _reference(hub, owner: str, name: str, rev: str, kind: str) -> bytes:
    """The body as the ORM reads and FastAPI's JSONResponse build it, with no cache."""
    with Session(hub.app.state.engine) as session:
        adapter = crud.get_adapter(session, owner=owner, name=name, principal=None)
        revision = crud.resolve_revision(session, adapter=adapter, rev=rev)
        files = list(crud.revision_files(session, revision=revision))
        if kind == "show":
            content = crud.revision_detail(session, adapter=adapter, revision=revision, principal=None).model_dump()
        elif kind == "model_info":
            content = shapes.model_info(adapter, revision, files, shapes.card_metadata(hub.app.state.store, files))
        elif kind == "tree":
            content = [shapes.tree_entry(f, None) for f in files]
        elif kind == "tree-expanded":
            content = [shapes.tree_entry(f, revision) for f in files]
        else:
            tags = crud.tags_of(session, adapter=adapter)
            content = shapes.refs(tags, empty="main" not in tags)
    return JSONResponse(content).body


def test_hot_metadata_answers_are_byte_for_byte_the_plain_reads(embedded_hub, tmp_path):
    hub = embedded_hub
    sha = _push(hub, tmp_path, "admin/hot", CARD)
    cases = [
        ("/api/adapters/admin/hot", "main", "show", False),
        (f"/api/adapters/admin/hot?revision={sha}", sha, "show", False),
        ("/api/models/admin/hot", "main", "model_info", False),
        (f"/api/models/admin/hot/revision/{sha}", sha, "model_info", False),
        ("/api/models/admin/hot/tree/main", "main", "tree", False),
        (f"/api/models/admin/hot/tree/{sha}?expand=true", sha, "tree-expanded", True),
        ("/api/models/admin/hot/refs", "main", "refs", False),
    ]
    with httpx.Client(base_url=hub.url) as api:
        for path, rev, kind, pinned in cases:
            want = _reference(hub, "admin", "hot", rev, kind)
            cache.of(hub.app.state.engine).bump({"auth", "repo"})
            cold, warm = api.get(path), api.get(path)
            for got in (cold, warm):
                assert got.status_code == 200 and got.content == want, path
                assert got.headers["etag"] == f'"{hashlib.sha1(want).hexdigest()}"', path
                assert got.headers["content-type"] == "application/json", path
                assert got.headers["cache-control"] == cache.cache_control(False, immutable=pinned), path
            again = api.get(path, headers={"If-None-Match": warm.headers["etag"]})
            assert again.status_code == 304 and again.content == b"", path
        single = api.get(f"/api/models/admin/hot/tree/{sha}/adapter_config.json").json()
        assert [e["path"] for e in single] == ["adapter_config.json"]
        assert api.get("/api/models/admin/hot/tree/main/nope").status_code == 404
        assert api.get("/api/models/admin/hot/tree/main?cursor=bad").status_code == 422
        assert api.get("/api/adapters/admin/hot?revision=" + "a" * 65).status_code == 422
        assert api.get("/api/models/admin/nothere").status_code == 404
        assert api.get("/api/adapters/admin/hot?revision=nosuchtag").status_code == 404


def test_a_counted_show_is_counted_each_time_warm_or_not(embedded_hub, tmp_path):
    hub = embedded_hub
    _push(hub, tmp_path, "admin/count", CARD)
    with httpx.Client(base_url=hub.url) as api:
        before = api.get("/api/adapters/admin/count").json()["downloads"]
        for _ in range(3):
            assert api.get("/api/adapters/admin/count", params={"download": "true"}).status_code == 200
        assert api.get("/api/adapters/admin/count").json()["downloads"] == before + 3


def test_warm_metadata_reads_run_on_the_loop_and_cold_ones_in_a_thread(embedded_hub, tmp_path):
    from peft_hub.hub.hf.read import _info_of, _tags_of, _tree_of
    from peft_hub.hub.routes.adapters import _detail

    hub = embedded_hub
    sha = _push(hub, tmp_path, "admin/loop", CARD)
    engine, store = hub.app.state.engine, hub.app.state.store
    app = FastAPI()
    app.state.engine = engine
    request = Request({"type": "http", "method": "GET", "app": app, "headers": [], "path": "/", "query_string": b""})
    works = {
        "show": (_detail, (None, "admin", "loop", sha, False)),
        "model_info": (_info_of, (store, None, "admin", "loop", "main")),
        "tree": (_tree_of, (None, "admin", "loop", sha)),
        "refs": (_tags_of, (None, "admin", "loop")),
    }
    main = threading.current_thread()
    for label, (work, args) in works.items():
        on_loop: list[bool] = []

        def traced(session, *a, work=work, on_loop=on_loop):
            on_loop.append(threading.current_thread() is main)
            return work(session, *a)

        async def run(traced=traced, args=args):
            return await hot.answer(request, traced, *args)

        cache.of(engine).bump({"auth", "repo"})
        cold = anyio.run(run)
        assert on_loop == [True, False], f"{label}: cold reads miss on the loop, then read in a thread"
        on_loop.clear()
        assert anyio.run(run) == cold
        assert on_loop == [True], f"{label}: a warm read takes no thread"


def test_a_burst_that_misses_one_entry_takes_one_thread_and_the_rest_wait_on_the_loop(embedded_hub, tmp_path):
    """16 reads of a repo whose entry a write just made stale, all at once: the first reads the rows
    in a worker thread, the others wait for it on the loop and answer from what it put."""
    from peft_hub.hub.routes.adapters import _detail

    hub = embedded_hub
    sha = _push(hub, tmp_path, "admin/herd", CARD)
    engine = hub.app.state.engine
    app = FastAPI()
    app.state.engine = engine
    request = Request({"type": "http", "method": "GET", "app": app, "headers": [], "path": "/", "query_string": b""})
    main, in_threads = threading.current_thread(), []

    def traced(session, *args):
        if threading.current_thread() is not main:
            in_threads.append(1)
        return _detail(session, *args)

    async def burst():
        answers = []

        async def one():
            answers.append(await hot.answer(request, traced, None, "admin", "herd", sha, False))

        async with anyio.create_task_group() as group:
            for _ in range(16):
                group.start_soon(one)
        return answers

    cache.of(engine).bump({"auth", "repo"})
    answers = anyio.run(burst)
    assert len(answers) == 16 and all(a == answers[0] for a in answers)
    assert in_threads == [1], f"{len(in_threads)} worker threads read the same rows"


def test_a_burst_with_a_token_not_cached_reads_it_in_one_thread(embedded_hub, monkeypatch):
    """The same for the caller's token: 16 requests at once after its entry went stale, one lookup."""
    from peft_hub.hub import deps

    hub = embedded_hub
    reads, read = [], deps._read_principal

    def counted(*args, **kwargs):
        reads.append(1)
        return read(*args, **kwargs)

    monkeypatch.setattr(deps, "_read_principal", counted)
    headers = [(b"authorization", f"Bearer {hub.admin_token}".encode())]
    scope = {"type": "http", "method": "GET", "app": hub.app, "headers": headers, "path": "/", "query_string": b"",
             "client": ("127.0.0.1", 1)}

    async def burst():
        found = []

        async def one():
            found.append(await deps.request_principal(Request(scope)))

        async with anyio.create_task_group() as group:
            for _ in range(16):
                group.start_soon(one)
        return found

    async def single():
        return await deps.request_principal(Request(scope))

    anyio.run(single)  # the token's use is recorded now: the burst's lookup writes nothing (which would
    reads.clear()      # make its own result stale)
    cache.of(hub.app.state.engine).bump({"auth"})
    found = anyio.run(burst)
    assert len(found) == 16 and {p.user.name for p in found} == {"admin"}
    assert reads == [1], f"{len(reads)} worker threads read the same token"


def test_an_anonymous_caller_is_known_without_a_thread(embedded_hub, monkeypatch):
    """No bearer token and no session cookie on a safe method: anonymous, on the loop. A cookie on a
    GET is looked up (in a thread); on a POST it counts for nothing, as before."""
    from peft_hub.hub import deps

    hub, reads, read = embedded_hub, [], deps._read_principal

    def counted(*args, **kwargs):
        reads.append(1)
        return read(*args, **kwargs)

    monkeypatch.setattr(deps, "_read_principal", counted)

    def principal(method: str, headers: list) -> object:
        scope = {"type": "http", "method": method, "app": hub.app, "headers": headers, "path": "/",
                 "query_string": b"", "client": ("127.0.0.1", 1)}

        async def run():
            return await deps.request_principal(Request(scope))

        return anyio.run(run)

    cookie = [(b"cookie", f"{deps.SESSION_COOKIE}=unknown".encode())]
    assert principal("GET", []) is None and principal("POST", cookie) is None and reads == []
    assert principal("GET", cookie) is None and reads == [1]
    assert principal("GET", [(b"authorization", f"Bearer {hub.admin_token}".encode())]).user.name == "admin"


def test_an_anonymous_hf_caller_is_known_without_a_thread(embedded_hub, monkeypatch):
    """The HF routes' caller the same way; a token that is not a peft-hub one counts as none."""
    from peft_hub.hub.hf import access

    hub, reads, read = embedded_hub, [], access.read_hf_principal

    def counted(*args, **kwargs):
        reads.append(1)
        return read(*args, **kwargs)

    monkeypatch.setattr(access, "read_hf_principal", counted)

    def principal(headers: list) -> object:
        scope = {"type": "http", "method": "GET", "app": hub.app, "headers": headers, "path": "/",
                 "query_string": b"", "client": ("127.0.0.1", 1)}

        async def run():
            return await access.hf_principal(Request(scope))

        return anyio.run(run)

    assert principal([]) is None and principal([(b"authorization", b"Bearer hf_abc")]) is None and reads == []
    cookie = [(b"cookie", b"peft_hub_session=unknown")]
    assert principal(cookie) is None and reads == [1]
    assert principal([(b"authorization", f"Bearer {hub.admin_token}".encode())]).user.name == "admin"


def test_a_quick_resolve_still_holds_a_storage_slot(embedded_hub, tmp_path):
    hub = embedded_hub
    sha = _push(hub, tmp_path, "admin/slot", CARD)
    with httpx.Client(base_url=hub.url) as api:
        etag = api.get(f"/admin/slot/resolve/{sha}/adapter_config.json").headers["etag"].strip('"')
    app = FastAPI()
    app.state.store = hub.app.state.store
    app.state.settings = hub.settings.model_copy(update={"storage_queue_timeout": 0.2})
    request = Request({"type": "http", "method": "GET", "app": app, "headers": [], "path": "/", "query_string": b""})

    async def resolve_with(taken: bool):
        app.state.store_limiter = limiter = anyio.CapacityLimiter(1)
        holder = object()
        if taken:
            limiter.acquire_on_behalf_of_nowait(holder)
        try:
            return await hot.send_blob(request, app.state.settings, etag, "adapter_config.json",
                                       {"ETag": f'"{etag}"'}, private=False, pinned=True)
        finally:
            assert limiter.borrowed_tokens == (1 if taken else 0), "the slot is given back"

    with pytest.raises(StorageUnavailableError):
        anyio.run(resolve_with, True)
    answer = anyio.run(resolve_with, False)
    assert answer.status_code == 200 and answer.headers["etag"] == f'"{etag}"'


def test_the_server_runs_on_uvloop_and_httptools(tmp_path):
    """``peft-hub serve`` runs uvloop with its own listener (``hub/eventloop.py``)
    and httptools with a bound on the request head (``hub/protocol.py``); the
    ``hub`` extra installs both."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from peft_hub.hub.protocol import server_options

    config = uvicorn.Config(FastAPI(), log_level="warning", **server_options())
    config.load()
    assert issubclass(config.http_protocol_class, HttpToolsProtocol)
    if sys.platform != "win32":
        import uvloop

        from peft_hub.hub.eventloop import EagerLoop

        loop = config.get_loop_factory()()
        try:
            assert type(loop) is EagerLoop and isinstance(loop, uvloop.Loop)
        finally:
            loop.close()


def test_a_hub_served_on_the_fast_stack_answers_a_pipelined_read(tmp_path, request):
    """httptools parses two requests sent in one write on a kept-alive connection."""
    import socket

    from conftest import make_settings

    with live_hub(make_settings("embedded", tmp_path, request)) as hub:
        host, port = hub.url.removeprefix("http://").split(":")
        one = f"GET /api/health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(one + one)
            seen = b""
            while seen.count(b"HTTP/1.1 200") < 2:
                chunk = sock.recv(65536)
                assert chunk, f"closed early: {seen[:300]!r}"
                seen += chunk


def test_an_answer_is_rendered_once_per_cached_view_and_anew_after_a_write(embedded_hub, tmp_path, monkeypatch):
    """``show`` keeps its rendered body on the repo's cached view: a warm read
    renders nothing, and a write (a tag here) replaces the view, so the next
    read renders the new state, byte for byte the plain read's."""
    hub = embedded_hub
    _push(hub, tmp_path, "admin/memo", CARD)
    calls: list[int] = []
    real = crud.revision_detail
    monkeypatch.setattr(crud, "revision_detail", lambda *a, **k: calls.append(1) or real(*a, **k))
    with httpx.Client(base_url=hub.url) as api, \
            HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "client-cache") as client:
        cache.of(hub.app.state.engine).bump({"auth", "repo"})
        first, second = api.get("/api/adapters/admin/memo"), api.get("/api/adapters/admin/memo")
        assert first.content == second.content == _reference(hub, "admin", "memo", "main", "show")
        assert len(calls) == 2  # once by _reference, once for both reads
        client.set_tag("admin/memo", "v1")
        third = api.get("/api/adapters/admin/memo")
        assert "v1" in third.json()["tags"] and third.content == _reference(hub, "admin", "memo", "main", "show")
        assert third.headers["etag"] != first.headers["etag"]


def test_a_show_that_names_parents_is_rendered_for_each_caller(embedded_hub, tmp_path):
    """Lineage is filtered by who asks (a private parent is not named to a
    stranger), so such an answer is never kept on the view for the next caller."""
    from safetensors.torch import load_file, save_file

    hub = embedded_hub
    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "client-cache") as client:
        lora = tiny_lora_dir(tmp_path / "parent" / "lora", "x")
        parent = client.push(lora, name="admin/hidden-parent", private=True)
        child = tiny_lora_dir(tmp_path / "child" / "lora", "x")
        weights = child / "adapter_model.safetensors"
        lineage = {"method": "stack", "params": {}, "peft_hub_version": "0.1.0", "parents": [
            {"ref": "admin/hidden-parent", "revision": parent.revision, "sha256": "ab" * 32, "weight": 1.0}]}
        save_file(load_file(weights), weights, metadata={"format": "pt", "peft_hub.lineage": json.dumps(lineage)})
        client.push(child, name="admin/child")
    owner = {"Authorization": f"Bearer {hub.admin_token}"}
    with httpx.Client(base_url=hub.url) as api:
        for _ in range(2):  # cold, then warm, in both orders of callers
            seen = api.get("/api/adapters/admin/child", headers=owner).json()["meta"]["lineage"]["parents"]
            stranger = api.get("/api/adapters/admin/child").json()["meta"]["lineage"]["parents"]
            assert [p["in_hub"] for p in seen] == [True] and [p["in_hub"] for p in stranger] == [False]
            again = api.get("/api/adapters/admin/child", headers=owner).json()["meta"]["lineage"]["parents"]
            assert again == seen


def test_kept_answers_are_bounded_and_belong_to_the_entry_they_came_from():
    """At most ``ANSWER_ITEMS`` answers of at most ``ANSWER_BYTES`` each, whatever callers ask
    (a hostile repo's many tree pages): one past the count pushes out the oldest, a larger body
    is not kept, and an answer is never handed out for another entry."""
    hub_cache = cache.HubCache()
    views = [object() for _ in range(cache.ANSWER_ITEMS + 1)]
    for i, view in enumerate(views):
        hub_cache.keep_answer(view, "k", (b"x", f'"{i}"'))
    assert hub_cache.answer(views[0], "k") is None and hub_cache.answer(views[-1], "k") == (b"x", f'"{len(views) - 1}"')
    assert hub_cache.answer(object(), "k") is None and hub_cache.answer(views[-1], "other") is None
    big = (b"x" * (cache.ANSWER_BYTES + 1), '"big"')
    hub_cache.keep_answer(views[-1], "big", big)
    assert hub_cache.answer(views[-1], "big") is None
    off = cache.HubCache(ttl=0)  # PEFT_HUB_CACHE_TTL=0: no entry is kept, so neither are answers made from one
    off.keep_answer(views[0], "k", (b"x", '"0"'))
    assert off.answer(views[0], "k") is None
