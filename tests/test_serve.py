"""`peft-hub serve` as a new user runs it: the first start creates an admin,
prints its token once and saves it, so `peft-hub push` works right away."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from services import free_port, wait_until

pytestmark = pytest.mark.integration


def _serve(tmp_path, *extra: str, env_extra: dict | None = None):
    port = free_port()
    env = {**os.environ, "PEFT_HUB_HOME": str(tmp_path / "home"), "PEFT_HUB_CACHE": str(tmp_path / "cache"),
           **(env_extra or {})}
    env.pop("PEFT_HUB_TOKEN", None)
    env.pop("PEFT_HUB_ADMIN_TOKEN", None)
    log = open(tmp_path / f"serve-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "peft_hub", "serve", "--port", str(port), *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/api/health").status_code == 200, 60, "peft-hub serve")
    return proc, url, env, tmp_path / f"serve-{port}.log"


def _cli(env, url, *args):
    return subprocess.run([sys.executable, "-m", "peft_hub", *args], capture_output=True, text=True,
                          env={**env, "PEFT_HUB_URL": url}, timeout=120)


@pytest.mark.parametrize("db", ["embedded", "postgres"])
def test_first_start_creates_admin_and_push_works(tmp_path, llama_adapter, db, request):
    extra = ()
    if db == "postgres":
        from conftest import _fresh_pg_database

        extra = ("--db-url", _fresh_pg_database(request.getfixturevalue("pg_url")))
    proc, url, env, log = _serve(tmp_path, *extra)
    try:
        time.sleep(0.2)
        token = re.search(r"phub_\S+", log.read_text()).group(0)
        assert (tmp_path / "home" / "token").read_text().strip() == token
        assert oct((tmp_path / "home" / "token").stat().st_mode & 0o777) == "0o600"
        assert _cli(env, url, "whoami").stdout.startswith("admin (scope: admin)")
        pushed = _cli(env, url, "push", str(llama_adapter))
        assert pushed.returncode == 0, pushed.stderr
        assert pushed.stdout.startswith("admin/support@")
    finally:
        proc.terminate()
        proc.wait(20)
    # A restart on the same database keeps the admin and prints no new token.
    proc, url, env, log = _serve(tmp_path, *extra)
    try:
        assert "phub_" not in log.read_text()
        assert "admin/support" in _cli(env, url, "ls").stdout
    finally:
        proc.terminate()
        proc.wait(20)


def test_db_upgrade_is_idempotent(tmp_path):
    env = {**os.environ, "PEFT_HUB_HOME": str(tmp_path)}
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade = [sys.executable, "-m", "peft_hub", "db", "upgrade", "--db-url", url]
    first = subprocess.run(upgrade, capture_output=True, text=True, env=env)
    assert first.returncode == 0 and "applied 0001 initial schema" in first.stdout
    again = subprocess.run(upgrade, capture_output=True, text=True, env=env)
    assert again.stdout.strip() == "database is up to date"
