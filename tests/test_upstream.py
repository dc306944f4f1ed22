"""The pull-through mirror: hub B, with ``upstream`` set to hub A (behind a
counting, corrupting proxy), serves A's adapters on a read miss, verified,
and keeps serving them once A is gone."""

from __future__ import annotations

import collections
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import make_settings
from services import live_hub
from tiny_models import dir_bytes

from peft_hub.client import HubClient
from peft_hub.errors import UnavailableError
from peft_hub.hub.upstream import _MissingError, _parse_info

pytestmark = pytest.mark.integration


class UpstreamProxy:
    """An HTTP proxy in front of hub A that counts GETs by path and, when
    ``corrupt`` is set, flips the first byte of every file it serves; each
    file waits until ``release`` is set (``resolving`` says one is waiting)."""

    def __init__(self, target: str) -> None:
        self.target, self.corrupt = target, False
        self.resolving, self.release = threading.Event(), threading.Event()
        self.release.set()
        self.hits: collections.Counter[str] = collections.Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                proxy.hits[self.path.split("?")[0]] += 1
                if "/resolve/" in self.path:
                    proxy.resolving.set()
                    proxy.release.wait(30)
                auth = {"Authorization": self.headers.get("Authorization", "")}
                upstream = httpx.get(proxy.target + self.path, headers=auth)
                body = upstream.content
                if proxy.corrupt and "/resolve/" in self.path and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.send_response(upstream.status_code)
                for key in ("content-type", "location"):
                    if key in upstream.headers:
                        self.send_header(key, upstream.headers[key])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def info_hits(self, repo: str) -> int:
        return self.hits[f"/api/models/{repo}/revision/main"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream(embedded_hub, llama_adapter, tmp_path):
    """Hub A with ``acme/support`` pushed, behind a proxy."""
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "a-cache") as client:
        client.push(llama_adapter, name="acme/support", message="on A")
        client.push(llama_adapter, name="admin/local", message="on A, in a name B holds")
    proxy = UpstreamProxy(embedded_hub.url)
    yield proxy
    proxy.close()


@pytest.fixture
def mirror(upstream, request, tmp_path, client_env):
    """Hub B, mirroring A through the proxy."""
    (tmp_path / "b").mkdir()
    settings = make_settings("embedded", tmp_path / "b", request).model_copy(update={"upstream": upstream.url})
    with live_hub(settings) as server:
        yield server


def test_mirror_serves_native_and_hf_byte_identical_then_without_upstream(mirror, upstream, llama_adapter, tmp_path):
    from huggingface_hub import snapshot_download

    with HubClient(mirror.url, None, cache_dir=tmp_path / "b-cache") as client:
        pulled = client.pull("acme/support", tmp_path / "native")
    assert dir_bytes(pulled.path) == dir_bytes(llama_adapter)
    folder = snapshot_download("acme/support", endpoint=mirror.url, cache_dir=tmp_path / "hf1", token=False)
    assert dir_bytes(folder) == dir_bytes(llama_adapter)
    assert upstream.info_hits("acme/support") == 1  # fetched once, served locally after
    detail = httpx.get(f"{mirror.url}/api/adapters/acme/support").json()
    assert any(t.startswith("upstream-") for t in detail["tags"]), detail["tags"]
    upstream.close()  # A is gone: B still serves its copy
    folder = snapshot_download("acme/support", endpoint=mirror.url, cache_dir=tmp_path / "hf2", token=False)
    assert dir_bytes(folder) == dir_bytes(llama_adapter)
    events = httpx.get(f"{mirror.url}/api/admin/audit", params={"action": "mirror"},
                       headers={"Authorization": f"Bearer {mirror.admin_token}"})
    events.raise_for_status()
    assert [e["target"].split("@")[0] for e in events.json()] == ["acme/support"]
    assert events.json()[0]["detail"]["upstream"] == upstream.url


def test_missing_upstream_repo_is_404_and_remembered(mirror, upstream):
    for _ in range(3):
        response = httpx.get(f"{mirror.url}/api/models/acme/nothing")
        assert response.status_code == 404
    assert upstream.info_hits("acme/nothing") == 1


def test_local_namespace_is_never_filled_from_upstream(mirror, upstream):
    """B has its own ``admin``: A's ``admin/local`` is not mirrored into it (nor even asked for)."""
    assert httpx.get(f"{mirror.url}/api/adapters/admin/local").status_code == 404
    assert upstream.info_hits("admin/local") == 0


def test_corrupt_upstream_bytes_store_nothing_and_say_so(mirror, upstream, llama_adapter, tmp_path):
    upstream.corrupt = True
    response = httpx.get(f"{mirror.url}/api/adapters/acme/support")
    assert response.status_code == 503, response.text
    assert "nothing of this repo was published" in response.json()["detail"]
    blobs = Path(mirror.settings.storage)
    assert not [p for p in blobs.rglob("*") if p.is_file()], "a corrupt blob was kept"
    upstream.corrupt = False  # a failure is not remembered as missing: the next read mirrors it
    with HubClient(mirror.url, None, cache_dir=tmp_path / "b-cache") as client:
        assert dir_bytes(client.pull("acme/support", tmp_path / "out").path) == dir_bytes(llama_adapter)


def test_concurrent_reads_of_a_missing_repo_fetch_once(mirror, upstream):
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: httpx.get(f"{mirror.url}/api/models/acme/support", timeout=60).status_code,
                              range(6)))
    assert codes == [200] * 6
    assert upstream.info_hits("acme/support") == 1
    assert upstream.hits["/acme/support/resolve/" + _upstream_sha(upstream) + "/adapter_model.safetensors"] == 1


def test_a_fetch_holds_a_storage_slot(upstream, embedded_hub, llama_adapter, request, tmp_path):
    """With one storage slot, a store request waits (then 503) while a fetch writes; a read through a
    route that holds the slot already still mirrors (it takes no second one), and the slot is given back."""
    (tmp_path / "b").mkdir()
    settings = make_settings("embedded", tmp_path / "b", request).model_copy(update={
        "upstream": upstream.url, "storage_concurrency": 1, "storage_queue_timeout": 0.5})
    blob = b"stored while no fetch runs"
    sha = hashlib.sha256(blob).hexdigest()
    with live_hub(settings) as hub, ThreadPoolExecutor(1) as pool:
        auth = {"Authorization": f"Bearer {hub.admin_token}"}

        def put_blob() -> httpx.Response:
            return httpx.put(f"{hub.url}/api/blobs/{sha}", params={"size": len(blob)}, content=blob, headers=auth)

        upstream.release.clear()
        fetch = pool.submit(httpx.get, f"{hub.url}/api/adapters/acme/support", timeout=60)
        assert upstream.resolving.wait(30), "the fetch never asked for a file"
        busy = put_blob()
        assert busy.status_code == 503 and busy.json()["error"] == "storage_unavailable", busy.text
        upstream.release.set()
        assert fetch.result(60).status_code == 200
        assert put_blob().status_code == 201  # the fetch gave its slot back
        # repo info holds the one slot while it looks the repo up: its fetch must not wait for a second
        with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "a-cache") as client:
            client.push(llama_adapter, name="beta/second", message="on A")
        info = httpx.get(f"{hub.url}/api/models/beta/second", timeout=30)
        assert info.status_code == 200 and upstream.info_hits("beta/second") == 1, info.text
        assert put_blob().status_code in (200, 201)


def _upstream_sha(upstream) -> str:
    return httpx.get(f"{upstream.target}/api/models/acme/support").json()["sha"]


def test_without_upstream_a_miss_stays_a_miss(embedded_hub, upstream):
    """Hub A itself has no upstream: a repo it lacks is a plain 404, and nothing is asked anywhere."""
    assert httpx.get(f"{embedded_hub.url}/api/adapters/acme/nothing").status_code == 404
    assert sum(upstream.hits.values()) == 0


# --- the upstream's repo info is hostile input --------------------------------

SHA = "a" * 40
LFS = {"sha256": "b" * 64, "size": 10}


@pytest.mark.parametrize("info", [
    [], {"siblings": {}}, {"sha": SHA}, {"sha": "x" * 40, "siblings": []},
    {"sha": SHA, "siblings": [{"rfilename": 3}]},
    {"sha": SHA, "siblings": [{"rfilename": "a"}]},  # no size
    {"sha": SHA, "siblings": [{"rfilename": "a", "size": -1}]},
    {"sha": SHA, "siblings": [{"rfilename": "a", "size": True}]},
    {"sha": SHA, "siblings": [{"rfilename": "a", "lfs": {"sha256": "B" * 64, "size": 3}}]},
])
def test_malformed_repo_info_is_refused(info):
    with pytest.raises(UnavailableError, match="malformed"):
        _parse_info(info, 1000)


def test_repo_info_over_the_size_cap_is_not_mirrored():
    with pytest.raises(_MissingError, match="too large"):
        _parse_info({"sha": SHA, "siblings": [{"rfilename": "w", "lfs": {**LFS, "size": 2000}}]}, 1000)


def test_repo_info_parses_lfs_and_small_files():
    sha, private, files = _parse_info({"sha": SHA, "private": True, "siblings": [
        {"rfilename": "w", "size": 99, "lfs": LFS}, {"rfilename": "c", "size": 4, "blobId": "c" * 40}]}, 1000)
    assert (sha, private) == (SHA, True)
    assert files == [{"path": "w", "size": 10, "sha256": "b" * 64, "oid": None},
                     {"path": "c", "size": 4, "sha256": None, "oid": "c" * 40}]
