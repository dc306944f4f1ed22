"""The hot read paths: how many statements they run, their ETags and 304s,
and the caches behind them (never deciding who may read, seen through at
once by a write in the same process, and within the TTL by another one)."""

from __future__ import annotations

import secrets
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from raw_adapters import tiny_lora_dir
from services import live_hub
from sqlalchemy import event

from peft_hub.client import HubClient
from peft_hub.hub import cache

#: Statements a cold hot read may run: the token (with user and orgs), the repo with its tags, the files.
COLD_BOUND = 3


def _api(url: str, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=60)


@contextmanager
def counting(engine):
    """The SQL statements ``engine`` runs inside the block (but the webhook worker's own polls)."""
    seen: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany) -> None:
        if not statement.lstrip().startswith("SELECT webhookdelivery."):  # the delivery worker's poll, not a request's
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def _push(hub, tmp_path, name: str, note: str, private: bool | None = None) -> str:
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "client-cache")
    try:
        return client.push(tiny_lora_dir(tmp_path / secrets.token_hex(4) / "lora", note), name=name,
                           private=private).revision
    finally:
        client.close()


def _hot_reads(repo: str, sha: str) -> list[tuple[str, str, dict]]:
    return [
        ("GET", f"/api/adapters/{repo}", {}),
        ("GET", f"/api/adapters/{repo}", {"params": {"revision": sha}}),
        ("GET", f"/api/models/{repo}", {}),
        ("GET", f"/api/models/{repo}/revision/{sha}", {}),
        ("GET", f"/api/models/{repo}/tree/main", {}),
        ("GET", f"/api/models/{repo}/refs", {}),
        ("POST", f"/api/models/{repo}/paths-info/{sha}", {"data": {"paths": ["README.md", "adapter_config.json"]}}),
        ("HEAD", f"/{repo}/resolve/main/README.md", {}),
        ("GET", f"/{repo}/resolve/{sha}/adapter_model.safetensors", {"follow_redirects": False}),
        ("GET", f"/api/adapters/{repo}/resolve/main/README.md", {"follow_redirects": False}),
    ]


def test_hot_reads_run_few_statements_then_none_and_answer_as_without_the_cache(hub, tmp_path):
    sha = _push(hub, tmp_path, "admin/hot", "hot")
    engine = hub.app.state.engine
    with _api(hub.url, hub.admin_token) as api:
        for method, path, extra in _hot_reads("admin/hot", sha):
            cache.of(engine).bump({"auth", "repo"})  # cold: nothing fresh kept
            with counting(engine) as cold:
                first = api.request(method, path, **extra)
            with counting(engine) as warm:
                second = api.request(method, path, **extra)
            assert first.status_code in (200, 302), (path, first.text)
            assert len(cold) <= COLD_BOUND, (path, "\n".join(" ".join(s.split())[:120] for s in cold))
            assert warm == [], (path, warm)
            assert (second.status_code, second.content) == (first.status_code, first.content), path

    # The same answers from a second hub on the same database with its caches off.
    settings = hub.settings.model_copy(update={"cache_ttl": 0.0})
    with live_hub(settings) as plain, _api(plain.url, hub.admin_token) as api, \
            _api(hub.url, hub.admin_token) as cached:
        for method, path, extra in _hot_reads("admin/hot", sha):
            if "resolve" in path and hub.backend != "embedded":
                continue  # presigned URLs are signed by each hub: their signatures differ
            ours, theirs = cached.request(method, path, **extra), api.request(method, path, **extra)
            assert (ours.status_code, ours.content) == (theirs.status_code, theirs.content), path
            for header in ("etag", "x-repo-commit", "x-linked-etag", "x-linked-size", "cache-control"):
                assert ours.headers.get(header) == theirs.headers.get(header), (path, header)


def test_etags_and_304s_follow_the_pinning_and_the_visibility(hub, tmp_path):
    sha = _push(hub, tmp_path, "admin/pinned", "pinned")
    with _api(hub.url, hub.admin_token) as api:
        pinned = api.get(f"/api/models/admin/pinned/tree/{sha}")
        assert pinned.status_code == 200 and pinned.headers["cache-control"] == "public, max-age=31536000, immutable"
        again = api.get(f"/api/models/admin/pinned/tree/{sha}", headers={"If-None-Match": pinned.headers["etag"]})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == pinned.headers["etag"]
        by_tag = api.get("/api/models/admin/pinned/tree/main")
        assert by_tag.json() == pinned.json() and "immutable" not in by_tag.headers["cache-control"]
        info = api.get(f"/api/models/admin/pinned/revision/{sha}")
        assert "immutable" not in info.headers["cache-control"]  # it carries the download count
        stale = api.get(f"/api/models/admin/pinned/revision/{sha}", headers={"If-None-Match": '"0000"'})
        assert stale.status_code == 200 and stale.json() == info.json()

        blob = api.get(f"/admin/pinned/resolve/{sha}/README.md", follow_redirects=False)
        etag = blob.headers["etag"]
        assert etag == f'"{blob.headers["x-linked-etag"].strip(chr(34))}"'
        cond = api.get(f"/admin/pinned/resolve/{sha}/README.md", headers={"If-None-Match": etag},
                       follow_redirects=False)
        assert cond.status_code == 304 and cond.headers["x-repo-commit"] == sha
        if hub.backend == "embedded":
            assert blob.headers["cache-control"] == "public, max-age=31536000, immutable"
        else:  # a redirect's presigned URL expires: never immutable
            assert blob.status_code == 302 and "immutable" not in blob.headers["cache-control"]

        # Private: never in a shared cache; another user's guessed ETag is the same 404 as without one.
        private = _push(hub, tmp_path, "admin/secret", "secret", private=True)
        mine = api.get(f"/api/models/admin/secret/tree/{private}")
        assert mine.headers["cache-control"].startswith("private,")
        bob = api.post("/api/tokens", json={"scope": "read", "namespace": "bob"}).json()["token"]
    with _api(hub.url, bob) as other, _api(hub.url) as anonymous:
        for client in (other, anonymous):
            for path in (f"/api/models/admin/secret/tree/{private}", f"/admin/secret/resolve/{private}/README.md",
                         "/api/adapters/admin/secret"):
                plain = client.get(path, follow_redirects=False)
                guessed = client.get(path, headers={"If-None-Match": mine.headers["etag"]}, follow_redirects=False)
                star = client.get(path, headers={"If-None-Match": "*"}, follow_redirects=False)
                assert plain.status_code == 404, (path, plain.text)
                answers = {(r.status_code, r.content) for r in (guessed, star)}
                assert answers == {(404, plain.content)}, path


def test_a_write_in_this_process_is_seen_on_the_next_request(hub, tmp_path):
    first = _push(hub, tmp_path, "admin/moving", "first")
    second = _push(hub, tmp_path, "admin/moving", "second")
    with _api(hub.url, hub.admin_token) as admin, _api(hub.url) as anonymous:
        assert admin.get("/api/adapters/admin/moving", params={"revision": "stable"}).status_code == 404
        assert admin.put("/api/adapters/admin/moving/tags/stable", json={"revision": first}).status_code == 200
        assert admin.get("/api/adapters/admin/moving", params={"revision": "stable"}).json()["revision"] == first
        assert admin.put("/api/adapters/admin/moving/tags/stable", json={"revision": second}).status_code == 200
        assert admin.get("/api/adapters/admin/moving", params={"revision": "stable"}).json()["revision"] == second
        assert admin.get("/api/models/admin/moving/refs").json()["tags"][0]["targetCommit"] == second

        assert anonymous.get("/api/models/admin/moving").status_code == 200
        hidden = admin.put("/api/models/admin/moving/settings", json={"private": True})
        assert hidden.status_code == 200, hidden.text
        assert anonymous.get("/api/models/admin/moving").status_code == 404
        assert anonymous.get(f"/admin/moving/resolve/{second}/README.md").status_code == 404

        token = admin.post("/api/tokens", json={"scope": "read", "namespace": "carol"}).json()
        with _api(hub.url, token["token"]) as carol:
            assert carol.get("/api/models/admin/other-missing").status_code == 404  # authenticated, cached
            assert admin.delete(f"/api/tokens/{token['id']}").status_code == 204
            assert carol.get("/api/models/admin/other-missing").status_code == 401

        assert admin.delete("/api/adapters/admin/moving").status_code == 204
        assert admin.get("/api/adapters/admin/moving").status_code == 404
        assert admin.get("/api/models/admin/moving/refs").status_code == 404


def test_an_expiry_is_checked_at_each_use_even_from_the_cache(tmp_path, request):
    from conftest import make_settings

    settings = make_settings("embedded", tmp_path, request).model_copy(update={"cache_ttl": 60.0})
    with live_hub(settings) as hub, _api(hub.url, hub.admin_token) as admin:
        soon = datetime.now(timezone.utc) + timedelta(seconds=2)
        token = admin.post("/api/tokens", json={"scope": "read", "expires_at": soon.isoformat()}).json()["token"]
        with _api(hub.url, token) as short:
            for _ in range(2):  # the first use records last_used_at, a write, which drops what was cached
                assert short.get("/api/whoami-v2").status_code == 200
            with counting(hub.app.state.engine) as seen:
                assert short.get("/api/whoami-v2").status_code == 200
            assert seen == []  # answered from the cache
            time.sleep(max(0.0, (soon - datetime.now(timezone.utc)).total_seconds()) + 0.2)
            assert short.get("/api/whoami-v2").status_code == 401


def test_another_hub_on_the_same_database_sees_a_change_within_the_ttl(tmp_path, request):
    from conftest import make_settings

    ttl = 1.0
    settings = make_settings("embedded", tmp_path, request).model_copy(update={"cache_ttl": ttl})
    with live_hub(settings) as a, live_hub(settings) as b:
        first = _push(a, tmp_path, "admin/shared", "first")
        with _api(a.url, a.admin_token) as on_a, _api(b.url, b.admin_token) as on_b, _api(b.url) as anonymous:
            assert on_b.get("/api/models/admin/shared").json()["sha"] == first  # now cached in b
            assert anonymous.get("/api/models/admin/shared").status_code == 200
            second = _push(a, tmp_path, "admin/shared", "second")
            assert on_a.put("/api/models/admin/shared/settings", json={"private": True}).status_code == 200
            changed = time.monotonic()
            while on_b.get("/api/models/admin/shared").json()["sha"] != second:
                assert time.monotonic() - changed < ttl + 0.5, "b kept a stale main past the TTL"
                time.sleep(0.05)
            while anonymous.get("/api/models/admin/shared").status_code != 404:
                assert time.monotonic() - changed < ttl + 0.5, "b kept a stale visibility past the TTL"
                time.sleep(0.05)


def test_a_warm_resolve_runs_on_the_event_loop_and_a_cold_one_in_a_thread(hub, tmp_path):
    """``hot.answer``: the caches alone on the loop; a miss reruns the same work
    in a worker thread with a real session; the download count is never skipped."""
    import threading

    import anyio
    from fastapi import FastAPI
    from starlette.requests import Request

    from peft_hub.hub import hot
    from peft_hub.hub.hf.read import _counted

    sha = _push(hub, tmp_path, "admin/loop", "loop")
    engine = hub.app.state.engine
    app = FastAPI()
    app.state.engine = engine
    request = Request({"type": "http", "method": "GET", "app": app, "headers": [], "path": "/", "query_string": b""})
    threads: list[bool] = []

    def work(session, *args):
        threads.append(threading.current_thread() is loop_thread)
        return _counted(session, *args)

    async def resolve(filename: str):
        nonlocal loop_thread
        loop_thread = threading.current_thread()
        return await hot.answer(request, work, None, "admin", "loop", sha, filename)

    loop_thread = None
    cache.of(engine).bump({"auth", "repo"})
    with counting(engine) as cold:
        _, entry, headers = anyio.run(resolve, "adapter_model.safetensors")
    assert threads == [True, False] and cold, "a cold read: the loop misses, a worker thread reads"
    assert headers["X-Repo-Commit"] == sha and entry.path == "adapter_model.safetensors"
    threads.clear()
    with counting(engine) as warm:
        assert anyio.run(resolve, "adapter_model.safetensors")[1] == entry
    assert threads == [True] and warm == [], "a warm read: on the loop, no thread, no statement"

    with _api(hub.url, hub.admin_token) as api:
        before = api.get("/api/adapters/admin/loop").json()["downloads"]
        for _ in range(2):  # warm or not, the config's fetch is counted (in a worker thread, committed)
            threads.clear()
            anyio.run(resolve, "adapter_config.json")
            assert threads == [True, False]
        assert api.get("/api/adapters/admin/loop").json()["downloads"] == before + 2
        with pytest.raises(hot.NeedsDatabase):
            hot.CacheOnly(engine).exec  # noqa: B018 - any statement is refused
        missing = api.get(f"/admin/loop/resolve/{sha}/nope.bin")
        assert missing.status_code == 404 and missing.headers["x-repo-commit"] == sha


# --- refresh-ahead, single-flight, and never past the TTL ------------------------


def _threads(n: int, target) -> list:
    """``target(i)`` in ``n`` threads started together; their results in order."""
    import threading

    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = target(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def _into_refresh_window(hub_cache: cache.HubCache, *keys: tuple) -> None:
    """Sleep until every entry of ``keys`` is near its expiry (their windows overlap)."""
    entries = [hub_cache._fresh[key] for key in keys]
    time.sleep(max(0.0, max(e.refresh_at for e in entries) - time.monotonic()) + 0.01)
    assert time.monotonic() < min(e.expires for e in entries)


def test_an_entry_near_its_expiry_is_reloaded_by_one_lookup_while_the_others_keep_it():
    hub_cache = cache.HubCache(ttl=0.6)
    hub_cache.put("repo", "a/b", "old", hub_cache.generation("repo"))
    assert _threads(16, lambda i: hub_cache.get("repo", "a/b")) == ["old"] * 16  # not yet near expiry
    _into_refresh_window(hub_cache, ("repo", "a/b"))
    seen = _threads(16, lambda i: hub_cache.get("repo", "a/b"))
    assert sorted(seen, key=str) == [None] + ["old"] * 15, "exactly one lookup takes the miss path"
    assert hub_cache.get("repo", "a/b") == "old"  # the claim holds: still one reloader
    hub_cache.put("repo", "a/b", "new", hub_cache.generation("repo"))
    assert hub_cache.get("repo", "a/b") == "new"

    # The claimer looks up again (as a request's rerun in a worker thread does): it misses again.
    _into_refresh_window(hub_cache, ("repo", "a/b"))
    claims: cache.Claims = set()
    with cache.claiming(claims):
        assert hub_cache.get("repo", "a/b") is None
    assert hub_cache.get("repo", "a/b") == "new"  # another request's lookup keeps the valid value
    with cache.claiming(claims):
        assert hub_cache.get("repo", "a/b") is None and hub_cache.load("repo", "a/b", lambda: "newer") == "newer"
    assert hub_cache.get("repo", "a/b") == "newer"


def test_nothing_is_served_past_its_ttl_and_entries_expire_apart():
    ttl = 0.4
    hub_cache = cache.HubCache(ttl=ttl)
    put_at = {}
    for key in range(50):
        put_at[key] = time.monotonic()
        hub_cache.put("auth", key, f"v{key}", hub_cache.generation("auth"))
    expiries = {key: hub_cache._fresh[("auth", key)].expires for key in range(50)}
    assert len(set(expiries.values())) > 40 and all(e <= put_at[k] + ttl + 1e-6 for k, e in expiries.items())

    def spin(i: int) -> list[float]:
        hits = []
        while time.monotonic() < put_at[49] + ttl + 0.2:
            if hub_cache.get("auth", i % 50) is not None:
                hits.append(time.monotonic() - put_at[i % 50])
        return hits

    late = [hit for hits in _threads(8, spin) for hit in hits if hit >= ttl]
    assert late == [], "an entry was served past its TTL"
    assert all(hub_cache.get("auth", key) is None for key in range(50))


def test_a_write_drops_an_entry_at_once_and_concurrent_misses_load_it_once():
    import threading

    hub_cache = cache.HubCache(ttl=30)
    hub_cache.put("repo", "a/b", "old", hub_cache.generation("repo"))
    hub_cache.bump({"repo"})
    reads: list[int] = []

    def read() -> str:
        reads.append(threading.get_ident())
        time.sleep(0.2)
        return "new"

    def request(i: int) -> str:
        return hub_cache.get("repo", "a/b") or hub_cache.load("repo", "a/b", read)

    assert _threads(12, request) == ["new"] * 12 and len(reads) == 1, "single-flight: one load for the burst"

    def failing() -> str:
        reads.append(0)
        raise LookupError("not there")

    hub_cache.bump({"repo"})
    reads.clear()
    outcomes = _threads(6, lambda i: _outcome(lambda: hub_cache.load("repo", "a/b", failing)))
    assert outcomes == ["LookupError"] * 6 and len(reads) == 6  # a failure is not shared: each reads
    hub_cache.put("repo", "a/b", "v", hub_cache.generation("repo") - 1)  # read before a write: dropped
    assert hub_cache.get("repo", "a/b") is None


def _outcome(call) -> str:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the test compares the kinds
        return type(exc).__name__


def test_near_expiry_concurrent_hot_reads_reload_once_from_one_worker_thread(embedded_hub, tmp_path):
    """Through ``hot.answer`` and ``deps.request_principal``: the look-up on the
    loop claims the refresh, the rerun in the thread reloads it; the others
    are answered on the loop from the entry still valid."""
    import threading

    import anyio
    from starlette.requests import Request

    from peft_hub.hub import deps, hot
    from peft_hub.hub.auth import hash_token
    from peft_hub.hub.hf.read import _locate
    from peft_hub.hub.models import name_key

    hub = embedded_hub
    sha = _push(hub, tmp_path, "admin/ahead", "ahead")
    engine, hub_cache = hub.app.state.engine, cache.of(hub.app.state.engine)
    headers = [(b"authorization", f"Bearer {hub.admin_token}".encode())]
    scope = {"type": "http", "method": "GET", "app": hub.app, "headers": headers, "path": "/", "query_string": b"",
             "client": ("127.0.0.1", 1)}
    in_thread: list[str] = []

    def work(session, *args):
        if threading.current_thread() is not loop_thread:
            in_thread.append("work")
        return _locate(session, *args)

    async def burst(n: int) -> list:
        nonlocal loop_thread
        loop_thread = threading.current_thread()
        results: list = [None] * n

        async def one(i: int) -> None:
            principal = await deps.request_principal(Request(scope))
            results[i] = (principal.user.name, await hot.answer(Request(scope), work, principal, "admin", "ahead",
                                                                 "main", "README.md"))
        async with anyio.create_task_group() as group:
            for i in range(n):
                group.start_soon(one, i)
        return results

    loop_thread = None
    first = anyio.run(burst, 1)[0]  # warms both entries
    keys = (("auth", hash_token(hub.admin_token)), ("repo", name_key("admin", "ahead")))
    for kind, key in keys:
        value = hub_cache.get(kind, key)
        assert value is not None, kind
        hub_cache.put(kind, key, value, hub_cache.generation(kind))  # restart the clocks
    _into_refresh_window(hub_cache, *keys)
    in_thread.clear()
    with counting(engine) as seen:
        results = anyio.run(burst, 24)
    assert results == [first] * 24 and first[1][2]["X-Repo-Commit"] == sha
    assert in_thread == ["work"], "one request reloads the repo in a worker thread; the rest stay on the loop"
    tokens = [s for s in seen if "from token" in " ".join(s.lower().split())]
    repos = [s for s in seen if "from adapter" in " ".join(s.lower().split())]
    assert len(tokens) == 1 and len(repos) == 1, seen
    assert hub_cache.get("repo", name_key("admin", "ahead")) is not None  # reloaded, not left to expire
