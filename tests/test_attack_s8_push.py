"""Push "digests later" at the edges: blob sizes at the hub's multipart
threshold and at the part boundaries, one byte either side, on both backends
(SeaweedFS takes the parts itself, a local hub receives them as blobs); and a
preupload naming the same blob twice.

Each size is pushed by the real client and pulled back byte for byte, and
what the hub answered each preupload is checked: one upload up to the
threshold, "wanted" past it, then a plan whose parts tile the blob.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import httpx
import pytest
from conftest import make_settings
from services import live_hub

from peft_hub.client import HubClient
from peft_hub.client.multipart import MIN_PART

pytestmark = pytest.mark.integration

WEIGHTS = "adapter_model.safetensors"
THRESHOLD = MIN_PART  # the hub's multipart threshold and part size here, and the client's part size


def exact_lora(path: Path, size: int, seed: int) -> Path:
    """A rank-2 LoRA whose weights file is exactly ``size`` bytes: two F32 tensors, the
    header padded with spaces (which safetensors allows) to make up the rest."""
    width = (size - 8 - 512) // 16
    a_len = b_len = 8 * width
    header = {
        "base_model.model.layers.0.q_proj.lora_A.weight": {"dtype": "F32", "shape": [2, width],
                                                           "data_offsets": [0, a_len]},
        "base_model.model.layers.0.q_proj.lora_B.weight": {"dtype": "F32", "shape": [width, 2],
                                                           "data_offsets": [a_len, a_len + b_len]},
    }
    raw = json.dumps(header).encode()
    room = size - 8 - a_len - b_len
    assert len(raw) <= room, (len(raw), room)
    raw += b" " * (room - len(raw))
    data = hashlib.shake_256(f"seed {seed}".encode()).digest(a_len + b_len)
    # Finite floats: keep each 4-byte value's exponent away from all ones.
    floats = bytearray(data)
    floats[3::4] = bytes(b & 0x3F for b in floats[3::4])
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "base_model_name_or_path": "t"}))
    (path / WEIGHTS).write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(floats))
    (path / "README.md").write_text(f"# exact {size}\n")
    assert (path / WEIGHTS).stat().st_size == size
    return path


@pytest.fixture(params=["embedded", "s3-postgres"])
def edge_hub(request, tmp_path):
    settings = make_settings(request.param, tmp_path, request).model_copy(
        update={"multipart_threshold": THRESHOLD, "multipart_part_bytes": THRESHOLD})
    with live_hub(settings) as server:
        server.backend = request.param
        yield server


#: Sizes either side of the threshold and of the part boundaries (a last part of one byte, a full one).
SIZES = {"threshold-minus-1": THRESHOLD - 1, "threshold": THRESHOLD, "threshold-plus-1": THRESHOLD + 1,
         "two-parts": 2 * THRESHOLD, "two-parts-plus-1": 2 * THRESHOLD + 1}


def test_sizes_at_the_threshold_and_part_edges_push_and_pull_identical(edge_hub, tmp_path):
    admin = HubClient(edge_hub.url, edge_hub.admin_token, cache_dir=tmp_path / "c0")
    admin.part_bytes = THRESHOLD
    answers: list[dict] = []

    def hook(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/preupload"):
            response.read()
            answers.append(response.json())

    admin.http.event_hooks["response"] = [hook]
    for i, (label, size) in enumerate(SIZES.items()):
        answers.clear()
        src = exact_lora(tmp_path / label, size, seed=i)
        admin.push(src, name=f"admin/{label}")
        plans = [u for answer in answers for u in answer["uploads"] if u["path"] == WEIGHTS]
        if size <= THRESHOLD:
            assert len(answers) == 1 and len(plans) == 1 and "url" in plans[0], (label, answers)
        else:
            assert len(answers) == 2 and plans[0]["multipart"] == {"digests": "wanted"}, (label, answers)
            plan = plans[1]["multipart"]
            assert plan["part_size"] == THRESHOLD and plan["checksums"] is True, (label, plan)
            assert len(plan["parts"]) == math.ceil(size / THRESHOLD), (label, plan)
        out = HubClient(edge_hub.url, edge_hub.admin_token, cache_dir=tmp_path / f"p{i}").pull(
            f"admin/{label}", tmp_path / f"out-{label}")
        assert (Path(out.path) / WEIGHTS).read_bytes() == (src / WEIGHTS).read_bytes(), label


def test_a_blob_named_twice_in_one_preupload_is_planned_once(edge_hub, tmp_path):
    """Two paths, one large blob: one plan (the first entry's), never two uploads of the same bytes;
    a second entry for it with another size or another part layout changes nothing."""
    sha = hashlib.sha256(b"named twice").hexdigest()
    size = 2 * THRESHOLD + 1
    first = {"path": "a.safetensors", "sha256": sha, "size": size,
             "multipart": {"part_size": THRESHOLD, "parts": None, "digests_later": True}}
    others = [{**first, "path": "b.safetensors"},
              {**first, "path": "c.safetensors", "multipart": {"part_size": THRESHOLD, "parts": ["0" * 64] * 3}},
              {**first, "path": "d.safetensors", "size": 10}]
    with httpx.Client(base_url=edge_hub.url, headers={"Authorization": f"Bearer {edge_hub.admin_token}"},
                      timeout=30) as http:
        r = http.post("/api/adapters/admin/twice/preupload", json={"files": [first, *others]})
        assert r.status_code == 200, r.text
        assert r.json()["uploads"] == [{"path": "a.safetensors", "sha256": sha, "multipart": {"digests": "wanted"}}]


def test_junk_completed_under_a_victims_sha256_neither_blocks_nor_poisons_their_push(request, tmp_path):
    """mallory knows the sha256 and size of alice's weights (not their bytes) and finishes an
    S3 upload of junk under that name first, with the hub's own plan (no part checksums). alice's
    push must still publish her bytes, and mallory's commit naming the blob must be refused."""
    import test_multipart

    settings = make_settings("s3-postgres", tmp_path, request).model_copy(
        update={"multipart_threshold": THRESHOLD, "multipart_part_bytes": THRESHOLD})
    with live_hub(settings) as hub:
        alice, mallory = test_multipart.users(hub, tmp_path)
        src = exact_lora(tmp_path / "victim", 2 * THRESHOLD + 7, seed=3)
        (spec,) = test_multipart.weights_spec(src)
        r = mallory.post("/api/adapters/mallory/squat/preupload", json={"files": [spec]})
        assert r.status_code == 200, r.text
        plan = r.json()["uploads"][0]["multipart"]
        assert plan["checksums"] is False
        junk = b"\x5a" * spec["size"]
        for part in plan["parts"]:
            start = (part["number"] - 1) * plan["part_size"]
            sent = httpx.put(part["url"], content=junk[start:start + plan["part_size"]], headers=part["headers"])
            assert sent.status_code == 200, sent.text
        done = mallory.post("/api/adapters/mallory/squat/uploads/complete", json={
            "sha256": spec["sha256"], "size": spec["size"],
            "multipart": {"part_size": plan["part_size"], "upload_id": plan["upload_id"], "ticket": plan["ticket"]}})
        assert done.status_code == 200 and done.json()["stored"] is True, done.text
        files = [{"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
                 for p in sorted(src.iterdir())]
        small = [f for f in files if f["path"] != WEIGHTS]  # the config and card: mallory sends them herself
        asked = mallory.post("/api/adapters/mallory/squat/preupload", json={"files": small})
        for item in asked.json()["uploads"]:
            data = (src / item["path"]).read_bytes()
            auth = {"Authorization": mallory.headers["Authorization"]} if item["auth"] else {}
            headers = {**item["headers"], **auth}
            assert httpx.request(item["method"], item["url"], content=data, headers=headers).status_code in (200, 201)
        # By the S3 object's recorded uploader the weights are "hers"; their bytes are not the sha256's.
        r = mallory.post("/api/adapters/mallory/squat/commit", json={"files": files})
        assert r.status_code == 422 and r.json()["error"] == "checksum_mismatch", r.text
        assert mallory.get("/api/adapters/mallory/squat").status_code == 404

        alice.push(src, name="alice/victim")
        out = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "pv").pull("alice/victim", tmp_path / "out")
        assert (Path(out.path) / WEIGHTS).read_bytes() == (src / WEIGHTS).read_bytes()
        with hub.app.state.store.open(spec["sha256"]) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == spec["sha256"]
