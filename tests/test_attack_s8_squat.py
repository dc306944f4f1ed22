"""Junk squatting a victim's sha256 on S3, then the victim's bytes sent through the hub.

mallory knows the sha256 and size of alice's weights (not their bytes: a
file published elsewhere, a leaked manifest). With the hub's own multipart
plan (no part checksums, so S3 checks nothing but the parts' sizes) she
completes an object of junk under that name. The object holds S3's
composite checksum only; nothing vouches for its bytes.

alice then sends her real bytes through the hub: ``PUT /api/blobs/{sha256}``
(the route the client falls back to when its own completion answers
"stored by someone else") or an HF LFS upload. ``S3BlobWriter.commit``
(hub/storage/s3.py) sends them with ``If-None-Match: *``, takes S3's 412 as
"already stored, and by its name it holds these bytes", and the route then
records alice's receipt *and* ``ledger.note_verified`` for the junk. From
then on the ledger trusts the junk (``ledger.trusted``: same mtime):

- a blob publish reads back whole (up to ``publish.READ_WHOLE_BYTES``,
  64 MiB) fails with 502 ``storage_error`` on every try: alice can never
  publish it, and the junk is never cleared;
- a larger one (only its header is read back; emulated by lowering that
  bound) is published, and every pull of it fails its sha256 check.

The multipart path of the real client is safe (``uploads.clear_unverified``
hashes an unverified object first): see test_attack_s8_push.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
import test_multipart
from conftest import make_settings
from services import live_hub
from test_attack_s8_push import THRESHOLD, WEIGHTS, exact_lora

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration


def squat(mallory: httpx.Client, sha256: str, junk: bytes) -> None:
    """Complete an upload of ``junk`` under ``sha256`` with the hub's plan (``junk`` above the threshold)."""
    spec = {"path": WEIGHTS, "sha256": sha256, "size": len(junk)}
    r = mallory.post("/api/adapters/mallory/squat/preupload", json={"files": [spec]})
    plan = r.json()["uploads"][0]["multipart"]
    assert plan["checksums"] is False, plan
    for part in plan["parts"]:
        start = (part["number"] - 1) * plan["part_size"]
        sent = httpx.put(part["url"], content=junk[start:start + plan["part_size"]], headers=part["headers"])
        assert sent.status_code == 200, sent.text
    done = mallory.post("/api/adapters/mallory/squat/uploads/complete", json={
        "sha256": sha256, "size": len(junk),
        "multipart": {"part_size": plan["part_size"], "upload_id": plan["upload_id"], "ticket": plan["ticket"]}})
    assert done.status_code == 200 and done.json()["stored"] is True, done.text


@pytest.fixture
def squatted(request, tmp_path):
    """An S3 hub where mallory has completed junk under the sha256 of alice's weights."""
    settings = make_settings("s3-postgres", tmp_path, request).model_copy(
        update={"multipart_threshold": THRESHOLD, "multipart_part_bytes": THRESHOLD})
    with live_hub(settings) as hub:
        alice, mallory = test_multipart.users(hub, tmp_path)
        src = exact_lora(tmp_path / "victim", 2 * THRESHOLD + 1000, seed=3)
        data = (src / WEIGHTS).read_bytes()
        spec = {"path": WEIGHTS, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        squat(mallory, spec["sha256"], data[:1024 * 1024] + b"\x5a" * (len(data) - 1024 * 1024))  # a plausible header
        yield {"hub": hub, "alice": alice, "mallory": mallory, "src": src, "data": data, "spec": spec,
               "tmp": tmp_path}
        mallory.close()


def _send_via_lfs(http: httpx.Client, spec: dict, data: bytes) -> None:
    assert http.post("/api/repos/create", json={"name": "victim", "organization": "alice"}).status_code == 200
    batch = http.post("/alice/victim.git/info/lfs/objects/batch",
                      json={"operation": "upload", "objects": [{"oid": spec["sha256"], "size": spec["size"]}]})
    href = batch.json()["objects"][0]["actions"]["upload"]["href"]
    sent = httpx.put(href, content=data, timeout=60)
    assert sent.status_code in (200, 201), sent.text


def _send_via_hub(http: httpx.Client, spec: dict, data: bytes) -> None:
    sent = http.put(f"/api/blobs/{spec['sha256']}?size={spec['size']}", content=data)
    assert sent.status_code == 201, sent.text


@pytest.mark.parametrize("read_back", ["whole", "header-only"])
@pytest.mark.parametrize("route", ["hub-put", "hf-lfs"])
@pytest.mark.parametrize("writer", ["one-put", "parts"])
def test_bytes_sent_through_the_hub_replace_junk_squatting_their_name(squatted, monkeypatch, route, read_back, writer):
    """S3 keeps the first object under a name (``If-None-Match: *``): the hub's writer must not take
    that 412 as "these bytes are stored" unless S3's own sha256, or a hash of the object, says so;
    junk is deleted and the verified bytes stored (S3BlobWriter.commit)."""
    from peft_hub.hub import publish
    from peft_hub.hub.storage import s3

    if read_back == "header-only":  # as for weights over 64 MiB, without sending 64 MiB
        monkeypatch.setattr(publish, "READ_WHOLE_BYTES", 1024 * 1024)
    if writer == "parts":  # the hub's own writer sends a large blob in parts, completed with If-None-Match
        monkeypatch.setattr(s3, "PART_BYTES", THRESHOLD)
    hub, alice, src, data, spec = (squatted[k] for k in ("hub", "alice", "src", "data", "spec"))
    (_send_via_hub if route == "hub-put" else _send_via_lfs)(alice.http, spec, data)
    # The name must now hold alice's bytes (a refusal would leave her unable ever to publish them).
    with hub.app.state.store.open(spec["sha256"]) as fh:
        stored = hashlib.sha256(fh.read()).hexdigest()
    files = [{"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
             for p in sorted(src.iterdir())]
    for item in alice.http.post("/api/adapters/alice/victim/preupload", json={"files": files}).json()["uploads"]:
        if item["path"] != WEIGHTS:  # the config and the card, sent the ordinary way
            auth = {"Authorization": alice.http.headers["Authorization"]} if item["auth"] else {}
            httpx.request(item["method"], item["url"], content=(src / item["path"]).read_bytes(),
                          headers={**item["headers"], **auth}).raise_for_status()
    commit = alice.http.post("/api/adapters/alice/victim/commit", json={"files": files})
    # today: "whole" -> 502 storage_error (alice can never publish); "header-only" -> 201 with junk behind it
    assert stored == spec["sha256"], "the hub answered the upload as stored and kept junk under the name"
    assert commit.status_code == 201, commit.text
    out = HubClient(hub.url, hub.admin_token, cache_dir=squatted["tmp"] / "pv").pull(
        "alice/victim", squatted["tmp"] / "out")
    assert (Path(out.path) / WEIGHTS).read_bytes() == data


def test_the_real_clients_own_push_in_parts_clears_the_junk(squatted):
    """What holds: the client's push in parts hashes the unverified object at completion and replaces it."""
    hub, alice, src, data = (squatted[k] for k in ("hub", "alice", "src", "data"))
    alice.push(src, name="alice/victim")
    out = HubClient(hub.url, hub.admin_token, cache_dir=squatted["tmp"] / "pv").pull(
        "alice/victim", squatted["tmp"] / "out")
    assert (Path(out.path) / WEIGHTS).read_bytes() == data


def test_an_hf_inline_file_whose_name_is_squatted_still_commits(squatted):
    """A small file's sha256 is easy to know (a stock adapter_config.json, a template card): junk of
    any size above the threshold squats it, and alice's HF commit sends it inline."""
    import base64
    import json

    hub, alice, src = squatted["hub"], squatted["alice"], squatted["src"]
    config = (src / "adapter_config.json").read_bytes()
    squat(squatted["mallory"], hashlib.sha256(config).hexdigest(), b"{" * (THRESHOLD + 10))
    http = alice.http
    assert http.post("/api/repos/create", json={"name": "inline", "organization": "alice"}).status_code == 200
    lines = [{"key": "header", "value": {"summary": "inline"}}] + [
        {"key": "file", "value": {"content": base64.b64encode(p.read_bytes()).decode(), "path": p.name,
                                  "encoding": "base64"}} for p in sorted(src.iterdir())]  # huggingface_hub's order
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    ndjson = {"Content-Type": "application/x-ndjson"}
    r = http.post("/api/models/alice/inline/commit/main", content=body, headers=ndjson)
    assert r.status_code == 200, r.text  # today: 422 checksum_mismatch, "blob ... is 5242890 bytes, not 108"
    out = HubClient(hub.url, hub.admin_token, cache_dir=squatted["tmp"] / "pi").pull(
        "alice/inline", squatted["tmp"] / "out-inline")
    assert (Path(out.path) / "adapter_config.json").read_bytes() == config
