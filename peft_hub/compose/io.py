"""Streaming safetensors IO: read one tensor at a time, write one at a time.

Reading goes through ``safetensors.safe_open`` so only the tensors asked for
are loaded. Writing plans the whole header first (every output shape is known
before any math runs), then writes each tensor's bytes at its offset as soon
as it is computed, so the output never has to be held in memory.
"""

from __future__ import annotations

import json
import math
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open

from peft_hub.compose.spec import DTYPE_ALIASES, DtypeName, normalize_dtype
from peft_hub.errors import InvalidInputError
from peft_hub.safetensors_header import DTYPE_SIZES

#: safetensors dtype codes to torch dtypes: the one table, shared with the GPU runtime.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "U16": torch.uint16, "U32": torch.uint32,
    "U64": torch.uint64,
}
ST_DTYPES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}
#: The short dtype names (``fp32``/``fp16``/``bf16``) to torch dtypes.
SHORT_DTYPES: dict[DtypeName, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Names accepted for ``dtype`` (short and long), to torch dtypes.
DTYPES: dict[str, torch.dtype] = {alias: SHORT_DTYPES[short] for alias, short in DTYPE_ALIASES.items()}
_SHORT = {v: k for k, v in SHORT_DTYPES.items()}


def parse_dtype(name: str) -> torch.dtype:
    """``fp32``/``fp16``/``bf16`` (or the long names) to a torch dtype."""
    return SHORT_DTYPES[normalize_dtype(name)]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a float dtype (``bf16``)."""
    return _SHORT.get(dtype, str(dtype).removeprefix("torch."))


def st_to_torch(code: str) -> torch.dtype:
    """A safetensors dtype code to a torch dtype."""
    try:
        return TORCH_DTYPES[code]
    except KeyError:
        raise InvalidInputError(f"unsupported tensor dtype {code}") from None


def header_layout(
    entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The header of a safetensors file whose tensors are known before their data.

    Args:
        entries: ``(key, safetensors dtype code, shape)`` per tensor, in file order.
        metadata: the ``__metadata__`` strings (left out when empty).

    Returns:
        The bytes before the data (length prefix and JSON, padded so the data
        starts 8-byte aligned, as safetensors does), and ``key -> (offset, nbytes)``
        within the data section.
    """
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    slots: dict[str, tuple[int, int]] = {}
    offset = 0
    for key, code, shape in entries:
        if key in slots:
            raise ValueError(f"duplicate tensor {key!r}")
        nbytes = int(math.prod(shape) * DTYPE_SIZES[code])
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        slots[key] = (offset, nbytes)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, slots


def tensor_bytes(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> memoryview:
    """A tensor's bytes as safetensors stores them (row-major, little-endian), cast to ``dtype`` first."""
    data = tensor.detach().to("cpu", dtype or tensor.dtype).contiguous().reshape(-1).view(torch.uint8)
    return data.numpy().data


class TensorReader:
    """Open handles on several safetensors files; load single tensors on demand."""

    def __init__(self, paths: list[Path]) -> None:
        self._stack = ExitStack()
        self._handles = [self._stack.enter_context(safe_open(str(p), framework="pt")) for p in paths]

    def get(self, index: int, key: str) -> torch.Tensor:
        """Load tensor ``key`` of file ``index``."""
        return self._handles[index].get_tensor(key)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamingWriter:
    """Write a safetensors file whose header is known up front, tensor by tensor.

    Args:
        path: the file to create.
        entries: ``(key, dtype, shape)`` for every tensor, in file order.
        metadata: the ``__metadata__`` strings.
    """

    def __init__(
        self, path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]
    ) -> None:
        prefix, slots = header_layout([(key, ST_DTYPES[dtype], shape) for key, dtype, shape in entries], metadata)
        self._slots = {key: (dtype, tuple(shape), slots[key][0]) for key, dtype, shape in entries}
        self._data_start = len(prefix)
        self._fh = open(path, "wb")  # closed in close()
        self._fh.write(prefix)
        self._fh.truncate(self._data_start + sum(nbytes for _, nbytes in slots.values()))
        self._pending = set(self._slots)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (cast to its planned dtype)."""
        dtype, shape, offset = self._slots[key]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{key}: planned shape {shape}, got {tuple(tensor.shape)}")
        self._fh.seek(self._data_start + offset)
        self._fh.write(tensor_bytes(tensor, dtype))
        self._pending.discard(key)

    def close(self, *, check: bool = True) -> None:
        """Close the file; with ``check``, every planned tensor must have been written."""
        self._fh.close()
        if check and self._pending:
            raise ValueError(f"{len(self._pending)} planned tensors were never written, e.g. {min(self._pending)!r}")
