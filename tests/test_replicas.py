"""Several hub processes on one database and one blob store, started at the
same instant: one schema, one admin (its token printed by one replica only),
every replica healthy; then pushes and pulls across replicas, and concurrent
pushes to one name through different replicas, with one consistent history.

Real processes (``peft-hub serve``) on free ports, real PostgreSQL and
SeaweedFS, and SQLite with local files shared by every process.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from raw_adapters import tiny_lora_dir
from services import free_port
from sqlalchemy import create_engine, text

from peft_hub.client import HubClient
from peft_hub.hub.migrations import head

pytestmark = pytest.mark.integration

REPLICAS = 3
#: ``serve --workers`` of each replica: the first migrates and bootstraps in
#: its supervisor before spawning two workers, the others in their one
#: process's start-up, so both ways of starting race in every round. (Left to
#: the default, every replica spawned min(4, cores) workers, each importing
#: the hub afresh after the race was over: most of the test's time.)
WORKERS = [2] + [1] * (REPLICAS - 1)
#: Rounds of simultaneous starts per backend; each is a fresh database. With
#: the migration lock (migrations.exclusive) made a no-op, every round of 6
#: failed on both backends: PostgreSQL's losers exit on a duplicate table,
#: SQLite's retry their start (see :func:`cluster`).
ROUNDS = {"postgres": 3, "sqlite": 2}
#: Seconds every replica of a round has to become healthy.
START_TIMEOUT = 120
TOKEN_RE = re.compile(r"phub_[A-Za-z0-9_-]{20,}")

# Each replica imports everything its start will (the app's routes and pages,
# Alembic and the revisions), says it is ready, and waits on stdin: once all
# are ready the test releases them together, so their starts collide. An app
# is only built here; nothing connects before it is served.
LAUNCH = (
    "import pathlib, sys\n"
    "import alembic.command, uvicorn, peft_hub.cli, peft_hub.hub.app, peft_hub.hub.migrations\n"
    "peft_hub.hub.migrations.head()\n"
    "peft_hub.hub.app.create_app()\n"
    "pathlib.Path(sys.argv[1]).touch()\n"
    "sys.stdin.readline()\n"
    "sys.argv = ['peft-hub', 'serve', *sys.argv[2:]]\n"
    "peft_hub.cli.main()\n"
)


@dataclass
class Replica:
    proc: subprocess.Popen
    url: str
    home: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    replicas: list[Replica]
    db_url: str
    token: str


def _backend_env(backend: str, tmp_path: Path, request) -> dict[str, str]:
    if backend == "postgres":
        from conftest import _fresh_pg_database

        s3 = request.getfixturevalue("s3_server")
        db_url = _fresh_pg_database(request.getfixturevalue("pg_url"))
        # a new bucket: its creation races too
        return {**s3.env(), "PEFT_HUB_DB_URL": db_url,
                "PEFT_HUB_STORAGE": f"s3://peft-hub-{secrets.token_hex(4)}/blobs"}
    return {"PEFT_HUB_DB_URL": f"sqlite:///{tmp_path / 'hub.db'}", "PEFT_HUB_STORAGE": str(tmp_path / "blobs")}


@contextmanager
def cluster(
    backend: str, tmp_path: Path, request, n: int = REPLICAS, admin_token: str | None = None,
) -> Iterator[Cluster]:
    """Start ``n`` replicas at once on one fresh database; yield once all are
    healthy and exactly one printed the admin token it created (none, when
    every replica is given ``admin_token``)."""
    shared = _backend_env(backend, tmp_path, request)
    if admin_token:
        shared["PEFT_HUB_ADMIN_TOKEN"] = admin_token
    secret = secrets.token_urlsafe(32)
    replicas = []
    try:
        for i in range(n):
            home, port = tmp_path / f"replica-{i}", free_port()
            home.mkdir(parents=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PEFT_HUB_")}
            env.update(shared, PEFT_HUB_HOME=str(home), PEFT_HUB_SESSION_SECRET=secret,
                       PEFT_HUB_DISABLE_PROGRESS_BARS="1")
            log = home / "serve.log"
            with log.open("w") as out:
                workers = WORKERS[i % len(WORKERS)]
                proc = subprocess.Popen(
                    [sys.executable, "-c", LAUNCH, str(home / "ready"), "--port", str(port), "--workers", str(workers),
                     "--log-level", "warning"],
                    stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env, text=True,
                )
            replicas.append(Replica(proc, f"http://127.0.0.1:{port}", home, log))
        _wait(lambda: all((r.home / "ready").exists() for r in replicas), replicas, "replicas to load")
        for r in replicas:  # the barrier: release them all at once
            r.proc.stdin.write("go\n")
        for r in replicas:
            r.proc.stdin.flush()
        _wait(lambda: all(_healthy(r) for r in replicas), replicas, "every replica to be healthy")
        # The lock makes the others wait for the one migrating, then find nothing
        # to do; a start that failed and was retried means their changes collided.
        retried = [r for r in replicas if "waiting for database" in r.output()]
        assert not retried, f"{len(retried)} replicas retried their start:\n{retried[0].output()[-2000:]}"
        printed = [r for r in replicas if TOKEN_RE.search(r.output())]
        assert len(printed) == (0 if admin_token else 1), f"{len(printed)} replicas printed an admin token"
        token = admin_token or TOKEN_RE.search(printed[0].output()).group(0)
        yield Cluster(replicas, shared["PEFT_HUB_DB_URL"], token)
    finally:
        for r in replicas:
            r.proc.terminate()
        for r in replicas:
            try:
                r.proc.wait(20)
            except subprocess.TimeoutExpired:
                r.proc.kill()


def _healthy(replica: Replica) -> bool:
    try:
        return httpx.get(f"{replica.url}/api/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(check, replicas: list[Replica], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        exited = [r for r in replicas if r.proc.poll() is not None]
        if exited:
            pytest.fail(f"a replica exited with {exited[0].proc.returncode} while waiting for {what}:\n"
                        f"{exited[0].output()[-4000:]}")
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _db_facts(db_url: str) -> dict[str, object]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {
                "versions": [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))],
                "admins": conn.execute(text("SELECT name FROM namespace WHERE is_admin")).scalars().all(),
                "namespaces": conn.execute(text("SELECT count(*) FROM namespace")).scalar(),
                "tokens": conn.execute(text("SELECT count(*) FROM token")).scalar(),
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_replicas_started_at_once_agree_on_one_schema_and_one_admin(backend, tmp_path, request):
    for round_ in range(ROUNDS[backend]):
        root = tmp_path / f"round-{round_}"
        root.mkdir()
        # The last round gives every replica the admin token, as docker-compose.yml does.
        given = "phub_" + secrets.token_hex(6) + secrets.token_urlsafe(32) if round_ == ROUNDS[backend] - 1 else None
        with cluster(backend, root, request, admin_token=given) as hub:
            facts = _db_facts(hub.db_url)
            assert facts == {"versions": [head()], "admins": ["admin"], "namespaces": 1, "tokens": 1}
            # A generated token was saved only where it was printed; a given one nowhere.
            saved = [r for r in hub.replicas if (r.home / "token").exists()]
            assert len(saved) == (0 if given else 1)
            assert all((r.home / "token").read_text().strip() == hub.token for r in saved)
            for r in hub.replicas:
                me = httpx.get(f"{r.url}/api/whoami", headers={"Authorization": f"Bearer {hub.token}"}).json()
                assert (me["name"], me["scope"]) == ("admin", "admin")


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _concurrent_pushes(clients: list[HubClient], adapters: list[Path], name: str) -> list[str]:
    barrier = threading.Barrier(len(clients))
    results: list[object] = [None] * len(clients)

    def push(i: int) -> None:
        barrier.wait()
        try:
            results[i] = clients[i].push(adapters[i], name=name).revision
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=push, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    failed = [r for r in results if not isinstance(r, str)]
    assert not failed, failed
    return results  # type: ignore[return-value]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_push_and_pull_across_replicas_with_one_history(backend, tmp_path, request):
    with cluster(backend, tmp_path / "hub", request) as hub:
        clients = [HubClient(r.url, hub.token, cache_dir=tmp_path / f"cache-{i}") for i, r in enumerate(hub.replicas)]
        first = tiny_lora_dir(tmp_path / "a" / "support", "first")
        pushed = clients[0].push(first, name="admin/support")
        for i, client in enumerate(clients[1:], 1):
            pulled = client.pull("admin/support", tmp_path / f"pulled-{i}")
            assert pulled.revision == pushed.revision and _files(pulled.path) == _files(first)

        # Concurrent pushes through different replicas: to a new name (its
        # creation races), then to the existing one (its tag races).
        for name in ("admin/race", "admin/support"):
            variants = [tiny_lora_dir(tmp_path / name / str(i) / "support", f"{name} {i}") for i in range(len(clients))]
            revisions = _concurrent_pushes(clients, variants, name)
            assert len(set(revisions)) == len(clients)
            for client in clients:
                listed = [r["revision"] for r in client.revisions(name)]
                assert set(revisions) <= set(listed) and len(listed) == len(set(listed))
                assert len(listed) == len(clients) + (name == "admin/support")
                assert client.info(name)["revision"] in revisions
            assert len({c.info(name)["revision"] for c in clients}) == 1
        for client in clients:
            client.close()
