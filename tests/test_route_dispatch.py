"""The resolve shortcut (``hub.dispatch``) picks what FastAPI's own routing
picks: the same route, endpoint and path params on a corpus built from every
route's template with hostile values, the same scope at the endpoint, and
the same status, headers and body over HTTP with the shortcut on and off."""

from __future__ import annotations

import itertools
import random
import re
import secrets

import anyio
import httpx
import pytest
from fastapi import routing as fastapi_routing
from raw_adapters import tiny_lora_dir
from starlette.routing import Host, Match, Router

from peft_hub.client import HubClient
from peft_hub.hub import Settings, create_app
from peft_hub.hub.dispatch import shortcut_of
from peft_hub.hub.hf import read

VALUES = ["a", "api", "static", "openapi.json", "resolve", "main", "", "%2F", "/", "..", ".", "ü", "x" * 300,
          "a.b", "@", "name@v1", ".git", "a b", "login"]
TAILS = ["", "/", "//", "/extra", "?q"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
PARAM = re.compile(r"{[^}]+}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dispatch")
    return create_app(Settings(db_url=f"sqlite:///{tmp / 'hub.db'}", storage=str(tmp / "blobs")))


def _templates(app) -> list[str]:
    found = []
    for route, context in fastapi_routing._iter_routes_with_context(app.router.routes):
        effective = (context.starlette_route or context) if context is not None else route
        found.append(effective.path_format)
    return found


def _corpus(app) -> list[str]:
    rng = random.Random(15)
    paths = {"/", "", "//", "/a/b/resolve/main/x", "/a/b/resolve/main/", "/a/b/resolve/main",
             "/a/resolve/resolve/main/x", "/api/b/resolve/main/x", "/static/b/resolve/main/x",
             "/openapi.json/b/resolve/main/x", "/a//resolve/main/x", "//b/resolve/main/x",
             "/a/b/resolve//x", "/a/b/resolve/main/%2F..%2Fetc", "/a/b/resolve/main/a/../../b"}
    for template in _templates(app):
        holes = len(PARAM.findall(template))
        combos = [tuple([value] * holes) for value in VALUES]
        combos += [tuple(rng.choice(VALUES) for _ in range(holes)) for _ in range(40)]
        for combo in combos:
            filled = iter(combo)
            path = PARAM.sub(lambda _, filled=filled: next(filled), template)
            paths.add(path + rng.choice(TAILS))
            paths.add(path.replace("resolve", rng.choice(["resolve", "RESOLVE", "resolv"])))
    return sorted(paths)


def _scope(path: str, method: str, root_path: str = "") -> dict:
    return {"type": "http", "method": method, "path": root_path + path, "root_path": root_path,
            "raw_path": path.encode(), "query_string": b"", "headers": []}


def _reference(app, scope: dict) -> tuple:
    """What FastAPI's routing picks: ("full" | "partial", route, endpoint, path params), or ("none",)."""
    scope = dict(scope)
    chosen = None
    for route in app.router.routes:
        match, child = route.matches(scope)
        if match == Match.FULL:
            chosen = (route, child)
            break
        if match == Match.PARTIAL and chosen is None:
            chosen = (route, child)
    if chosen is None:
        return ("none",)
    route, child = chosen
    while isinstance(route, fastapi_routing._IncludedRouter):
        match, child, route, _ = route._match(scope)
    return (match.name.lower(), child.get("route", route), child.get("endpoint"), child.get("path_params"))


def _check_corpus(app, corpus, methods, root_paths=("",)) -> int:
    plan = shortcut_of(app).current()
    taken = 0
    for path, method, root in itertools.product(corpus, methods, root_paths):
        scope = _scope(path, method, root)
        chosen = plan.choose(dict(scope)) if plan is not None else None
        if chosen is None:
            continue  # routed normally: the same as with no shortcut by construction
        taken += 1
        target, child = chosen
        want = _reference(app, scope)
        assert want == ("full", target.route, child["endpoint"], child["path_params"]), (method, root + path)
    return taken


def test_the_shortcut_picks_what_fastapi_picks_for_every_path(app):
    corpus = _corpus(app)
    assert len(corpus) > 3000
    taken = _check_corpus(app, corpus, ["GET", "HEAD"], root_paths=("", "/hub"))
    taken += _check_corpus(app, corpus[::7], METHODS[2:])
    assert taken > 500  # it does take the resolve paths; not a shortcut that never fires
    plan = shortcut_of(app).current()
    assert plan.choose(_scope("/a/b/resolve/main/x", "GET"))[0].endpoint is read.resolve_get
    assert plan.choose(_scope("/a/b/resolve/main/x", "HEAD"))[0].endpoint is read.resolve_head
    for path in ["/a/resolve/resolve/main/x", "/api/b/resolve/main/x", "/openapi.json/b/resolve/main/x"]:
        assert plan.choose(_scope(path, "GET")) is None  # an earlier route takes these
    assert plan.choose(_scope("/a/b/resolve/main/x", "POST")) is None  # a 405 is FastAPI's to give


def test_a_route_added_later_is_respected(tmp_path):
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'hub.db'}", storage=str(tmp_path / "blobs")))
    path = "/a/b/resolve/main/x"
    assert shortcut_of(app).current().choose(_scope(path, "GET")) is not None

    def shadow(a: str, b: str, c: str, d: str) -> dict:
        return {}

    app.add_api_route("/{a}/{b}/resolve/{c}/{d:path}", shadow, methods=["GET"])
    assert shortcut_of(app).current().choose(_scope(path, "GET")) is not None  # added last: resolve still first
    app.router.routes.insert(0, app.router.routes.pop())  # moved first, as tests/test_hub_contract.py does
    assert shortcut_of(app).current().choose(_scope(path, "GET")) is None
    assert _reference(app, _scope(path, "GET"))[2] is shadow
    assert shortcut_of(app).current().choose(_scope(path, "HEAD")) is not None  # GET only: HEAD still resolves
    app.router.routes.insert(0, Host("example.com", app=Router()))
    assert shortcut_of(app).current() is None  # a Host matches by header: the shortcut stays off


def test_the_endpoint_sees_the_same_scope(app, monkeypatch):
    plan = shortcut_of(app).current()
    seen: list[dict] = []

    async def capture(scope, receive, send):
        seen.append({**scope, "fastapi": dict(scope.get("fastapi", {}))})

    for target, _, _ in plan.targets.values():
        monkeypatch.setattr(target.context, "app", capture)

    async def call(scope):
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        await app.router(scope, receive, None)

    cases = [("/a/b/resolve/main/x.json", "GET", ""), ("/a/b/resolve/0123abc/d/e.bin", "HEAD", ""),
             ("/hub/a/b/resolve/main/", "GET", "/hub"), ("/a.b/c-d/resolve/v1/ü ö", "GET", "")]
    for path, method, root in cases:
        for enabled in (True, False):
            shortcut_of(app).enabled = enabled
            scope = _scope(path[len(root):], method, root)
            scope["app"] = app
            anyio.run(call, scope)
        shortcut_of(app).enabled = True
        on, off = seen[-2:]
        assert on.keys() == off.keys() and on["fastapi"].keys() == off["fastapi"].keys(), path
        for key in on:
            assert on[key] is off[key] or on[key] == off[key], (path, key)
        for key in on["fastapi"]:
            assert on["fastapi"][key] is off["fastapi"][key], (path, key)
        assert on["endpoint"] is (read.resolve_get if method == "GET" else read.resolve_head)


def _push(hub, tmp_path) -> str:
    lora = tiny_lora_dir(tmp_path / secrets.token_hex(4) / "lora", "x")
    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "client-cache") as client:
        return client.push(lora, name="admin/fast").revision


def _answer(response: httpx.Response) -> tuple:
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "x-request-id")}
    return response.status_code, headers, response.content


def test_real_requests_answer_the_same_with_the_shortcut_on_and_off(hub, tmp_path):
    sha = _push(hub, tmp_path)
    paths = ["/admin/fast/resolve/main/adapter_config.json", f"/admin/fast/resolve/{sha}/adapter_model.safetensors",
             f"/admin/fast/resolve/{sha[:8]}/adapter_config.json", "/admin/fast/resolve/main/missing.bin",
             "/admin/fast/resolve/main/", "/admin/fast/resolve/main/adapter%5Fconfig.json",
             "/admin/fast/resolve/main/..%2Fadapter_config.json", "/admin/fast/resolve/nope/adapter_config.json",
             "/admin/resolve/resolve/main/adapter_config.json", "/nobody/none/resolve/main/x",
             "/api/fast/resolve/main/x", "/api/health/", "/admin/fast/resolve/main", "/x/y/z/w"]
    shortcut = shortcut_of(hub.app)
    assert shortcut.current().choose(_scope(paths[0], "GET")) is not None  # the shortcut is on this path
    with httpx.Client(base_url=hub.url, follow_redirects=False) as api:
        for path, method in itertools.product(paths, ["GET", "HEAD", "POST", "DELETE"]):
            answers = []
            for enabled in (True, False, True):
                shortcut.enabled = enabled
                answers.append(_answer(api.request(method, path)))
            shortcut.enabled = True
            assert answers[0] == answers[1] == answers[2], (method, path)
        got = api.get(f"/admin/fast/resolve/{sha}/adapter_config.json")
        assert got.status_code == (302 if hub.backend == "s3-postgres" else 200)
