"""Large files pushed to a hub on local files go in parts the hub receives
itself, and a push killed mid-file resumes with only the parts it had not
sent (issue #12, section 2). Each part is verified as it arrives, the whole
is hashed before it is stored, and one user's staged parts are nothing to
another user."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import make_settings
from services import live_hub
from test_multipart import big_lora

from peft_hub.client import HubClient
from peft_hub.client.multipart import MIN_PART, part_digests
from peft_hub.errors import ChecksumMismatchError

MiB = 1024 * 1024
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def localhub(request, tmp_path):
    """A hub on SQLite and local files that plans parts above 5 MiB."""
    settings = make_settings("embedded", tmp_path, request).model_copy(
        update={"multipart_threshold": MIN_PART, "multipart_part_bytes": MIN_PART}
    )
    with live_hub(settings) as server:
        yield server


def stored(hub, sha256: str) -> bool:
    return (Path(hub.settings.storage) / "sha256" / sha256[:2] / sha256).exists()


def clients(hub, tmp_path) -> tuple[HubClient, httpx.Client, httpx.Client]:
    """alice (a HubClient with 5 MiB parts), and raw HTTP as alice and as mallory."""
    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
    alice_token = admin.create_token(scope="write", namespace="alice")["token"]
    mallory_token = admin.create_token(scope="write", namespace="mallory")["token"]
    alice = HubClient(hub.url, alice_token, cache_dir=tmp_path / "c1")
    alice.part_bytes = MIN_PART

    def raw(token: str) -> httpx.Client:
        return httpx.Client(base_url=hub.url + "/", headers={"Authorization": f"Bearer {token}"}, timeout=60)

    return alice, raw(alice_token), raw(mallory_token)


def count_part_bytes(client: HubClient) -> list[int]:
    """The sizes of the parts the hub acknowledges to ``client``."""
    acked: list[int] = []

    def hook(response: httpx.Response) -> None:
        if response.request.method == "PUT" and "/api/blobs/" in response.request.url.path:
            if response.status_code == 201:
                acked.append(int(response.request.url.params["size"]))

    client.http.event_hooks["response"] = [hook]
    return acked


def spec_of(path: Path, digests: list[str] | None = None, part_size: int = MIN_PART) -> dict:
    data = path.read_bytes()
    return {"path": WEIGHTS, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "multipart": {"part_size": part_size, "parts": digests or part_digests(path, part_size)}}


def preupload(raw: httpx.Client, repo: str, spec: dict) -> dict:
    answer = raw.post(f"/api/adapters/{repo}/preupload", json={"files": [spec]})
    assert answer.status_code == 200, answer.text
    return answer.json()["uploads"][0]


def complete(raw: httpx.Client, repo: str, spec: dict, plan: dict) -> httpx.Response:
    multipart = {**spec["multipart"], "upload_id": plan["upload_id"], "ticket": plan["ticket"]}
    return raw.post(f"/api/adapters/{repo}/uploads/complete",
                    json={"sha256": spec["sha256"], "size": spec["size"], "multipart": multipart})


def put_part(raw: httpx.Client, url: str, data: bytes) -> httpx.Response:
    return raw.put(url, content=data)


KILLER = """
import os, signal, sys
import httpx
from peft_hub.client import HubClient
url, token, cache, src, limit = sys.argv[1:6]
client = HubClient(url, token, cache_dir=cache)
client.part_bytes = 5 * 1024 * 1024
acked = 0
def hook(response):
    global acked
    if response.request.method == "PUT" and response.status_code == 201:
        acked += int(response.request.url.params["size"])
        if acked >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)  # mid-file, other parts still in flight
client.http.event_hooks["response"] = [hook]
client.push(src, name="alice/big")
"""


def test_a_push_killed_mid_file_resumes_with_only_the_rest(localhub, tmp_path):
    alice, _, _ = clients(localhub, tmp_path)
    src = big_lora(tmp_path / "big", 2 * 1024 * 1024, seed=1)  # 32 MiB of weights: 7 parts of 5 MiB
    data = (src / WEIGHTS).read_bytes()
    count = math.ceil(len(data) / MIN_PART)
    child = subprocess.run(
        [sys.executable, "-c", KILLER, localhub.url, alice.token, str(tmp_path / "c1"), str(src), str(3 * MIN_PART)],
        capture_output=True, timeout=120, env={**os.environ, "PEFT_HUB_DISABLE_PROGRESS_BARS": "1"},
    )
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    state = json.loads(next((tmp_path / "c1" / "uploads").glob("*.json")).read_text())
    sent = set(state["sent"])
    assert 2 <= len(sent) < count, sent
    assert not stored(localhub, hashlib.sha256(data).hexdigest())  # nothing visible before the whole verifies

    acked = count_part_bytes(alice)
    result = alice.push(src, name="alice/big")
    rest = sum(min(MIN_PART, len(data) - (n - 1) * MIN_PART) for n in range(1, count + 1) if n not in sent)
    assert sum(acked) == rest < len(data)
    assert not list((tmp_path / "c1" / "uploads").glob("*.json"))
    for digest in state["parts"]:  # the staged parts go once they are joined
        assert not stored(localhub, digest)
    out = HubClient(localhub.url, localhub.admin_token, cache_dir=tmp_path / "c9").pull(result.repo_id, tmp_path / "o")
    assert (Path(out.path) / WEIGHTS).read_bytes() == data


def test_wrong_bytes_in_a_resumed_part_are_refused_and_nothing_is_kept(localhub, tmp_path):
    _, alice, _ = clients(localhub, tmp_path)
    real = big_lora(tmp_path / "real", 1024 * 1024, seed=2) / WEIGHTS  # 16 MiB: 4 parts
    other = big_lora(tmp_path / "other", 1024 * 1024, seed=3) / WEIGHTS  # same size, other bytes
    spec = spec_of(real)
    plan = preupload(alice, "alice/big", spec)["multipart"]
    assert plan["resume"] == "client" and len(plan["parts"]) == 4
    first = put_part(alice, plan["parts"][0]["url"], real.read_bytes()[:MIN_PART])
    assert first.status_code == 201, first.text
    wrong = put_part(alice, plan["parts"][1]["url"], other.read_bytes()[MIN_PART:2 * MIN_PART])
    assert wrong.status_code == 422 and wrong.json()["error"] == ChecksumMismatchError.code
    assert not stored(localhub, spec["multipart"]["parts"][1])

    # A layout whose parts each verify but do not make up the blob: the join refuses it.
    lying = spec_of(real, digests=part_digests(other, MIN_PART))
    plan = preupload(alice, "alice/big", lying)["multipart"]
    blob = other.read_bytes()
    for number, part in enumerate(plan["parts"]):
        assert put_part(alice, part["url"], blob[number * MIN_PART:(number + 1) * MIN_PART]).status_code == 201
    answer = complete(alice, "alice/big", lying, plan)
    assert answer.status_code == 422 and answer.json()["error"] == ChecksumMismatchError.code, answer.text
    assert not stored(localhub, spec["sha256"])
    assert not any(stored(localhub, d) for d in lying["multipart"]["parts"])  # the staging is discarded
    again = complete(alice, "alice/big", lying, plan)
    assert again.status_code == 422 and again.json()["error"] == "upload_required", again.text


def test_another_user_can_neither_probe_nor_use_a_staged_upload(localhub, tmp_path):
    _, alice, mallory = clients(localhub, tmp_path)
    src = big_lora(tmp_path / "big", 1024 * 1024, seed=4) / WEIGHTS
    fresh = big_lora(tmp_path / "fresh", 1024 * 1024, seed=5) / WEIGHTS  # staged by nobody
    spec, data = spec_of(src), src.read_bytes()
    mine = preupload(alice, "alice/big", spec)["multipart"]
    for number in (0, 1):
        assert put_part(alice, mine["parts"][number]["url"], data[number * MIN_PART:(number + 1) * MIN_PART]).is_success

    def probe(path: Path) -> tuple:
        spec = spec_of(path)
        plan = preupload(mallory, "mallory/big", spec)["multipart"]
        answer = complete(mallory, "mallory/big", spec, plan)
        return [p["number"] for p in plan["parts"]], answer.status_code, answer.json()["error"], (
            answer.json()["detail"].replace(spec["sha256"], "X"))

    assert probe(src) == probe(fresh)  # alice's staged parts are invisible
    assert probe(src)[1:3] == (422, "upload_required")
    stolen = complete(mallory, "mallory/big", spec, mine)  # alice's ticket
    bogus = complete(mallory, "mallory/big", spec, {**mine, "upload_id": "hub-nonexistent"})
    assert stolen.status_code == bogus.status_code == 404, (stolen.text, bogus.text)
    assert stolen.json()["detail"] == bogus.json()["detail"].replace("hub-nonexistent", mine["upload_id"])
    # Appending other bytes under alice's part names is refused; her upload completes intact.
    assert put_part(mallory, mine["parts"][2]["url"], b"\0" * MIN_PART).status_code == 422
    for number in (2, 3):
        assert put_part(alice, mine["parts"][number]["url"], data[number * MIN_PART:(number + 1) * MIN_PART]).is_success
    done = complete(alice, "alice/big", spec, mine)
    assert done.status_code == 200 and done.json()["stored"] is True, done.text
    assert (Path(localhub.settings.storage) / "sha256" / spec["sha256"][:2] / spec["sha256"]).read_bytes() == data


def test_layouts_that_overlap_skip_or_exceed_the_blob_are_refused(localhub, tmp_path):
    _, alice, _ = clients(localhub, tmp_path)
    src = big_lora(tmp_path / "big", 1024 * 1024, seed=6) / WEIGHTS  # 4 parts of 5 MiB
    spec, digests = spec_of(src), part_digests(src, MIN_PART)
    for wrong in (digests[:-1], digests + [digests[0]]):  # too few parts (a gap), too many (past the end)
        item = preupload(alice, "alice/big", {**spec, "multipart": {"part_size": MIN_PART, "parts": wrong}})
        assert "multipart" not in item and item["url"].endswith(f"?size={spec['size']}")  # a single upload instead
    plan = preupload(alice, "alice/big", spec)["multipart"]
    shifted = {**spec, "multipart": {"part_size": MIN_PART + MiB, "parts": digests}}  # overlapping slices
    assert complete(alice, "alice/big", shifted, plan).status_code == 404
    # A part whose blob is longer than its slice (it would overlap the next one).
    long_part = tmp_path / "long"
    long_part.write_bytes(src.read_bytes()[:MIN_PART + 1])
    long_digest = hashlib.sha256(long_part.read_bytes()).hexdigest()
    overlapping = {**spec, "multipart": {"part_size": MIN_PART, "parts": [long_digest, *digests[1:]]}}
    plan = preupload(alice, "alice/big", overlapping)["multipart"]
    assert put_part(alice, f"api/blobs/{long_digest}?size={MIN_PART + 1}", long_part.read_bytes()).is_success
    assert put_part(alice, plan["parts"][0]["url"], long_part.read_bytes()).status_code == 422  # its planned size
    for number in (1, 2, 3):
        part = src.read_bytes()[number * MIN_PART:(number + 1) * MIN_PART]
        assert put_part(alice, plan["parts"][number]["url"], part).is_success
    answer = complete(alice, "alice/big", overlapping, plan)
    assert answer.status_code == 422 and answer.json()["error"] == ChecksumMismatchError.code, answer.text
    assert "planned sizes" in answer.json()["detail"]
    assert not stored(localhub, spec["sha256"]) and not stored(localhub, long_digest)


def test_staged_parts_expire_with_gc_and_a_resume_sends_them_again(localhub, tmp_path):
    alice, _, _ = clients(localhub, tmp_path)
    src = big_lora(tmp_path / "big", 2 * 1024 * 1024, seed=7)  # 7 parts: more than the client sends at once
    data = (src / WEIGHTS).read_bytes()

    def die_after_two(request: httpx.Request) -> None:
        if request.method == "PUT" and len([a for a in acked if a >= MiB]) >= 2:  # parts, not the small files
            raise KeyboardInterrupt("killed")

    acked = count_part_bytes(alice)
    alice.http.event_hooks["request"] = [die_after_two]
    with pytest.raises(KeyboardInterrupt):
        alice.push(src, name="alice/big")
    staged = json.loads(next((alice.cache.root / "uploads").glob("*.json")).read_text())
    assert staged["sent"] and all(stored(localhub, staged["parts"][n - 1]) for n in staged["sent"])
    admin = HubClient(localhub.url, localhub.admin_token, cache_dir=tmp_path / "c0")
    report = admin.gc(grace_seconds=0)
    assert set(staged["parts"][n - 1] for n in staged["sent"]) <= set(report["deleted"])
    alice.http.event_hooks["request"] = []
    acked.clear()
    result = alice.push(src, name="alice/big")
    assert sum(a for a in acked if a >= MiB) == len(data)  # the rest first, then the parts gc took
    out = HubClient(localhub.url, localhub.admin_token, cache_dir=tmp_path / "c9").pull(result.repo_id, tmp_path / "o")
    assert (Path(out.path) / WEIGHTS).read_bytes() == data
