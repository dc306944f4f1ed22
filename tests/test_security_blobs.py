"""Content-addressed storage never grants access: an attacker with a write
token of their own, who knows the sha256s of a victim's private files, can
neither link them into an adapter, learn whether they exist, nor break them.
Each refused request leaves the database and the store as they were. Runs on
SQLite + local files and on PostgreSQL + SeaweedFS."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from hub_state import blob_intact, snapshot

from peft_hub.client import HubClient
from peft_hub.errors import AdapterNotFoundError

pytestmark = pytest.mark.integration


def _spec(path: Path) -> list[dict]:
    return [{"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
            for p in sorted(path.iterdir())]


@pytest.fixture
def world(hub, llama_adapter, tmp_path):
    """alice holds a private adapter; mallory has a write token of her own."""
    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
    alice_token = admin.create_token(scope="write", namespace="alice")["token"]
    mallory_token = admin.create_token(scope="write", namespace="mallory")["token"]
    secret = tmp_path / "secret"
    shutil.copytree(llama_adapter, secret)
    (secret / "README.md").write_text("# alice's secret adapter\n" + os.urandom(16).hex() + "\n")
    alice = HubClient(hub.url, alice_token, cache_dir=tmp_path / "c1")
    pushed = alice.push(secret, name="alice/secret", private=True)
    mallory = httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {mallory_token}"}, timeout=60)
    yield {"hub": hub, "alice": alice, "mallory": mallory, "mallory_token": mallory_token, "secret": secret,
           "spec": _spec(secret), "revision": pushed.revision, "admin": admin, "tmp": tmp_path}
    mallory.close()


def _ndjson(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_a_native_commit_cannot_link_a_blob_by_its_sha256(world):
    before = snapshot(world["hub"])
    r = world["mallory"].post("/api/adapters/mallory/stolen/commit", json={"files": world["spec"]})
    assert r.status_code == 422 and r.json()["error"] == "upload_required", r.text
    assert snapshot(world["hub"]) == before
    with pytest.raises(AdapterNotFoundError):
        HubClient(world["hub"].url, world["mallory_token"], cache_dir=world["tmp"] / "m").pull("mallory/stolen")


@pytest.mark.parametrize("with_size", [True, False])
def test_an_hf_commit_cannot_link_a_blob_by_its_lfs_oid(world, with_size):
    mallory = world["mallory"]
    assert mallory.post("/api/repos/create", json={"name": "stolen", "type": "model"}).status_code == 200
    before = snapshot(world["hub"])
    lines = [{"key": "header", "value": {"summary": "steal"}}]
    for f in world["spec"]:
        value = {"path": f["path"], "algo": "sha256", "oid": f["sha256"]}
        if with_size:
            value["size"] = f["size"]
        lines.append({"key": "lfsFile", "value": value})
    r = mallory.post("/api/models/mallory/stolen/commit/main", content=_ndjson(lines),
                     headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 422 and r.json()["error"] == "upload_required", r.text
    assert snapshot(world["hub"]) == before


def test_preupload_and_lfs_batch_are_no_existence_oracle(world):
    """A stored private blob and a blob that exists nowhere get the same answer."""
    mallory = world["mallory"]
    real = world["spec"]
    fake = [{**f, "sha256": hashlib.sha256(f["sha256"].encode()).hexdigest()} for f in real]
    before = snapshot(world["hub"])

    def planned(files: list[dict]) -> list[tuple[str, str, bool]]:
        r = mallory.post("/api/adapters/mallory/probe/preupload", json={"files": files})
        assert r.status_code == 200, r.text
        return sorted((u["path"], u["method"], u["auth"]) for u in r.json()["uploads"])

    assert planned(real) == planned(fake) and len(planned(real)) == len(real)

    assert mallory.post("/api/repos/create", json={"name": "probe", "type": "model"}).status_code == 200
    def batch(files: list[dict]) -> list[bool]:
        r = mallory.post("/mallory/probe.git/info/lfs/objects/batch", json={
            "operation": "upload", "objects": [{"oid": f["sha256"], "size": f["size"]} for f in files]})
        assert r.status_code == 200, r.text
        return ["upload" in (o.get("actions") or {}) for o in r.json()["objects"]]

    assert batch(real) == batch(fake) == [True] * len(real)
    after = snapshot(world["hub"])
    assert after["blobs"] == before["blobs"]


def test_a_wrong_size_never_deletes_another_users_blob(world):
    hub = world["hub"]
    weights = next(f for f in world["spec"] if f["path"] == "adapter_model.safetensors")
    before = snapshot(hub)
    for size in (weights["size"] + 1, 1, 0):
        bad = [f if f is not weights else {**weights, "size": size} for f in world["spec"]]
        r = world["mallory"].post("/api/adapters/mallory/x/commit", json={"files": bad})
        assert r.status_code == 422 and r.json()["error"] == "upload_required", r.text
    assert snapshot(hub) == before and blob_intact(hub, weights["sha256"])
    pulled = world["alice"].pull("alice/secret", world["tmp"] / "out")
    name = "adapter_model.safetensors"
    assert (pulled.path / name).read_bytes() == (world["secret"] / name).read_bytes()


def test_holding_the_bytes_or_read_access_is_proof_enough(world, llama_adapter):
    """Dedup of storage stays: uploading bytes the store already has, or naming
    blobs of a revision one may read, publishes without a second copy."""
    hub = world["hub"]
    token = world["mallory_token"]
    mallory = HubClient(hub.url, token, cache_dir=world["tmp"] / "m")
    blobs_before = snapshot(hub)["blobs"]
    result = mallory.push(world["secret"], name="mallory/same-bytes")  # she really has the files
    assert result.files_uploaded == len(world["spec"])  # the hub made her send them
    assert snapshot(hub)["blobs"] == blobs_before  # ... and kept one copy
    public = world["alice"].push(llama_adapter, name="alice/public")
    r = world["mallory"].post("/api/adapters/mallory/fork/commit", json={"files": _spec(llama_adapter)})
    assert r.status_code == 201, r.text
    assert r.json()["revision"] == public.revision


def test_hf_uploads_prove_possession_for_their_own_user(world):
    """LFS URLs are signed for one user: a URL issued to alice gives mallory nothing."""
    hub, mallory = world["hub"], world["mallory"]
    data = os.urandom(2048)
    oid = hashlib.sha256(data).hexdigest()
    alice_http = httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {world['alice'].token}"})
    alice_http.post("/api/repos/create", json={"name": "lfs", "type": "model"})
    batch = alice_http.post("/alice/lfs.git/info/lfs/objects/batch", json={
        "operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    assert httpx.put(href.replace("user=", "user=9"), content=data).status_code == 401  # re-addressed: refused
    assert httpx.put(href, content=data).status_code == 200
    mallory.post("/api/repos/create", json={"name": "lfs2", "type": "model"})
    config = (world["secret"] / "adapter_config.json").read_bytes()
    lines = [{"key": "header", "value": {"summary": "x"}},
             {"key": "file", "value": {"path": "adapter_config.json", "encoding": "base64",
                                       "content": base64.b64encode(config).decode()}},
             {"key": "lfsFile", "value": {"path": "adapter_model.safetensors", "algo": "sha256", "oid": oid,
                                          "size": len(data)}}]
    r = mallory.post("/api/models/mallory/lfs2/commit/main", content=_ndjson(lines))
    assert r.status_code == 422 and r.json()["error"] == "upload_required", r.text
    alice_http.close()


def test_inline_hf_files_are_received_bytes(world):
    """An inline file is the bytes themselves, so it proves possession."""
    mallory = world["mallory"]
    mallory.post("/api/repos/create", json={"name": "inline", "type": "model"})
    lines = [{"key": "header", "value": {"summary": "inline"}}]
    for p in sorted(world["secret"].iterdir()):
        lines.append({"key": "file", "value": {"path": p.name, "encoding": "base64",
                                               "content": base64.b64encode(p.read_bytes()).decode()}})
    r = mallory.post("/api/models/mallory/inline/commit/main", content=_ndjson(lines))
    assert r.status_code == 200, r.text


def _push_with_lineage(client: HubClient, src: Path, dst: Path, name: str, parents: list[dict], private: bool = False):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "adapter_model.safetensors")
    lineage = {"method": "stack", "params": {}, "parents": parents}
    save_file(tensors, dst / "adapter_model.safetensors",
              metadata={"format": "pt", "peft_hub.lineage": json.dumps(lineage)})
    return client.push(dst, name=name, private=private)


def test_lineage_never_reveals_a_parent_the_reader_cannot_read(world, llama_adapter):
    hub, alice, tmp = world["hub"], world["alice"], world["tmp"]
    secret_weights = next(f["sha256"] for f in world["spec"] if f["path"] == "adapter_model.safetensors")
    parents = [{"ref": "alice/secret", "revision": world["revision"], "sha256": secret_weights, "weight": 0.5},
               {"ref": "alice/does-not-exist", "revision": "e" * 40, "sha256": "f" * 64, "weight": 0.5}]
    _push_with_lineage(alice, llama_adapter, tmp / "child", "alice/child", parents)
    mallory = HubClient(hub.url, world["mallory_token"], cache_dir=tmp / "m")
    anonymous = HubClient(hub.url, None, cache_dir=tmp / "a")
    for reader in (mallory, anonymous):
        seen = reader.lineage("alice/child")["parents"]
        assert [p["in_hub"] for p in seen] == [False, False]
        # The private parent looks exactly like one that does not exist.
        assert {k: v for k, v in seen[0].items() if k != "ref"} == {k: v for k, v in seen[1].items() if k != "ref"}
        text = json.dumps(reader.info("alice/child"))
        assert secret_weights not in text and world["revision"] not in text and '"private": true' not in text
        assert secret_weights not in json.dumps(seen)
    own = alice.lineage("alice/child")["parents"]
    assert own[0]["in_hub"] and own[0]["revision"] == world["revision"] and own[0]["sha256"] == secret_weights
    assert [c["id"] for c in alice.lineage("alice/secret")["children"]] == ["alice/child"]


def test_a_pushed_lineage_cannot_claim_a_strangers_adapter(world, llama_adapter):
    hub, tmp = world["hub"], world["tmp"]
    mallory = HubClient(hub.url, world["mallory_token"], cache_dir=tmp / "m")
    claim = [{"ref": "alice/secret", "revision": world["revision"], "weight": 1.0}]
    _push_with_lineage(mallory, llama_adapter, tmp / "evil", "mallory/evil", claim)
    assert world["alice"].lineage("alice/secret")["children"] == []
    assert mallory.lineage("mallory/evil")["parents"][0]["in_hub"] is False
    # A public parent may be cited, but only with one of its real revisions.
    public = world["alice"].push(llama_adapter, name="alice/public")
    _push_with_lineage(mallory, llama_adapter, tmp / "fake", "mallory/fake",
                       [{"ref": "alice/public", "revision": "0" * 40, "weight": 1.0}])
    _push_with_lineage(mallory, llama_adapter, tmp / "real", "mallory/real",
                       [{"ref": "alice/public", "revision": public.revision, "weight": 1.0}])
    assert [c["id"] for c in world["alice"].lineage("alice/public")["children"]] == ["mallory/real"]


def test_evals_need_write_access_and_owners_can_delete_them(world):
    mallory = world["mallory"]
    hub = world["hub"]
    alice = world["alice"]
    public = alice.push(world["secret"], name="alice/open", private=False)
    before = snapshot(hub)
    r = mallory.post("/api/adapters/alice/open/evals",
                     json={"evals": [{"metric": "acc", "value": 0.1, "dataset": "d"}]})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert snapshot(hub) == before
    alice.add_evals("alice/open", [{"metric": "acc", "value": 0.9, "dataset": "d"}])
    (row,) = alice.evals("alice/open")
    assert row["revision"] == public.revision
    r = mallory.delete(f"/api/adapters/alice/open/evals/{row['id']}")
    assert r.status_code == 403 and alice.evals("alice/open") == [row]
    alice.delete_eval("alice/open", row["id"])
    assert alice.evals("alice/open") == []


def test_another_users_token_reads_and_writes_nothing_private(world):
    """Every route that names alice's private adapter answers mallory and an
    anonymous caller as if it did not exist (reads) or refuses (writes), and
    leaves everything as it was."""
    hub, rev = world["hub"], world["revision"]
    anonymous = httpx.Client(base_url=hub.url, timeout=30)
    reads = [
        "/api/adapters/alice/secret", f"/api/adapters/alice/secret?revision={rev}",
        "/api/adapters/alice/secret/revisions",
        "/api/adapters/alice/secret/card", "/api/adapters/alice/secret/evals", "/api/adapters/alice/secret/lineage",
        f"/api/adapters/alice/secret/resolve/{rev}/adapter_config.json",
        "/api/adapters/alice/secret/resolve/main/README.md",
        "/api/models/alice/secret", f"/api/models/alice/secret/revision/{rev}", "/api/models/alice/secret/tree/main",
        "/api/models/alice/secret/refs", f"/alice/secret/resolve/{rev}/adapter_config.json",
        "/alice/secret/resolve/main/adapter_model.safetensors",
    ]
    writes = [
        ("PUT", "/api/adapters/alice/secret/tags/prod", {"revision": rev}),
        ("DELETE", "/api/adapters/alice/secret/tags/main", None),
        ("DELETE", "/api/adapters/alice/secret", None),
        ("POST", "/api/adapters/alice/secret/evals", {"evals": [{"metric": "m", "value": 1.0, "dataset": "d"}]}),
        ("POST", "/api/adapters/alice/secret/preupload", {"files": world["spec"]}),
        ("POST", "/api/adapters/alice/secret/commit", {"files": world["spec"]}),
        ("POST", "/api/models/alice/secret/preupload/main", {"files": [{"path": "README.md", "size": 3}]}),
        ("POST", "/alice/secret.git/info/lfs/objects/batch", {"operation": "upload", "objects": []}),
        ("DELETE", "/api/repos/delete", {"organization": "alice", "name": "secret", "type": "model"}),
    ]
    before = snapshot(hub)
    for caller in (world["mallory"], anonymous):
        for path in reads:
            r = caller.get(path, follow_redirects=False)
            assert r.status_code in (401, 404), (path, r.status_code)
            assert r.headers.get("x-error-code") in ("adapter_not_found", "RepoNotFound", "unauthenticated"), path
            assert b"secret adapter" not in r.content and rev not in r.text
        listing = caller.get("/api/adapters", params={"q": "secret"}).json()
        assert listing["total"] == 0
        for method, path, body in writes:
            r = caller.request(method, path, json=body)
            assert r.status_code in (401, 403, 404), (method, path, r.status_code, r.text)
        page = caller.get("/alice/secret")
        assert page.status_code == 404 and "secret adapter" not in page.text
    assert snapshot(hub) == before
    anonymous.close()


def test_pushes_tag_moves_and_deletes_are_audited(world, llama_adapter):
    alice, admin = world["alice"], world["admin"]
    pushed = alice.push(llama_adapter, name="alice/audited")
    alice.set_tag("alice/audited", "prod")
    alice.delete_tag("alice/audited", "prod")
    alice.delete("alice/audited")
    events = [(e["action"], e["target"]) for e in admin.audit(actor="alice")]
    assert events[:4] == [("adapter.delete", "alice/audited"), ("tag.delete", "alice/audited:prod"),
                          ("tag.move", "alice/audited:prod"), ("push", f"alice/audited@{pushed.revision}")]
    refused = world["mallory"].delete("/api/adapters/alice/secret")
    assert refused.status_code == 404
    assert not [e for e in admin.audit(actor="mallory") if e["action"] == "adapter.delete"]


def test_sizes_and_counters_are_64_bit(hub):
    """Files up to the 8 GiB weights cap must fit the size columns on PostgreSQL too."""
    from sqlalchemy import BigInteger, Integer, inspect

    columns = {(t, c["name"]): c["type"] for t in ("revisionfile", "adapter", "blobupload")
               for c in inspect(hub.app.state.engine).get_columns(t)}
    for key in (("revisionfile", "size"), ("adapter", "total_size"), ("adapter", "downloads"), ("blobupload", "size")):
        kind = columns[key]
        assert isinstance(kind, BigInteger) or (hub.backend == "embedded" and isinstance(kind, Integer)), (key, kind)


def test_a_push_survives_losing_its_upload_proof_to_a_race(world, llama_adapter, monkeypatch):
    """Between alice's upload and her commit, mallory uploads the same bytes
    (on S3 her presigned PUT now names her as the uploader). alice's commit
    is refused as upload_required, and the client sends the bytes again."""
    hub, tmp = world["hub"], world["tmp"]
    src = tmp / "race"
    shutil.copytree(llama_adapter, src)
    (src / "README.md").write_text("# raced\n" + os.urandom(8).hex())
    mallory = HubClient(hub.url, world["mallory_token"], cache_dir=tmp / "m")
    real = HubClient._upload_missing
    calls = []

    def interleaved(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self is mallory:
            return out
        calls.append(out)
        if len(calls) == 1:
            mallory.push(src, name="mallory/race", private=True)
        return out

    monkeypatch.setattr(HubClient, "_upload_missing", interleaved)
    result = world["alice"].push(src, name="alice/race")
    assert world["alice"].info("alice/race")["revision"] == result.revision
    assert calls[0][1] >= 1  # at least the new card; alice holds the rest from earlier pushes
    if hub.backend == "s3-postgres":
        assert len(calls) == 2 and calls[1][1] >= 1  # the proof was lost and the bytes went again
    assert blob_intact(hub, next(f["sha256"] for f in _spec(src) if f["path"] == "README.md"))


def test_rate_limited_errors_carry_retry_after_to_the_client(embedded_hub, tmp_path):
    from peft_hub.errors import AuthenticationError, RateLimitedError

    bad = HubClient(embedded_hub.url, "phub_" + "0" * 12 + "x" * 40, cache_dir=tmp_path)
    seen = []
    for _ in range(30):
        try:
            bad.whoami()
        except RateLimitedError as exc:
            seen.append(exc.retry_after)
            break
        except AuthenticationError:
            continue
    assert seen and 0 < seen[0] <= 60


def test_no_stored_eval_breaks_a_page(world):
    """Extreme values pass the API's finite check; an infinity written straight
    into the database (an older hub accepted them) must not break the page either."""
    from sqlmodel import Session

    from peft_hub.hub.models import Eval, Revision

    hub, alice = world["hub"], world["alice"]
    alice.push(world["secret"], name="alice/extreme", private=False)
    alice.add_evals("alice/extreme", [{"metric": "acc", "value": v, "dataset": "d", "extra": {"base_value": b}}
                                      for v, b in ((1e308, -1e308), (5e-324, 0.0), (-0.0, 1e-300))])
    with Session(hub.app.state.engine) as session:
        revision = session.exec(__import__("sqlmodel").select(Revision)).all()[-1]
        session.add(Eval(revision_id=revision.id, metric="acc", value=float("inf"), dataset="d",
                         extra={"base_value": 1e308}))
        session.commit()
    for path in ("/alice/extreme", "/?q=extreme", "/api/adapters/alice/extreme/evals"):
        r = httpx.get(f"{hub.url}{path}")
        assert r.status_code == 200, (path, r.text[:300])
    for bad in (float("nan"), float("inf"), "1.0", True):
        r = world["mallory"].post("/api/adapters/mallory/x/evals", content=json.dumps(
            {"evals": [{"metric": "m", "value": bad, "dataset": "d"}]}), headers={"Content-Type": "application/json"})
        assert r.status_code in (404, 422), (bad, r.status_code)
