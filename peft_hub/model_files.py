"""Which files a base model directory may hold: exact names, weight shard
names, and their size caps (no imports from the adapter rules, so that
:mod:`peft_hub.adapter_files` can ask here about names it does not know)."""

from __future__ import annotations

import re

MODEL_CONFIG_NAME = "config.json"
MODEL_WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
#: ``model-00001-of-00003.safetensors``, as transformers' ``save_pretrained`` names shards.
SHARD_RE = re.compile(r"\Amodel-(?P<index>\d{5})-of-(?P<count>\d{5})\.safetensors\Z")
#: One weight file: RevisionFile.size and Blob.size are BIGINT, so this is a policy, not a limit of the schema.
SHARD_MAX_BYTES = 64 * 1024**3
#: A 400B-parameter model in 5 GB shards is ~160 files, plus config and tokenizer files.
MAX_MODEL_FILES = 256

_MiB = 1024**2
#: Every other file a model may hold, by exact name -> size cap in bytes.
MODEL_FILE_CAPS = {
    MODEL_CONFIG_NAME: 1 * _MiB,
    INDEX_NAME: 32 * _MiB,
    "generation_config.json": 1 * _MiB,
    "tokenizer.json": 64 * _MiB,
    "tokenizer_config.json": 16 * _MiB,
    "special_tokens_map.json": 1 * _MiB,
    "added_tokens.json": 16 * _MiB,
    "vocab.json": 32 * _MiB,
    "merges.txt": 32 * _MiB,
    "tokenizer.model": 32 * _MiB,
    "chat_template.jinja": 1 * _MiB,
    "chat_template.json": 1 * _MiB,
    "README.md": 1 * _MiB,
}
#: Binary files: allowlisted by name and size, checked by their first byte only.
BINARY_FILES = frozenset({"tokenizer.model"})


def is_weights(path: str) -> bool:
    """``model.safetensors`` or a shard of it."""
    return path == MODEL_WEIGHTS_NAME or SHARD_RE.match(path) is not None


def model_size_cap(path: str) -> int | None:
    """The largest size a model file of this name may have; None: not a model file."""
    if is_weights(path):
        return SHARD_MAX_BYTES
    return MODEL_FILE_CAPS.get(path)

MODEL_CONVERT_HINT = (
    "Only safetensors is accepted. Re-save the model with `model.save_pretrained(path)` "
    "(safetensors is its default), or convert the weights on a machine you trust."
)
