"""The hub when its dependencies fail: a stalled, cut or erroring S3 behind a
fault-injecting proxy, PostgreSQL holding row locks or stopped, S3 down at
start-up, and a hub killed mid-upload.

Every test asserts the status and error code of what failed, that reads
which need no failed dependency kept answering, and ends with a consistency
check: every revision's files are in the store with the right size and
sha256, and every stored blob hashes to its name (nothing half-written).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anyio
import httpx
import pytest
from faultproxy import FaultProxy
from raw_adapters import zero_safetensors
from services import PG_BIN, free_port, live_hub, postgres, wait_until
from sqlalchemy import select

pytestmark = pytest.mark.integration

#: What a read that needs no failed dependency may take while one is failing.
QUICK = 2.0


# --- helpers ---------------------------------------------------------------------


def _adapter(root: Path, card: str) -> Path:
    """A valid tiny LoRA (no torch); ``card`` makes each one a new revision."""
    path = root / secrets.token_hex(3)
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "base_model_name_or_path": "tiny"}
    ))
    (path / "adapter_model.safetensors").write_bytes(zero_safetensors({
        "base_model.model.layers.0.q_proj.lora_A.weight": [2, 4],
        "base_model.model.layers.0.q_proj.lora_B.weight": [4, 2],
    }))
    (path / "README.md").write_text(f"# {card}\n")
    return path


def _files(path: Path) -> list[dict[str, Any]]:
    return [{"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
            for p in sorted(path.iterdir())]


def _settings(tmp_path: Path, db_url: str, storage: str, **extra: Any):
    from peft_hub.hub import Settings

    token = "phub_" + secrets.token_hex(6) + secrets.token_urlsafe(32)
    return Settings(db_url=db_url, storage=storage, admin_token=token, token_file=tmp_path / "hub-token", **extra)


def _fresh_pg(request) -> str:
    from conftest import _fresh_pg_database

    return _fresh_pg_database(request.getfixturevalue("pg_url"))


def _http(hub) -> httpx.Client:
    return httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {hub.admin_token}"}, timeout=30,
                        limits=httpx.Limits(max_connections=64))


def _upload(http: httpx.Client, repo: str, path: Path) -> list[dict[str, Any]]:
    """Preupload and send what the hub asks for (its own URL or presigned S3); return the files."""
    files = _files(path)
    plan = http.post(f"/api/adapters/{repo}/preupload", json={"files": files})
    assert plan.status_code == 200, plan.text
    for target in plan.json()["uploads"]:
        data = (path / target["path"]).read_bytes()
        headers = {**target["headers"], **({"Authorization": http.headers["Authorization"]} if target["auth"] else {})}
        sent = httpx.request(target["method"], target["url"], content=data, headers=headers, timeout=30)
        assert sent.status_code in (200, 201), sent.text
    return files


def _push(http: httpx.Client, repo: str, path: Path) -> str:
    files = _upload(http, repo, path)
    made = http.post(f"/api/adapters/{repo}/commit", json={"files": files})
    assert made.status_code == 201, made.text
    return made.json()["revision"]


def _timed(call) -> tuple[Any, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def _refused(response: httpx.Response, status: int, code: str, *words: str) -> str:
    """Assert the hub's error shape; return its detail."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error"] == code, body
    for word in words:
        assert word in body["detail"], (word, body["detail"])
    if status == 503:
        assert response.headers["retry-after"].isdigit()
    return body["detail"]


def _reads_answer(hub, repo: str) -> None:
    """Liveness, show, search and revisions answer quickly (they need only the database)."""
    with httpx.Client(base_url=hub.url, timeout=10) as anon:
        for path in ("/api/health", f"/api/adapters/{repo}", "/api/adapters?q=", f"/api/adapters/{repo}/revisions"):
            response, took = _timed(lambda path=path: anon.get(path))
            assert response.status_code == 200, (path, response.text)
            assert took < QUICK, (path, took)


def _consistent(hub) -> int:
    """Every revision's files are stored with their size and sha256; every
    stored blob hashes to its name. Returns how many revisions there are."""
    from peft_hub.hub.models import Revision, RevisionFile

    store = hub.app.state.store
    with hub.app.state.engine.connect() as conn:
        files = conn.execute(select(RevisionFile.sha256, RevisionFile.size)).all()
        revisions = len(conn.execute(select(Revision.id)).all())
    for sha256, size in files:
        stat = store.stat(sha256)
        assert stat is not None and stat.size == size, (sha256, stat)
    for blob in store.iterate():
        digest = hashlib.sha256()
        with store.open(blob.sha256) as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        assert digest.hexdigest() == blob.sha256, f"blob {blob.sha256} is half-written or wrong"
    return revisions


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def hub_log() -> Iterator[_Lines]:
    """The hub's own log lines (from any thread)."""
    handler, logger = _Lines(), logging.getLogger("peft_hub.hub")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def s3_proxy(s3_server) -> Iterator[FaultProxy]:
    target = urlparse(s3_server.endpoint)
    with FaultProxy(target.hostname, target.port) as proxy:
        yield proxy


def _s3_settings(tmp_path: Path, request, proxy: FaultProxy, **extra: Any):
    """A hub on PostgreSQL and on S3 through ``proxy``, with short S3 timeouts."""
    options = {"s3_endpoint_url": proxy.url, "s3_connect_timeout": 1.0, "s3_read_timeout": 1.5, "s3_max_attempts": 1,
               "ready_timeout": 1.0, **extra}
    return _settings(tmp_path, _fresh_pg(request), f"s3://peft-hub-test/{secrets.token_hex(4)}", **options)


# --- messages -------------------------------------------------------------------------


def test_error_messages_never_carry_a_url_query():
    """Presigned URLs carry their signature in the query: no message shows one."""
    from starlette.requests import Request

    from peft_hub.errors import StorageUnavailableError
    from peft_hub.hub.app import render_error

    url = "http://s3.test:8333/bucket/sha256/ab?X-Amz-Credential=key&X-Amz-Signature=0123abcd"
    error = StorageUnavailableError(f'storage (S3 at http://s3.test:8333) did not answer: "{url}"', retry_after=7)
    response = render_error(Request({"type": "http", "method": "PUT", "headers": []}), error)
    body = json.loads(response.body)
    assert response.status_code == 503 and body["error"] == "storage_unavailable"
    assert body["detail"] == 'storage (S3 at http://s3.test:8333) did not answer: "http://s3.test:8333/bucket/sha256/ab"'
    assert "Signature" not in response.headers["x-error-message"]
    assert response.headers["retry-after"] == "7"


# --- S3 -----------------------------------------------------------------------------


def test_stalled_cut_and_failing_s3_are_named_and_reads_keep_answering(tmp_path, request, s3_proxy):
    # Each call S3 leaves unanswered costs 4 s: longer than a quick read may take.
    settings = _s3_settings(tmp_path, request, s3_proxy, s3_read_timeout=4.0, storage_concurrency=4,
                            storage_queue_timeout=2.0)
    where = f"S3 at {s3_proxy.url}"
    with live_hub(settings) as hub, _http(hub) as http:
        v1 = _adapter(tmp_path, "v1")
        _push(http, "admin/support", v1)
        files = _files(v1)

        # Stalled: S3 accepts connections and never answers. More preuploads
        # (each asks S3 about the files the caller holds) than the hub has
        # worker threads, while metadata reads go on.
        s3_proxy.set("stall")
        with ThreadPoolExecutor(48) as pool:
            preuploads = [pool.submit(http.post, "/api/adapters/admin/support/preupload", json={"files": files})
                          for _ in range(48)]
            time.sleep(0.3)
            _reads_answer(hub, "admin/support")
            ready, took = _timed(lambda: http.get("/api/health/ready"))
            _refused(ready, 503, "storage_unavailable", "not ready", f"storage ({where}) did not answer")
            assert took < QUICK
            details = [_refused(f.result(), 503, "storage_unavailable", f"storage ({where})") for f in preuploads]
        assert any("did not answer" in d for d in details), details  # the ones that reached S3
        assert any("is busy" in d for d in details), details  # the ones that waited for a slot

        # Cut: S3 resets every connection. A 5xx: S3 answers 500.
        s3_proxy.set("cut")
        _refused(http.post("/api/adapters/admin/support/preupload", json={"files": files}), 503,
                 "storage_unavailable", f"storage ({where}) did not answer")
        s3_proxy.set("error", status=500)
        _refused(http.get("/api/adapters/admin/support/card"), 503, "storage_unavailable",
                 f"storage ({where}) failed: HTTP 500")
        v2 = _adapter(tmp_path, "v2")
        refused = http.post("/api/adapters/admin/support/commit", json={"files": _files(v2)})
        assert refused.status_code in (422, 503), refused.text  # v2 was never uploaded: refused either way
        _reads_answer(hub, "admin/support")

        s3_proxy.set("pass")
        assert http.get("/api/health/ready").json() == {"status": "ready", "database": "ok", "storage": "ok"}
        _push(http, "admin/support", v2)
        assert _consistent(hub) == 2


def test_s3_down_at_start_is_waited_for_then_served(tmp_path, request, s3_proxy, hub_log):
    from peft_hub.errors import DatabaseUnavailableError, StorageUnavailableError
    from peft_hub.hub import create_app

    async def start(settings) -> None:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            pass

    # Down for longer than the start may wait: a clear failure, in bounded time.
    s3_proxy.set("refuse")
    settings = _s3_settings(tmp_path, request, s3_proxy, startup_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=f"storage \\(S3 at {s3_proxy.url}\\) did not answer"):
        anyio.run(start, settings)
    assert time.monotonic() - started < 10
    waited = f"waiting for storage {settings.storage} (attempt 2)"
    assert any(line.startswith(waited) for line in hub_log.lines), hub_log.lines

    # The database likewise, named as such.
    dead = _settings(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none", str(tmp_path / "blobs"),
                     startup_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="database unavailable"):
        anyio.run(start, dead)
    assert time.monotonic() - started < 10
    waited = "waiting for database postgresql+psycopg://postgres@127.0.0.1"
    assert any(line.startswith(waited) for line in hub_log.lines)

    # Down at start, up two seconds later: the hub waits, then serves.
    hub_log.lines.clear()
    settings = _s3_settings(tmp_path, request, s3_proxy, startup_timeout=30)
    threading.Timer(2.0, s3_proxy.set, args=("pass",)).start()
    started = time.monotonic()
    with live_hub(settings) as hub, _http(hub) as http:
        assert time.monotonic() - started >= 1.5
        assert http.get("/api/health/ready").status_code == 200
        _push(http, "admin/support", _adapter(tmp_path, "v1"))
        assert _consistent(hub) == 1
    assert any(line.startswith("waiting for storage s3://peft-hub-test/") for line in hub_log.lines), hub_log.lines


# --- PostgreSQL ---------------------------------------------------------------------


def test_locked_tags_fail_pushes_fast_and_reads_keep_working(tmp_path, request):
    import psycopg

    db_url = _fresh_pg(request)
    # A pool smaller than the blocked pushes: storage slots (each push holds
    # one) keep connections free for reads.
    settings = _settings(tmp_path, db_url, str(tmp_path / "blobs"), db_lock_timeout=1.0, db_pool_size=2,
                         db_max_overflow=3, db_pool_timeout=3.0, storage_concurrency=3)
    with live_hub(settings) as hub, _http(hub) as http:
        _push(http, "admin/support", _adapter(tmp_path, "v1"))
        v2 = _upload(http, "admin/support", _adapter(tmp_path, "v2"))

        with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as locker:
            locker.execute("SELECT * FROM tag FOR UPDATE")  # held until the rollback below
            with ThreadPoolExecutor(10) as pool:
                commits = [pool.submit(_timed, lambda: http.post("/api/adapters/admin/support/commit",
                                                                 json={"files": v2}))
                           for _ in range(10)]
                time.sleep(0.5)
                _reads_answer(hub, "admin/support")
                for future in commits:
                    response, took = future.result()
                    _refused(response, 503, "database_unavailable", "database busy", "lock")
                    assert took < 15, took
            _reads_answer(hub, "admin/support")
            locker.rollback()

        assert _consistent(hub) == 1  # no refused push left a revision
        made = http.post("/api/adapters/admin/support/commit", json={"files": v2})
        assert made.status_code == 201, made.text
        assert _consistent(hub) == 2


def test_a_write_that_runs_past_its_deadline_is_rolled_back(tmp_path, request):
    import psycopg

    db_url = _fresh_pg(request)
    settings = _settings(tmp_path, db_url, str(tmp_path / "blobs"), db_lock_timeout=10.0, write_deadline=1.0)
    with live_hub(settings) as hub, _http(hub) as http:
        _push(http, "admin/support", _adapter(tmp_path, "v1"))

        # The deadline counts from the request's last body bytes: an upload
        # whose body takes longer than the deadline to arrive is kept.
        data = b"\1" * (3 * 1024 * 1024)
        sha256 = hashlib.sha256(data).hexdigest()

        def slow() -> Iterator[bytes]:
            for i in range(3):
                time.sleep(0.6)
                yield data[i << 20:(i + 1) << 20]

        kept = http.put(f"/api/blobs/{sha256}?size={len(data)}", content=slow(),
                        headers={"Content-Length": str(len(data))})
        assert kept.status_code == 201, kept.text

        # A commit that waits 1.5 s for a lock gets it, then finds its
        # deadline passed: rolled back, so the push the client saw fail did not happen.
        v2 = _upload(http, "admin/support", _adapter(tmp_path, "v2"))
        with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as locker:
            locker.execute("SELECT * FROM tag FOR UPDATE")
            threading.Timer(1.5, locker.rollback).start()
            late, took = _timed(lambda: http.post("/api/adapters/admin/support/commit", json={"files": v2}))
        assert took >= 1.5
        _refused(late, 503, "unavailable", "took longer than 1 s", "nothing was changed")
        assert _consistent(hub) == 1
        assert http.post("/api/adapters/admin/support/commit", json={"files": v2}).status_code == 201
        assert _consistent(hub) == 2


@contextmanager
def _own_cluster() -> Iterator[tuple[str, Any, Any]]:
    """A dedicated PostgreSQL cluster, with ``stop()`` and ``start()``."""
    with postgres() as url:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
            data = Path(conn.execute("SHOW data_directory").fetchone()[0])
        port = urlparse(url.replace("postgresql+psycopg", "postgresql")).port
        root = data.parent

        def pg_ctl(*args: str) -> None:
            cmd = [str(PG_BIN / "pg_ctl"), "-D", str(data), *args]
            if os.geteuid() == 0:
                cmd = ["runuser", "-u", "postgres", "--", *cmd]
            subprocess.run(cmd, check=True, capture_output=True, cwd="/tmp", timeout=60)

        def stop() -> None:
            pg_ctl("-m", "fast", "-w", "stop")

        def start() -> None:
            pg_ctl("-l", str(root / "pg.log"), "-w", "-o",
                   f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

        yield url, stop, start


def test_stopped_database_is_a_named_503_and_the_hub_recovers(tmp_path):
    with _own_cluster() as (db_url, stop, start):
        settings = _settings(tmp_path, db_url, str(tmp_path / "blobs"), ready_timeout=2.0)
        with live_hub(settings) as hub, _http(hub) as http:
            _push(http, "admin/support", _adapter(tmp_path, "v1"))
            v2 = _adapter(tmp_path, "v2")
            stop()
            try:
                health, took = _timed(lambda: http.get("/api/health"))
                assert health.status_code == 200 and took < QUICK  # liveness needs no database
                for path in ("/api/adapters/admin/support", "/api/adapters?q=", "/api/health/ready"):
                    response, took = _timed(lambda path=path: http.get(path))
                    _refused(response, 503, "database_unavailable", "database")
                    assert took < 10, (path, took)
                _refused(http.post("/api/adapters/admin/support/commit", json={"files": _files(v2)}), 503,
                         "database_unavailable", "database unavailable")
            finally:
                start()
            wait_until(lambda: http.get("/api/health/ready").status_code == 200, 20, "the hub's database")
            _reads_answer(hub, "admin/support")
            _push(http, "admin/support", v2)
            assert _consistent(hub) == 2


# --- local storage: a hub killed mid-upload ------------------------------------------


def _serve(tmp_path: Path, settings) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PEFT_HUB_HOME": str(tmp_path / "home"), "PEFT_HUB_ADMIN_TOKEN": settings.admin_token,
           "PEFT_HUB_DB_URL": settings.db_url, "PEFT_HUB_STORAGE": settings.storage}
    proc = subprocess.Popen([sys.executable, "-m", "peft_hub", "serve", "--port", str(port), "--workers", "1",
                             "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/api/health").status_code == 200, 60, "peft-hub serve")
    return proc, url


def test_killed_hub_leaves_no_temporary_files(tmp_path):
    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", str(tmp_path / "blobs"))
    tmp = tmp_path / "blobs" / "tmp"
    size = 8 * 1024 * 1024
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"\0" * (2 * 1024 * 1024)
        release.wait(30)  # the rest never comes: the hub is killed first

    proc, url = _serve(tmp_path, settings)
    try:
        upload = threading.Thread(target=lambda: _ignore(lambda: httpx.put(
            f"{url}/api/blobs/{'0' * 64}?size={size}", content=body(), timeout=30,
            headers={"Authorization": f"Bearer {settings.admin_token}", "Content-Length": str(size)})), daemon=True)
        upload.start()
        wait_until(lambda: any(p.stat().st_size >= 1024 * 1024 for p in tmp.iterdir()), 20, "a partial upload")
        (partial,) = list(tmp.iterdir())
        old = time.time() - 3600
        os.utime(partial, (old, old))  # old enough: only its writer's lock protects it now

        # Another hub on the same directory starts (and sweeps) while the upload is alive.
        with live_hub(settings) as hub:
            assert partial.exists(), "a live upload in another hub process was swept"
            mine = hub.app.state.store.writer("1" * 64, 10)  # and one in this process
            os.utime(mine.tmp, (old, old))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert partial.exists()  # kill -9: nothing removed it
            assert hub.app.state.store.sweep_stale(settings.stale_upload_seconds) == 1
            assert sorted(tmp.iterdir()) == [Path(mine.tmp)]
            mine.abort()
            with _http(hub) as http:
                _push(http, "admin/support", _adapter(tmp_path, "v1"))
                _reads_answer(hub, "admin/support")
                assert _consistent(hub) == 1
        assert list(tmp.iterdir()) == []
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _ignore(call) -> None:
    try:
        call()
    except Exception:  # the hub it talks to is killed on purpose
        pass
