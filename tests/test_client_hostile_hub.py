"""The client against a hub that lies or breaks.

Two real servers run on loopback: a hostile hub whose routes answer in the
shapes of the real hub's ``show``/``resolve``/``preupload``/``commit`` but with
hostile values, and a second server on another port playing "another
origin" (an attacker's host, or an object store) that records every request.
Each test asserts the exception class and that nothing was written outside,
or half-written inside, the output directory and the cache.
Only the pure error-mapping tests at the end use ``httpx.MockTransport``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from raw_adapters import zero_safetensors
from services import serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from peft_hub.client import HubClient
from peft_hub.client.http import build_request, build_session, json_body, raise_for_status
from peft_hub.client.transfers import MAX_REPO_FILES, absolute_url
from peft_hub.errors import (
    ChecksumMismatchError,
    EntryNotFoundError,
    HubUnreachableError,
    InvalidAdapterError,
    InvalidInputError,
    InvalidNameError,
    NotFoundError,
    PeftHubError,
    PermissionDeniedError,
    RevisionNotFoundError,
    StorageError,
    UnsafeFormatError,
)

TOKEN = "phub_hostile0000000000000000000000000000000000000000"
REV = "0123456789abcdef0123456789abcdef01234567"
CONFIG = b'{"peft_type": "LORA", "r": 2}'
WEIGHTS = b"\x00" * 100 + b"weights"
SIGNATURE = "X-Amz-Signature=d3adb33fsecretsignature"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the two servers ------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Server:
    """One loopback server; each test sets what it answers."""

    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    #: ``show``'s answer: a JSON-able value, or a ready Response.
    detail: Any = None
    #: File bytes served by name (``resolve`` on the hub, any path on the other origin).
    blobs: dict[str, bytes] = field(default_factory=dict)
    #: Optional override: ``(request, name) -> response``.
    serve: Callable[[Request, str], Any] | None = None
    preupload: Any = None
    commit: Any = None
    whoami: Any = field(default_factory=lambda: {"name": "admin", "scope": "admin", "orgs": []})

    def reset(self) -> None:
        self.__dict__.update({**Server().__dict__, "url": self.url})

    def seen(self, fragment: str) -> list[Seen]:
        return [r for r in self.requests if fragment in r.path]


def _recording(server: Server, app: Starlette):
    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        seen = Seen(scope["method"], scope["path"], scope["query_string"].decode(), headers)
        server.requests.append(seen)
        chunks: list[bytes] = []

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                seen.body = b"".join(chunks)
            return message

        return await app(scope, recording_receive, send)

    return asgi


def _hub_app(hub: Server) -> Starlette:
    def answer(value: Any, status: int = 200) -> Any:
        return value if callable(value) else JSONResponse(value, status_code=status)

    async def whoami(request: Request) -> Any:
        return answer(hub.whoami)

    async def show(request: Request) -> Any:
        return answer(hub.detail)

    async def resolve(request: Request) -> Any:
        name = request.path_params["path"]
        if hub.serve is not None:
            return hub.serve(request, name)
        if name not in hub.blobs:
            return JSONResponse({"error": "entry_not_found", "detail": f"{name} not found"}, status_code=404)
        return Response(hub.blobs[name], media_type="application/octet-stream")

    async def blob(request: Request) -> Any:  # a second same-origin location, for redirects
        return Response(hub.blobs[request.path_params["name"]])

    async def preupload(request: Request) -> Any:
        body = await request.json()
        plan = hub.preupload(body) if callable(hub.preupload) else hub.preupload
        return JSONResponse(plan)

    async def put_blob(request: Request) -> Any:
        await request.body()
        return JSONResponse({"sha256": request.path_params["sha256"]}, status_code=201)

    async def commit(request: Request) -> Any:
        return answer(hub.commit if hub.commit is not None else {"revision": REV, "created": True, "files": []}, 201)

    return Starlette(routes=[
        Route("/api/whoami", whoami),
        Route("/api/adapters/{owner}/{name}", show),
        Route("/api/adapters/{owner}/{name}/resolve/{revision}/{path:path}", resolve),
        Route("/api/adapters/{owner}/{name}/preupload", preupload, methods=["POST"]),
        Route("/api/adapters/{owner}/{name}/commit", commit, methods=["POST"]),
        Route("/api/blobs/{sha256}", put_blob, methods=["PUT"]),
        Route("/blob/{name}", blob),
    ])


def _other_app(other: Server) -> Starlette:
    async def anything(request: Request) -> Any:
        await request.body()
        name = request.path_params["path"]
        if other.serve is not None:
            return other.serve(request, name)
        if request.method in ("PUT", "POST"):
            return Response(status_code=200)
        if name in other.blobs:
            return Response(other.blobs[name])
        return PlainTextResponse("Not Found", status_code=404)

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "PUT", "POST", "HEAD", "DELETE"])])


@contextmanager
def _serve(server: Server, app: Starlette) -> Iterator[Server]:
    with serve_in_thread(_recording(server, app)) as url:
        server.url = url
        yield server


@pytest.fixture(scope="module")
def _servers() -> Iterator[tuple[Server, Server]]:
    hub, other = Server(), Server()
    with _serve(hub, _hub_app(hub)), _serve(other, _other_app(other)):
        yield hub, other


@pytest.fixture
def hub(_servers) -> Server:
    _servers[0].reset()
    return _servers[0]


@pytest.fixture
def other(_servers) -> Server:
    _servers[1].reset()
    return _servers[1]


# --- helpers ---------------------------------------------------------------------


def _detail(files: list[dict[str, Any]], revision: Any = REV) -> dict[str, Any]:
    """The real hub's revision_detail shape, with the given files."""
    return {
        "id": "admin/support", "owner": "admin", "name": "support", "private": False, "base_model": "tiny",
        "method": "LORA", "rank": 2, "max_rank": 2, "size": 0, "target_modules": [], "downloads": 0,
        "updated_at": "2026-01-01T00:00:00", "revision": revision, "message": "", "author": "admin",
        "created_at": "2026-01-01T00:00:00", "meta": {}, "tags": {"main": REV}, "files": files,
    }


def _entry(name: Any, data: bytes) -> dict[str, Any]:
    return {"path": name, "sha256": sha(data), "size": len(data)}


GOOD = {"adapter_config.json": CONFIG, "adapter_model.safetensors": WEIGHTS}


def _serve_good(hub: Server) -> None:
    hub.detail = _detail([_entry(n, d) for n, d in GOOD.items()])
    hub.blobs = dict(GOOD)


@dataclass
class Workspace:
    root: Path
    out: Path
    cache: Path

    def tree(self) -> set[str]:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*")}

    def client(self, hub: Server, token: str | None = TOKEN) -> HubClient:
        return HubClient(hub.url, token, cache_dir=self.cache)

    def assert_clean(self, before: set[str]) -> None:
        """No output directory, no temporary file and nothing else new, except
        the cache's (possibly empty) blob directory and verified blobs."""
        after = self.tree()
        new = after - before
        assert not any(".incomplete" in p for p in after), after
        assert not self.out.exists()
        stray = {p for p in new if not p.startswith("cache")}
        assert not stray, stray
        for p in new:
            path = self.root / p
            if path.is_file():  # only blobs whose name is their verified digest, and their verification stamps
                if path.parent.name == "verified":
                    path = path.parent.parent / "blobs" / path.name
                assert path.parent.name == "blobs" and sha(path.read_bytes()) == path.name, p


@pytest.fixture
def ws(tmp_path) -> Workspace:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "keep.txt").write_text("the user's own file")
    return Workspace(tmp_path, tmp_path / "work" / "out", tmp_path / "cache")


# --- the harness itself works ----------------------------------------------------


def test_an_honest_answer_pulls_and_the_token_goes_to_the_hub(hub, ws):
    _serve_good(hub)
    with ws.client(hub) as client:
        pulled = client.pull("admin/support", ws.out)
    assert pulled.revision == REV
    assert {p.name: p.read_bytes() for p in ws.out.iterdir()} == GOOD
    resolves = hub.seen("/resolve/")
    assert len(resolves) == 2 and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in resolves)
    assert not any(p.endswith(".incomplete") for p in ws.tree())


# --- hostile manifests: refused before anything is written -----------------------

ABSOLUTE = Path("/tmp/peft-hub-hostile-absolute.json")

HOSTILE_NAMES = [
    "../evil.json", "../../evil.json", "../work/keep.txt", str(ABSOLUTE), "..\\evil.json", "sub/evil.json",
    "sub\\evil.json", "C:evil.json", "C:\\evil.json", "c:/evil.json", "\\\\server\\share\\evil.json", "evil:x.json",
    "..", ".", "", ".evil.json", "evil\x00.json", "evil\n.json", "evil\r.json", "evil\x1b[2J.json", "evil\x7f.json",
    "evil\u202e.json", "evil\u2028.json", "evil\u200b.json", "CON.json", "nul.txt", "COM1.md", "evil.json ",
    "evil.json.", "a" * 300 + ".json", "adapter_model.bin", "evil.pt", "evil.exe", "evil", "README",
    123, None, True, ["adapter_config.json"], {"path": "x.json"},
]


@pytest.mark.parametrize("into_cache", [False, True], ids=["output-dir", "cache-snapshot"])
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda v: repr(v)[:30])
def test_hostile_file_names_are_refused_before_anything_is_written(hub, ws, name, into_cache):
    ABSOLUTE.unlink(missing_ok=True)
    hub.detail = _detail([_entry("adapter_config.json", CONFIG), _entry(name, b"{}")])
    hub.blobs = {"adapter_config.json": CONFIG}
    before = ws.tree()
    with ws.client(hub) as client, pytest.raises(InvalidAdapterError) as info:
        client.pull("admin/support", None if into_cache else ws.out)
    assert info.value.code in ("invalid_adapter", "unsafe_format")
    assert "refusing the hub's file list" in str(info.value)
    assert ws.tree() == before  # not even the cache directory
    assert not hub.seen("/resolve/")
    assert not ABSOLUTE.exists()


def test_a_pickle_name_keeps_its_own_error_class(hub, ws):
    hub.detail = _detail([_entry("adapter_model.bin", b"x")])
    with ws.client(hub) as client, pytest.raises(UnsafeFormatError):
        client.pull("admin/support", ws.out)


BAD_VALUES = [
    *(("sha256", v) for v in [
        "../../../../../tmp/x", "A" * 64, "a" * 63, "a" * 65, "a" * 64 + "\n", "g" * 64, "a" * 62 + "/x",
        "a" * 60 + "/../", " " + "a" * 63, 123, None, "", ["a" * 64],
    ]),
    *(("revision", v) for v in [
        "main", "../../../../../../tmp/escape", "/tmp/escape", "A" * 40, "a" * 39, "a" * 41, "a" * 40 + "\n",
        "a" * 40 + "/..", "0" * 64, 40, None, "", {"sha": REV},
    ]),
    *(("size", v) for v in [-1, -(2**70), 1.5, 7.0, "7", True, None, 10**30, 2**63, 8 * 1024**3 + 1, [7]]),
]


@pytest.mark.parametrize("into_cache", [False, True], ids=["output-dir", "cache-snapshot"])
@pytest.mark.parametrize(("field_name", "value"), BAD_VALUES, ids=lambda v: repr(v)[:40])
def test_hostile_digests_revisions_and_sizes_are_refused(hub, ws, field_name, value, into_cache):
    files = [_entry("adapter_config.json", CONFIG), _entry("adapter_model.safetensors", WEIGHTS)]
    if field_name == "revision":
        hub.detail = _detail(files, revision=value)
    else:
        files[1][field_name] = value
        hub.detail = _detail(files)
    hub.blobs = dict(GOOD)
    before = ws.tree()
    with ws.client(hub) as client, pytest.raises(InvalidAdapterError, match="refusing the hub's file list"):
        client.pull("admin/support", None if into_cache else ws.out)
    assert ws.tree() == before
    assert not hub.seen("/resolve/")


@pytest.mark.parametrize("second", ["adapter_config.json", "ADAPTER_CONFIG.json", "Adapter_Config.json"])
def test_a_file_listed_twice_is_refused(hub, ws, second):
    hub.detail = _detail([_entry("adapter_config.json", CONFIG), _entry(second, b'{"other": 1}')])
    hub.blobs = {"adapter_config.json": CONFIG, second: b'{"other": 1}'}
    before = ws.tree()
    with ws.client(hub) as client, pytest.raises(InvalidAdapterError, match="listed twice"):
        client.pull("admin/support", ws.out)
    assert ws.tree() == before


def _deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("answer", [
    [], "a string", 7, None, {"revision": REV}, {"revision": REV, "files": "adapter_config.json"},
    {"revision": REV, "files": {"adapter_config.json": {}}}, {"revision": REV, "files": ["adapter_config.json"]},
    {"revision": REV, "files": [_entry(f"f{i}.json", b"{}") for i in range(MAX_REPO_FILES + 1)]},
], ids=lambda v: repr(v)[:40])
def test_malformed_revision_answers_are_clear_errors(hub, ws, answer):
    hub.detail = answer
    before = ws.tree()
    with ws.client(hub) as client, pytest.raises(InvalidAdapterError):
        client.pull("admin/support", ws.out)
    assert ws.tree() == before


@pytest.mark.parametrize("body", [
    PlainTextResponse("<html>not json</html>"), Response(b"\xff\xfe\x00garbage", media_type="application/json"),
    Response(_deep(100_000), media_type="application/json"), Response(b"", status_code=200),
    RedirectResponse("http://127.0.0.1:1/elsewhere", status_code=302),
], ids=["text", "bad-utf8", "deep-nesting", "empty", "redirect"])
def test_a_body_that_is_not_a_revision_is_a_peft_hub_error(hub, ws, body):
    hub.detail = body  # a ready Response, sent as it is
    before = ws.tree()
    with ws.client(hub) as client, pytest.raises(PeftHubError):
        client.pull("admin/support", ws.out)
    assert ws.tree() == before


@pytest.mark.parametrize("answer", [
    *({"name": n} for n in ["../../escape", "admin\n", "", None, 7, "a/b", "API", ["admin"]]), ["admin"], None, 7,
], ids=lambda v: repr(v)[:30])
def test_a_hostile_whoami_name_never_becomes_a_path(hub, ws, answer):
    _serve_good(hub)
    hub.whoami = answer
    before = ws.tree()
    with ws.client(hub) as client, pytest.raises(InvalidNameError):
        client.pull("support")
    assert ws.tree() == before


# --- the token stays on the hub's origin -------------------------------------------


def test_a_redirect_to_another_origin_carries_no_token(hub, other, ws):
    hub.detail = _detail([_entry(n, d) for n, d in GOOD.items()])
    other.blobs = {f"bucket/{n}": d for n, d in GOOD.items()}
    hub.serve = lambda request, name: RedirectResponse(f"{other.url}/bucket/{name}?{SIGNATURE}", status_code=302)
    with ws.client(hub) as client:
        client.pull("admin/support", ws.out)
    assert {p.name: p.read_bytes() for p in ws.out.iterdir()} == GOOD
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hub.seen("/resolve/"))
    fetched = other.seen("/bucket/")
    assert len(fetched) == 2
    assert all("authorization" not in r.headers and "cookie" not in r.headers for r in fetched)


def test_no_token_after_leaving_the_origin_even_on_the_way_back(hub, other, ws):
    _serve_good(hub)
    hub.serve = lambda request, name: RedirectResponse(f"{other.url}/bounce/{name}", status_code=307)
    other.serve = lambda request, name: RedirectResponse(f"{hub.url}/blob/{name.split('/')[-1]}", status_code=302)
    with ws.client(hub) as client:
        client.pull("admin/support", ws.out)
    assert {p.name: p.read_bytes() for p in ws.out.iterdir()} == GOOD
    back = hub.seen("/blob/")
    assert len(back) == 2 and all("authorization" not in r.headers for r in back)


def test_a_redirect_within_the_hub_keeps_the_token(hub, ws):
    _serve_good(hub)
    hub.serve = lambda request, name: RedirectResponse(f"/blob/{name}", status_code=302)
    with ws.client(hub) as client:
        client.pull("admin/support", ws.out)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.seen("/blob/"))


def test_httpx_itself_drops_the_token_on_a_cross_origin_redirect(hub, other):
    """What httpx does with ``follow_redirects=True`` (the client follows by
    hand, but this pins the library's behaviour the issue relies on)."""
    hub.serve = lambda request, name: RedirectResponse(f"{other.url}/bucket/{name}", status_code=302)
    other.blobs = {"bucket/x.json": b"{}"}
    with build_session(hub.url, TOKEN) as session:
        response = session.get("/api/adapters/admin/support/resolve/main/x.json", follow_redirects=True)
    assert response.content == b"{}"
    assert "authorization" not in other.seen("/bucket/")[0].headers
    assert hub.seen("/resolve/")[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_redirect_loops_and_non_http_redirects_are_refused(hub, ws):
    _serve_good(hub)
    hub.serve = lambda request, name: RedirectResponse(str(request.url), status_code=302)
    before = ws.tree()
    with ws.client(hub) as client, pytest.raises(HubUnreachableError, match="redirects"):
        client.pull("admin/support", ws.out)
    ws.assert_clean(before)
    hub.serve = lambda request, name: RedirectResponse("file:///etc/passwd", status_code=302)
    with ws.client(hub) as client, pytest.raises(InvalidInputError, match="not plain http"):
        client.pull("admin/support", ws.out)
    ws.assert_clean(before)


@pytest.mark.parametrize(("url", "attached"), [
    ("{hub}/api/blobs/x", True),
    ("/api/blobs/x", True),
    ("http://127.0.0.1:{hub_port}/x", True),
    ("{other}/x", False),
    ("//127.0.0.1:{other_port}/x", False),
    ("https://127.0.0.1:{hub_port}/x", False),
    ("http://localhost:{hub_port}/x", False),
    ("http://127.0.0.1.evil.example:{hub_port}/x", False),
])
def test_the_token_is_attached_by_origin_alone(url, attached):
    hub, other = "http://127.0.0.1:8123", "http://127.0.0.1:9123"
    url = url.format(hub=hub, other=other, hub_port=8123, other_port=9123)
    with build_session(hub, TOKEN) as session:
        request = build_request(session, "PUT", absolute_url(session, url))
    assert ("Authorization" in request.headers) is attached


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://127.0.0.1/x", "http://user:pw@127.0.0.1:1/x", "javascript:alert(1)", "", 7, None,
    "http://[::1/x",
])
def test_non_http_upload_urls_are_refused(url):
    with build_session("http://127.0.0.1:8123", TOKEN) as session, pytest.raises(InvalidInputError):
        absolute_url(session, url)


# --- push against a hostile preupload answer ------------------------------------------


def lora_dir(path: Path, width: int = 4) -> Path:
    """A rank-2 LoRA of zeros on one ``width``-wide q_proj, in a new directory ``path``."""
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "base_model_name_or_path": "tiny"}
    ))
    (path / "adapter_model.safetensors").write_bytes(zero_safetensors({
        "base_model.model.layers.0.q_proj.lora_A.weight": [2, width],
        "base_model.model.layers.0.q_proj.lora_B.weight": [width, 2],
    }))
    return path


@pytest.fixture
def adapter(tmp_path) -> Path:
    return lora_dir(tmp_path / "support")


def _plan(adapter: Path, url: Callable[[str], str], **extra: Any) -> Callable[[dict], dict]:
    def plan(body: dict) -> dict:
        return {"uploads": [
            {"path": f["path"], "sha256": f["sha256"], "url": url(f["sha256"]), "method": "PUT", "headers": {}, **extra}
            for f in body["files"]
        ]}
    return plan


def test_auth_true_for_another_origin_sends_no_token(hub, other, adapter):
    hub.preupload = _plan(adapter, lambda s: f"{other.url}/steal/{s}", auth=True)
    with HubClient(hub.url, TOKEN) as client:
        result = client.push(adapter, name="admin/support")
    assert result.revision == REV and result.files_uploaded == 2
    puts = other.seen("/steal/")
    assert len(puts) == 2
    assert all("authorization" not in r.headers and "cookie" not in r.headers for r in puts)
    assert {r.body for r in puts} == {p.read_bytes() for p in adapter.iterdir()}
    assert hub.seen("/preupload")[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_auth_false_on_the_hub_itself_still_authenticates(hub, adapter):
    hub.preupload = _plan(adapter, lambda s: f"{hub.url}/api/blobs/{s}", auth=False)
    with HubClient(hub.url, TOKEN) as client:
        client.push(adapter, name="admin/support")
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hub.seen("/api/blobs/"))


def test_headers_in_the_plan_cannot_add_credentials_or_framing(hub, other, adapter):
    headers = {"Authorization": "Bearer planted", "Cookie": "a=b", "Host": "evil.example", "Content-Length": "1",
               "Transfer-Encoding": "chunked", "x-amz-checksum-sha256": "kept"}
    hub.preupload = _plan(adapter, lambda s: f"{other.url}/put/{s}", headers=headers, auth=True)
    with HubClient(hub.url, TOKEN) as client:
        client.push(adapter, name="admin/support")
    for seen in other.seen("/put/"):
        assert "authorization" not in seen.headers and "cookie" not in seen.headers
        assert seen.headers["host"] == other.url.removeprefix("http://")
        assert seen.headers["x-amz-checksum-sha256"] == "kept"
        assert seen.headers["content-length"] == str(len(seen.body))


def test_the_uploaded_file_is_chosen_by_digest_never_by_the_hubs_path(hub, other, adapter, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the hub")

    def plan(body: dict) -> dict:
        return {"uploads": [{"path": f"../{secret.name}", "sha256": f["sha256"],
                             "url": f"{other.url}/put/{f['sha256']}", "method": "PUT", "headers": {}, "auth": False}
                            for f in body["files"]]}

    hub.preupload = plan
    with HubClient(hub.url, TOKEN) as client:
        client.push(adapter, name="admin/support")
    bodies = {r.body for r in other.seen("/put/")}
    assert bodies == {p.read_bytes() for p in adapter.iterdir()}
    assert secret.read_bytes() not in bodies


@pytest.mark.parametrize("plan", [
    {"uploads": [{"path": "x", "sha256": "f" * 64, "url": "/api/blobs/x", "method": "PUT"}]},
    {"uploads": [{"sha256": None, "url": "/api/blobs/x"}]},
    {"uploads": [{"sha256": ["{sha}"], "url": "/api/blobs/x"}]},
    {"uploads": [{"sha256": {"{sha}": 1}, "url": "/api/blobs/x"}]},
    {"uploads": [{"sha256": "{sha}", "url": "file:///etc/passwd", "method": "PUT"}]},
    {"uploads": [{"sha256": "{sha}", "url": "/api/blobs/x", "method": "DELETE"}]},
    {"uploads": [{"sha256": "{sha}", "url": "/api/blobs/x", "headers": ["x"]}]},
    {"uploads": [{"sha256": "{sha}", "url": "/api/blobs/x", "headers": {"a": 1}}]},
    {"uploads": "everything"}, {"uploads": ["x"]}, {}, [], None,
], ids=lambda v: repr(v)[:50])
def test_a_malformed_upload_plan_uploads_nothing(hub, other, adapter, plan):
    config_sha = sha((adapter / "adapter_config.json").read_bytes())
    hub.preupload = json.loads(json.dumps(plan).replace("{sha}", config_sha))
    with HubClient(hub.url, TOKEN) as client, pytest.raises(InvalidInputError):
        client.push(adapter, name="admin/support")
    assert not hub.seen("/api/blobs/") and not other.requests and not hub.seen("/commit")


@pytest.mark.parametrize("answer", [{"revision": "../../x", "created": True}, ["x"], {"created": True}])
def test_a_hostile_commit_answer_is_refused(hub, adapter, answer):
    hub.preupload = {"uploads": []}
    hub.commit = answer
    with HubClient(hub.url, TOKEN) as client, pytest.raises(InvalidInputError):
        client.push(adapter, name="admin/support")


def test_an_upload_answered_with_a_redirect_is_not_followed(hub, other, adapter):
    hub.preupload = _plan(adapter, lambda s: f"{other.url}/put/{s}")
    other.serve = lambda request, name: (
        RedirectResponse(f"{other.url}/elsewhere/{name}", status_code=307) if name.startswith("put/") else Response()
    )
    with HubClient(hub.url, TOKEN) as client, pytest.raises(StorageError, match="redirect"):
        client.push(adapter, name="admin/support")
    assert other.seen("/put/") and not other.seen("/elsewhere/") and not hub.seen("/commit")


def test_an_object_store_refusing_an_upload_is_a_clean_error(hub, other, adapter):
    hub.preupload = _plan(adapter, lambda s: f"{other.url}/put/{s}?{SIGNATURE}")
    other.serve = lambda request, name: Response(
        b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        status_code=403, media_type="application/xml")
    with HubClient(hub.url, TOKEN) as client, pytest.raises(PermissionDeniedError) as info:
        client.push(adapter, name="admin/support")
    assert "Request has expired" in str(info.value)
    assert "d3adb33f" not in "".join(traceback.format_exception(info.value))


# --- errors and broken bodies while downloading ---------------------------------------


def _fail_second(hub: Server, response: Callable[[], Any]) -> None:
    """The config downloads fine; the weights get ``response``."""
    _serve_good(hub)

    def serve(request: Request, name: str) -> Any:
        return response() if name == "adapter_model.safetensors" else Response(GOOD[name])

    hub.serve = serve


S3_EXPIRED = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>"
              b"<Message>Request has expired</Message><RequestId>1</RequestId></Error>")


@pytest.mark.parametrize(("response", "error", "message"), [
    (lambda: JSONResponse({"error": "storage_error", "detail": "disk on fire"}, status_code=500), StorageError,
     "disk on fire"),
    (lambda: JSONResponse({"error": "entry_not_found", "detail": "gone"}, status_code=404), EntryNotFoundError, "gone"),
    (lambda: PlainTextResponse("Internal Server Error", status_code=500), PeftHubError, "HTTP 500"),
    (lambda: PlainTextResponse("Service Unavailable", status_code=503), HubUnreachableError, "HTTP 503"),
    (lambda: Response(S3_EXPIRED, status_code=403, media_type="application/xml"), PermissionDeniedError,
     "AccessDenied: Request has expired"),
    (lambda: PlainTextResponse("nope", status_code=418), PeftHubError, "HTTP 418"),
    (lambda: JSONResponse({"error": ["not", "a", "code"], "detail": {"deep": [1]}}, status_code=422),
     InvalidInputError, "deep"),
    (lambda: Response(_deep(50_000), status_code=500, media_type="application/json"), PeftHubError, "HTTP 500"),
], ids=["json-500", "json-404", "text-500", "text-503", "s3-expired", "teapot", "odd-json", "deep-json"])
def test_an_http_error_while_streaming_is_the_right_class(hub, ws, response, error, message):
    _fail_second(hub, response)
    before = ws.tree()
    with ws.client(hub) as client, pytest.raises(error, match=message) as info:
        client.pull("admin/support", ws.out)
    assert type(info.value) is error or error is PeftHubError
    ws.assert_clean(before)


def test_an_expired_presigned_url_says_so_without_its_signature(hub, other, ws):
    _serve_good(hub)
    hub.serve = lambda request, name: RedirectResponse(f"{other.url}/bucket/{name}?{SIGNATURE}", status_code=302)
    other.serve = lambda request, name: Response(S3_EXPIRED, status_code=403, media_type="application/xml")
    before = ws.tree()
    with ws.client(hub) as client, pytest.raises(PermissionDeniedError, match="Request has expired") as info:
        client.pull("admin/support", ws.out)
    shown = "".join(traceback.format_exception(info.value))
    assert "d3adb33f" not in shown and "X-Amz-Signature" not in shown
    assert f"{other.url}/bucket/" in str(info.value)  # where it failed, minus the query
    ws.assert_clean(before)


def test_hostile_error_text_cannot_drive_the_terminal(hub, ws):
    detail = "\x1b[2J\x1b]0;pwned\x07\rfake prompt\u202e" + "x" * 50_000
    _fail_second(hub, lambda: JSONResponse({"error": "storage_error", "detail": detail}, status_code=500))
    with ws.client(hub) as client, pytest.raises(StorageError) as info:
        client.pull("admin/support", ws.out)
    text = str(info.value)
    assert len(text) < 3000
    assert not any(c in text for c in "\x1b\x07\r\u202e")


class Cut:
    """Announce ``declared`` bytes, send ``data``, then drop the connection."""

    def __init__(self, data: bytes, declared: int) -> None:
        self.data, self.declared = data, declared

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(self.declared).encode())]})
        await send({"type": "http.response.body", "body": self.data, "more_body": True})
        raise ConnectionResetError("dropped on purpose")


def _chunked(data: bytes) -> StreamingResponse:
    return StreamingResponse(iter([data[:10], data[10:]]), media_type="application/octet-stream")


@pytest.mark.parametrize(("response", "error"), [
    (lambda: Cut(WEIGHTS[:20], len(WEIGHTS)), HubUnreachableError),
    (lambda: Cut(b"", len(WEIGHTS)), HubUnreachableError),
    (lambda: Response(WEIGHTS + b"more"), ChecksumMismatchError),
    (lambda: _chunked(WEIGHTS + b"more" * 1000), ChecksumMismatchError),
    (lambda: Response(WEIGHTS[:-1]), ChecksumMismatchError),
    (lambda: _chunked(WEIGHTS[:-1]), ChecksumMismatchError),
    (lambda: Response(b"X" * len(WEIGHTS)), ChecksumMismatchError),
    (lambda: _chunked(b""), ChecksumMismatchError),
    (lambda: Response(gzip.compress(WEIGHTS), headers={"Content-Encoding": "gzip"}), ChecksumMismatchError),
], ids=["cut", "cut-at-once", "longer", "longer-chunked", "shorter", "shorter-chunked", "wrong-sha", "empty",
        "gzip"])
def test_a_broken_body_is_a_clear_error_and_leaves_nothing(hub, ws, response, error):
    _fail_second(hub, response)
    (ws.root / "work" / "out").mkdir()
    (ws.out / "old.json").write_text("{}")  # a file of the user's, in a directory pulled into on purpose
    before = ws.tree()
    with ws.client(hub) as client, pytest.raises(error):
        client.pull("admin/support", ws.out, into_existing=True)
    assert sorted(p.name for p in ws.out.iterdir()) == ["old.json"]
    after = ws.tree()
    assert not any(".incomplete" in p for p in after)
    assert all(p.startswith("cache") for p in after - before)
    assert not (ws.cache / "blobs" / sha(WEIGHTS)).exists()


def test_a_pull_after_a_failed_one_succeeds(hub, ws):
    _fail_second(hub, lambda: Cut(WEIGHTS[:20], len(WEIGHTS)))
    with ws.client(hub) as client:
        with pytest.raises(HubUnreachableError):
            client.pull("admin/support", ws.out)
        hub.serve = None
        pulled = client.pull("admin/support", ws.out)
    assert pulled.bytes_downloaded == len(WEIGHTS)  # the verified config came from the cache
    assert {p.name: p.read_bytes() for p in ws.out.iterdir()} == GOOD


# --- error mapping, pure (MockTransport) --------------------------------------------------


def _streamed(handler: Callable[[httpx.Request], httpx.Response]) -> PeftHubError:
    """The error ``raise_for_status`` makes of a streamed, unread response (the ResponseNotRead case)."""
    session = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://hub.test")
    with session, session.stream("GET", "/x?X-Amz-Signature=s3cret") as response, \
            pytest.raises(PeftHubError) as info:
        raise_for_status(response)
    return info.value


def test_a_streamed_error_response_is_read_before_mapping():
    exc = _streamed(lambda r: httpx.Response(500, json={"error": "storage_error", "detail": "disk on fire"}))
    assert type(exc) is StorageError and str(exc) == "disk on fire"
    exc = _streamed(lambda r: httpx.Response(403, content=S3_EXPIRED))
    assert type(exc) is PermissionDeniedError and "Request has expired" in str(exc) and "s3cret" not in str(exc)
    exc = _streamed(lambda r: httpx.Response(502, text="Bad Gateway"))
    assert type(exc) is StorageError and str(exc) == "HTTP 502 from http://hub.test/x"


def test_an_endless_error_body_is_read_only_up_to_the_cap():
    produced = []

    def endless() -> Iterator[bytes]:
        while True:
            produced.append(1)
            yield b"x" * 65536

    exc = _streamed(lambda r: httpx.Response(500, content=endless()))
    assert type(exc) is PeftHubError and len(produced) < 5


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"error": 7, "detail": "x"}, 404, NotFoundError),
    ({"error": {"nested": 1}, "detail": "x"}, 409, PeftHubError),
    ({"error": "not_a_known_code", "detail": "x"}, 401, PeftHubError),
    ({"detail": None}, 413, PeftHubError),
    ([1, 2], 429, PeftHubError),
], ids=["int-code", "dict-code", "unknown-code", "null-detail", "list-body"])
def test_odd_error_bodies_map_by_status(body, status, error):
    exc = _streamed(lambda r: httpx.Response(status, json=body))
    assert isinstance(exc, error) and exc.status_code == status


def test_a_non_json_success_body_is_a_peft_hub_error():
    session = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>")),
                           base_url="http://hub.test")
    with session, pytest.raises(PeftHubError, match="not JSON") as info:
        json_body(session.get("/api/adapters/a/b?sig=s3cret"))
    assert "s3cret" not in str(info.value)


def test_a_pinned_pull_answered_with_another_revision_is_refused(hub, ws):
    """A revision id names fixed bytes: a hub that answers ``@<sha>`` with
    another revision's files (a stale cache, a hostile hub) is refused
    before anything is written; a tag may of course move."""
    _serve_good(hub)
    pinned = "f" * 40
    with ws.client(hub) as client:
        with pytest.raises(RevisionNotFoundError, match="answered revision"):
            client.pull(f"admin/support@{pinned}", ws.out)
        assert not ws.out.exists()
        assert client.pull("admin/support@prod", ws.out).revision == REV
