"""The write side of the Hugging Face–compatible API: ``create_repo``,
``upload_folder``/``create_commit`` (inline files and the LFS transfer) and
``hf upload``, against a live hub on both backends. Every commit must go
through the same validation and atomic publish as ``peft-hub push``."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from peft_hub.adapter import FileEntry, manifest_digest, sha256_file, validate_dir
from peft_hub.client import HubClient
from peft_hub.errors import ChecksumMismatchError
from peft_hub.hub.hf.shapes import EMPTY_SHA

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    snapshot_download,
)
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from tiny_models import dir_bytes

pytestmark = pytest.mark.integration


def _revision_of(path: Path) -> str:
    return manifest_digest(validate_dir(path)[1])


@pytest.fixture
def api(hub, monkeypatch) -> HfApi:
    """An admin client with Xet off, so in-process uploads never start hf_xet
    (which writes under ~/.cache); Xet-on behaviour is tested in a subprocess."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    return HfApi(endpoint=hub.url, token=hub.admin_token)


@pytest.fixture
def lfs_everything(monkeypatch):
    """Send every file through the LFS batch + PUT path instead of inline."""
    from peft_hub.hub.hf import commit

    monkeypatch.setattr(commit, "INLINE_MAX_BYTES", 0)
    monkeypatch.setattr(commit, "XET_CLIENT_INLINE_MAX_BYTES", 0)  # 1.x clients would get inline files too


def _stored(hub) -> set[str]:
    return {b.sha256 for b in hub.app.state.store.iterate()}


@pytest.mark.parametrize("transport", ["inline", "lfs"])
def test_upload_folder_publishes_the_same_revision_as_a_native_push(
    hub, api, llama_adapter, tmp_path, transport, request
):
    if transport == "lfs":
        request.getfixturevalue("lfs_everything")
    url = api.create_repo("admin/pushed")
    assert url.repo_id == "admin/pushed"
    empty = api.model_info("admin/pushed")
    assert (empty.sha, empty.siblings) == (EMPTY_SHA, [])
    assert api.create_repo("admin/pushed", exist_ok=True).repo_id == "admin/pushed"
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo("admin/pushed")
    assert exists.value.response.status_code == 409

    commit = api.upload_folder(folder_path=str(llama_adapter), repo_id="admin/pushed", commit_message="via hf")
    assert commit.oid == _revision_of(llama_adapter)  # same files, same revision id as `peft-hub push`
    assert api.model_info("admin/pushed").sha == commit.oid

    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "native") as client:
        pulled = client.pull("admin/pushed", tmp_path / "out")
    assert pulled.revision == commit.oid and dir_bytes(pulled.path) == dir_bytes(llama_adapter)
    folder = snapshot_download("admin/pushed", endpoint=hub.url, cache_dir=tmp_path / "hf", token=False)
    assert dir_bytes(folder) == dir_bytes(llama_adapter)

    # Pushing the same folder again changes nothing.
    again = api.upload_folder(folder_path=str(llama_adapter), repo_id="admin/pushed")
    assert again.oid == commit.oid


def test_commits_apply_on_top_of_main(hub, api, llama_adapter, tmp_path):
    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "native") as client:
        first = client.push(llama_adapter, name="admin/inc").revision

    card = b"---\nlicense: apache-2.0\nbase_model: tiny-llama\n---\n# A new card\n"
    second = api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id="admin/inc").oid
    third = api.create_commit(
        "admin/inc", commit_message="notes, no card",
        operations=[
            CommitOperationAdd("notes.txt", b"trained on support tickets\n"), CommitOperationDelete("README.md"),
        ],
    ).oid
    assert len({first, second, third}) == 3

    files = {s.rfilename: s for s in api.model_info("admin/inc", revision=second).siblings}
    assert set(files) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    assert files["README.md"].lfs.sha256 == hashlib.sha256(card).hexdigest()
    assert api.model_info("admin/inc", revision=second).card_data["license"] == "apache-2.0"
    latest = snapshot_download("admin/inc", endpoint=hub.url, cache_dir=tmp_path / "hf", token=False)
    assert sorted(os.listdir(latest)) == ["adapter_config.json", "adapter_model.safetensors", "notes.txt"]
    weights = "adapter_model.safetensors"
    assert Path(latest, weights).read_bytes() == (llama_adapter / weights).read_bytes()
    # Older revisions stay reachable by id.
    old = snapshot_download("admin/inc", revision=first, endpoint=hub.url, cache_dir=tmp_path / "hf", token=False)
    assert dir_bytes(old) == dir_bytes(llama_adapter)

    with pytest.raises(HfHubHTTPError) as missing:
        api.delete_file("nope.json", repo_id="admin/inc")
    assert missing.value.response.status_code == 404
    with pytest.raises(HfHubHTTPError) as stale:
        api.upload_file(path_or_fileobj=b"x\n", path_in_repo="late.txt", repo_id="admin/inc", parent_commit=first)
    assert stale.value.response.status_code == 409
    assert api.model_info("admin/inc").sha == third


@pytest.mark.parametrize("transport", ["inline", "lfs"])
def test_pickles_and_incomplete_adapters_are_refused_and_nothing_is_published(
    hub, api, llama_adapter, tmp_path, transport, request
):
    if transport == "lfs":
        request.getfixturevalue("lfs_everything")
    api.create_repo("admin/bad")
    pickle = b"\x80\x04\x95" + os.urandom(64)
    with pytest.raises(HfHubHTTPError) as refused:
        api.upload_file(path_or_fileobj=pickle, path_in_repo="adapter_model.bin", repo_id="admin/bad")
    assert refused.value.response.status_code == 422 and "pickle" in str(refused.value)
    with pytest.raises(HfHubHTTPError) as refused:
        api.create_commit("admin/bad", commit_message="sneak", operations=[
            CommitOperationAdd("adapter_config.json", str(llama_adapter / "adapter_config.json")),
            CommitOperationAdd("adapter_model.safetensors", str(llama_adapter / "adapter_model.safetensors")),
            CommitOperationAdd("training_args.bin", pickle),
        ])
    assert "pickle" in str(refused.value)
    assert hashlib.sha256(pickle).hexdigest() not in _stored(hub)  # refused before any byte was kept

    # Weights without their config are not an adapter: refused whole.
    with pytest.raises(HfHubHTTPError) as incomplete:
        api.upload_file(path_or_fileobj=str(llama_adapter / "adapter_model.safetensors"),
                        path_in_repo="adapter_model.safetensors", repo_id="admin/bad")
    assert "adapter_config.json is missing" in str(incomplete.value)
    assert api.model_info("admin/bad").sha == EMPTY_SHA
    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "native") as client:
        assert client.search(q="bad")["total"] == 0


def test_a_pickle_sent_straight_to_commit_is_refused_before_it_is_stored(hub, api, llama_adapter):
    """A client that skips preupload meets the same check in the commit itself."""
    import base64
    import json

    api.create_repo("admin/raw")
    pickle = b"\x80\x04\x95" + os.urandom(64)

    def line(key: str, value: dict) -> bytes:
        return json.dumps({"key": key, "value": value}).encode() + b"\n"

    def inline(path: str, data: bytes) -> bytes:
        return line("file", {"path": path, "encoding": "base64", "content": base64.b64encode(data).decode()})

    body = (line("header", {"summary": "raw", "description": ""})
            + inline("adapter_config.json", (llama_adapter / "adapter_config.json").read_bytes())
            + inline("adapter_model.safetensors", (llama_adapter / "adapter_model.safetensors").read_bytes())
            + inline("adapter_model.bin", pickle))
    headers = {"Authorization": f"Bearer {hub.admin_token}", "Content-Type": "application/x-ndjson"}
    response = httpx.post(f"{hub.url}/api/models/admin/raw/commit/main", content=body, headers=headers)
    assert response.status_code == 422 and response.headers["X-Error-Code"] == "unsafe_format"
    assert hashlib.sha256(pickle).hexdigest() not in _stored(hub)
    assert api.model_info("admin/raw").sha == EMPTY_SHA

    ok = httpx.post(f"{hub.url}/api/models/admin/raw/commit/main", content=body.rsplit(b"\n", 2)[0] + b"\n",
                    headers={"Authorization": f"Bearer {hub.admin_token}", "Content-Type": "application/x-ndjson"})
    two = [FileEntry(n, (llama_adapter / n).stat().st_size, sha256_file(llama_adapter / n))
           for n in ("adapter_config.json", "adapter_model.safetensors")]
    assert ok.status_code == 200 and ok.json()["commitOid"] == manifest_digest(two)


def test_private_repos_and_write_permissions(hub, api, llama_adapter, tmp_path):
    api.create_repo("admin/hidden", private=True)
    api.upload_folder(folder_path=str(llama_adapter), repo_id="admin/hidden")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("admin/hidden")
    assert api.model_info("admin/hidden").private

    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "native") as client:
        bob_read = client.create_token(scope="read", namespace="bob")["token"]
        bob_write = client.create_token(scope="write", namespace="bob")["token"]
    with pytest.raises(HfHubHTTPError) as anonymous:
        HfApi(endpoint=hub.url, token=False).create_repo("admin/anon")
    assert anonymous.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as reader:
        HfApi(endpoint=hub.url, token=bob_read).create_repo("bob/mine")
    assert reader.value.response.status_code == 403

    bob = HfApi(endpoint=hub.url, token=bob_write)
    assert bob.create_repo("mine").repo_id == "bob/mine"  # no namespace: the caller's own
    bob.upload_folder(folder_path=str(llama_adapter), repo_id="bob/mine")
    with pytest.raises(RepositoryNotFoundError):  # someone else's private repo is just missing
        bob.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id="admin/hidden")
    api.create_repo("admin/public")
    with pytest.raises(HfHubHTTPError) as foreign:
        bob.upload_folder(folder_path=str(llama_adapter), repo_id="admin/public")
    assert foreign.value.response.status_code == 403
    bob.delete_repo("bob/mine")
    assert not bob.repo_exists("bob/mine")


def test_lfs_upload_urls_are_signed_and_bytes_verified(hub, api, lfs_everything):
    api.create_repo("admin/lfs")
    data = os.urandom(4096)
    oid = hashlib.sha256(data).hexdigest()
    batch = httpx.post(
        f"{hub.url}/admin/lfs.git/info/lfs/objects/batch",
        json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]},
        headers={"Authorization": f"Bearer {hub.admin_token}"},
    ).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    assert batch["transfer"] == "basic" and href.startswith(hub.url)
    assert httpx.put(href.replace("signature=", "signature=0"), content=data).status_code == 401
    assert httpx.put(href, content=data[:-1] + b"!").status_code == 422  # wrong bytes
    assert oid not in _stored(hub)
    assert httpx.put(href, content=data).status_code == 200
    assert oid in _stored(hub)
    again = httpx.post(
        f"{hub.url}/admin/lfs.git/info/lfs/objects/batch",
        json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
        headers={"Authorization": f"Bearer {hub.admin_token}"},
    ).json()
    assert "actions" not in again["objects"][0]  # already stored: nothing to send
    anonymous = httpx.post(f"{hub.url}/admin/lfs.git/info/lfs/objects/batch",
                           json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]})
    assert anonymous.status_code == 401


def test_large_blobs_stream_into_the_store_verified(hub, monkeypatch):
    """On S3 in multipart parts, completed only once size and sha256 match;
    locally through the store's own verifying writer."""
    import asyncio

    from peft_hub.hub import uploads
    from peft_hub.hub.storage import s3

    monkeypatch.setattr(s3, "PART_BYTES", 5 * 1024 * 1024)  # S3's smallest part
    store = hub.app.state.store
    data = os.urandom(11 * 1024 * 1024 + 7)
    sha256 = hashlib.sha256(data).hexdigest()

    async def body(payload: bytes):
        for start in range(0, len(payload), 256 * 1024):
            yield payload[start: start + 256 * 1024]

    with pytest.raises(ChecksumMismatchError):
        off_by_one = data[:-1] + bytes([data[-1] ^ 1])  # always one byte off (a fixed byte could equal it)
        asyncio.run(uploads.receive(store, sha256, len(data), body(off_by_one)))
    assert store.stat(sha256) is None
    asyncio.run(uploads.receive(store, sha256, len(data), body(data)))
    assert store.stat(sha256).size == len(data)
    if hub.backend == "s3-postgres":  # it went in parts: S3 keeps no whole-object sha256 then
        assert store.stat(sha256).verified_sha256 is None
    with store.open(sha256) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == sha256


def _need_hf_xet() -> None:
    # find_spec, not import: importing hf_xet writes logs under ~/.cache/huggingface.
    if importlib.util.find_spec("hf_xet") is None:
        pytest.skip("hf_xet is not installed")


def _hf_env(hub, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.admin_token, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def test_hf_cli_upload_works_with_xet_installed(hub, llama_adapter, tmp_path):
    """``hf upload`` with hf_xet installed and not disabled: small files go inline, no Xet needed."""
    _need_hf_xet()
    env = _hf_env(hub, tmp_path)
    done = subprocess.run(["hf", "upload", "admin/cli", str(llama_adapter), "--commit-message", "from the hf CLI"],
                          check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    info = HfApi(endpoint=hub.url, token=hub.admin_token).model_info("admin/cli")
    assert info.sha == _revision_of(llama_adapter)


def test_xet_is_refused_plainly_when_a_file_needs_lfs(hub, llama_adapter, tmp_path):
    """A file too big to go inline needs LFS; with Xet still on, the client asks
    for a Xet token, gets a 501 at once, and nothing is published."""
    _need_hf_xet()
    script = (
        "import sys, huggingface_hub as h\n"
        "api = h.HfApi()\n"
        "api.create_repo('admin/xet', exist_ok=True)\n"
        "try:\n"
        "    api.upload_folder(folder_path=sys.argv[1], repo_id='admin/xet')\n"
        "except Exception as exc:\n"
        "    print('REFUSED', exc)\n"
        "else:\n"
        "    print('UPLOADED')\n"
    )
    from peft_hub.hub.hf import commit

    # The hub runs in this process: shrink its inline limit so the weights need LFS.
    old = commit.INLINE_MAX_BYTES, commit.XET_CLIENT_INLINE_MAX_BYTES
    commit.INLINE_MAX_BYTES = commit.XET_CLIENT_INLINE_MAX_BYTES = 1024
    try:
        done = subprocess.run([sys.executable, "-c", script, str(llama_adapter)], env=_hf_env(hub, tmp_path),
                              check=False, capture_output=True, text=True, timeout=60)
    finally:
        commit.INLINE_MAX_BYTES, commit.XET_CLIENT_INLINE_MAX_BYTES = old
    assert "REFUSED" in done.stdout and "xet-write-token" in done.stdout and "501" in done.stdout, (
        done.stdout + done.stderr
    )
    assert HfApi(endpoint=hub.url, token=hub.admin_token).model_info("admin/xet").sha == EMPTY_SHA


@pytest.mark.parametrize("size", [True, False, 1.0, 4096.0, "4096", None, -1])
def test_lfs_and_preupload_refuse_a_size_that_is_not_an_integer(hub, api, size):
    """``true`` is an int in Python and ``4096.0`` passes a naive check: both
    are refused as sizes, and nothing is planned or stored for them."""
    api.create_repo("admin/sizes", exist_ok=True)
    data = os.urandom(64)
    oid = hashlib.sha256(data).hexdigest()
    auth = {"Authorization": f"Bearer {hub.admin_token}"}
    batch = httpx.post(f"{hub.url}/admin/sizes.git/info/lfs/objects/batch", headers=auth,
                       json={"operation": "upload", "objects": [{"oid": oid, "size": size}]})
    assert batch.status_code == 200, batch.text
    item = batch.json()["objects"][0]
    assert item["error"]["code"] == 422 and "actions" not in item and type(item["size"]) is int, item
    plan = httpx.post(f"{hub.url}/api/models/admin/sizes/preupload/main", headers=auth,
                      json={"files": [{"path": "adapter_model.safetensors", "size": size, "sample": ""}]})
    assert plan.status_code == 422 and plan.json()["error"] == "invalid_input", plan.text
    assert oid not in _stored(hub)
