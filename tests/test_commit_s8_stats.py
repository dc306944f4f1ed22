"""The commit's store round trips: on S3 a freshly pushed blob is asked about
(HEAD) twice, once outside the write transaction (the possession check, by
S3's recorded uploader, and the trust check share that answer) and once
under the blob's lock; a refusal is the one it always was."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter

import httpx
import pytest
from conftest import make_settings
from services import live_hub

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_hub(request, tmp_path):
    with live_hub(make_settings("s3-postgres", tmp_path, request)) as server:
        yield server


def _counting(monkeypatch, store) -> Counter:
    asked: Counter = Counter()
    real = store.stat

    def stat(sha256):
        asked[sha256] += 1
        return real(sha256)

    monkeypatch.setattr(store, "stat", stat)
    return asked


def _files(path) -> list[dict]:
    return [{"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
            for p in sorted(path.iterdir())]


def test_a_fresh_push_heads_each_blob_twice(s3_hub, llama_adapter, tmp_path, monkeypatch):
    asked = _counting(monkeypatch, s3_hub.app.state.store)
    HubClient(s3_hub.url, s3_hub.admin_token, cache_dir=tmp_path / "c").push(llama_adapter, name="admin/fresh")
    blobs = {f["sha256"] for f in _files(llama_adapter)}
    assert set(asked) == blobs and set(asked.values()) == {2}, asked


def test_a_blob_not_uploaded_is_refused_alike_stored_or_not(s3_hub, llama_adapter, tmp_path):
    """A commit naming a blob its author never uploaded gets upload_required
    with the same message whether the blob is stored or not."""
    admin = HubClient(s3_hub.url, s3_hub.admin_token, cache_dir=tmp_path / "c")
    admin.push(llama_adapter, name="admin/held", private=True)  # bob reads no revision of it
    token = admin.create_token(scope="write", namespace="bob")["token"]
    stored = _files(llama_adapter)
    missing = [{**stored[0], "sha256": "0" * 64}] + stored[1:]
    messages = []
    for files in (stored, missing):
        refused = httpx.post(f"{s3_hub.url}/api/adapters/bob/steal/commit", json={"files": files},
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert refused.status_code == 422 and refused.json()["error"] == "upload_required", refused.text
        messages.append(refused.json()["detail"].replace(files[0]["sha256"], "<sha256>"))
    assert messages[0] == messages[1] and "has not been uploaded by you" in messages[0]


def test_a_mixed_push_of_held_and_new_blobs_heads_each_twice(s3_hub, llama_adapter, tmp_path, monkeypatch):
    client = HubClient(s3_hub.url, s3_hub.admin_token, cache_dir=tmp_path / "c")
    client.push(llama_adapter, name="admin/mixed")
    changed = tmp_path / "changed"
    shutil.copytree(llama_adapter, changed)
    (changed / "README.md").write_text("# a new card\n")
    asked = _counting(monkeypatch, s3_hub.app.state.store)
    client.push(changed, name="admin/mixed")
    new = hashlib.sha256((changed / "README.md").read_bytes()).hexdigest()
    assert asked[new] == 2, asked
    # A held blob: the preupload checks it is still stored, then the commit asks twice.
    assert all(count == 3 for sha256, count in asked.items() if sha256 != new), asked
