"""Large files go to S3 in parts with presigned part URLs, and a push killed
midway resumes with only the missing parts (issue #12, section 2)."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_settings
from services import live_hub

from peft_hub.client import HubClient
from peft_hub.client.multipart import MIN_PART
from peft_hub.errors import AdapterNotFoundError, ChecksumMismatchError, InvalidInputError

pytestmark = pytest.mark.integration  # SeaweedFS or PostgreSQL

MiB = 1024 * 1024


@pytest.fixture
def s3hub(request, tmp_path):
    """A hub on SeaweedFS and PostgreSQL that plans parts above 5 MiB."""
    settings = make_settings("s3-postgres", tmp_path, request).model_copy(
        update={"multipart_threshold": MIN_PART, "multipart_part_bytes": MIN_PART}
    )
    with live_hub(settings) as server:
        yield server


def big_lora(path: Path, width: int, seed: int) -> Path:
    """A rank-2 LoRA whose weights file is about ``16 * width`` bytes of random floats."""
    path.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "r": 2,
        "lora_alpha": 4,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": "t",
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((2, width), dtype=np.float32).tobytes()
    b = rng.standard_normal((width, 2), dtype=np.float32).tobytes()
    header = {
        "base_model.model.layers.0.q_proj.lora_A.weight": {
            "dtype": "F32",
            "shape": [2, width],
            "data_offsets": [0, len(a)],
        },
        "base_model.model.layers.0.q_proj.lora_B.weight": {
            "dtype": "F32",
            "shape": [width, 2],
            "data_offsets": [len(a), len(a) + len(b)],
        },
    }
    raw = json.dumps(header).encode()
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + a + b)
    (path / "README.md").write_text(f"# big {seed}\n")
    return path


def count_parts(client: HubClient, fail_after: int | None = None) -> list[int]:
    """Record the part numbers the client PUTs; with ``fail_after``, the
    client dies (as if killed) on any part numbered above it."""
    seen: list[int] = []

    def hook(request: httpx.Request) -> None:
        number = request.url.params.get("partNumber")
        if request.method == "PUT" and number:
            if fail_after is not None and int(number) > fail_after:
                raise KeyboardInterrupt("killed")
            seen.append(int(number))

    client.http.event_hooks["request"] = [hook]
    return seen


def users(hub, tmp_path):
    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
    alice = HubClient(hub.url, admin.create_token(scope="write", namespace="alice")["token"], cache_dir=tmp_path / "c1")
    mallory = admin.create_token(scope="write", namespace="mallory")["token"]
    alice.part_bytes = MIN_PART
    return alice, httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {mallory}"}, timeout=60)


def weights_spec(path: Path) -> list[dict]:
    w = path / "adapter_model.safetensors"
    return [{"path": w.name, "sha256": hashlib.sha256(w.read_bytes()).hexdigest(), "size": w.stat().st_size}]


def test_a_large_file_pushes_in_parts_and_pulls_back_identical(s3hub, tmp_path):
    alice, _ = users(s3hub, tmp_path)
    src = big_lora(tmp_path / "big", 1024 * 1024, seed=1)  # 16 MiB of weights: 4 parts of 5 MiB
    size = (src / "adapter_model.safetensors").stat().st_size
    parts = count_parts(alice)
    alice.push(src, name="alice/big")
    assert sorted(parts) == list(range(1, math.ceil(size / MIN_PART) + 1))
    assert not list((alice.cache.root / "uploads").glob("*.json"))  # the state file goes once it is done
    out = HubClient(s3hub.url, s3hub.admin_token, cache_dir=tmp_path / "c9").pull("alice/big", tmp_path / "out")
    assert (Path(out.path) / "adapter_model.safetensors").read_bytes() == (
        src / "adapter_model.safetensors"
    ).read_bytes()


def test_a_killed_push_resumes_with_only_the_missing_parts(s3hub, tmp_path):
    alice, _ = users(s3hub, tmp_path)
    src = big_lora(tmp_path / "big", 1024 * 1024, seed=2)
    count_parts(alice, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        alice.push(src, name="alice/big")
    assert len(list((alice.cache.root / "uploads").glob("*.json"))) == 1
    again = count_parts(alice)
    alice.push(src, name="alice/big")
    assert sorted(again) == [2, 3, 4], again
    assert alice.info("alice/big")["files"]


def test_another_user_cannot_complete_or_resume_an_upload(s3hub, tmp_path):
    alice, mallory = users(s3hub, tmp_path)
    src = big_lora(tmp_path / "big", 1024 * 1024, seed=3)
    spec = weights_spec(src)
    plan = alice.http.post("/api/adapters/alice/big/preupload", json={"files": spec}).json()["uploads"][0]["multipart"]
    body = {
        "sha256": spec[0]["sha256"],
        "size": spec[0]["size"],
        "multipart": {"part_size": plan["part_size"], "upload_id": plan["upload_id"], "ticket": plan["ticket"]},
    }
    stolen = mallory.post("/api/adapters/mallory/big/uploads/complete", json=body)
    bogus = mallory.post(
        "/api/adapters/mallory/big/uploads/complete",
        json={**body, "multipart": {**body["multipart"], "upload_id": "nonexistent"}},
    )
    assert stolen.status_code == bogus.status_code == 404, (stolen.text, bogus.text)
    assert stolen.json()["error"] == bogus.json()["error"]
    # Re-planning with alice's ticket gives mallory an upload of her own, not alice's.
    resumed = mallory.post(
        "/api/adapters/mallory/big/preupload", json={"files": [{**spec[0], "multipart": body["multipart"]}]}
    ).json()
    assert resumed["uploads"][0]["multipart"]["upload_id"] != plan["upload_id"]


def test_an_incomplete_upload_or_wrong_bytes_publish_nothing(s3hub, tmp_path):
    alice, _ = users(s3hub, tmp_path)
    src = big_lora(tmp_path / "big", 1024 * 1024, seed=4)
    spec = weights_spec(src)
    data = (src / "adapter_model.safetensors").read_bytes()
    # Declared digests: a part URL refuses other bytes.
    ps = MIN_PART
    digests = [hashlib.sha256(data[i : i + ps]).hexdigest() for i in range(0, len(data), ps)]
    req = [{**spec[0], "multipart": {"part_size": ps, "parts": digests}}]
    plan = alice.http.post("/api/adapters/alice/big/preupload", json={"files": req}).json()["uploads"][0]["multipart"]
    assert plan["checksums"] is True
    first = plan["parts"][0]
    assert httpx.put(first["url"], content=b"x" * ps, headers=first["headers"]).status_code == 400
    assert httpx.put(first["url"], content=data[:ps], headers=first["headers"]).status_code == 200
    body = {
        **spec[0],
        "multipart": {"part_size": ps, "parts": digests, "upload_id": plan["upload_id"], "ticket": plan["ticket"]},
    }
    r = alice.http.post("/api/adapters/alice/big/uploads/complete", json=body)
    assert r.status_code == InvalidInputError.status_code and "not uploaded yet" in r.json()["detail"], r.text
    # No digests: the hub cannot refuse wrong parts, so publish hashes the blob and refuses it.
    plan = alice.http.post("/api/adapters/alice/big/preupload", json={"files": spec}).json()["uploads"][0]["multipart"]
    wrong = bytearray(data)
    wrong[-1] ^= 1
    for part in plan["parts"]:
        start = (part["number"] - 1) * plan["part_size"]
        chunk = bytes(wrong[start : start + plan["part_size"]])
        assert httpx.put(part["url"], content=chunk, headers=part["headers"]).status_code == 200
    body = {
        **spec[0],
        "multipart": {"part_size": plan["part_size"], "upload_id": plan["upload_id"], "ticket": plan["ticket"]},
    }
    r = alice.http.post("/api/adapters/alice/big/uploads/complete", json=body)
    assert r.status_code == 200 and r.json()["stored"] is True, r.text
    files = [
        {"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in sorted(src.iterdir())
    ]
    small = [f for f in files if f["path"] != "adapter_model.safetensors"]
    for f in small:
        up = alice.http.post("/api/adapters/alice/big/preupload", json={"files": [f]}).json()["uploads"][0]
        assert httpx.put(up["url"], content=(src / f["path"]).read_bytes(), headers=up["headers"]).status_code == 200
    r = alice.http.post("/api/adapters/alice/big/commit", json={"files": files})
    assert r.status_code == ChecksumMismatchError.status_code and r.json()["error"] == ChecksumMismatchError.code, (
        r.text
    )
    with pytest.raises(AdapterNotFoundError):
        alice.info("alice/big")
    # The wrong bytes were discarded: the same push now uploads and publishes the right ones.
    alice.push(src, name="alice/big")
    assert alice.info("alice/big")["files"]


def _put_parts(plan: dict, data: bytes) -> None:
    for part in plan["parts"]:
        start = (part["number"] - 1) * plan["part_size"]
        chunk = data[start : start + plan["part_size"]]
        assert httpx.put(part["url"], content=chunk, headers=part["headers"]).status_code == 200


def _complete_body(spec: dict, plan: dict) -> dict:
    multipart = {"part_size": plan["part_size"], "upload_id": plan["upload_id"], "ticket": plan["ticket"]}
    return {**spec, "multipart": multipart}


def test_wrong_bytes_completed_under_a_blob_name_do_not_block_the_real_push(s3hub, tmp_path):
    """S3 multipart has no whole-object sha256: mallory can complete other
    bytes under the name of alice's blob. Alice's completion hashes that
    object, drops it, and her push succeeds the first time."""
    alice, mallory = users(s3hub, tmp_path)
    src = big_lora(tmp_path / "big", 1024 * 1024, seed=5)
    spec = weights_spec(src)[0]
    garbage = bytearray((src / "adapter_model.safetensors").read_bytes())
    garbage[-1] ^= 1
    plan = mallory.post("/api/adapters/mallory/x/preupload", json={"files": [spec]}).json()["uploads"][0]["multipart"]
    _put_parts(plan, bytes(garbage))
    r = mallory.post("/api/adapters/mallory/x/uploads/complete", json=_complete_body(spec, plan))
    assert r.status_code == 200 and r.json()["stored"] is True, r.text
    store = s3hub.app.state.store
    assert store.stat(spec["sha256"]) is not None
    parts = count_parts(alice)
    alice.push(src, name="alice/big")  # raises if the commit met mallory's bytes
    assert sorted(parts) == list(range(1, math.ceil(spec["size"] / MIN_PART) + 1))
    with store.open(spec["sha256"]) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == spec["sha256"]  # mallory's bytes are gone


def test_a_verified_blob_is_kept_when_another_upload_completes_over_it(s3hub, tmp_path):
    """A blob a (private) revision holds is never dropped: another user's
    completion of other bytes under its name stores nothing."""
    alice, mallory = users(s3hub, tmp_path)
    src = big_lora(tmp_path / "big", 1024 * 1024, seed=6)
    alice.push(src, name="alice/big", private=True)
    spec = weights_spec(src)[0]
    plan = mallory.post("/api/adapters/mallory/x/preupload", json={"files": [spec]}).json()["uploads"][0]["multipart"]
    garbage = bytearray((src / "adapter_model.safetensors").read_bytes())
    garbage[0] ^= 1
    _put_parts(plan, bytes(garbage))
    r = mallory.post("/api/adapters/mallory/x/uploads/complete", json=_complete_body(spec, plan))
    assert r.status_code == 200 and r.json()["stored"] is False, r.text
    pulled = HubClient(s3hub.url, s3hub.admin_token, cache_dir=tmp_path / "c9").pull("alice/big", tmp_path / "out")
    assert (Path(pulled.path) / "adapter_model.safetensors").read_bytes() == (
        src / "adapter_model.safetensors"
    ).read_bytes()


def test_a_retried_completion_after_a_lost_answer_is_harmless(s3hub, tmp_path):
    """The first completion went through but its answer was lost: the retry
    finds no upload (404, which the client takes as done), and the commit
    then publishes the stored blob without sending it again."""
    alice, _ = users(s3hub, tmp_path)
    src = big_lora(tmp_path / "big", 1024 * 1024, seed=7)
    spec = weights_spec(src)[0]
    data = (src / "adapter_model.safetensors").read_bytes()
    plan = alice.http.post("/api/adapters/alice/big/preupload", json={"files": [spec]}).json()["uploads"][0]
    plan = plan["multipart"]
    _put_parts(plan, data)
    body = _complete_body(spec, plan)
    first = alice.http.post("/api/adapters/alice/big/uploads/complete", json=body)
    assert first.status_code == 200 and first.json()["stored"] is True, first.text
    again = alice.http.post("/api/adapters/alice/big/uploads/complete", json=body)
    assert again.status_code == 404, again.text
    files = [
        {"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in sorted(src.iterdir())
    ]
    for f in files:
        if f["path"] != spec["path"]:
            up = alice.http.post("/api/adapters/alice/big/preupload", json={"files": [f]}).json()["uploads"][0]
            sent = httpx.put(up["url"], content=(src / f["path"]).read_bytes(), headers=up["headers"])
            assert sent.status_code == 200
    r = alice.http.post("/api/adapters/alice/big/commit", json={"files": files})  # as the client goes on after a 404
    assert r.status_code == 201, r.text
    assert alice.info("alice/big")["files"]


@pytest.mark.parametrize("backend", ["s3-postgres", "embedded"])
def test_part_digests_are_hashed_only_for_a_blob_the_hub_takes_in_parts(backend, request, tmp_path, monkeypatch):
    """The client leaves its part digests for later: a blob under the hub's
    threshold goes in one upload with none hashed, one over it is answered
    "wanted" (nothing created) and planned again with its parts' checksums."""
    import peft_hub.client.multipart as multipart

    settings = make_settings(backend, tmp_path, request).model_copy(
        update={"multipart_threshold": 12 * MiB, "multipart_part_bytes": MIN_PART})
    hashed: list[Path] = []
    monkeypatch.setattr(multipart, "part_digests",
                        lambda path, size, real=multipart.part_digests: hashed.append(path) or real(path, size))
    with live_hub(settings) as hub:
        admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
        admin.part_bytes = MIN_PART
        asked: list[dict] = []

        def hook(req: httpx.Request) -> None:
            if req.url.path.endswith("/preupload"):
                asked.append(json.loads(req.content))

        admin.http.event_hooks["request"] = [hook]
        middle = big_lora(tmp_path / "middle", 512 * 1024, seed=11)  # 8 MiB: over a part, under the threshold
        admin.push(middle, name="admin/middle")
        assert hashed == [] and len(asked) == 1
        weights = next(f for f in asked[0]["files"] if f["path"] == "adapter_model.safetensors")
        assert weights["multipart"] == {"part_size": MIN_PART, "parts": None, "digests_later": True}

        asked.clear()
        large = big_lora(tmp_path / "large", 1024 * 1024, seed=12)  # 16 MiB: in parts
        parts = count_parts(admin)
        admin.http.event_hooks["request"].append(hook)
        admin.push(large, name="admin/large")
        assert hashed == [large / "adapter_model.safetensors"] and len(asked) == 2
        assert [f["path"] for f in asked[1]["files"]] == ["adapter_model.safetensors"]  # only the wanted one again
        sent = asked[1]["files"][0]["multipart"]["parts"]
        data = (large / "adapter_model.safetensors").read_bytes()
        assert sent == [hashlib.sha256(data[i:i + MIN_PART]).hexdigest() for i in range(0, len(data), MIN_PART)]
        assert sorted(parts) == ([1, 2, 3, 4] if backend == "s3-postgres" else [])  # a local hub takes blobs
        for name, src in (("admin/middle", middle), ("admin/large", large)):
            out = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c9").pull(name, tmp_path / name)
            assert (Path(out.path) / "adapter_model.safetensors").read_bytes() == (
                src / "adapter_model.safetensors").read_bytes()

        # The "wanted" answer itself creates no upload: nothing is left for the sweeper.
        entry = {"path": "adapter_model.safetensors", "sha256": hashlib.sha256(b"x" * 13 * MiB).hexdigest(),
                 "size": 13 * MiB, "multipart": {"part_size": MIN_PART, "parts": None, "digests_later": True}}
        r = admin.http.post("/api/adapters/admin/other/preupload", json={"files": [entry]})
        assert r.status_code == 200 and r.json()["uploads"][0]["multipart"] == {"digests": "wanted"}, r.text
        if backend == "s3-postgres":
            import boto3

            bucket = settings.storage.removeprefix("s3://").split("/")[0]
            prefix = settings.storage.removeprefix("s3://").split("/", 1)[1]
            listed = boto3.client("s3").list_multipart_uploads(Bucket=bucket, Prefix=prefix)
            assert not listed.get("Uploads"), listed.get("Uploads")
