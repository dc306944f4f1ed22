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

from peft_hub.errors import InvalidInputError

#: Names accepted for ``dtype``, to torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
#: safetensors dtype codes.
ST_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def parse_dtype(name: str) -> torch.dtype:
    """``fp32``/``fp16``/``bf16`` (or the long names) to a torch dtype."""
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise InvalidInputError(f"unknown dtype {name!r}: use fp32, fp16 or bf16") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a float dtype (``bf16``)."""
    return _SHORT.get(dtype, str(dtype).removeprefix("torch."))


def st_to_torch(code: str) -> torch.dtype:
    """A safetensors dtype code to a torch dtype."""
    for dtype, c in ST_DTYPES.items():
        if c == code:
            return dtype
    raise InvalidInputError(f"unsupported tensor dtype {code}")


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
        header: dict[str, object] = {"__metadata__": metadata}
        self._slots: dict[str, tuple[torch.dtype, tuple[int, ...], int]] = {}
        offset = 0
        for key, dtype, shape in entries:
            if key in self._slots:
                raise ValueError(f"duplicate tensor {key!r}")
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[key] = {"dtype": ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._slots[key] = (dtype, tuple(shape), offset)
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as safetensors does
        self._data_start = 8 + len(raw)
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._fh.write(len(raw).to_bytes(8, "little") + raw)
        self._fh.truncate(self._data_start + offset)
        self._pending = set(self._slots)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (cast to its planned dtype)."""
        dtype, shape, offset = self._slots[key]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{key}: planned shape {shape}, got {tuple(tensor.shape)}")
        data = tensor.detach().to(dtype).contiguous().reshape(-1).view(torch.uint8)
        self._fh.seek(self._data_start + offset)
        self._fh.write(data.numpy().data)
        self._pending.discard(key)

    def close(self, *, check: bool = True) -> None:
        """Close the file; with ``check``, every planned tensor must have been written."""
        self._fh.close()
        if check and self._pending:
            raise ValueError(f"{len(self._pending)} planned tensors were never written, e.g. {min(self._pending)!r}")
