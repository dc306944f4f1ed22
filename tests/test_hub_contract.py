"""The hub's contract: its import graph, the error every failure becomes,
one visibility rule, short transactions, and gc as a paged, resumable job."""

from __future__ import annotations

import ast
import base64
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "peft_hub" / "hub"


# --- the import graph ----------------------------------------------------------


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "peft_hub").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that ``name`` imports, deferred imports included
    (they hide cycles, they do not remove them)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            out.update(subs)
            if len(subs) < len(node.names):  # names from the module itself
                out.add(base)
    return {m for m in out if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_hub_has_no_import_cycle():
    modules = _modules()
    graph = {n: _imports(n, p, modules) for n, p in modules.items() if n.startswith("peft_hub.hub")}
    graph = {n: {m for m in deps if m in graph} for n, deps in graph.items()}
    assert _cycles(graph) == []
    # The cycle the contract removed: the HF routes rendered errors through app.py.
    for name in ("peft_hub.hub.hf.read", "peft_hub.hub.hf.write"):
        assert "peft_hub.hub.app" not in graph[name]


def test_contract_imports_neither_fastapi_nor_sqlmodel():
    code = ("import sys, peft_hub.contract; "
            "print(sorted(m for m in ('fastapi', 'sqlmodel', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


_IMPORT_EACH = """
import importlib, os, sys

names = sys.argv[1:]


def ours(module):
    return module == "peft_hub" or module.startswith("peft_hub.")


# A first child imports the whole hub and names the third-party modules that
# loaded; this process loads those (none of ours), so each child below forks
# with them already there and spends its time on our modules alone.
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:
            pass  # its own child below reports it
    with os.fdopen(w, "w") as out:
        out.write("\\n".join(m for m in list(sys.modules) if not ours(m) and not m.startswith("__")))
    os._exit(0)
os.close(w)
with os.fdopen(r) as found:
    third_party = found.read().split()
os.waitpid(pid, 0)
for module in third_party:
    try:
        importlib.import_module(module)
    except Exception:
        pass  # an alias or a platform-only module: a child imports what it needs itself
loaded = sorted(m for m in sys.modules if ours(m))
assert not loaded, f"a third-party module imported ours: {loaded}"

# One child per module, as many at a time as there are cores.
jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
running, failed = {}, []


def reap():
    done, status = os.wait()
    name = running.pop(done)
    if status != 0:
        failed.append(name)


for name in names:
    if len(running) >= jobs:
        reap()
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            print(f"{name}: {type(exc).__name__}: {exc}", flush=True)
            os._exit(1)
        os._exit(0)
    running[pid] = name
while running:
    reap()
print("FAILED", sorted(failed))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.integration  # a subprocess or a model trained: slow
def test_each_hub_module_imports_alone():
    """Each module, first of ours in a fresh process (forked before any of
    ours is imported): no module relies on another having been imported first."""
    names = sorted(n for n in _modules() if n.startswith("peft_hub.hub") and ".alembic" not in n
                   and ".migrations.versions" not in n)
    out = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *names], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("FAILED []"), out.stdout[-3000:]


# --- errors --------------------------------------------------------------------


def test_an_unexpected_exception_is_a_logged_500_in_the_error_shape(tmp_path, caplog):
    from fastapi.testclient import TestClient

    from peft_hub.hub import Settings, create_app

    settings = Settings(db_url=f"sqlite:///{tmp_path / 'hub.db'}", storage=str(tmp_path / "blobs"),
                        admin_token="phub_" + secrets.token_hex(6) + secrets.token_urlsafe(32),
                        token_file=tmp_path / "token")
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    app.add_api_route("/boom", boom, methods=["GET", "HEAD"])
    app.router.routes.insert(0, app.router.routes.pop())  # before the web pages' catch-all paths

    caplog.set_level(logging.ERROR, logger="peft_hub.hub")
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
        head = client.head("/boom")
    assert response.status_code == 500 and head.status_code == 500
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == "internal_error"
    assert "secret internals" not in response.text  # the client never sees the exception itself
    assert response.headers["x-error-code"] == "internal_error"
    incident = body["detail"].split("incident ")[1].split(",")[0]
    logged = [r for r in caplog.records if incident in r.getMessage()]
    assert logged and logged[0].exc_info and "secret internals" in str(logged[0].exc_info[1])


def test_errors_carry_headers_and_extra_fields():
    from starlette.requests import Request

    from peft_hub.errors import ConflictError, EntryNotFoundError
    from peft_hub.hub.errors_http import render_error

    get = Request({"type": "http", "method": "GET", "headers": [], "path": "/", "query_string": b""})
    missing = EntryNotFoundError("gone").annotate(headers={"X-Repo-Commit": "a" * 40})
    response = render_error(get, missing)
    assert response.status_code == 404 and response.headers["x-repo-commit"] == "a" * 40
    assert response.headers["x-error-code"] == "EntryNotFound"
    conflict = ConflictError("exists").annotate(extra={"url": "http://h/x/y", "error": "spoofed"})
    body = json.loads(render_error(get, conflict).body)
    assert body == {"url": "http://h/x/y", "error": "conflict", "detail": "exists"}


# --- one visibility rule ---------------------------------------------------------


def test_can_read_and_visible_clause_agree_on_every_case():
    """auth.can_read (Python) and crud.visible_clause (SQL) decide the same,
    over every kind of caller and adapter."""
    from itertools import product

    from sqlmodel import Session, SQLModel, create_engine, select

    from peft_hub.hub import crud
    from peft_hub.hub.auth import Principal, can_read
    from peft_hub.hub.models import Adapter, Namespace, name_key

    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    owners = ["alice", "Bob", "lab"]  # names keep their case; limits and orgs match in any case
    with Session(engine) as session:
        for owner, private in product(owners, (False, True)):
            name = f"{'p' if private else 'o'}-{owner}"
            session.add(Adapter(owner=owner, name=name, name_key=name_key(owner, name), private=private))
        session.commit()
        adapters = session.exec(select(Adapter)).all()
        callers: list[Principal | None] = [None]
        for is_admin, scope, orgs, limits in product(
            (False, True), ("read", "write", "admin"), (set(), {"Lab"}), (None, [], ["bob"], ["ALICE", "lab"])
        ):
            user = Namespace(name="alice", is_admin=is_admin)
            callers.append(Principal(user=user, scope=scope, namespaces=limits, orgs=orgs))
        for caller in callers:
            by_sql = {a.id for a in session.exec(select(Adapter).where(crud.visible_clause(caller))).all()}
            by_python = {a.id for a in adapters if can_read(caller, a)}
            assert by_sql == by_python, caller
    assert len(callers) == 49


# --- short transactions ------------------------------------------------------------


def _small_pool_settings(tmp_path):
    from peft_hub.hub import Settings

    return Settings(db_url=f"sqlite:///{tmp_path / 'hub.db'}", storage=str(tmp_path / "blobs"),
                    admin_token="phub_" + secrets.token_hex(6) + secrets.token_urlsafe(32),
                    token_file=tmp_path / "token", db_pool_size=2, db_max_overflow=0, db_pool_timeout=5,
                    storage_concurrency=32, storage_queue_timeout=60)


def test_forty_hf_commits_held_open_mid_body_share_a_pool_of_two(llama_adapter, tmp_path):
    """No request holds a database connection while its body streams: 40
    HF commits whose bodies stall longer than the pool timeout all succeed
    on a pool of 2 connections (holding one from authentication on, as
    before, 38 of them would wait for a connection and fail with 503)."""
    from services import live_hub

    commits, hold = 40, 7.0
    files = {p.name: p.read_bytes() for p in sorted(Path(llama_adapter).iterdir()) if p.is_file()}
    with live_hub(_small_pool_settings(tmp_path)) as hub:
        auth = {"Authorization": f"Bearer {hub.admin_token}"}
        with httpx.Client(base_url=hub.url, headers=auth, timeout=60) as http:
            for i in range(commits):
                assert http.post("/api/repos/create", json={"name": f"r{i}"}).status_code == 200
        started = threading.Barrier(commits + 1)
        results: dict[int, httpx.Response | BaseException] = {}

        def body(i: int):
            yield json.dumps({"key": "header", "value": {"summary": f"commit {i}"}}).encode() + b"\n"
            started.wait(60)
            time.sleep(hold)  # longer than the pool timeout: the body stalls mid-way
            for name, data in {**files, "README.md": f"# r{i}\n".encode()}.items():
                value = {"path": name, "content": base64.b64encode(data).decode(), "encoding": "base64"}
                yield json.dumps({"key": "file", "value": value}).encode() + b"\n"

        def push(i: int) -> None:
            try:
                results[i] = httpx.post(f"{hub.url}/api/models/admin/r{i}/commit/main", content=body(i),
                                        headers={**auth, "Content-Type": "application/x-ndjson"}, timeout=120)
            except BaseException as exc:  # reported below
                results[i] = exc

        threads = [threading.Thread(target=push, args=(i,)) for i in range(commits)]
        for t in threads:
            t.start()
        started.wait(60)
        for t in threads:
            t.join(180)
        failed = {i: (r if isinstance(r, BaseException) else f"{r.status_code} {r.text[:200]}")
                  for i, r in results.items() if isinstance(r, BaseException) or r.status_code != 200}
        assert len(results) == commits and not failed, failed
        with httpx.Client(base_url=hub.url, headers=auth, timeout=60) as http:
            assert http.get("/api/models/admin/r39").json()["sha"] == results[39].json()["commitOid"]


# --- gc: paged, bounded, resumable ---------------------------------------------------


def _ndjson(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text[:300]
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_local_store_lists_in_order_from_a_cursor(tmp_path):
    from peft_hub.hub.storage.local import LocalBlobStore

    store = LocalBlobStore(tmp_path / "s")
    blobs = [os.urandom(16 + i) for i in range(12)]
    shas = sorted(__import__("hashlib").sha256(b).hexdigest() for b in blobs)
    for data in blobs:
        store.put(__import__("hashlib").sha256(data).hexdigest(), len(data), [data])
    assert [b.sha256 for b in store.iterate()] == shas
    assert [b.sha256 for b in store.iterate(start_after=shas[4])] == shas[5:]
    assert [b.sha256 for b in store.iterate(start_after=shas[-1])] == []
    assert store.local_path(shas[0]).is_file()


def test_gc_runs_in_bounded_resumable_pages(hub, llama_adapter, tmp_path):
    import hashlib

    from peft_hub.client import HubClient
    from peft_hub.hub import gc

    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    client.push(llama_adapter, name="admin/keep")
    store = hub.app.state.store
    kept = {b.sha256 for b in store.iterate()}
    orphans = set()
    for i in range(7):
        data = f"orphan {i} {secrets.token_hex(8)}".encode()
        sha = hashlib.sha256(data).hexdigest()
        store.put(sha, len(data), [data])
        orphans.add(sha)
    total = len(kept) + len(orphans)

    auth = {"Authorization": f"Bearer {hub.admin_token}"}
    with httpx.Client(base_url=hub.url, headers=auth, timeout=60) as http:
        # A dry run of the whole store reports every orphan and deletes none.
        dry = http.post("/api/admin/gc", json={"grace_seconds": 0, "dry_run": True}).json()
        assert set(dry["deleted"]) == orphans and dry["complete"] and dry["cursor"] is None
        assert {b.sha256 for b in store.iterate()} == kept | orphans
        # Bounded runs of 3 objects, each resumed where the last stopped.
        cursor, deleted, runs = None, [], 0
        while True:
            events = _ndjson(http.post("/api/admin/gc/stream", json={
                "grace_seconds": 0, "max_objects": 3, "start_after": cursor}))
            assert events[0]["event"] == "start" and events[0]["start_after"] == cursor
            assert events[-1]["event"] == "done" and all(e["event"] == "progress" for e in events[1:-1])
            report = events[-1]["report"]
            assert report["objects_listed"] <= 3
            deleted += report["deleted"]
            runs += 1
            if report["complete"]:
                break
            assert report["cursor"] == events[-2]["cursor"] and report["cursor"] > (cursor or "")
            cursor = report["cursor"]
        assert runs == total // 3 + 1 and sorted(deleted) == sorted(orphans)
        assert {b.sha256 for b in store.iterate()} == kept
        assert "sha" in http.get("/api/models/admin/keep").json()
    assert client.pull("admin/keep", tmp_path / "pulled").path.is_dir()

    # One run over small pages reports progress after each page.
    events = list(gc.run(hub.app.state.engine, store, grace_seconds=0, dry_run=True, stale_upload_seconds=3600,
                         actor="admin", page=2))
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) == len(kept) // 2 + 1 and progress[-1]["objects_listed"] == len(kept)
    assert events[-1]["report"]["deleted"] == []


def test_gc_stream_is_admin_only(embedded_hub):
    r = httpx.post(f"{embedded_hub.url}/api/admin/gc/stream", json={"grace_seconds": 0})
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    bad = httpx.post(f"{embedded_hub.url}/api/admin/gc/stream", json={"start_after": "../x"},
                     headers={"Authorization": f"Bearer {embedded_hub.admin_token}"})
    assert bad.status_code == 422


def test_native_answers_are_the_contract_models(embedded_hub, llama_adapter, tmp_path):
    from peft_hub.client import HubClient
    from peft_hub.contract import AdapterSummary, RevisionDetail, SearchPage

    client = HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache")
    client.push(llama_adapter, name="admin/shape")
    auth = {"Authorization": f"Bearer {embedded_hub.admin_token}"}
    with httpx.Client(base_url=embedded_hub.url, headers=auth, timeout=60) as http:
        detail = http.get("/api/adapters/admin/shape").json()
        page = http.get("/api/adapters", params={"q": "shape"}).json()
    assert list(detail) == list(RevisionDetail.model_fields)
    assert RevisionDetail.model_validate(detail).model_dump() == detail
    assert SearchPage.model_validate(page).model_dump() == page
    assert list(page["items"][0]) == list(AdapterSummary.model_fields)
