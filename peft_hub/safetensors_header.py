"""Strict, torch-free reading of safetensors headers.

The hub validates every uploaded tensor file with this before storing it, and
compose uses it to plan work without loading tensors. The checks are stricter
than the safetensors library's own: no duplicate keys, offsets that tile the
data exactly, and sizes that equal shape x dtype size.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from peft_hub.errors import InvalidAdapterError, UnsafeFormatError
from peft_hub.safeparse import loads_json

#: Bytes per element, for every dtype the safetensors format defines.
DTYPE_SIZES: dict[str, float] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}

MAX_HEADER_BYTES = 16 * 1024 * 1024
#: No real tensor has a dimension this large; the bound keeps size arithmetic exact.
MAX_DIM = 1 << 48

CONVERT_HINT = (
    "Only safetensors is accepted. Re-save the adapter with "
    "`model.save_pretrained(path, safe_serialization=True)`, or convert the file with "
    "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')` "
    "on a machine you trust."
)

_SURROGATE = re.compile("[\ud800-\udfff]")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offset in the data section (after the header)
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: the tensors, the metadata and the data offset."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_offset: int  # absolute offset of the first data byte in the file


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)  # in C; only a shorter dict means a key came twice
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidAdapterError(f"safetensors header has a duplicate key {_short(key)}")
        seen.add(key)
    raise AssertionError("unreachable: a shorter dict has a repeated key")


def read_header(fh: BinaryIO, file_size: int, *, name: str = "file") -> SafetensorsHeader:
    """Read and strictly validate the header of a safetensors file.

    Args:
        fh: the file, positioned at its start.
        file_size: its total size in bytes.
        name: how to call it in error messages.

    Returns:
        The validated header.

    Raises:
        UnsafeFormatError: the file is a pickle or a torch zip archive.
        InvalidAdapterError: anything else about the header is wrong.
    """
    head = fh.read(8)
    # A pickle's first bytes can also read as a small header length (0x0280 is
    # "\x80\x02"), so the magic only decides once the header is implausible.
    looks_pickled = head.startswith(_PICKLE_MAGIC)
    if len(head) < 8:
        raise InvalidAdapterError(f"{name} is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if (n > MAX_HEADER_BYTES or 8 + n > file_size) and looks_pickled:
        raise UnsafeFormatError(f"{name} is a pickle, not safetensors. {CONVERT_HINT}")
    if n > MAX_HEADER_BYTES:
        raise InvalidAdapterError(f"{name}: header of {n} bytes exceeds the {MAX_HEADER_BYTES} byte cap")
    if 8 + n > file_size:
        raise InvalidAdapterError(f"{name}: header length {n} runs past the end of the file")
    raw = fh.read(n)
    if looks_pickled and not raw.startswith(b"{"):
        raise UnsafeFormatError(f"{name} is a pickle, not safetensors. {CONVERT_HINT}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidAdapterError(f"{name}: header is not valid UTF-8") from exc
    if not text.startswith("{"):
        raise InvalidAdapterError(f"{name}: header does not start with '{{'")
    obj = loads_json(text, what=f"{name}: header", error=InvalidAdapterError, object_pairs_hook=_no_duplicates)
    if not isinstance(obj, dict):
        raise InvalidAdapterError(f"{name}: header is not a JSON object")

    # The safetensors library reads ``__metadata__`` as an optional map: null is
    # allowed, a falsy [] or "" is not (it would make a file no loader opens).
    metadata = obj.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidAdapterError(f"{name}: __metadata__ must map strings to strings")
    if "\\u" in text:  # only an escape can spell an unpaired surrogate, which no safetensors loader decodes
        for key in (*obj, *metadata, *metadata.values()):
            if not key.isascii() and _SURROGATE.search(key):
                raise InvalidAdapterError(f"{name}: the name {_short(key)} holds an unpaired surrogate "
                                          "(not valid Unicode)")

    tensors: dict[str, TensorInfo] = {}
    for key, entry in obj.items():
        tensors[key] = _tensor_info(key, entry, name)

    data_size = file_size - 8 - n
    cursor = 0
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != cursor:
            what = "overlaps another" if info.start < cursor else "leaves a gap before it"
            raise InvalidAdapterError(f"{name}: tensor {info.name!r} {what} (offset {info.start}, expected {cursor})")
        cursor = info.end
    if cursor != data_size:
        raise InvalidAdapterError(
            f"{name}: tensors cover {cursor} bytes but the data section has {data_size} "
            "(truncated or trailing bytes)"
        )
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_offset=8 + n)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _count(value: object, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _tensor_info(key: str, entry: object, name: str) -> TensorInfo:
    label = _short(key)
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise InvalidAdapterError(f"{name}: entry {label} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise InvalidAdapterError(f"{name}: tensor {label} has unknown dtype {_short(dtype, 32)}")
    if not isinstance(shape, list) or len(shape) > 16 or not all(_count(d, MAX_DIM) for d in shape):
        raise InvalidAdapterError(f"{name}: tensor {label} has an invalid shape {_short(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_count(o, 1 << 62) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InvalidAdapterError(f"{name}: tensor {label} has invalid data_offsets {_short(offsets)}")
    # In bits, so F4 and F6 stay exact integers whatever the shape.
    bits = math.prod(shape) * int(DTYPE_SIZES[dtype] * 8)
    if bits != (offsets[1] - offsets[0]) * 8:
        needs = f"{bits // 8}" + (f" and {bits % 8} bits" if bits % 8 else "")
        raise InvalidAdapterError(
            f"{name}: tensor {label} is {offsets[1] - offsets[0]} bytes "
            f"but shape {_short(shape)} of {dtype} needs {needs}"
        )
    return TensorInfo(key, dtype, tuple(shape), offsets[0], offsets[1])


def read_header_path(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Validate the header of a safetensors file on disk."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        return read_header(fh, size, name=os.path.basename(path))
