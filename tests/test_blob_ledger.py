"""The blob ledger: gc never races a push into a broken revision, and a
blob whose stored bytes changed is repaired by the next push.

gc racing pushes: a revision must never reference a blob that is not stored.

One thread re-pushes content whose blobs it has just orphaned (so preupload
finds them held and stored, and the client uploads nothing), while another
runs ``gc --grace 0`` in a tight loop. Publish and gc agree through the blob
ledger's row locks (``peft_hub/hub/ledger.py``): a push either commits with
every blob stored or is told, in a clean 422, to upload again. Afterwards
every revision's files are in the store with the right sha256. Runs on SQLite
+ local files and on PostgreSQL + SeaweedFS, for a bounded time.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
import time

import httpx
import pytest
from conftest import BACKENDS, make_settings
from hub_state import blob_intact
from services import live_hub
from sqlmodel import Session, select

from peft_hub.client import HubClient
from peft_hub.errors import ConflictError, UploadRequiredError
from peft_hub.hub.models import RevisionFile

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECONDS = 12


@pytest.fixture(params=BACKENDS)
def leaseless_hub(request, tmp_path):
    """A hub whose preuploads lease nothing against gc, so gc really deletes
    blobs between a push's preupload and its commit."""
    settings = make_settings(request.param, tmp_path, request).model_copy(update={"upload_lease_seconds": 0})
    with live_hub(settings) as server:
        server.backend = request.param
        yield server


def _race(hub, llama_adapter, tmp_path) -> tuple[dict[str, int], list[BaseException]]:
    contents = []
    for i in range(3):
        d = tmp_path / f"v{i}"
        shutil.copytree(llama_adapter, d)
        (d / "README.md").write_text(f"# version {i}\n")
        contents.append(d)
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    client.push(llama_adapter, name="admin/base")  # config and weights stay referenced; the cards race
    deadline = time.monotonic() + SECONDS
    outcomes: dict[str, int] = {"published": 0, "asked to upload again": 0, "conflict": 0}
    failures: list[BaseException] = []

    def pusher() -> None:
        i = 0
        while time.monotonic() < deadline:
            content = contents[i % len(contents)]
            try:
                client.push(content, name="admin/tmp")
                client.delete("admin/tmp")  # its card's blob is now orphaned, but still held
                client.push(content, name="admin/keep")
                outcomes["published"] += 1
            except UploadRequiredError:
                outcomes["asked to upload again"] += 1
            except ConflictError:
                outcomes["conflict"] += 1
            except BaseException as exc:  # any other outcome fails the test
                failures.append(exc)
                return
            i += 1

    def collector() -> None:
        with httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {hub.admin_token}"}, timeout=60) as http:
            while time.monotonic() < deadline:
                r = http.post("/api/admin/gc", json={"grace_seconds": 0})
                if r.status_code != 200:
                    failures.append(AssertionError(f"gc answered {r.status_code}: {r.text[:300]}"))
                    return

    threads = [threading.Thread(target=pusher), threading.Thread(target=collector)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 120)
    return outcomes, failures


def _all_revisions_whole(hub) -> None:
    with Session(hub.app.state.engine) as session:
        files = session.exec(select(RevisionFile)).all()
    assert files
    missing = [(f.path, f.sha256) for f in files if hub.app.state.store.stat(f.sha256) is None]
    assert not missing, missing
    assert all(blob_intact(hub, sha) for sha in {f.sha256 for f in files})


def test_pushes_racing_gc_never_publish_a_missing_blob(leaseless_hub, llama_adapter, tmp_path):
    """With no lease, gc deletes what a push is about to commit: the push is
    refused cleanly (upload_required, after the client's own retries) or
    commits whole; no revision ever lacks a blob."""
    outcomes, failures = _race(leaseless_hub, llama_adapter, tmp_path)
    assert not failures, (failures, outcomes)
    assert sum(outcomes.values()) >= 3, outcomes
    _all_revisions_whole(leaseless_hub)


def test_upload_leases_keep_a_pushs_blobs_from_gc(hub, llama_adapter, tmp_path):
    """With the default lease, even ``gc --grace 0`` in a loop lets every push through."""
    outcomes, failures = _race(hub, llama_adapter, tmp_path)
    assert not failures, (failures, outcomes)
    assert outcomes["published"] >= 3 and outcomes["asked to upload again"] == 0, outcomes
    _all_revisions_whole(hub)
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache2")
    pulled = client.pull("admin/keep", tmp_path / "out")
    assert (pulled.path / "README.md").read_text().startswith("# version")


def _corrupt(hub, sha256: str) -> None:
    """Change a stored blob's bytes behind the hub's back (same size)."""
    store = hub.app.state.store
    with store.open(sha256) as fh:
        data = bytearray(fh.read())
    data[-1] ^= 0xFF
    if hub.backend == "embedded":
        time.sleep(0.01)  # a new mtime, as any real write gives
        store.local_path(sha256).write_bytes(bytes(data))
    else:
        store.client.put_object(Bucket=store.bucket, Key=store._key(sha256), Body=bytes(data))


def test_a_push_repairs_a_blob_whose_stored_bytes_changed(hub, llama_adapter, tmp_path):
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    first = client.push(llama_adapter, name="admin/fragile")
    weights = next(f["sha256"] for f in first.detail["files"] if f["path"] == "adapter_model.safetensors")
    _corrupt(hub, weights)
    assert not blob_intact(hub, weights)
    again = client.push(llama_adapter, name="admin/fragile")
    assert again.revision == first.revision and again.files_uploaded >= 1  # the changed blob was sent again
    assert blob_intact(hub, weights)
    pulled = client.pull("admin/fragile", tmp_path / "out")
    name = "adapter_model.safetensors"
    assert (pulled.path / name).read_bytes() == (llama_adapter / name).read_bytes()


def test_a_read_cut_short_while_publishing_fails_the_commit(embedded_hub, llama_adapter, tmp_path, monkeypatch):
    """The store hands back a truncated card (a cut connection): the commit
    fails with storage_error and no revision, rather than publishing a
    shortened description."""
    from peft_hub.errors import StorageError

    hub = embedded_hub
    src = tmp_path / "carded"
    shutil.copytree(llama_adapter, src)
    (src / "README.md").write_text("# A card\n\n" + "A long description. " * 200)
    store = hub.app.state.store
    real_open = store.open

    def cut_open(sha256, start=0, end=None):
        fh = real_open(sha256, start, end)
        if end is None and sha256 == hashlib.sha256((src / "README.md").read_bytes()).hexdigest():
            data = fh.read()[:100]
            fh.close()
            return io.BytesIO(data)
        return fh

    monkeypatch.setattr(store, "open", cut_open)
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    with pytest.raises(StorageError, match="README.md"):
        client.push(src, name="admin/carded")
    with Session(hub.app.state.engine) as session:
        assert session.exec(select(RevisionFile)).all() == []
    monkeypatch.setattr(store, "open", real_open)
    assert client.push(src, name="admin/carded").created
    # the whole (capped) summary
    assert client.info("admin/carded")["meta"]["description"].count("A long description.") >= 10
