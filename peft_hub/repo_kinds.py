"""The one place a repo's kind is decided and its files validated.

A repo holds an ``adapter`` (PEFT) or a ``model`` (a transformers base
model). The kind is decided by the files: ``adapter_config.json`` makes an
adapter, ``config.json`` without it a model, and anything else is checked as
an adapter (so its refusal reads as before). The client's push, the hub's
publish and the HF commit path all validate through here.

The per-file rules in :mod:`peft_hub.adapter_files` accept, by default, a
name either kind allows (a single HF upload does not say which kind its repo
is); :func:`check_entries` here applies the adapter allowlist strictly before
the adapter checks themselves, so what an adapter may hold is unchanged.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Any, BinaryIO, Literal

from peft_hub import adapter, model_dir
from peft_hub.adapter import AdapterMeta, FileEntry
from peft_hub.adapter_files import CONFIG_NAME, size_cap, validate_filename
from peft_hub.errors import InvalidAdapterError
from peft_hub.model_dir import ModelMeta
from peft_hub.model_files import MODEL_CONFIG_NAME

Kind = Literal["adapter", "model"]
KINDS: tuple[Kind, ...] = ("adapter", "model")
Meta = AdapterMeta | ModelMeta


def infer_kind(names: Iterable[str]) -> Kind:
    """The kind a set of file names makes (see the module docstring)."""
    names = set(names)
    return "model" if MODEL_CONFIG_NAME in names and CONFIG_NAME not in names else "adapter"


def check_kind(kind: Any) -> Kind:
    if kind not in KINDS:
        raise InvalidAdapterError(f"unknown repo kind {kind!r}: use one of {', '.join(KINDS)}")
    return kind


def _adapter_names(pairs: Iterable[tuple[str, int]]) -> None:
    """The adapter allowlist and caps, with the adapter checks' own messages."""
    for path, size in pairs:
        validate_filename(path, kind="adapter")
        if size > size_cap(path, kind="adapter"):
            raise InvalidAdapterError(f"{path} is {size} bytes, above the {size_cap(path, kind='adapter')} byte cap")


def check_entries(kind: Kind, entries: list[FileEntry]) -> None:
    """Check the file list alone for a repo of ``kind``."""
    if check_kind(kind) == "model":
        model_dir.check_entries(entries)
        return
    _adapter_names((e.path, e.size) for e in entries if isinstance(e.size, int))
    adapter.check_entries(entries)


def validate_manifest(
    kind: Kind, entries: list[FileEntry], open_file: Callable[[FileEntry], AbstractContextManager[BinaryIO]]
) -> Meta:
    """Validate a repo's contents as ``kind``; see :func:`peft_hub.adapter.validate_manifest`."""
    if check_kind(kind) == "model":
        return model_dir.validate_manifest(entries, open_file)
    check_entries(kind, entries)
    return adapter.validate_manifest(entries, open_file)


def dir_kind(path: str | os.PathLike[str]) -> Kind:
    """The kind of a local directory, from the names of its files."""
    return infer_kind(adapter.scan_dir(path))


def validate_dir(kind: Kind, path: str | os.PathLike[str]) -> tuple[Meta, list[FileEntry]]:
    """Validate a local directory as ``kind`` (see :func:`checked_dir`)."""
    with checked_dir(kind, path) as checked:
        return checked()


@contextmanager
def checked_dir(kind: Kind, path: str | os.PathLike[str]) -> Iterator[Callable[[], tuple[Meta, list[FileEntry]]]]:
    """A local directory validated as ``kind``, its sha256s computed on a
    thread of their own while the contents are validated (hashlib lets go of
    the GIL) and while the body of the ``with`` runs (a push asks the hub who
    it is meanwhile). The body gets a function that waits for the hashes and
    returns the metadata and the entries, sorted by name.

    Names and caps are checked before any byte is read; a validation error,
    or any error in the body, stops the hashing, and a hashing error comes
    out of that function: nothing has both passed and been hashed before it returns."""
    files = adapter.scan_dir(path)
    pending = [FileEntry(name, os.path.getsize(p), "0" * 64) for name, p in sorted(files.items())]
    check_entries(kind, pending)  # cheap refusals before any hashing
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool:
        digests = pool.submit(lambda: [adapter.sha256_file(files[e.path], stop=stop) for e in pending])
        try:
            meta = validate_manifest(kind, pending, lambda e: open(files[e.path], "rb"))  # reads no sha256
            yield lambda: (meta, [FileEntry(e.path, e.size, d) for e, d in zip(pending, digests.result(), strict=True)])
        finally:
            stop.set()


def meta_from_dict(meta: dict[str, Any]) -> Meta:
    """A revision's stored metadata back as its dataclass (adapters' carry no ``kind``)."""
    return ModelMeta(**meta) if meta.get("kind") == "model" else AdapterMeta(**meta)


def kind_of(meta: Meta) -> Kind:
    return "model" if isinstance(meta, ModelMeta) else "adapter"


def kind_mismatch(repo: str, has: str, pushed: str) -> InvalidAdapterError:
    """The refusal for a push of one kind into a repo of the other."""
    return InvalidAdapterError(
        f"{repo} holds {'a base model' if has == 'model' else 'an adapter'}; "
        f"{'a model' if pushed == 'model' else 'an adapter'} cannot be pushed into it: push it to a repo of its own"
    )

