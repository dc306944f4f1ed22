"""The pull-through mirror on PostgreSQL + SeaweedFS: two mirror hubs on one
database and one bucket race for the same repo. Exactly one fetches it; both
answer the same bytes; the advisory lock is released after a fetch that died."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import make_settings
from services import live_hub
from sqlalchemy import create_engine, text
from test_upstream import UpstreamProxy, _upstream_sha
from tiny_models import dir_bytes

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration


class DyingProxy(UpstreamProxy):
    """The counting proxy, but while ``dying`` every file body stops half-way
    (the connection closes early, as an upstream that falls over mid-fetch)."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.dying = False
        handler = self.server.RequestHandlerClass
        proxy = self
        original = handler.do_GET

        def do_get(h) -> None:  # noqa: ANN001 - http.server's handler
            if proxy.dying and "/resolve/" in h.path:
                proxy.hits[h.path.split("?")[0]] += 1
                body = httpx.get(proxy.target + h.path).content
                h.send_response(200)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body[: len(body) // 2])
                h.close_connection = True
                return
            original(h)

        handler.do_GET = do_get


@pytest.fixture
def upstream(embedded_hub, llama_adapter, tmp_path):
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "a-cache") as client:
        client.push(llama_adapter, name="acme/support", message="on A")
    proxy = DyingProxy(embedded_hub.url)
    yield proxy
    proxy.close()


@pytest.fixture
def mirrors(upstream, request, tmp_path):
    """Two hubs on one PostgreSQL database and one S3 prefix, both mirroring A."""
    (tmp_path / "m").mkdir()
    settings = make_settings("s3-postgres", tmp_path / "m", request).model_copy(update={"upstream": upstream.url})
    with live_hub(settings) as one, live_hub(settings) as two:
        yield one, two


def _advisory_locks(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")).scalar_one()
    finally:
        engine.dispose()


def _rows(db_url: str, table: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def test_two_replicas_racing_fetch_once_and_serve_the_same_bytes(mirrors, upstream, llama_adapter, tmp_path):
    from huggingface_hub import snapshot_download

    urls = [m.url for m in mirrors] * 4
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda u: httpx.get(f"{u}/api/models/acme/support", timeout=120).status_code, urls))
    assert codes == [200] * 8
    assert upstream.info_hits("acme/support") == 1
    assert upstream.hits[f"/acme/support/resolve/{_upstream_sha(upstream)}/adapter_model.safetensors"] == 1
    for i, hub in enumerate(mirrors):
        folder = snapshot_download("acme/support", endpoint=hub.url, cache_dir=tmp_path / f"hf{i}", token=False)
        assert dir_bytes(folder) == dir_bytes(llama_adapter)
    db_url = mirrors[0].settings.db_url
    assert _rows(db_url, "adapter") == 1 and _rows(db_url, "revision") == 1
    assert _advisory_locks(db_url) == 0


def test_a_fetch_that_dies_releases_the_lock_and_the_other_replica_recovers(mirrors, upstream, llama_adapter,
                                                                            tmp_path):
    one, two = mirrors
    upstream.dying = True
    response = httpx.get(f"{one.url}/api/adapters/acme/support", timeout=120)
    assert response.status_code == 503, response.text
    assert _advisory_locks(one.settings.db_url) == 0
    assert _rows(one.settings.db_url, "adapter") == 0
    upstream.dying = False  # the upstream is back: the other replica mirrors it at once
    with HubClient(two.url, None, cache_dir=tmp_path / "cache") as client:
        assert dir_bytes(client.pull("acme/support", tmp_path / "out").path) == dir_bytes(llama_adapter)
    assert httpx.get(f"{one.url}/api/models/acme/support").status_code == 200
    assert _advisory_locks(one.settings.db_url) == 0
