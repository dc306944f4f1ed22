"""One rule for file names, shared by the hub and the client (``peft_hub.names``).

The hub refuses at push what its client would refuse at pull: a name that is
not portable (``check_file_name``) and two names that are one file on a
case-insensitive or normalizing disk (``check_no_twins``). The client's local
push refuses them before any request; its pull check is the same function.
"""

from __future__ import annotations

import hashlib
import unicodedata

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from raw_adapters import tiny_lora_dir

from peft_hub.adapter import FileEntry, validate_dir
from peft_hub.adapter_files import check_listing, validate_filename
from peft_hub.client import HubClient
from peft_hub.client.names import check_name
from peft_hub.client.transfers import remote_manifest
from peft_hub.errors import InvalidAdapterError
from peft_hub.names import check_file_name, check_no_twins, file_name_problem, twin_key
from peft_hub.repo_kinds import check_entries

SHA = "0" * 64
REV = "a" * 40

NOT_PORTABLE = [
    "", ".", "..", ".hidden.txt", "a/b.txt", "a\\b.txt", "C:x.txt", "a:b.txt", "a*b.txt", "a?b.txt", 'a"b.txt',
    "a<b.txt", "a|b.txt", "notes.txt ", "notes.txt.", "a\x00b.txt", "a\nb.txt", "a\x7fb.txt", "a\x85b.txt",
    "a\u200bb.txt", "a\u200db.txt", "evil\u202etxt.md", "\ufeffnotes.txt", "soft\u00adhyphen.txt", "a\u2028b.txt",
    "a\u2029b.txt", "a\ud800.txt", "CON.txt", "con.txt", "nul.md", "Aux.json", "PRN", "COM1.md", "lpt9.txt",
    "COM0.txt", "COM\u00b9.json", "LPT\u00b3.txt", "CONIN$.txt", "conout$.md", "CON .txt", "NUL.tar.txt",
    "x" * 252 + ".txt", "\u00e9" * 126 + ".txt", 7, None, b"notes.txt",
]
#: Odd names every disk stores as themselves: they stay accepted.
PORTABLE = [
    "notes.txt", "README.md", "adapter_config.json", " notes.txt", "notes v2.txt", "\uff0e\uff0e.txt",
    "a\u2215b.txt", "\u212a.txt", "\u00e9.txt", "e\u0301.txt", "stra\u00dfe.txt", "\U0001f4a5.md",
    "a\u00a0b.txt", "console.txt", "CONFIG.txt", "COM10.txt", "LPT.txt", "nully.md", "x" * 251 + ".txt",
    "\u00e9" * 125 + ".txt",
]


@pytest.mark.parametrize("name", NOT_PORTABLE, ids=ascii)
def test_a_name_that_is_not_portable_is_refused_by_hub_and_client_alike(name):
    assert file_name_problem(name) is not None
    for check in (check_file_name, check_name, validate_filename):
        with pytest.raises(InvalidAdapterError, match="file name"):
            check(name)
    with pytest.raises(InvalidAdapterError, match="refusing the hub's file list"):
        remote_manifest({"revision": REV, "files": [{"path": name, "sha256": SHA, "size": 1}]})


@pytest.mark.parametrize("name", PORTABLE, ids=ascii)
def test_a_portable_name_is_accepted_by_hub_and_client_alike(name):
    assert file_name_problem(name) is None
    assert check_file_name(name) == check_name(name) == validate_filename(name) == name
    assert remote_manifest({"revision": REV, "files": [{"path": name, "sha256": SHA, "size": 1}]})[1][0].path == name


def test_a_refusal_names_the_file_and_the_reason():
    with pytest.raises(InvalidAdapterError, match=r"'CON\.txt' is a device name on Windows"):
        validate_filename("CON.txt")
    with pytest.raises(InvalidAdapterError, match=r"holds the character '\\u202e'"):
        validate_filename("evil\u202etxt.md")
    with pytest.raises(InvalidAdapterError, match="longer than 255 bytes"):
        validate_filename("x" * 300 + ".txt")


TWINS = [
    ("notes.txt", "NOTES.txt"), ("README.md", "readme.md"), ("adapter_config.json", "Adapter_Config.json"),
    ("\u00e9.txt", "e\u0301.txt"), ("\u00c9.txt", "e\u0301.txt"), ("k.txt", "\u212a.txt"), ("a.txt", "a.txt"),
    ("stra\u00dfe.txt", "STRASSE.txt"),
    # Missed by NFC(name).casefold(), which the client used before: a long s with an acute, and an s-acute.
    ("\u017f\u0301.txt", "\u015b.txt"),
]


@pytest.mark.parametrize(("first", "second"), TWINS, ids=ascii)
def test_twins_are_refused_naming_both(first, second):
    assert twin_key(first) == twin_key(second)
    with pytest.raises(InvalidAdapterError, match="listed twice") as info:
        check_no_twins([first, "other.txt", second])
    assert repr(second) in str(info.value)
    assert first == second or repr(first) in str(info.value)


@pytest.mark.parametrize(("first", "second"), TWINS, ids=ascii)
def test_the_hub_and_the_client_refuse_the_same_twins(first, second):
    base = [FileEntry("adapter_config.json", 2, SHA), FileEntry("adapter_model.safetensors", 8, SHA)]
    entries = [e for e in base if e.path not in (first, second)] + [FileEntry(first, 1, SHA), FileEntry(second, 1, SHA)]
    with pytest.raises(InvalidAdapterError, match="listed twice"):
        check_listing(entries, kind="adapter", max_files=32)
    with pytest.raises(InvalidAdapterError, match="listed twice"):
        check_entries("adapter", entries)
    files = [{"path": e.path, "sha256": e.sha256, "size": e.size} for e in entries]
    with pytest.raises(InvalidAdapterError, match="refusing the hub's file list.*listed twice"):
        remote_manifest({"revision": REV, "files": files})


def test_a_model_listing_refuses_a_name_twice():
    # A model's allowlist is a set of exact names, none a twin of another: its only twins are repeats.
    entries = [FileEntry("config.json", 2, SHA), FileEntry("model.safetensors", 8, SHA),
               FileEntry("README.md", 1, SHA), FileEntry("README.md", 1, SHA)]
    with pytest.raises(InvalidAdapterError, match="'README.md' is listed twice"):
        check_entries("model", entries)


def test_different_names_are_not_twins():
    check_no_twins(["notes.txt", "notes.md", "note.txt", "n\u00f6tes.txt", "\u00e9.txt", "e.txt", "\u212b.txt"])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.text(max_size=12))
def test_twin_key_merges_all_that_nfc_casefold_merges(a, b):
    if unicodedata.normalize("NFC", a).casefold() == unicodedata.normalize("NFC", b).casefold():
        assert twin_key(a) == twin_key(b)
    assert twin_key(a) == twin_key(unicodedata.normalize("NFD", a)) == twin_key(unicodedata.normalize("NFC", a))
    assert twin_key(a) == twin_key(a.upper()) == twin_key(twin_key(a))


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_whatever_the_hub_accepts_its_client_pulls(stem):
    name = stem + ".txt"
    try:
        validate_filename(name, kind="adapter")
    except InvalidAdapterError:
        return
    files = [{"path": "adapter_config.json", "sha256": SHA, "size": 2}, {"path": name, "sha256": SHA, "size": 1}]
    check_listing([FileEntry(f["path"], f["size"], f["sha256"]) for f in files], kind="adapter", max_files=32)
    assert [f.path for f in remote_manifest({"revision": REV, "files": files})[1]] == ["adapter_config.json", name]
    assert check_name(name) == name


@pytest.mark.parametrize("extra", [{"notes.txt": b"1", "NOTES.txt": b"2"}, {"readme.md": b"#"},
                                   {"\u00e9.txt": b"1", "e\u0301.txt": b"2"}], ids=ascii)
def test_a_local_push_refuses_twins_before_any_request(tmp_path, extra):
    src = tiny_lora_dir(tmp_path / "twins", "twins")
    for name, data in extra.items():
        (src / name).write_bytes(data)
    if len(list(src.iterdir())) != 3 + len(extra):
        pytest.skip("this disk is case-insensitive or normalizing: it cannot hold twins")
    with pytest.raises(InvalidAdapterError, match="listed twice"):
        validate_dir(src)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500)

    client = HubClient("http://hub.invalid", "t", cache_dir=tmp_path / "cache", transport=httpx.MockTransport(answer))
    with pytest.raises(InvalidAdapterError, match="listed twice"):
        client.push(src, name="alice/twins")
    assert seen == []


def test_a_local_push_refuses_a_device_name_before_any_request(tmp_path):
    src = tiny_lora_dir(tmp_path / "dev", "dev")
    (src / "nul.md").write_bytes(hashlib.sha256(b"x").digest())
    seen: list[httpx.Request] = []
    client = HubClient("http://hub.invalid", "t", cache_dir=tmp_path / "cache",
                       transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(500)))
    with pytest.raises(InvalidAdapterError, match="device name"):
        client.push(src, name="alice/dev")
    assert seen == []
