"""The base model format: read, validate and describe a transformers model
directory (no torch).

A model is a directory as transformers' ``save_pretrained`` writes it:
``config.json``, the weights as ``model.safetensors`` or as shards
``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json``,
and tokenizer and generation files. As for adapters (:mod:`peft_hub.adapter`),
the client validates the files before uploading and the hub validates them
again from the stored bytes; only headers and small files are read.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import check_listing, check_text_file
from peft_hub.errors import InvalidAdapterError
from peft_hub.model_files import (
    BINARY_FILES,
    INDEX_NAME,
    MAX_MODEL_FILES,
    MODEL_CONFIG_NAME,
    MODEL_WEIGHTS_NAME,
    SHARD_RE,
    is_weights,
)
from peft_hub.modelcard import CARD_NAME, card_summary
from peft_hub.names import shown
from peft_hub.safeparse import loads_json
from peft_hub.safetensors_header import SafetensorsHeader, read_header

#: What a model's registry row says in the ``method`` column. PEFT types are
#: upper case (``LORA``, ``IA3``), so this lower-case word is never one of them;
#: ``search(method="model")`` lists base models.
MODEL_METHOD = "model"
_MODEL_TYPE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_ARCHITECTURE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
#: config.json fields the registry reads (their first spelling present wins).
_SIZE_FIELDS = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "vocab_size": ("vocab_size",),
}
_INT_FIELDS = ("intermediate_size", "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
               "n_head", "n_positions", *(name for names in _SIZE_FIELDS.values() for name in names))
MAX_CONFIG_INT = 1 << 40
MAX_TENSORS = 1 << 20


@dataclass
class ModelMeta:
    """What the registry records about a base model, all read from its files.

    ``base_model``, ``method``, ``rank``, ``max_rank`` and ``target_modules``
    fill the same search columns as an adapter's (see :data:`MODEL_METHOD`).
    """

    model_type: str
    architectures: list[str] = field(default_factory=list)
    hidden_size: int | None = None
    num_layers: int | None = None
    vocab_size: int | None = None
    total_params: int = 0
    dtype: str | None = None
    total_size: int = 0
    shards: int = 1
    description: str = ""
    kind: str = "model"
    base_model: str | None = None
    method: str = MODEL_METHOD
    rank: int | None = None
    max_rank: int | None = None
    target_modules: list[str] = field(default_factory=list)
    lineage: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_config(raw: bytes) -> dict[str, Any]:
    """Parse and check ``config.json``: bounded JSON, a string ``model_type``,
    plain names in ``architectures``, and sane integers where sizes go."""
    config = loads_json(raw, what=MODEL_CONFIG_NAME, error=InvalidAdapterError, strict_strings=True, allow_nan=True)
    if not isinstance(config, dict):
        raise InvalidAdapterError(f"{MODEL_CONFIG_NAME} must be a JSON object")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not _MODEL_TYPE.match(model_type):
        raise InvalidAdapterError(f"{MODEL_CONFIG_NAME}: model_type must be a short name, not {shown(model_type)}")
    archs = config.get("architectures")
    names_ok = isinstance(archs, list) and all(isinstance(a, str) and _ARCHITECTURE.match(a) for a in archs)
    if archs is not None and not (names_ok and len(archs) <= 16):
        raise InvalidAdapterError(f"{MODEL_CONFIG_NAME}: architectures must be a list of at most 16 class names")
    for key in _INT_FIELDS:
        value = config.get(key)
        if value is not None and (type(value) is not int or not 0 < value <= MAX_CONFIG_INT):
            raise InvalidAdapterError(f"{MODEL_CONFIG_NAME}: {key} must be a positive integer, not {shown(value)}")
    return config


def check_entries(entries: list[FileEntry]) -> None:
    """Check the file list alone: names, count, caps, and a complete set of shards."""
    names = check_listing(entries, kind="model", max_files=MAX_MODEL_FILES)
    if MODEL_CONFIG_NAME not in names:
        raise InvalidAdapterError(f"{MODEL_CONFIG_NAME} is missing")
    shards = sorted(n for n in names if SHARD_RE.match(n))
    if MODEL_WEIGHTS_NAME in names and shards:
        raise InvalidAdapterError(f"{MODEL_WEIGHTS_NAME} and shards ({shards[0]}, …) cannot both be stored")
    if not shards and MODEL_WEIGHTS_NAME not in names:
        raise InvalidAdapterError(f"the weights are missing: {MODEL_WEIGHTS_NAME} or model-00001-of-0000N.safetensors")
    if shards:
        first = SHARD_RE.match(shards[0])
        assert first is not None  # shards are the names SHARD_RE matched
        count = int(first.group("count"))
        expected = [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        if shards != expected:
            missing = sorted(set(expected) - set(shards)) or sorted(set(shards) - set(expected))
            raise InvalidAdapterError(f"the shards do not make a set of {count}: {missing[0]} is missing or extra")
        if INDEX_NAME not in names:
            raise InvalidAdapterError(f"{INDEX_NAME} is missing: sharded weights need their index")


def check_index(raw: bytes, headers: dict[str, SafetensorsHeader]) -> None:
    """The index's ``weight_map`` names exactly the weight files present and
    exactly the tensors in their headers."""
    index = loads_json(raw, what=INDEX_NAME, error=InvalidAdapterError, strict_strings=True)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InvalidAdapterError(f"{INDEX_NAME}: weight_map must map tensor names to file names")
    named = set(weight_map.values())
    for file in sorted(named - set(headers)):
        raise InvalidAdapterError(f"{INDEX_NAME} names {shown(file)}, which this model does not hold")
    for file in sorted(set(headers) - named):
        raise InvalidAdapterError(f"{file} is not in {INDEX_NAME}'s weight_map")
    for file, header in sorted(headers.items()):
        listed = {k for k, v in weight_map.items() if v == file}
        extra, missing = sorted(set(header.tensors) - listed), sorted(listed - set(header.tensors))
        if extra:
            raise InvalidAdapterError(f"{file} holds tensor {shown(extra[0])}, which {INDEX_NAME} does not list")
        if missing:
            raise InvalidAdapterError(f"{INDEX_NAME} puts tensor {shown(missing[0])} in {file}, which lacks it")


def _check_small_file(entry: FileEntry, raw: bytes) -> str:
    """A tokenizer, generation or card file: bounded JSON, or UTF-8 text without NUL."""
    if entry.path in BINARY_FILES:
        if entry.size and raw[:1] != b"\x0a":  # a sentencepiece ModelProto starts with field 1 (pieces)
            raise InvalidAdapterError(f"{entry.path} is not a sentencepiece model")
        return ""
    return check_text_file(entry.path, raw)


def validate_manifest(
    entries: list[FileEntry], open_file: Callable[[FileEntry], AbstractContextManager[BinaryIO]]
) -> ModelMeta:
    """Validate a model's contents, wherever its bytes live; see
    :func:`peft_hub.adapter.validate_manifest` for the contract.

    Raises:
        InvalidAdapterError: naming the file and the problem.
    """
    check_entries(entries)
    by_name = {e.path: e for e in entries}
    with open_file(by_name[MODEL_CONFIG_NAME]) as fh:
        config = parse_config(fh.read(by_name[MODEL_CONFIG_NAME].size + 1))
    headers: dict[str, SafetensorsHeader] = {}
    for entry in entries:
        if is_weights(entry.path):
            with open_file(entry) as fh:
                headers[entry.path] = read_header(fh, entry.size, name=entry.path)
    if sum(len(h.tensors) for h in headers.values()) > MAX_TENSORS:
        raise InvalidAdapterError(f"a model holds at most {MAX_TENSORS} tensors")
    if INDEX_NAME in by_name:
        with open_file(by_name[INDEX_NAME]) as fh:
            check_index(fh.read(by_name[INDEX_NAME].size + 1), headers)
    elif not headers[MODEL_WEIGHTS_NAME].tensors:
        raise InvalidAdapterError(f"{MODEL_WEIGHTS_NAME} holds no tensors")
    card = ""
    for entry in entries:
        if entry.path in (MODEL_CONFIG_NAME, INDEX_NAME) or is_weights(entry.path):
            continue
        with open_file(entry) as fh:
            text = _check_small_file(entry, fh.read(entry.size + 1))
        card = text if entry.path == CARD_NAME else card
    return describe(config, headers, entries, card)


def describe(
    config: dict[str, Any], headers: dict[str, SafetensorsHeader], files: list[FileEntry], card: str = ""
) -> ModelMeta:
    """Build the registry metadata from a validated config, the weight headers and the card."""
    tensors = [t for h in headers.values() for t in h.tensors.values()]
    dtypes = Counter(t.dtype for t in tensors)

    def first(names: tuple[str, ...]) -> int | None:
        return next((config[n] for n in names if isinstance(config.get(n), int)), None)

    return ModelMeta(
        model_type=config["model_type"],
        architectures=list(config.get("architectures") or []),
        hidden_size=first(_SIZE_FIELDS["hidden_size"]),
        num_layers=first(_SIZE_FIELDS["num_layers"]),
        vocab_size=first(_SIZE_FIELDS["vocab_size"]),
        total_params=sum(t.numel for t in tensors),
        dtype=dtypes.most_common(1)[0][0] if dtypes else None,
        total_size=sum(f.size for f in files),
        shards=len(headers),
        description=card_summary(card),
    )
