"""`peft-hub serve --workers N`, and several `serve` processes on one
database: the start-up (migrations, the first admin and its token) happens
exactly once, every worker comes up, and a push through one process pulls
through another."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from services import free_port, wait_until
from tiny_models import dir_bytes

pytestmark = pytest.mark.integration

STARTED = "Application startup complete."


class Serve:
    """One ``python -m peft_hub serve`` process with its own HOME and log."""

    def __init__(self, tmp_path: Path, name: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = tmp_path / name
        self.log = tmp_path / f"{name}.log"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("PEFT_HUB_")},
                    "PEFT_HUB_HOME": str(self.home), "PEFT_HUB_CACHE": str(tmp_path / f"{name}-cache"),
                    "PEFT_HUB_DISABLE_PROGRESS_BARS": "1"}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "peft_hub", "serve", "--port", str(self.port), *args],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def text(self) -> str:
        return self.log.read_text()

    def wait_started(self, workers: int) -> None:
        try:
            wait_until(lambda: self.proc.poll() is not None or self.text().count(STARTED) >= workers, 120,
                       f"{workers} workers of {self.url}")
        except Exception:
            raise AssertionError(self.text()) from None
        assert self.proc.poll() is None and self.text().count(STARTED) == workers, self.text()
        assert httpx.get(f"{self.url}/api/health").status_code == 200

    def cli(self, *args: str, token: str) -> subprocess.CompletedProcess:
        env = {**self.env, "PEFT_HUB_URL": self.url, "PEFT_HUB_TOKEN": token}
        return subprocess.run([sys.executable, "-m", "peft_hub", *args], capture_output=True, text=True, env=env,
                              timeout=120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            # uvicorn re-raises the SIGTERM it handled once it has shut down (one worker)
            assert self.proc.wait(30) in (0, -15), self.text()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)


def _tokens(db_url: str) -> list[tuple[str, str]]:
    """(namespace, scope) of every token in the database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(
                "SELECT namespace.name, token.scope FROM token JOIN namespace ON namespace.id = token.user_id"))]
    finally:
        engine.dispose()


def _printed_tokens(*servers: Serve) -> list[str]:
    return [t for s in servers for t in re.findall(r"^  (phub_\S+)$", s.text(), re.MULTILINE)]


def _push_then_pull(pusher: Serve, puller: Serve, token: str, adapter: Path, tmp_path: Path, name: str) -> None:
    pushed = pusher.cli("push", str(adapter), "--name", f"admin/{name}", token=token)
    assert pushed.returncode == 0, pushed.stderr
    out = tmp_path / f"pulled-{name}"
    pulled = puller.cli("pull", f"admin/{name}", "-o", str(out), token=token)
    assert pulled.returncode == 0, pulled.stderr
    assert dir_bytes(out) == dir_bytes(adapter)


def _fresh_db(kind: str, tmp_path: Path, request) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    from conftest import _fresh_pg_database

    return _fresh_pg_database(request.getfixturevalue("pg_url"))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_workers_start_once_and_all_serve(tmp_path, llama_adapter, kind, request):
    db_url = _fresh_db(kind, tmp_path, request)
    server = Serve(tmp_path, "one", "--workers", "3", "--db-url", db_url, "--storage", str(tmp_path / "blobs"))
    try:
        server.wait_started(3)
        wait_until(lambda: "The CLI on this machine will use" in server.text(), 30, "the banner")
        first = server.text().splitlines()[0]
        assert first.startswith(f"peft-hub serving on {server.url} (db: ") and first.endswith(", 3 workers)")
        printed = _printed_tokens(server)
        assert len(printed) == 1
        assert (server.home / "token").read_text().strip() == printed[0]
        assert (server.home / "url").read_text() == server.url + "\n"
        assert _tokens(db_url) == [("admin", "admin")]
        # Many requests, each on a new connection, spread over the workers;
        # every one answers (none is a worker still starting, none a 5xx).
        for _ in range(30):
            assert httpx.get(f"{server.url}/api/health/ready").status_code == 200
        _push_then_pull(server, server, printed[0], llama_adapter, tmp_path, "support")
    finally:
        server.stop()
    assert server.text().count("Finished server process") == 3


def test_two_serve_processes_on_one_fresh_postgres(tmp_path, llama_adapter, pg_url):
    from conftest import _fresh_pg_database

    db_url = _fresh_pg_database(pg_url)
    shared = ("--db-url", db_url, "--storage", str(tmp_path / "blobs"))
    servers = [Serve(tmp_path, "a", "--workers", "2", *shared), Serve(tmp_path, "b", "--workers", "1", *shared)]
    try:
        servers[0].wait_started(2)
        servers[1].wait_started(1)
        printed = _printed_tokens(*servers)
        assert len(printed) == 1, [s.text() for s in servers]
        assert _tokens(db_url) == [("admin", "admin")]
        assert sum((s.home / "token").exists() for s in servers) == 1
        _push_then_pull(servers[0], servers[1], printed[0], llama_adapter, tmp_path, "from-a")
        _push_then_pull(servers[1], servers[0], printed[0], llama_adapter, tmp_path, "from-b")
    finally:
        for server in servers:
            server.stop()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_of_the_supervisor_takes_its_workers_with_it(tmp_path):
    """Orphaned workers would go on serving on the port, holding their
    uploads' files, with no one left to stop them."""
    server = Serve(tmp_path, "one", "--workers", "2", "--storage", str(tmp_path / "blobs"))
    try:
        server.wait_started(2)
        children = [int(p) for p in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
                    .read_text().split()]
        workers = [p for p in children if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(workers) == 2
        server.proc.kill()
        server.proc.wait(10)
        wait_until(lambda: not any(_alive(p) for p in workers), 10, "the workers to die with their supervisor")
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
