"""The JSON the Hugging Face clients parse: repo info, tree entries, refs.

Field names follow what ``huggingface_hub`` reads (``ModelInfo``,
``RepoSibling``, ``RepoFile``, ``GitRefs``); anything it does not read is left out.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Any

from peft_hub.errors import InvalidInputError
from peft_hub.hub.limits import SizedCache
from peft_hub.hub.models import Adapter, Revision, RevisionFile
from peft_hub.hub.storage import BlobStore
from peft_hub.model_dir import ModelMeta
from peft_hub.modelcard import CARD_NAME, front_matter
from peft_hub.repo_kinds import meta_from_dict
from peft_hub.safeparse import load_yaml

#: The commit id of an empty repo's ``main``: the revision id of no files (``manifest_digest([])``).
EMPTY_SHA = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
#: A base model named as a Hub id (``gpt2``, ``owner/name``), not a local path.
_HUB_MODEL_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?\Z")
#: Model cards larger than this are not parsed for ``cardData``.
CARD_PARSE_MAX = 1024 * 1024
#: Parsed card headers, by the card blob's sha256 (blobs never change),
#: weighed by the length of the YAML they came from.
_card_cache = SizedCache(64 * 1024 * 1024)


def iso(moment: datetime) -> str:
    """The one datetime format ``huggingface_hub.utils.parse_datetime`` accepts."""
    if moment.tzinfo is None:  # SQLite hands back naive UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file that stands for a blob in a git tree."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_blob_oid(data: bytes) -> str:
    """Git's object id for a blob with these bytes."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def tree_entry(f: RevisionFile, revision: Revision | None = None) -> dict[str, Any]:
    """A ``/tree`` item: every file is an LFS object, named by its pointer's oid."""
    pointer = lfs_pointer(f.sha256, f.size)
    item: dict[str, Any] = {
        "type": "file", "path": f.path, "size": f.size, "oid": git_blob_oid(pointer),
        "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": len(pointer)},
    }
    if revision is not None:  # expand=true
        item["lastCommit"] = {
            "id": revision.sha, "title": revision.message.split("\n", 1)[0], "date": iso(revision.created_at),
        }
    return item


def sibling(f: RevisionFile) -> dict[str, Any]:
    """A ``siblings`` item of repo info (note ``lfs.sha256`` here, ``lfs.oid`` in trees)."""
    pointer = lfs_pointer(f.sha256, f.size)
    return {
        "rfilename": f.path, "size": f.size, "blobId": git_blob_oid(pointer),
        "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": len(pointer)},
    }


def card_metadata(store: BlobStore, files: list[RevisionFile]) -> dict[str, Any]:
    """The YAML front matter of the model card as plain JSON data, or ``{}``.

    Parsed once per card blob and bounded (depth, aliases, expansion), so the
    answer is never much larger than the card, and a header the hub would
    refuse today (pushed before the check) reads as ``{}``. The result is
    shared: callers copy it before changing it.
    """
    card = next((f for f in files if f.path == CARD_NAME), None)
    if card is None or card.size > CARD_PARSE_MAX:
        return {}
    cached = _card_cache.get(card.sha256)
    if cached is not None:
        return cached
    with store.open(card.sha256) as fh:
        text = fh.read(CARD_PARSE_MAX).decode("utf-8", "replace")
    front = split_front_matter(text)
    data: Any = {}
    if front is not None:
        try:
            data = load_yaml(front, what="the card's YAML front matter")
        except InvalidInputError:
            data = {}
    data = data if isinstance(data, dict) else {}
    # Python objects weigh several times their YAML; 4 bytes a character is the guess.
    _card_cache.put(card.sha256, data, 4 * len(front or "") + 64)
    return data


#: The YAML between a leading ``---`` line and the next one, if any (one rule
#: for the push check and for ``cardData``).
split_front_matter = front_matter


def model_info(
    adapter: Adapter, revision: Revision | None, files: list[RevisionFile], card: dict[str, Any]
) -> dict[str, Any]:
    """Repo info as ``HfApi.model_info`` parses it.

    ``revision`` is None for a repo created with ``create_repo`` that has no
    push yet: it exists (``sha`` is null, no files) so ``repo_exists`` holds.
    """
    meta = meta_from_dict(revision.meta) if revision is not None else None
    if isinstance(meta, ModelMeta):
        return {**_repo_fields(adapter, revision, files), **base_model_fields(meta, card)}
    base = hub_model_id(meta.base_model) if meta else None
    card_data = dict(card)
    if not isinstance(card_data.get("base_model"), str) or not hub_model_id(card_data["base_model"]):
        card_data.pop("base_model", None)  # a local path says nothing to another machine
    if base and not card_data.get("base_model"):
        card_data["base_model"] = base
    card_data.setdefault("library_name", "peft")
    tags = ["peft", "safetensors"] if meta else ["peft"]
    if meta:
        tags.append(meta.method.lower())
    if base:
        tags += [f"base_model:{base}", f"base_model:adapter:{base}"]
    card_tags = card_data.get("tags")
    for tag in card_tags if isinstance(card_tags, list) else []:
        if isinstance(tag, str) and tag not in tags:
            tags.append(tag)
    return {
        **_repo_fields(adapter, revision, files),
        "library_name": "peft",
        "tags": tags,
        "pipeline_tag": None,
        "cardData": card_data,
    }


def _repo_fields(adapter: Adapter, revision: Revision | None, files: list[RevisionFile]) -> dict[str, Any]:
    """The fields of repo info that do not depend on the repo's kind."""
    return {
        "id": f"{adapter.owner}/{adapter.name}",
        "modelId": f"{adapter.owner}/{adapter.name}",
        "author": adapter.owner,
        "sha": revision.sha if revision else EMPTY_SHA,
        "lastModified": iso(revision.created_at if revision else adapter.updated_at),
        "createdAt": iso(adapter.created_at),
        "private": adapter.private,
        "gated": False,
        "disabled": False,
        "downloads": adapter.downloads,
        "likes": 0,
        "siblings": [sibling(f) for f in files],
        "spaces": [],
        "usedStorage": sum(f.size for f in files),
        # 0.3x clients ask before each commit; False keeps them on LFS (peft-hub has no Xet).
        "xetEnabled": False,
    }


def base_model_fields(meta: ModelMeta, card: dict[str, Any]) -> dict[str, Any]:
    """What the HF Hub says of a transformers model: its library, tags,
    pipeline (text generation for a causal LM) and the config's identity."""
    card_data = dict(card)
    card_data.setdefault("library_name", "transformers")
    tags = ["transformers", "safetensors", meta.model_type]
    causal = any(a.endswith("ForCausalLM") for a in meta.architectures)
    if causal:
        tags.append("text-generation")
    card_tags = card_data.get("tags")
    for tag in card_tags if isinstance(card_tags, list) else []:
        if isinstance(tag, str) and tag not in tags:
            tags.append(tag)
    return {
        "library_name": "transformers",
        "tags": tags,
        "pipeline_tag": "text-generation" if causal else None,
        "cardData": card_data,
        "config": {"model_type": meta.model_type, "architectures": meta.architectures},
    }


def refs(tags: dict[str, str], *, empty: bool = False) -> dict[str, Any]:
    """``main`` as the one branch (at :data:`EMPTY_SHA` in an empty repo), every
    other tag as a git tag; never a pull request."""
    main = EMPTY_SHA if empty else tags.get("main")
    return {
        "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": main}] if main else [],
        "tags": [
            {"name": name, "ref": f"refs/tags/{name}", "targetCommit": sha}
            for name, sha in tags.items() if name != "main"
        ],
        "converts": [],
        "pullRequests": [],
    }


def hub_model_id(base: str | None) -> str | None:
    """``base`` if it names a model on a hub, None for a local path (``/tmp/llama``, ``./base``)."""
    return base if isinstance(base, str) and _HUB_MODEL_ID.match(base) and ".." not in base else None


def commit_entry(revision: Revision) -> dict[str, Any]:
    """A ``/commits`` item, as ``HfApi.list_repo_commits`` parses it."""
    title, _, message = revision.message.partition("\n")
    return {
        "id": revision.sha, "authors": [{"user": revision.author or "unknown"}], "date": iso(revision.created_at),
        "title": title, "message": message.strip("\n"),
    }
