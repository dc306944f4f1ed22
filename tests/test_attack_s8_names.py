"""File names the hub accepts must be names its own client can pull.

``peft_hub.client.transfers.remote_manifest`` refuses a whole revision when
one of its names is not portable (Windows device names, format and separator
characters) or when two names are one file on a case-insensitive or
normalizing disk. The hub used to check less (``adapter_files.validate_filename``
had no such rule and no twin check), so a raw API (or an HF) commit could
publish a revision that ``peft-hub pull`` then refused, every file of it, for
every reader. Both sides now use ``peft_hub.names.check_file_name`` and
``check_no_twins``, and the hub refuses such a push with a 422 naming the
file. Each case pushes through the native API (preupload, PUT, commit) on
SQLite + local files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from raw_adapters import tiny_lora_dir

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration


@pytest.fixture
def alice(embedded_hub, tmp_path):
    admin = HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "c0")
    token = admin.create_token(scope="write", namespace="alice")["token"]
    with httpx.Client(base_url=embedded_hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        yield {"hub": embedded_hub, "http": http, "token": token, "tmp": tmp_path}


def _push(alice, name: str, extra: dict[str, bytes]) -> httpx.Response:
    """Commit a tiny LoRA plus ``extra`` files through the raw native API."""
    base = tiny_lora_dir(alice["tmp"] / f"src-{name}", name)
    files = {p.name: p.read_bytes() for p in sorted(base.iterdir())} | extra
    spec = [{"path": k, "sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in files.items()]
    http = alice["http"]
    r = http.post(f"/api/adapters/alice/{name}/preupload", json={"files": spec})
    if r.status_code != 200:
        return r
    by_sha = {hashlib.sha256(v).hexdigest(): v for v in files.values()}
    for item in r.json()["uploads"]:
        assert http.put(item["url"], content=by_sha[item["sha256"]]).status_code == 201
    return http.post(f"/api/adapters/alice/{name}/commit", json={"files": spec})


def _pullable(alice, name: str) -> Path:
    client = HubClient(alice["hub"].url, alice["token"], cache_dir=alice["tmp"] / f"pull-{name}")
    return client.pull(f"alice/{name}").path


#: Names (beside the adapter's own files) that ``peft-hub pull`` refuses in a hub's file list.
UNPULLABLE = {
    "case-twin": {"notes.txt": b"1", "NOTES.txt": b"2"},
    "card-case-twin": {"readme.md": b"other card"},  # beside README.md
    "config-case-twin": {"Adapter_Config.json": b"{}"},  # beside adapter_config.json
    "nfc-twin": {"\u00e9.txt": b"1", "e\u0301.txt": b"2"},
    "windows-device": {"CON.txt": b"1"},
    "windows-device-lower": {"nul.md": b"1"},
    "zero-width-space": {"a\u200bb.txt": b"1"},
    "bidi-override": {"evil\u202etxt.md": b"1"},
    "line-separator": {"a\u2028b.txt": b"1"},
}


@pytest.mark.parametrize("case", list(UNPULLABLE))
def test_a_name_the_hub_accepts_is_one_its_client_can_pull(alice, case):
    r = _push(alice, case, UNPULLABLE[case])
    assert r.status_code == 422, r.text  # refused at the door: nothing published
    assert r.json()["error"] == "invalid_adapter", r.text
    assert any(repr(name) in r.json()["detail"] for name in UNPULLABLE[case]), r.text  # names the file
    assert alice["http"].get(f"/api/adapters/alice/{case}").status_code == 404


#: Odd names the hub accepts and the client pulls as they are: look-alikes of separators and dots, a
#: leading space, a Kelvin sign (its casefold is 'k', unlike any other name here).
PULLABLE = {
    "fullwidth-dots": "\uff0e\uff0e.txt",
    "division-slash": "a\u2215b.txt",
    "leading-space": " notes.txt",
    "kelvin": "\u212a.txt",
}


@pytest.mark.parametrize("case", list(PULLABLE))
def test_odd_but_portable_names_push_and_pull_byte_for_byte(alice, case):
    name = PULLABLE[case]
    r = _push(alice, case, {name: case.encode()})
    assert r.status_code == 201, r.text
    pulled = _pullable(alice, case)
    assert (pulled / name).read_bytes() == case.encode()
    assert sorted(p.name for p in pulled.iterdir() if p.name == name) == [name]  # inside, under its own name


#: What an HF commit adds beside a tiny LoRA, and the file its refusal names.
HF_UNPULLABLE = {
    "device-and-twins": ({"CON.txt": b"1", "NOTES.txt": b"2", "notes.txt": b"3"}, "CON.txt"),
    "case-twins": ({"NOTES.txt": b"2", "notes.txt": b"3"}, "notes.txt"),
    "nfc-twins": ({"\u00e9.txt": b"1", "e\u0301.txt": b"2"}, "e\u0301.txt"),
}


@pytest.mark.parametrize("case", list(HF_UNPULLABLE))
def test_an_hf_commit_cannot_publish_names_the_client_refuses(alice, case):
    import base64
    import json

    extra, named = HF_UNPULLABLE[case]
    src = tiny_lora_dir(alice["tmp"] / "hf-src", "hf")
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir())} | extra
    lines = [{"key": "header", "value": {"summary": "odd names"}}] + [
        {"key": "file", "value": {"path": k, "content": base64.b64encode(v).decode(), "encoding": "base64"}}
        for k, v in files.items()]
    http = alice["http"]
    assert http.post("/api/repos/create", json={"name": "hf-odd", "organization": "alice"}).status_code == 200
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    ndjson = {"Content-Type": "application/x-ndjson"}
    r = http.post("/api/models/alice/hf-odd/commit/main", content=body, headers=ndjson)
    assert r.status_code == 422, r.text  # refused: nothing published
    assert repr(named) in r.json()["detail"], r.text
    assert http.get("/api/adapters/alice/hf-odd").json().get("revision") is None


def test_a_preupload_of_names_no_client_could_pull_is_refused_before_any_byte_is_sent(alice):
    """The raw API's preupload refuses what the commit would, so no blob is uploaded for it."""
    spec = {"sha256": "ab" * 32, "size": 3}
    for files in ([{**spec, "path": "nul.md"}],
                  [{**spec, "path": "notes.txt"}, {**spec, "path": "NOTES.txt", "sha256": "cd" * 32}]):
        r = alice["http"].post("/api/adapters/alice/names-pre/preupload", json={"files": files})
        assert r.status_code == 422 and r.json()["error"] == "invalid_adapter", r.text
