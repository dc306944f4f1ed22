"""Shared test setup: tiny models on the path, quiet progress bars."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("PEFT_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The client's retries back off for real; tests that provoke them need not wait long.
os.environ.setdefault("PEFT_HUB_RETRY_WAIT", "0.01")
sys.path.insert(0, str(Path(__file__).parent))


# --- live services -----------------------------------------------------------

import secrets

import pytest
from services import LiveHub, live_hub, postgres, seaweedfs

BACKENDS = ["embedded", "s3-postgres"]


@pytest.fixture(scope="session")
def s3_server():
    """One SeaweedFS for the whole session; its settings go into os.environ
    because the hub finds S3 the way boto3 always does."""
    with seaweedfs() as server:
        saved = {k: os.environ.get(k) for k in server.env()}
        os.environ.update(server.env())
        try:
            yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="session")
def pg_url():
    with postgres() as url:
        yield url


def _fresh_pg_database(url: str) -> str:
    """A new empty database in the session's cluster."""
    from sqlalchemy import create_engine, text

    name = f"hub_{secrets.token_hex(4)}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"


def database_url(backend: str, directory, request) -> str:
    """A fresh empty database on ``backend`` ("sqlite" or "postgres"): a file in ``directory``, or a new one
    in the session's cluster."""
    if backend == "sqlite":
        return f"sqlite:///{directory / 'hub.db'}"
    return _fresh_pg_database(request.getfixturevalue("pg_url"))


#: The databases a test of the schema itself runs on.
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


@pytest.fixture(params=DATABASES)
def migrated_engine(request, tmp_path):
    """An engine on a fresh database brought to the schema's head, on each of :data:`DATABASES`."""
    from peft_hub.hub.db import make_engine
    from peft_hub.hub.migrations import upgrade

    engine = make_engine(database_url(request.param, tmp_path, request))
    upgrade(engine)
    yield engine
    engine.dispose()


def make_settings(backend: str, tmp_path, request):
    """Settings for a fresh hub on ``backend`` (each test gets empty state)."""
    from peft_hub.hub import Settings

    token = "phub_" + secrets.token_hex(6) + secrets.token_urlsafe(32)
    common = {"admin_token": token, "token_file": tmp_path / "hub-token", "gc_grace_seconds": 3600}
    if backend == "embedded":
        return Settings(db_url=f"sqlite:///{tmp_path / 'hub.db'}", storage=str(tmp_path / "blobs"), **common)
    request.getfixturevalue("s3_server")
    pg = request.getfixturevalue("pg_url")
    bucket_prefix = secrets.token_hex(4)
    return Settings(db_url=_fresh_pg_database(pg), storage=f"s3://peft-hub-test/{bucket_prefix}", **common)


@pytest.fixture(params=BACKENDS)
def hub(request, tmp_path) -> LiveHub:
    """A live hub with an empty database, on each storage backend."""
    with live_hub(make_settings(request.param, tmp_path, request)) as server:
        server.backend = request.param
        yield server


@pytest.fixture
def embedded_hub(request, tmp_path) -> LiveHub:
    """A live hub on SQLite and local files only."""
    with live_hub(make_settings("embedded", tmp_path, request)) as server:
        server.backend = "embedded"
        yield server


@pytest.fixture
def client_env(tmp_path, monkeypatch):
    """Keep the CLI's saved token and cache inside the test's directory."""
    monkeypatch.setenv("PEFT_HUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PEFT_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PEFT_HUB_TOKEN", raising=False)
    monkeypatch.delenv("PEFT_HUB_URL", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are per-op overhead: one thread is faster, and far steadier on a busy machine.

    A module applies it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def llama_adapter(tmp_path_factory):
    """A LoRA written by PEFT's save_pretrained on a tiny Llama."""
    from tiny_models import make_lora, tiny_llama

    root = tmp_path_factory.mktemp("adapters")
    base = tiny_llama()
    return make_lora(base, root / "support", r=8, alpha=16, base_name="tiny-llama")


# --- the fast tier -----------------------------------------------------------

#: Fixtures that start a real service (SeaweedFS, PostgreSQL, a hub on a socket)
#: or train a model: a test that uses one, directly or through another fixture,
#: is an integration test, and ``pytest -m "not integration"`` skips it.
SERVICE_FIXTURES = frozenset({"hub", "embedded_hub", "s3_server", "pg_url", "llama_adapter"})


def pytest_collection_modifyitems(config, items):  # pytest's hook signature
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
