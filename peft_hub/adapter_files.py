"""Which files an adapter directory may hold: names, allowlisted kinds, size
caps, and the advice given for a refused pickle."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from peft_hub.errors import InvalidAdapterError, UnsafeFormatError
from peft_hub.model_files import MODEL_CONVERT_HINT, model_size_cap
from peft_hub.modelcard import CARD_NAME, check_card
from peft_hub.names import MAX_FILENAME_BYTES as MAX_FILENAME_BYTES  # re-exported: schemas.py reads it here
from peft_hub.names import check_file_name, check_no_twins
from peft_hub.safeparse import loads_json
from peft_hub.safetensors_header import CONVERT_HINT

if TYPE_CHECKING:
    from peft_hub.adapter import FileEntry

SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z")

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
WEIGHTS_MAX_BYTES = 8 * 1024**3
#: The allowlist of other files: suffix -> size cap in bytes.
EXTRA_FILE_CAPS = {".md": 1024**2, ".json": 32 * 1024**2, ".txt": 16 * 1024**2, ".jinja": 1024**2}

MAX_FILES = 32
MODEL_FILES_TEXT = (
    "a model holds config.json, model.safetensors or model-00001-of-0000N.safetensors shards with "
    "model.safetensors.index.json, generation_config.json, tokenizer files and README.md"
)


def validate_filename(path: str, kind: str | None = None) -> str:
    """Check a file name inside a repo: a portable plain name
    (:func:`peft_hub.names.check_file_name`: flat, no traversal, no control or
    format characters, no Windows device names, at most 255 bytes), and
    allowlisted.

    Args:
        kind: "adapter" or "model" for that kind's allowlist; None (a single
            file whose repo's kind is not known yet) for a name either allows.
    """
    check_file_name(path)
    if path.lower().endswith(PICKLE_SUFFIXES):
        hint = MODEL_CONVERT_HINT if kind == "model" and pickle_hint(path) == CONVERT_HINT else pickle_hint(path)
        raise UnsafeFormatError(f"{path} is a pickle-based format and is refused. {hint}")
    if kind == "model":
        if model_size_cap(path) is None:
            raise InvalidAdapterError(f"file {path!r} is not allowed in a model: {MODEL_FILES_TEXT}")
        return path
    if path in (CONFIG_NAME, WEIGHTS_NAME) or (kind is None and model_size_cap(path) is not None):
        return path
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in EXTRA_FILE_CAPS:
        raise InvalidAdapterError(
            f"file {path!r} is not allowed: besides {CONFIG_NAME} and {WEIGHTS_NAME}, only "
            f"{', '.join(sorted(EXTRA_FILE_CAPS))} files are stored"
        )
    return path


#: What ``transformers.Trainer`` writes next to the adapter: pickles that are
#: training state, not weights, so "re-save the adapter" would be the wrong advice.
TRAINER_PICKLES = frozenset({"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth"})
TRAINER_HINT = (
    "It is Trainer state, not adapter weights, and peft-hub stores no pickles. Push the adapter alone with "
    "`trainer.model.push_to_hub(repo_id)`, or keep Trainer(push_to_hub=True) and put a .gitignore listing "
    "`*.bin`, `*.pt` and `*.pth` in the output_dir (upload_folder takes ignore_patterns=['*.bin', '*.pt', '*.pth'])."
)


def pickle_hint(path: str) -> str:
    """The advice for a refused pickle: Trainer state is left out, weights are re-saved."""
    name = path.rsplit("/", 1)[-1]
    if name in TRAINER_PICKLES or name.startswith("rng_state"):
        return TRAINER_HINT
    return CONVERT_HINT


def size_cap(path: str, kind: str | None = None) -> int:
    """The largest size accepted for a file of this name (in a repo of
    ``kind``; None: the larger of the adapter and the model cap)."""
    model_cap = model_size_cap(path) or 0
    if kind == "model":
        return model_cap
    if path == WEIGHTS_NAME:
        return WEIGHTS_MAX_BYTES
    cap = EXTRA_FILE_CAPS.get(os.path.splitext(path)[1].lower(), 0)
    return cap if kind == "adapter" else max(cap, model_cap)


def check_listing(entries: list[FileEntry], *, kind: str, max_files: int) -> set[str]:
    """The checks every repo's file list gets: a count cap, no file twice
    (not even as a case or Unicode-normalization twin: see
    :func:`peft_hub.names.check_no_twins`), allowlisted names of ``kind``
    within their size caps, well-formed sha256s.

    Returns:
        The file names.
    """
    if len(entries) > max_files:
        raise InvalidAdapterError(f"a{'n' if kind == 'adapter' else ''} {kind} has at most {max_files} files, "
                                  f"got {len(entries)}")
    for entry in entries:
        validate_filename(entry.path, kind=kind)
    check_no_twins(e.path for e in entries)
    for entry in entries:
        cap = size_cap(entry.path, kind=kind)
        if entry.size > cap:
            raise InvalidAdapterError(f"{entry.path} is {entry.size} bytes, above the {cap} byte cap")
        if not isinstance(entry.sha256, str) or not SHA256_RE.fullmatch(entry.sha256):
            raise InvalidAdapterError(f"{entry.path}: sha256 must be 64 lowercase hex digits")
    return {e.path for e in entries}


def check_text_file(path: str, raw: bytes) -> str:
    """A repo's small file: bounded JSON, or UTF-8 text without NUL; a model
    card's YAML header is checked too. Returns the text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidAdapterError(f"{path} is not valid UTF-8 text") from None
    if path.lower().endswith(".json"):
        loads_json(raw, what=path, error=InvalidAdapterError, allow_nan=True)
    elif "\x00" in text:
        raise InvalidAdapterError(f"{path} contains NUL bytes: it is not a text file")
    if path == CARD_NAME:
        check_card(text)
    return text
