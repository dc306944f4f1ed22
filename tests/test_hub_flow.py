"""The whole registry flow against a live hub, on both backends: SQLite with
local files, and real PostgreSQL with real SeaweedFS S3."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from tiny_models import dir_bytes

from peft_hub.client import HubClient
from peft_hub.errors import (
    AdapterNotFoundError,
    AuthenticationError,
    EntryNotFoundError,
    InvalidAdapterError,
    InvalidNameError,
    PermissionDeniedError,
    RevisionNotFoundError,
    UnsafeFormatError,
    UploadRequiredError,
)

pytestmark = pytest.mark.integration


def _spec(path: Path) -> list[dict]:
    return [{"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
            for p in sorted(path.iterdir())]


def _stored_blobs(hub) -> set[str]:
    return {b.sha256 for b in hub.app.state.store.iterate()}


def test_push_pull_roundtrip_is_byte_identical_and_loads_in_peft(hub, llama_adapter, tmp_path):
    from peft import PeftModel
    from tiny_models import tiny_llama

    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache") as client:
        pushed = client.push(llama_adapter, name="admin/support", tags=["v1"], message="first")
        assert pushed.created and pushed.files_uploaded == 3
        assert pushed.bytes_uploaded == sum(p.stat().st_size for p in llama_adapter.iterdir())

        again = client.push(llama_adapter, name="admin/support")
        assert (again.revision, again.created, again.bytes_uploaded) == (pushed.revision, False, 0)

        pulled = client.pull("admin/support", tmp_path / "out")
        assert pulled.revision == pushed.revision
        assert dir_bytes(pulled.path) == dir_bytes(llama_adapter)

        # A second pull, of another ref to the same files, transfers nothing.
        assert client.pull(f"admin/support@{pushed.revision}", tmp_path / "out2").bytes_downloaded == 0
        assert client.pull("support@v1", tmp_path / "out3").bytes_downloaded == 0

        found = client.search(base_model="tiny-llama", min_rank=8)
        assert [a["id"] for a in found["items"]] == ["admin/support"]
        assert client.search(base_model="tiny-llama", min_rank=9)["total"] == 0
        assert client.search(target_module="q_proj", method="lora")["total"] == 1
        assert client.search(target_module="c_attn")["total"] == 0
        assert client.info("admin/support")["downloads"] == 3

    base = tiny_llama()
    ids = torch.arange(12).view(2, 6)
    with torch.no_grad():
        original = PeftModel.from_pretrained(tiny_llama(), llama_adapter)(ids).logits
        roundtrip = PeftModel.from_pretrained(base, pulled.path)(ids).logits
    assert torch.equal(original, roundtrip)


def test_tags_revisions_evals_and_card(hub, llama_adapter, tmp_path):
    v2 = tmp_path / "v2"
    shutil.copytree(llama_adapter, v2)
    (v2 / "README.md").write_text("# Support adapter v2\n")
    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache") as client:
        r1 = client.push(llama_adapter, name="admin/support", tags=["prod"])
        r2 = client.push(v2, name="admin/support", message="better card")
        assert r1.revision != r2.revision
        info = client.info("admin/support")
        assert info["tags"] == {"main": r2.revision, "prod": r1.revision}
        assert [r["revision"] for r in client.revisions("admin/support")] == [r2.revision, r1.revision]
        assert client.info("admin/support@prod")["revision"] == r1.revision

        client.set_tag(f"admin/support@{r2.revision}", "prod")
        assert client.info("admin/support@prod")["revision"] == r2.revision
        client.delete_tag("admin/support", "prod")
        with pytest.raises(RevisionNotFoundError):
            client.info("admin/support@prod")
        with pytest.raises(RevisionNotFoundError):
            client.info("admin/support@" + "0" * 40)

        client.add_evals(f"admin/support@{r1.revision}", [
            {"metric": "accuracy", "value": 0.81, "dataset": "support-qa", "dataset_version": "abc", "split": "test"},
        ])
        client.add_evals("admin/support", [{"metric": "accuracy", "value": 0.86, "dataset": "support-qa"}])
        evals = client.evals("admin/support")
        assert [(e["revision"], e["value"], e["added_by"]) for e in evals] == [
            (r1.revision, 0.81, "admin"), (r2.revision, 0.86, "admin")]
        assert evals[0]["split"] == "test" and evals[0]["dataset_version"] == "abc"

        card = httpx.get(f"{hub.url}/api/adapters/admin/support/card")
        assert card.status_code == 200 and card.text == "# Support adapter v2\n"


def test_bad_pushes_are_refused_and_nothing_is_stored(hub, llama_adapter, tmp_path):
    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    read_token = admin.create_token(scope="read", namespace="reader")["token"]
    reader = HubClient(hub.url, read_token, cache_dir=tmp_path / "c2")
    with pytest.raises(PermissionDeniedError, match="read"):
        reader.push(llama_adapter, name="reader/x")
    assert admin.search()["total"] == 0

    with pytest.raises(InvalidNameError):
        admin.push(llama_adapter, name="../../etc")
    raw = httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {hub.admin_token}"})
    for path in ("/api/adapters/..%2F..%2Fetc/x/commit", "/api/adapters/Adm%C3%AFn/x/commit",
                 "/api/adapters/a/b..c/commit"):
        r = raw.post(path, json={"files": _spec(llama_adapter)})
        assert r.status_code in (404, 422), path
        if r.status_code == 422:
            assert r.json()["error"] == "invalid_name"

    # A pickle renamed to .safetensors, sent straight to the API (no client-side checks).
    evil = tmp_path / "evil"
    shutil.copytree(llama_adapter, evil)
    torch.save({"x": torch.zeros(3)}, evil / "adapter_model.safetensors")
    spec = _spec(evil)
    plan = raw.post("/api/adapters/admin/evil/preupload", json={"files": spec}).json()
    for target in plan["uploads"]:
        headers = dict(target["headers"])
        client = raw if target["auth"] else httpx.Client()
        sent = client.put(target["url"], content=(evil / target["path"]).read_bytes(), headers=headers)
        assert sent.status_code in (200, 201)
    r = raw.post("/api/adapters/admin/evil/commit", json={"files": spec})
    assert r.status_code == 422 and r.json()["error"] == "unsafe_format", r.text
    assert "safe_serialization=True" in r.json()["detail"]

    # Bytes that do not match the declared digest are refused by the store.
    weights = (llama_adapter / "adapter_model.safetensors").read_bytes()
    bogus = hashlib.sha256(b"something else").hexdigest()
    tampered = [{"path": "adapter_model.safetensors", "sha256": bogus, "size": len(weights)}]
    plan = raw.post("/api/adapters/admin/t/preupload", json={"files": tampered}).json()
    target = plan["uploads"][0]
    client = raw if target["auth"] else httpx.Client()
    assert client.put(target["url"], content=weights, headers=target["headers"]).status_code >= 400
    with pytest.raises(UploadRequiredError):  # the bogus blob never arrived, so nobody holds it
        others = [f for f in _spec(llama_adapter) if f["path"] != "adapter_model.safetensors"]
        admin._json("POST", "/api/adapters/admin/t/commit", json={"files": [*others, *tampered]})

    # A tampered safetensors header is caught by the hub, not only the client.
    bad = tmp_path / "bad"
    shutil.copytree(llama_adapter, bad)
    with open(bad / "adapter_model.safetensors", "ab") as fh:
        fh.write(b"\0" * 8)
    spec = _spec(bad)
    for target in raw.post("/api/adapters/admin/bad/preupload", json={"files": spec}).json()["uploads"]:
        client = raw if target["auth"] else httpx.Client()
        client.put(target["url"], content=(bad / target["path"]).read_bytes(), headers=target["headers"])
    with pytest.raises(InvalidAdapterError, match="trailing"):
        admin._json("POST", "/api/adapters/admin/bad/commit", json={"files": spec})
    with pytest.raises(UnsafeFormatError):
        torch.save({"x": 1}, bad / "adapter_model.bin")
        admin.push(bad, name="admin/bad")

    assert admin.search()["total"] == 0
    with pytest.raises(AdapterNotFoundError):
        admin.info("admin/evil")


def test_auth_private_adapters_and_namespaces(hub, llama_adapter, tmp_path):
    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
    alice = HubClient(hub.url, admin.create_token(scope="write", namespace="alice")["token"], cache_dir=tmp_path / "c1")
    bob = HubClient(hub.url, admin.create_token(scope="write", namespace="bob")["token"], cache_dir=tmp_path / "c2")
    anon = HubClient(hub.url, None, cache_dir=tmp_path / "c3")
    anon.token = None
    anon.http.headers.pop("Authorization", None)

    assert alice.whoami()["name"] == "alice"
    alice.push(llama_adapter, name="secret", private=True)  # bare name -> alice/secret
    alice.push(llama_adapter, name="open")
    with pytest.raises(PermissionDeniedError):
        alice.push(llama_adapter, name="bob/x")
    with pytest.raises(PermissionDeniedError):
        alice.create_token(scope="read", namespace="bob")  # for herself is allowed; for others is not

    assert alice.info("alice/secret")["private"] is True
    for outsider in (bob, anon):
        with pytest.raises(AdapterNotFoundError):
            outsider.info("alice/secret")
        with pytest.raises(AdapterNotFoundError):
            outsider.pull("alice/secret", tmp_path / "x")
        assert [a["id"] for a in outsider.search(owner="alice")["items"]] == ["alice/open"]
    r = httpx.get(f"{hub.url}/api/adapters/alice/secret/resolve/main/adapter_config.json")
    assert r.status_code == 404 and r.json()["error"] == "adapter_not_found"
    assert {a["id"] for a in admin.search(owner="alice")["items"]} == {"alice/open", "alice/secret"}
    with pytest.raises(PermissionDeniedError):
        bob.set_tag("alice/open", "mine")
    with pytest.raises(AuthenticationError):
        anon.add_evals("alice/open", [{"metric": "m", "value": 1, "dataset": "d"}])
    # Organisations: members write and see private adapters; others do not.
    admin.add_member("acme", "alice")
    alice.push(llama_adapter, name="acme/internal", private=True)
    assert alice.whoami()["orgs"] == ["acme"]
    assert alice.info("acme/internal")["private"] is True
    with pytest.raises(AdapterNotFoundError):
        bob.info("acme/internal")
    with pytest.raises(PermissionDeniedError):
        bob.push(llama_adapter, name="acme/x")
    # A token limited to one namespace cannot use the user's others.
    limited = HubClient(hub.url, admin.create_token(scope="write", namespace="alice", limit=["alice"])["token"],
                        cache_dir=tmp_path / "c5")
    with pytest.raises(PermissionDeniedError):
        limited.push(llama_adapter, name="acme/y")
    with pytest.raises(AdapterNotFoundError):
        limited.info("acme/internal")
    limited.push(llama_adapter, name="alice/z")

    bad = HubClient(hub.url, "phub_" + "0" * 40, cache_dir=tmp_path / "c4")
    with pytest.raises(AuthenticationError):
        bad.search()


def test_gc_deletes_only_unreferenced_blobs_past_grace(hub, llama_adapter, tmp_path):
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    v2 = tmp_path / "v2"
    shutil.copytree(llama_adapter, v2)
    (v2 / "README.md").write_text("# other\n")
    client.push(llama_adapter, name="admin/keep")
    client.push(v2, name="admin/drop")
    old_card = hashlib.sha256((v2 / "README.md").read_bytes()).hexdigest()
    assert old_card in _stored_blobs(hub)

    client.delete("admin/drop")
    assert client.gc()["deleted"] == []  # still within the grace period
    out = client.gc(grace_seconds=0, dry_run=True)
    assert out["deleted"] == [old_card] and old_card in _stored_blobs(hub)
    out = client.gc(grace_seconds=0)
    assert out["deleted"] == [old_card] and out["bytes_freed"] == len(b"# other\n")
    assert old_card not in _stored_blobs(hub)
    # Shared blobs (config, weights) are still referenced by admin/keep.
    pulled = client.pull("admin/keep", tmp_path / "keep")
    assert dir_bytes(pulled.path) == dir_bytes(llama_adapter)
    reader = HubClient(hub.url, client.create_token(scope="write", namespace="w")["token"], cache_dir=tmp_path / "c")
    with pytest.raises(PermissionDeniedError):
        reader.gc()


def test_lineage_recorded_from_safetensors_metadata(hub, llama_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    parent = client.push(llama_adapter, name="admin/support")
    child = tmp_path / "child"
    shutil.copytree(llama_adapter, child)
    tensors = load_file(child / "adapter_model.safetensors")
    lineage = {"method": "stack", "params": {}, "peft_hub_version": "0.1.0", "parents": [
        {"ref": "admin/support", "revision": parent.revision, "sha256": "ab" * 32, "weight": 0.7},
        {"ref": "/local/legal", "revision": None, "sha256": "cd" * 32, "weight": 0.3}]}
    save_file(tensors, child / "adapter_model.safetensors",
              metadata={"format": "pt", "peft_hub.lineage": json.dumps(lineage)})
    client.push(child, name="admin/blend")

    up = client.lineage("admin/blend")
    parents = [(p["ref"], p["weight"], p["in_hub"]) for p in up["parents"]]
    assert parents == [("admin/support", 0.7, True), ("/local/legal", 0.3, False)]
    assert up["parents"][0]["revision"] == parent.revision
    down = client.lineage("admin/support")
    assert [c["id"] for c in down["children"]] == ["admin/blend"]


def test_unreachable_hub_is_a_clear_error(tmp_path):
    from services import free_port

    from peft_hub.errors import HubUnreachableError

    with pytest.raises(HubUnreachableError, match="cannot reach"):
        HubClient(f"http://127.0.0.1:{free_port()}", "phub_x", cache_dir=tmp_path).search()


def test_missing_file_and_range_requests(embedded_hub, llama_adapter, tmp_path):
    client = HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache")
    client.push(llama_adapter, name="admin/support")
    with pytest.raises(EntryNotFoundError):
        client._json("GET", "/api/adapters/admin/support/resolve/main/nope.json")
    r = httpx.get(f"{embedded_hub.url}/api/adapters/admin/support/resolve/main/adapter_model.safetensors",
                  headers={"Range": "bytes=0-7"})
    assert r.status_code == 206
    assert r.content == (llama_adapter / "adapter_model.safetensors").read_bytes()[:8]


def test_concurrent_pushes_to_one_new_name_all_land(hub, llama_adapter, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    variants = []
    for i in range(4):
        d = tmp_path / f"v{i}"
        shutil.copytree(llama_adapter, d)
        (d / "README.md").write_text(f"# variant {i}\n")
        variants.append(d)

    def push(d: Path):
        with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / f"cache-{d.name}") as client:
            return client.push(d, name="admin/raced").revision

    with ThreadPoolExecutor(4) as pool:
        revisions = list(pool.map(push, variants))
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c")
    listed = [r["revision"] for r in client.revisions("admin/raced")]
    assert sorted(listed) == sorted(revisions) and len(set(revisions)) == 4
    assert client.info("admin/raced")["revision"] in revisions
    assert client.search(q="raced")["total"] == 1


def test_a_commit_built_on_a_stale_main_is_refused(hub, llama_adapter, tmp_path):
    """What the Hugging Face commit route relies on: publishing re-reads main
    under a row lock and refuses when it moved since the commit's parent."""
    from sqlmodel import Session

    from peft_hub.adapter import validate_dir
    from peft_hub.errors import ConflictError
    from peft_hub.hub.auth import authenticate
    from peft_hub.hub.publish import publish

    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    first = client.push(llama_adapter, name="admin/hf")
    v2 = tmp_path / "v2"
    shutil.copytree(llama_adapter, v2)
    (v2 / "README.md").write_text("# v2\n")
    client.push(v2, name="admin/hf")  # main moves on
    _, entries = validate_dir(llama_adapter)
    with Session(hub.app.state.engine) as session:
        principal = authenticate(session, hub.admin_token)
        with pytest.raises(ConflictError, match="main moved"):
            publish(session, hub.app.state.store, principal=principal, repo_id="admin/hf", entries=entries,
                    parent=first.revision)
        session.rollback()
    assert client.info("admin/hf")["files"][0]["size"] == len(b"# v2\n")
