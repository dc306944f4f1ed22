"""``peft-hub fsck`` on both backends: a blob corrupted in place and a blob
deleted behind the hub's back are found and named (adapter, revision, file);
``--repair`` marks them without deleting anything; an upload repairs them and
the next repair clears the marks; a clean hub reports clean."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from raw_adapters import zero_safetensors
from sqlmodel import Session

from peft_hub.cli import cli
from peft_hub.client import HubClient
from peft_hub.errors import AuthenticationError, ConflictError, PeftHubError, PermissionDeniedError
from peft_hub.hub.models import Blob

pytestmark = pytest.mark.integration

WEIGHTS = "adapter_model.safetensors"


def _adapter(path: Path, note: str) -> Path:
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
              "base_model_name_or_path": "tiny"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / WEIGHTS).write_bytes(zero_safetensors({
        "base_model.model.layers.0.q_proj.lora_A.weight": [2, 4],
        "base_model.model.layers.0.q_proj.lora_B.weight": [4, 2],
    }))
    (path / "README.md").write_text(f"# {note}\n")
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _overwrite(hub, sha256: str, data: bytes) -> None:
    """Replace a blob's bytes behind the hub's back: the file in place, or the S3 object with boto3."""
    store = hub.app.state.store
    if hub.backend == "embedded":
        store.local_path(sha256).write_bytes(data)
    else:
        import boto3

        boto3.client("s3").put_object(Bucket=store.bucket, Key=store._key(sha256), Body=data)


def _remove(hub, sha256: str) -> None:
    store = hub.app.state.store
    if hub.backend == "embedded":
        store.local_path(sha256).unlink()
    else:
        import boto3

        boto3.client("s3").delete_object(Bucket=store.bucket, Key=store._key(sha256))


def _stored(hub) -> dict[str, int]:
    return {b.sha256: b.size for b in hub.app.state.store.iterate()}


def _corrupt_flag(hub, sha256: str) -> bool | None:
    with Session(hub.app.state.engine) as session:
        row = session.get(Blob, sha256)
        return None if row is None else row.corrupt


def _cli(hub, *args: str):
    return CliRunner().invoke(cli, ["--url", hub.url, "--token", hub.admin_token, "fsck", *args])


def test_fsck_names_corrupt_and_missing_blobs_and_repair_marks_them(hub, tmp_path):
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    support = _adapter(tmp_path / "a" / "support", "support")
    other = _adapter(tmp_path / "b" / "other", "other")  # shares config and weights with support
    gone = _adapter(tmp_path / "c" / "gone", "gone")
    rev_a = client.push(support, name="admin/support").revision
    rev_b = client.push(other, name="admin/other").revision
    client.push(gone, name="admin/gone")
    client.delete("admin/gone")  # its card is now referenced by nothing
    weights, card = _sha(support / WEIGHTS), _sha(support / "README.md")
    referenced = {_sha(p) for d in (support, other) for p in d.iterdir()}

    clean = client.fsck()
    assert clean["clean"] and clean["problems"] == [] and clean["problem_count"] == 0
    assert clean["blobs_checked"] == len(referenced) == 4
    assert clean["bytes_checked"] == sum(_stored(hub)[s] for s in referenced)
    assert clean["unreferenced"] == {"count": 1, "bytes": len(b"# gone\n")}
    assert _cli(hub).exit_code == 0

    good = (support / WEIGHTS).read_bytes()
    bad = bytes(reversed(good))  # same size: only hashing the bytes can tell
    _overwrite(hub, weights, bad)
    _remove(hub, card)

    report = client.fsck()
    assert not report["clean"] and report["problem_count"] == 2
    assert report["counts"] == {"missing": 1, "size_mismatch": 0, "corrupt": 1, "unreadable": 0}
    found = {p["problem"]: p for p in report["problems"]}
    assert found["corrupt"]["sha256"] == weights
    assert found["corrupt"]["actual_sha256"] == hashlib.sha256(bad).hexdigest()
    assert found["corrupt"]["files"] == [
        {"adapter": "admin/other", "revision": rev_b, "path": WEIGHTS},
        {"adapter": "admin/support", "revision": rev_a, "path": WEIGHTS},
    ]
    assert found["missing"]["sha256"] == card
    assert found["missing"]["files"] == [{"adapter": "admin/support", "revision": rev_a, "path": "README.md"}]
    assert report["repaired"] is None
    # A check alone marks nothing.
    assert client.info("admin/support")["broken"] is None and not _corrupt_flag(hub, weights)

    shown = _cli(hub)
    assert shown.exit_code == 1
    lines = shown.output.splitlines()
    assert any(line.startswith("corrupt") and f"admin/support@{rev_a}  {WEIGHTS}" in line for line in lines)
    assert any(line.startswith("corrupt") and f"admin/other@{rev_b}  {WEIGHTS}" in line for line in lines)
    assert any(line.startswith("missing") and f"admin/support@{rev_a}  README.md" in line for line in lines)
    as_json = _cli(hub, "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.output)["problems"] == report["problems"]

    before = _stored(hub)
    repaired = client.fsck(repair=True)
    assert repaired["problem_count"] == 2
    assert repaired["repaired"] == {"blobs_marked_corrupt": 1, "blobs_cleared": 0, "revisions_marked_broken": 2,
                                    "revisions_cleared": 0, "skipped_changed": 0}
    assert _stored(hub) == before  # nothing deleted, nothing fetched
    assert _corrupt_flag(hub, weights) is True
    broken = client.info("admin/support")["broken"]
    assert broken["files"] == [{"path": "README.md", "sha256": card, "problem": "missing"},
                               {"path": WEIGHTS, "sha256": weights, "problem": "corrupt"}]
    assert client.info("admin/other")["broken"]["files"] == [{"path": WEIGHTS, "sha256": weights, "problem": "corrupt"}]
    events = client.audit(action="fsck")
    assert events[0]["detail"]["repair"] is True and events[0]["detail"]["repaired"]["revisions_marked_broken"] == 2
    assert len(events) == 6 and events[0]["actor"] == "admin"

    # The owner pushes again: the hub asks for the corrupt and the missing
    # blob (nothing else), the upload repairs them, and the next repair clears the marks.
    again = client.push(support, name="admin/support")
    assert (again.revision, again.files_uploaded) == (rev_a, 2)
    healed = client.fsck(repair=True)
    assert healed["clean"], healed["problems"]
    assert healed["repaired"]["revisions_cleared"] == 2
    assert client.info("admin/support")["broken"] is None and client.info("admin/other")["broken"] is None
    assert _corrupt_flag(hub, weights) is False
    assert _cli(hub).exit_code == 0


def test_fsck_finds_a_blob_of_the_wrong_size(embedded_hub, tmp_path):
    embedded_hub.backend = "embedded"
    client = HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache")
    support = _adapter(tmp_path / "support", "support")
    rev = client.push(support, name="admin/support").revision
    _overwrite(embedded_hub, _sha(support / "README.md"), b"# truncated")
    report = client.fsck(repair=True)
    (problem,) = report["problems"]
    assert (problem["problem"], problem["stored_size"], problem["size"]) == ("size_mismatch", 11, len(b"# support\n"))
    assert problem["files"] == [{"adapter": "admin/support", "revision": rev, "path": "README.md"}]
    assert client.info("admin/support")["broken"]["files"][0]["problem"] == "size_mismatch"


def test_fsck_is_for_admins_only(embedded_hub, tmp_path):
    admin = HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "c1")
    writer = HubClient(embedded_hub.url, admin.create_token(scope="write", namespace="alice")["token"],
                       cache_dir=tmp_path / "c2")
    limited = HubClient(embedded_hub.url, admin.create_token(scope="admin", limit=["admin"])["token"],
                        cache_dir=tmp_path / "c3")
    with pytest.raises(PermissionDeniedError):
        writer.fsck()
    with pytest.raises(PermissionDeniedError):  # hub-wide: no namespace limits allowed
        limited.fsck()
    with pytest.raises(AuthenticationError):
        HubClient(embedded_hub.url, None, cache_dir=tmp_path / "c4").fsck()
    assert admin.audit(action="fsck") == []


def test_one_fsck_at_a_time_per_process(tmp_path):
    from peft_hub.hub import fsck

    assert fsck._RUNNING.acquire(blocking=False)
    try:
        events = list(fsck.run(None, None, repair=False, actor="admin"))  # type: ignore[arg-type]
    finally:
        fsck._RUNNING.release()
    assert events == [{"event": "error", "error": ConflictError.code, "detail": events[0]["detail"]}]


def _stream(body: bytes, status: int = 200) -> HubClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    return HubClient("http://hub.test", "phub_" + "0" * 40, transport=transport)


def test_client_reads_the_stream_strictly():
    done = json.dumps({"event": "done", "report": {"clean": True}}).encode()
    start = b'{"event":"start","bytes":10,"blobs":1}\n{"event":"progress","bytes_checked":10}\n'
    assert _stream(start + done).fsck() == {"clean": True}
    with pytest.raises(ConflictError, match="already running"):
        _stream(b'{"event":"error","error":"conflict","detail":"already running"}\n').fsck()
    with pytest.raises(PeftHubError, match="ended before its report"):
        _stream(start).fsck()
    with pytest.raises(PeftHubError, match="not JSON"):
        _stream(b"<html>\n").fsck()
    with pytest.raises(PeftHubError, match="not an object"):
        _stream(b'{"event":"done","report":[]}\n').fsck()
    with pytest.raises(PermissionDeniedError):
        _stream(b'{"error":"forbidden","detail":"no"}', status=403).fsck()
    from peft_hub.client import admin_api

    with pytest.raises(PeftHubError, match="longer than"):
        list(admin_api._ndjson([b"x" * 10, b"y" * 10], limit=15))
