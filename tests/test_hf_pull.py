"""The read side of the Hugging Face–compatible API, driven by the real
``huggingface_hub`` client against a live hub on both backends.

``huggingface_hub`` reads ``HF_ENDPOINT`` and friends once, at import, so these
tests pass ``endpoint=``, ``token=`` and ``cache_dir=`` explicitly and never
touch ``~/.cache/huggingface``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from peft_hub.client import HubClient

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tiny_models import dir_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def pushed(hub, llama_adapter, tmp_path):
    """``admin/support`` pushed with the native client, tagged ``v1``; its revision id."""
    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "native-cache") as client:
        return client.push(llama_adapter, name="admin/support", tags=["v1"], message="first push").revision


def _api(hub, token=False) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.admin_token if token is True else token)


def test_snapshot_download_by_tag_and_by_revision_id_is_byte_identical(hub, pushed, llama_adapter, tmp_path):
    cache = tmp_path / "hf-cache"
    for revision in (None, "main", "v1", pushed):
        folder = snapshot_download("admin/support", revision=revision, endpoint=hub.url, cache_dir=cache, token=False)
        assert Path(folder).name == pushed  # the snapshot is keyed by our revision id
        assert dir_bytes(folder) == dir_bytes(llama_adapter)
    # hf_hub_download of one file, by tag and by id, lands on the same cached blob.
    by_tag = hf_hub_download("admin/support", "adapter_model.safetensors", revision="v1", endpoint=hub.url,
                             cache_dir=tmp_path / "one", token=False)
    by_id = hf_hub_download("admin/support", "adapter_model.safetensors", revision=pushed, endpoint=hub.url,
                            cache_dir=tmp_path / "one", token=False)
    assert Path(by_tag).read_bytes() == (llama_adapter / "adapter_model.safetensors").read_bytes()
    assert Path(by_tag).resolve() == Path(by_id).resolve()


def test_model_info_describes_the_adapter(hub, pushed, llama_adapter, tmp_path):
    info = _api(hub).model_info("admin/support")
    assert (info.id, info.sha, info.private, info.library_name) == ("admin/support", pushed, False, "peft")
    assert info.card_data["base_model"] == "tiny-llama"
    assert {"peft", "lora", "base_model:tiny-llama", "base_model:adapter:tiny-llama"} <= set(info.tags)
    local = {p.name: p.read_bytes() for p in llama_adapter.iterdir()}
    assert {s.rfilename for s in info.siblings} == set(local)
    for s in info.siblings:
        assert s.size == len(local[s.rfilename])
        assert s.lfs.sha256 == hashlib.sha256(local[s.rfilename]).hexdigest()
    assert _api(hub).model_info("admin/support", revision="v1").sha == pushed

    # Only a GET of adapter_config.json counts a download (HEADs do not).
    before = info.downloads
    hf_hub_download("admin/support", "README.md", endpoint=hub.url, cache_dir=tmp_path / "c", token=False)
    hf_hub_download("admin/support", "adapter_config.json", endpoint=hub.url, cache_dir=tmp_path / "c", token=False)
    hf_hub_download("admin/support", "adapter_config.json", endpoint=hub.url, cache_dir=tmp_path / "c", token=False)
    assert _api(hub).model_info("admin/support").downloads == before + 1


def test_resolve_answers_head_itself_and_redirects_get_on_s3(hub, pushed, llama_adapter):
    weights = (llama_adapter / "adapter_model.safetensors").read_bytes()
    sha256 = hashlib.sha256(weights).hexdigest()
    for rev in ("main", pushed):
        head = httpx.head(f"{hub.url}/admin/support/resolve/{rev}/adapter_model.safetensors")
        assert head.status_code == 200
        assert head.headers["X-Repo-Commit"] == pushed
        assert head.headers["ETag"] == head.headers["X-Linked-Etag"] == f'"{sha256}"'
        assert head.headers["X-Linked-Size"] == head.headers["Content-Length"] == str(len(weights))
    get = httpx.get(f"{hub.url}/admin/support/resolve/main/adapter_model.safetensors")
    if hub.backend == "s3-postgres":
        assert get.status_code == 302 and get.headers["X-Repo-Commit"] == pushed
        assert not get.headers["Location"].startswith(hub.url)
        assert httpx.get(get.headers["Location"]).content == weights
    else:
        assert get.status_code == 200 and get.content == weights
        part = httpx.get(f"{hub.url}/admin/support/resolve/main/adapter_model.safetensors",
                         headers={"Range": "bytes=8-15"})
        assert part.status_code == 206 and part.content == weights[8:16]


def test_missing_repo_revision_and_file_raise_the_hf_errors(hub, pushed, tmp_path):
    api, cache = _api(hub), tmp_path / "c"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("admin/nope")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("admin/nope", endpoint=hub.url, cache_dir=cache, token=False)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nope", "adapter_config.json", endpoint=hub.url, cache_dir=cache, token=False)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("admin/support", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("admin/support", "adapter_config.json", revision="0" * 40, endpoint=hub.url,
                        cache_dir=cache, token=False)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("admin/support", revision="v9", endpoint=hub.url, cache_dir=cache, token=False)
    # PEFT falls back from safetensors to .bin on exactly this error.
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("admin/support", "adapter_model.bin", endpoint=hub.url, cache_dir=cache, token=False)
    assert api.file_exists("admin/support", "adapter_config.json")
    assert not api.file_exists("admin/support", "adapter_model.bin")
    assert api.repo_exists("admin/support") and not api.repo_exists("admin/nope")
    assert api.revision_exists("admin/support", "v1") and not api.revision_exists("admin/support", "v9")


def test_private_adapter_is_invisible_without_a_token(hub, llama_adapter, tmp_path):
    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "native") as client:
        revision = client.push(llama_adapter, name="admin/secret", private=True).revision
        reader = client.create_token(scope="read", namespace="bob")["token"]

    for token in (False, reader, "hf_aHuggingFaceCoTokenThatMeansNothingHere"):
        with pytest.raises(RepositoryNotFoundError):
            _api(hub, token).model_info("admin/secret")
        with pytest.raises(RepositoryNotFoundError):
            snapshot_download("admin/secret", endpoint=hub.url, cache_dir=tmp_path / "anon", token=token)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("admin/secret", "adapter_config.json", endpoint=hub.url, cache_dir=tmp_path / "anon",
                            token=token)
    assert not _api(hub).repo_exists("admin/secret")

    info = _api(hub, True).model_info("admin/secret")
    assert (info.sha, info.private) == (revision, True)
    folder = snapshot_download("admin/secret", endpoint=hub.url, cache_dir=tmp_path / "mine", token=hub.admin_token)
    assert dir_bytes(folder) == dir_bytes(llama_adapter)

    # A peft-hub token that is wrong is refused as bad credentials, not hidden as a missing repo.
    with pytest.raises(HfHubHTTPError) as bad:
        _api(hub, "phub_" + "0" * 44).model_info("admin/secret")
    assert bad.value.response.status_code == 401 and not isinstance(bad.value, RepositoryNotFoundError)


def test_tree_pages_refs_and_expand(hub, pushed, llama_adapter):
    names = sorted(p.name for p in llama_adapter.iterdir())
    url, seen = f"{hub.url}/api/models/admin/support/tree/main?limit=1", []
    while url:
        page = httpx.get(url)
        assert page.status_code == 200 and len(page.json()) == 1
        seen += [item["path"] for item in page.json()]
        url = page.links.get("next", {}).get("url")
    assert seen == names

    entries = list(_api(hub).list_repo_tree("admin/support", revision="v1", recursive=True, expand=True))
    assert sorted(e.path for e in entries) == names
    assert all(e.last_commit.oid == pushed and e.lfs.sha256 for e in entries)
    assert [p.path for p in _api(hub).get_paths_info("admin/support", ["README.md", "nope.json"])] == ["README.md"]
    with pytest.raises(EntryNotFoundError):
        list(_api(hub).list_repo_tree("admin/support", path_in_repo="subfolder"))

    refs = _api(hub).list_repo_refs("admin/support")
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", pushed)]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", pushed)]
    assert _api(hub, True).whoami()["name"] == "admin"
