"""Adapter files written byte by byte, without torch, for tests that play a
hub or a client and need a valid (or deliberately broken) file quickly."""

from __future__ import annotations

import json
import struct


def zero_safetensors(tensors: dict[str, list[int]]) -> bytes:
    """A valid safetensors file of zero-filled 2-D F32 tensors with these shapes."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset
