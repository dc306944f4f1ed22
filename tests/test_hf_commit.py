"""Unit tests of the HF commit parser and of how a commit becomes a manifest
(no services: the store is a directory)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import pytest

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import MAX_FILES
from peft_hub.errors import (
    EntryNotFoundError,
    InvalidAdapterError,
    InvalidInputError,
    UnsafeFormatError,
)
from peft_hub.hub.hf.commit import MAX_COMMIT_OTHER_LINES, read_commit
from peft_hub.hub.hf.ndjson import ndjson_lines
from peft_hub.hub.hf.operations import Operation, apply_operations
from peft_hub.hub.storage import open_store


def _entry(path: str, data: bytes = b"x") -> FileEntry:
    return FileEntry(path, len(data), hashlib.sha256(path.encode() + data).hexdigest())


def _body(*items: dict, chunk: int = 7):
    raw = b"".join(json.dumps(i).encode() + b"\n" for i in items)

    async def chunks():
        for start in range(0, len(raw), chunk):  # lines split across chunks on purpose
            yield raw[start: start + chunk]

    return chunks()


def _file(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "encoding": "base64", "content": base64.b64encode(data).decode()}}


def test_operations_apply_in_order_on_top_of_the_parent():
    parent = [_entry("README.md"), _entry("adapter_config.json"), _entry("adapter_model.safetensors")]
    new_card = _entry("README.md", b"new")
    out = apply_operations(parent, [
        Operation("delete", "README.md"), Operation("add", "README.md", new_card),
        Operation("add", "notes.txt", _entry("notes.txt")),
    ])
    assert [e.path for e in out] == ["README.md", "adapter_config.json", "adapter_model.safetensors", "notes.txt"]
    assert out[0] == new_card
    assert [e.path for e in apply_operations(parent, [Operation("delete_folder", "")])] == []
    with pytest.raises(EntryNotFoundError):
        apply_operations(parent, [Operation("delete", "nope.json")])
    with pytest.raises(EntryNotFoundError):
        apply_operations(parent, [Operation("delete_folder", "sub")])


def test_read_commit_stores_inline_files_and_skips_git_files(tmp_path):
    store = open_store(str(tmp_path / "blobs"))
    config = b'{"peft_type": "LORA"}'
    parsed = asyncio.run(read_commit(_body(
        {"key": "header", "value": {"summary": "s", "description": "d", "parentCommit": "a" * 40}},
        _file("adapter_config.json", config),
        _file(".gitattributes", b"*.safetensors filter=lfs\n"),
        {"key": "lfsFile",
         "value": {"path": "adapter_model.safetensors", "algo": "sha256", "oid": "b" * 64, "size": 9}},
        {"key": "deletedFile", "value": {"path": "README.md"}},
    ), store, stored := []))
    assert (parsed.message, parsed.parent_commit) == ("s\n\nd", "a" * 40)
    assert [(op.kind, op.path) for op in parsed.operations] == [
        ("add", "adapter_config.json"), ("add", "adapter_model.safetensors"), ("delete", "README.md"),
    ]
    sha = hashlib.sha256(config).hexdigest()
    assert parsed.operations[0].entry == FileEntry("adapter_config.json", len(config), sha)
    assert parsed.operations[0].inline and not parsed.operations[1].inline and stored == [sha]
    with store.open(sha) as fh:
        assert fh.read() == config


@pytest.mark.parametrize(("item", "error"), [
    (_file("adapter_model.bin", b"\x80\x04"), UnsafeFormatError),
    (_file("sub/adapter_config.json", b"{}"), InvalidAdapterError),
    (_file("README.md", b"x" * (1024**2 + 1)), InvalidAdapterError),
    ({"key": "file", "value": {"path": "a.json", "content": "not base64!"}}, InvalidInputError),
    ({"key": "lfsFile", "value": {"path": "a.json", "oid": "xyz"}}, InvalidInputError),
    ({"key": "rename", "value": {"path": "a.json"}}, InvalidInputError),
])
def test_read_commit_refuses_bad_lines_before_storing_them(tmp_path, item, error):
    store = open_store(str(tmp_path / "blobs"))
    with pytest.raises(error):
        asyncio.run(read_commit(_body(item), store, []))
    assert list(store.iterate()) == []


def test_read_commit_caps_files_and_line_length(tmp_path):
    store = open_store(str(tmp_path / "blobs"))
    many = [_file(f"f{i}.txt", b"%d" % i) for i in range(MAX_FILES + 1)]
    with pytest.raises(InvalidInputError, match="at most"):
        asyncio.run(read_commit(_body(*many, chunk=4096), store, []))

    deletions = [{"key": "deletedFile", "value": {"path": f"f{i}.txt"}} for i in range(MAX_COMMIT_OTHER_LINES)]
    parsed = asyncio.run(read_commit(_body(*deletions, chunk=4096), store, []))
    assert len(parsed.operations) == MAX_COMMIT_OTHER_LINES
    for other in ({"key": "header", "value": {}}, {"key": "deletedFolder", "value": {"path": "x"}},
                  {"key": "file", "value": {"path": ".gitattributes", "content": ""}}):
        with pytest.raises(InvalidInputError, match="besides the files it adds"):
            asyncio.run(read_commit(_body(*deletions, other, chunk=4096), store, []))

    async def collect():
        return [line async for line in ndjson_lines(_body({"a": "x" * 100}, chunk=16), max_line=50)]

    with pytest.raises(InvalidInputError, match="longer than"):
        asyncio.run(collect())
