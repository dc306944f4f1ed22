"""Push's overlaps: the client's sha256s run while the files are validated
(and a failure of either sends nothing), and the hub's commit reads a large
weights file's header alone, with its store round trips in flight together."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import threading
import time

import httpx
import pytest
from sqlmodel import Session, select

from peft_hub import adapter, repo_kinds
from peft_hub.client import HubClient
from peft_hub.errors import InvalidAdapterError, StorageError
from peft_hub.hub import publish
from peft_hub.hub.models import RevisionFile

WEIGHTS = "adapter_model.safetensors"


def _recording_client(tmp_path) -> tuple[HubClient, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    return HubClient("http://hub.test", "t", cache_dir=tmp_path / "c", transport=httpx.MockTransport(handler)), sent


def test_the_entries_are_the_files_own(llama_adapter):
    with repo_kinds.checked_dir("adapter", llama_adapter) as checked:
        meta, entries = checked()
    assert [(e.path, e.size, e.sha256) for e in entries] == [
        (p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(llama_adapter.iterdir())]
    assert meta.rank == json.loads((llama_adapter / "adapter_config.json").read_text())["r"]


def test_a_hash_failure_while_validating_sends_nothing(tmp_path, llama_adapter, monkeypatch):
    validated = threading.Event()
    real = repo_kinds.validate_manifest

    def validate(*args, **kwargs):
        out = real(*args, **kwargs)
        validated.set()
        return out

    def failing(path, *, stop):
        assert validated.wait(10)  # the validation ran while this thread hashed
        raise OSError("disk read error")

    monkeypatch.setattr(repo_kinds, "validate_manifest", validate)
    monkeypatch.setattr(adapter, "sha256_file", failing)
    client, sent = _recording_client(tmp_path)
    with pytest.raises(OSError, match="disk read error"):
        client.push(llama_adapter, name="me/x")
    assert sent == []


def test_a_validation_failure_stops_the_hashing_and_sends_nothing(tmp_path, llama_adapter, monkeypatch):
    src = tmp_path / "bad"
    shutil.copytree(llama_adapter, src)
    (src / "adapter_config.json").write_text("{not json")
    seen: dict[str, object] = {}
    real = adapter.sha256_file

    def slow(path, *, stop):
        stop.wait(10)  # hashing outlasts the validation: the refusal must stop it
        seen["stopped"] = stop.is_set()
        try:
            return real(path, stop=stop)
        except InterruptedError as exc:
            seen["error"] = exc
            raise

    monkeypatch.setattr(adapter, "sha256_file", slow)
    client, sent = _recording_client(tmp_path)
    started = time.monotonic()
    with pytest.raises(InvalidAdapterError, match="adapter_config.json"):
        client.push(src, name="me/x")
    assert time.monotonic() - started < 5
    assert seen["stopped"] is True and isinstance(seen["error"], InterruptedError)
    assert sent == []


def _header_length(path) -> int:
    with open(path, "rb") as fh:
        return struct.unpack("<Q", fh.read(8))[0]


def _spy_opens(monkeypatch, store, cut: str | None = None) -> list[tuple[str, int, int | None]]:
    opens: list[tuple[str, int, int | None]] = []
    real = store.open

    def spy(sha256, start=0, end=None):
        opens.append((sha256, start, end))
        fh = real(sha256, start, end)
        if cut == sha256 and start > 0:  # the header's second read comes back short
            data = fh.read()[:-1]
            fh.close()
            return io.BytesIO(data)
        return fh

    monkeypatch.setattr(store, "open", spy)
    return opens


def test_the_commit_reads_a_large_weights_file_header_alone(embedded_hub, llama_adapter, tmp_path, monkeypatch):
    hub = embedded_hub
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    plain = client.push(llama_adapter, name="admin/plain")
    size = (llama_adapter / WEIGHTS).stat().st_size
    length = _header_length(llama_adapter / WEIGHTS)
    monkeypatch.setattr(publish, "READ_WHOLE_BYTES", size - 1)  # the weights count as large
    monkeypatch.setattr(publish, "HEADER_PROBE_BYTES", 64)  # and their header needs a second read
    weights_sha = next(f["sha256"] for f in plain.detail["files"] if f["path"] == WEIGHTS)
    opens = _spy_opens(monkeypatch, hub.app.state.store)
    again = client.push(llama_adapter, name="admin/headers")
    assert again.revision == plain.revision and again.created
    assert [(s, e) for sha, s, e in opens if sha == weights_sha] == [(0, 64), (64, 8 + length)]
    assert client.info("admin/headers")["meta"] == client.info("admin/plain")["meta"]


def test_a_header_read_cut_short_fails_the_commit(embedded_hub, llama_adapter, tmp_path, monkeypatch):
    hub = embedded_hub
    src = tmp_path / "cut"
    shutil.copytree(llama_adapter, src)
    config = json.loads((src / "adapter_config.json").read_text())
    (src / "adapter_config.json").write_text(json.dumps({**config, "lora_dropout": 0.125}))  # bytes of its own
    weights_sha = hashlib.sha256((src / WEIGHTS).read_bytes()).hexdigest()
    monkeypatch.setattr(publish, "READ_WHOLE_BYTES", (src / WEIGHTS).stat().st_size - 1)
    monkeypatch.setattr(publish, "HEADER_PROBE_BYTES", 64)
    _spy_opens(monkeypatch, hub.app.state.store, cut=weights_sha)
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    with pytest.raises(StorageError, match=WEIGHTS):
        client.push(src, name="admin/cut")
    with Session(hub.app.state.engine) as session:
        assert session.exec(select(RevisionFile)).all() == []
