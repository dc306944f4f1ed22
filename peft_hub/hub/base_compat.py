"""An adapter's LoRA shapes checked against its base model, when the base is in this hub.

At publish, an adapter whose ``base_model_name_or_path`` names a model repo
of this hub (``owner/name``, at the adapter config's ``revision`` or
``main``) must fit it: for each ``<module>.lora_A.weight`` ``(r, in)`` and
``lora_B.weight`` ``(out, r)`` the base holds ``<module>.weight`` of shape
``(out, in)`` (``(in, out)`` for ``fan_in_fan_out`` adapters, GPT-2's
Conv1D), and for ``lora_embedding_A`` ``(r, num)`` / ``lora_embedding_B``
``(dim, r)`` a ``(num, dim)`` embedding. The base's shapes come from its
stored safetensors headers only (never the tensors), parsed once per base
revision and kept in a small in-process cache. A base that is not a model
repo here (an HF id, a local path, a repo the pusher cannot read, a
revision this hub lacks) is not checked. Torch-free.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

from sqlalchemy.engine import Engine
from sqlmodel import Session

from peft_hub.adapter import PEFT_PREFIX, AdapterMeta, FileEntry
from peft_hub.adapter_files import CONFIG_NAME, WEIGHTS_NAME
from peft_hub.errors import InvalidAdapterError, PeftHubError
from peft_hub.hub import crud
from peft_hub.hub.auth import Principal, can_read
from peft_hub.hub.storage import BlobStore
from peft_hub.model_files import is_weights
from peft_hub.names import validate_repo_id
from peft_hub.safeparse import loads_json
from peft_hub.safetensors_header import MAX_HEADER_BYTES, read_header

Shapes = dict[str, tuple[int, ...]]
OpenStored = Callable[[FileEntry], AbstractContextManager[BinaryIO]]

#: Base revisions whose parsed shapes are kept (a revision's files never change).
CACHE_SIZE = 16
_cache: OrderedDict[str, Shapes] = OrderedDict()
_cache_lock = threading.Lock()

_KEY = re.compile(r"\A(?P<module>.+?)\.(?:(?P<ab>lora_A|lora_B)\.weight|(?P<emb>lora_embedding_A|lora_embedding_B))\Z")
_PREFIXES = ("model.", "transformer.", "model.language_model.", "language_model.model.")


def check_base(
    engine: Engine, store: BlobStore, *, principal: Principal | None, meta: AdapterMeta,
    entries: list[FileEntry], open_stored: OpenStored,
) -> None:
    """Raise InvalidAdapterError when the adapter does not fit its base in this hub."""
    if not meta.base_model:
        return
    try:
        owner, name = validate_repo_id(meta.base_model)
    except PeftHubError:
        return  # an HF id this hub cannot hold, or a local path
    files = {e.path: e for e in entries}
    if WEIGHTS_NAME not in files or CONFIG_NAME not in files:
        return
    config = _config(open_stored, files[CONFIG_NAME])
    revision = config.get("revision")
    found = _base_files(engine, principal, owner, name, revision if isinstance(revision, str) else None)
    if found is None:
        return
    label, sha, weights = found
    shapes = base_shapes(store, sha, weights)
    with open_stored(files[WEIGHTS_NAME]) as fh:
        header = read_header(fh, files[WEIGHTS_NAME].size, name=WEIGHTS_NAME)
    adapter = {k: t.shape for k, t in header.tensors.items()}
    check_shapes(adapter, shapes, base=label, fan_in_fan_out=config.get("fan_in_fan_out") is True)


def _config(open_stored: OpenStored, entry: FileEntry) -> dict[str, Any]:
    with open_stored(entry) as fh:
        obj = loads_json(fh.read().decode("utf-8", "replace"), what=CONFIG_NAME, error=InvalidAdapterError)
    return obj if isinstance(obj, dict) else {}


def _base_files(
    engine: Engine, principal: Principal | None, owner: str, name: str, revision: str | None,
) -> tuple[str, str, list[FileEntry]] | None:
    """``(owner/name@sha12, revision sha, weight files)`` of a readable model repo, or None."""
    with Session(engine) as session:
        repo = crud.find_adapter(session, owner=owner, name=name)
        if repo is None or repo.kind != "model" or not can_read(principal, repo):
            return None
        try:
            rev = crud.resolve_revision(session, adapter=repo, rev=revision)
        except PeftHubError:
            return None
        weights = [FileEntry(f.path, f.size, f.sha256) for f in crud.revision_files(session, revision=rev)
                   if is_weights(f.path)]
        return f"{repo.owner}/{repo.name}@{rev.sha[:12]}", rev.sha, weights


def base_shapes(store: BlobStore, sha: str, weights: list[FileEntry]) -> Shapes:
    """Every tensor's shape in a base revision, from its shards' headers (cached per revision)."""
    with _cache_lock:
        if sha in _cache:
            _cache.move_to_end(sha)
            return _cache[sha]
    shapes: Shapes = {}
    for entry in weights:
        with store.open(entry.sha256, 0, min(entry.size, 8 + MAX_HEADER_BYTES)) as fh:
            header = read_header(fh, entry.size, name=entry.path)
        shapes.update((k, t.shape) for k, t in header.tensors.items())
    with _cache_lock:
        _cache[sha] = shapes
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return shapes


def candidates(module: str) -> list[str]:
    """Base tensor names ``<module>.weight`` may be stored under (PEFT's ``model.`` prefix mapping)."""
    key = f"{module}.weight"
    parts = key.split(".")
    out = [key] + [".".join(parts[i:]) for i in (1, 2) if len(parts) - i >= 2]
    out += [prefix + key for prefix in _PREFIXES]
    return list(dict.fromkeys(out))


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_shapes(adapter: Shapes, base_shapes: Shapes, *, base: str, fan_in_fan_out: bool = False) -> None:
    """Compare LoRA factor shapes with the base's (see the module docstring); the first misfit is raised."""
    factors: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in sorted(adapter.items()):
        match = _KEY.match(key[len(PEFT_PREFIX):]) if key.startswith(PEFT_PREFIX) else None
        if match:
            factors.setdefault(match["module"], {})[match["ab"] or match["emb"]] = shape
    for module, parts in sorted(factors.items()):
        found = next((k for k in candidates(module) if k in base_shapes), None)
        if found is None:
            raise InvalidAdapterError(f"the adapter changes module {module}, which base {base} does not have "
                                      "(was it trained on a different base model?)")
        have = base_shapes[found]
        if "lora_A" in parts and "lora_B" in parts:
            a, b = parts["lora_A"], parts["lora_B"]
            if len(a) < 2 or len(b) < 2:
                continue  # the adapter's own checks refuse malformed factors
            want = (a[1], b[0]) if fan_in_fan_out else (b[0], a[1])
            what = "LoRA"
        elif "lora_embedding_A" in parts and "lora_embedding_B" in parts:
            a, b = parts["lora_embedding_A"], parts["lora_embedding_B"]
            if len(a) < 2 or len(b) < 2:
                continue
            want, what = (a[1], b[0]), "embedding LoRA"
        else:
            continue
        if tuple(have[:2]) != want or len(have) < 2:
            raise InvalidAdapterError(
                f"module {module}: the adapter's {what} needs a base weight of shape {_fmt(want)}, "
                f"but base {base} has {found} of shape {_fmt(have)}"
            )
