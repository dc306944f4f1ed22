"""A hostile client's ``digests_later`` against a live hub on SeaweedFS and
PostgreSQL, and the real client killed between its two preuploads or racing
another user's push of the same large blob."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import boto3
import pytest
import test_multipart
from test_multipart import MiB, big_lora, users

from peft_hub.client import HubClient
from peft_hub.client.multipart import MIN_PART

pytestmark = pytest.mark.integration

s3hub = test_multipart.s3hub  # a fixture

SIZE = 13 * MiB
SHA = hashlib.sha256(b"not stored anywhere").hexdigest()


def entry(**multipart) -> dict:
    return {"path": "adapter_model.safetensors", "sha256": SHA, "size": SIZE,
            "multipart": {"part_size": MIN_PART, "parts": None, **multipart}}


def open_uploads(hub) -> list:
    storage = hub.settings.storage.removeprefix("s3://")
    bucket, prefix = storage.split("/", 1)
    return boto3.client("s3").list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])


@pytest.mark.parametrize("value", ["true", 1, 0, None, [], {}, "yes"])
def test_digests_later_must_be_a_real_boolean(s3hub, tmp_path, value):
    alice, _ = users(s3hub, tmp_path)
    r = alice.http.post("/api/adapters/alice/x/preupload", json={"files": [entry(digests_later=value)]})
    assert r.status_code == 422, r.text
    assert not open_uploads(s3hub)


@pytest.mark.parametrize("part_size", [MIN_PART - 1, 5 * 1024**3 + 1, 2**63, -1])
def test_digests_later_does_not_skip_the_part_size_bounds(s3hub, tmp_path, part_size):
    alice, _ = users(s3hub, tmp_path)
    spec = entry(digests_later=True)
    spec["multipart"]["part_size"] = part_size
    r = alice.http.post("/api/adapters/alice/x/preupload", json={"files": [spec]})
    assert r.status_code == 422, r.text


def test_digests_later_with_parts_is_a_plan_and_another_users_ticket_resumes_nothing(s3hub, tmp_path):
    alice, mallory = users(s3hub, tmp_path)
    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]  # 13 MiB in 5 MiB parts
    r = alice.http.post("/api/adapters/alice/x/preupload", json={"files": [entry(digests_later=True, parts=digests)]})
    assert r.status_code == 200, r.text
    plan = r.json()["uploads"][0]["multipart"]
    assert plan["checksums"] is True and len(plan["parts"]) == 3  # the parts given win over "later"
    stolen = {"upload_id": plan["upload_id"], "ticket": plan["ticket"]}
    # mallory: with alice's id and ticket, and no parts, is told "wanted" and gets nothing of alice's
    r = mallory.post("/api/adapters/mallory/x/preupload", json={"files": [entry(digests_later=True, **stolen)]})
    assert r.status_code == 200 and r.json()["uploads"][0]["multipart"] == {"digests": "wanted"}, r.text
    # with the parts too: a fresh upload of mallory's, never alice's
    r = mallory.post("/api/adapters/mallory/x/preupload",
                     json={"files": [entry(digests_later=True, parts=digests, **stolen)]})
    assert r.status_code == 200, r.text
    assert r.json()["uploads"][0]["multipart"]["upload_id"] != plan["upload_id"]
    assert len(open_uploads(s3hub)) == 2


def test_many_wanted_blobs_create_no_upload(s3hub, tmp_path):
    alice, _ = users(s3hub, tmp_path)
    files = [{**entry(digests_later=True), "path": f"f{i}.safetensors",
              "sha256": hashlib.sha256(str(i).encode()).hexdigest()} for i in range(200)]
    r = alice.http.post("/api/adapters/alice/x/preupload", json={"files": files})
    assert r.status_code == 200, r.text
    assert [u["multipart"] for u in r.json()["uploads"]] == [{"digests": "wanted"}] * 200
    assert not open_uploads(s3hub)


def test_a_push_killed_between_its_two_preuploads_resumes_clean(s3hub, tmp_path):
    alice, _ = users(s3hub, tmp_path)
    src = big_lora(tmp_path / "big", 384 * 1024, seed=21)  # 6 MiB: 2 parts
    asked = []

    def kill_second(request):
        if request.url.path.endswith("/preupload"):
            asked.append(request)
            if len(asked) == 2:
                raise KeyboardInterrupt("killed")

    alice.http.event_hooks["request"] = [kill_second]
    with pytest.raises(KeyboardInterrupt):
        alice.push(src, name="alice/big")
    assert not open_uploads(s3hub)  # the first round created nothing
    alice.http.event_hooks["request"] = []
    alice.push(src, name="alice/big")
    out = HubClient(s3hub.url, s3hub.admin_token, cache_dir=tmp_path / "c9").pull("alice/big", tmp_path / "out")
    got = (Path(out.path) / "adapter_model.safetensors").read_bytes()
    assert got == (src / "adapter_model.safetensors").read_bytes()


def test_two_users_pushing_the_same_large_blob_at_once_both_publish(s3hub, tmp_path):
    admin = HubClient(s3hub.url, s3hub.admin_token, cache_dir=tmp_path / "c0")
    clients = []
    for i, who in enumerate(("alice", "bob")):
        c = HubClient(s3hub.url, admin.create_token(scope="write", namespace=who)["token"],
                      cache_dir=tmp_path / f"c{i + 1}")
        c.part_bytes = MIN_PART
        clients.append((who, c))
    src = big_lora(tmp_path / "big", 384 * 1024, seed=22)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def push(who: str, client: HubClient) -> None:
        try:
            start.wait()
            client.push(src, name=f"{who}/same")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=pair) for pair in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    want = (src / "adapter_model.safetensors").read_bytes()
    for who, _ in clients:
        out = admin.pull(f"{who}/same", tmp_path / f"out-{who}")
        assert (Path(out.path) / "adapter_model.safetensors").read_bytes() == want
