"""A base checkpoint's safetensors shards, read one tensor at a time.

Merges read tensors from a copy-on-write mapping of the shard
(:class:`MappedShard`) and write their row blocks straight to their place in
the output (:class:`~peft_hub.gpu_runtime.shard_writer.ShardWriter` writes
positionally); tensors computed whole (casts, quantization) go through
reusable buffers from a :class:`~peft_hub.gpu_runtime.shard_writer.BufferPool`,
so the memory of a merge is bounded by the pool's budget (or one tensor, when
a single tensor is larger) plus the few tensors mapped at a time.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from peft_hub.compose.io import ST_DTYPES, TORCH_DTYPES
from peft_hub.errors import InvalidAdapterError, InvalidInputError, UnsafeFormatError
from peft_hub.model_files import MODEL_FILE_CAPS
from peft_hub.safeparse import loads_json, name_problem
from peft_hub.safetensors_header import (
    CONVERT_HINT,
    SafetensorsHeader,
    TensorInfo,
    read_header_path,
)

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")

__all__ = [
    "FLOAT_DTYPES", "ST_DTYPES", "TORCH_DTYPES", "Checkpoint", "MappedShard",
    "open_checkpoint",
    "read_tensor",
]

FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})

_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
_AHEAD_CHUNK = 2 << 20  # one readahead request (at most the device's read_ahead_kb is honoured per call)


@dataclass
class Checkpoint:
    """A transformers checkpoint directory, as its headers describe it."""

    root: Path
    headers: dict[str, SafetensorsHeader]  # shard file name -> header, in file order
    weight_map: dict[str, str]  # tensor name -> shard file name
    index_metadata: dict = field(default_factory=dict)
    sharded: bool = False

    def info(self, name: str) -> TensorInfo:
        return self.headers[self.weight_map[name]].tensors[name]

    @property
    def total_bytes(self) -> int:
        return sum(t.end - t.start for h in self.headers.values() for t in h.tensors.values())

    def floating_dtype(self) -> str | None:
        """The most common floating dtype of the checkpoint (its "model dtype")."""
        counts: dict[str, int] = {}
        for header in self.headers.values():
            for t in header.tensors.values():
                if t.dtype in FLOAT_DTYPES:
                    counts[t.dtype] = counts.get(t.dtype, 0) + t.numel
        return max(counts, key=counts.__getitem__) if counts else None


def open_checkpoint(root: str | os.PathLike[str]) -> Checkpoint:
    """Read every shard header of a base model directory (no tensor data).

    Raises:
        InvalidInputError: no safetensors weights, or an index that disagrees with the shards.
        UnsafeFormatError: the weights exist only as pickles.
    """
    root = Path(root)
    if not (root / "config.json").is_file():
        raise InvalidInputError(f"{root} is not a transformers model directory (no config.json)")
    if (root / INDEX_NAME).is_file():
        index = read_json_file(root / INDEX_NAME, MODEL_FILE_CAPS[INDEX_NAME])
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidInputError(f"{root / INDEX_NAME} has no weight_map")
        files = list(dict.fromkeys(weight_map.values()))
        metadata, sharded = index.get("metadata") or {}, True
        if not isinstance(metadata, dict):
            raise InvalidInputError(f"{root / INDEX_NAME}: metadata must be a JSON object")
    elif (root / SINGLE_NAME).is_file():
        files, weight_map, metadata, sharded = [SINGLE_NAME], {}, {}, False
    elif any((root / name).exists() for name in PICKLE_WEIGHTS):
        raise UnsafeFormatError(f"{root} holds only pickle weights. {CONVERT_HINT}")
    else:
        raise InvalidInputError(f"{root} has neither {SINGLE_NAME} nor {INDEX_NAME}")

    headers: dict[str, SafetensorsHeader] = {}
    for name in files:
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"{INDEX_NAME}: weight_map must map tensor names to file names, not {name!r:.80}")
        if "/" in name or "\\" in name or name.startswith("."):
            raise InvalidInputError(f"{INDEX_NAME} names a shard outside the directory: {name!r:.80}")
        # Each output shard takes its base shard's name, beside config.json and the copied
        # tokenizer files: a shard called "tokenizer.json" would be overwritten by the base's.
        if not name.endswith(".safetensors") or name_problem(name, 255):
            raise InvalidInputError(f"{INDEX_NAME} names a shard {name!r:.80}; shards are NAME.safetensors files")
        if not (root / name).is_file():
            raise InvalidInputError(f"{root}: shard {name} is listed but missing (or not a file)")
        try:
            headers[name] = read_header_path(root / name)
        except FileNotFoundError:
            raise InvalidInputError(f"{root}: shard {name} is listed but missing") from None
        except InvalidAdapterError as exc:
            raise InvalidInputError(f"base model {root}: {exc}") from exc
    if not sharded:
        weight_map = {key: SINGLE_NAME for key in headers[SINGLE_NAME].tensors}
    for key, shard in weight_map.items():
        if key not in headers[shard].tensors:
            raise InvalidInputError(f"{INDEX_NAME} puts {key} in {shard}, which does not hold it")
    for shard, header in headers.items():
        for key in header.tensors:
            if weight_map.get(key) != shard:
                raise InvalidInputError(f"{shard} holds {key}, which {INDEX_NAME} does not map to it")
    return Checkpoint(root, headers, weight_map, metadata, sharded)


def read_json_file(path: Path, cap: int) -> dict:
    """A small JSON object from a model directory: bounded in size and depth, one clear error otherwise.

    Raises:
        InvalidInputError: too large, not JSON, or not an object.
    """
    if path.stat().st_size > cap:
        raise InvalidInputError(f"{path} is larger than the {cap} byte cap")
    value = loads_json(path.read_bytes(), what=str(path), allow_nan=True)
    if not isinstance(value, dict):
        raise InvalidInputError(f"{path} must be a JSON object")
    return value


def read_tensor(
    fh: BinaryIO, header: SafetensorsHeader, info: TensorInfo, buf: torch.Tensor | None = None
) -> torch.Tensor:
    """Read one tensor of an open shard into CPU memory: ``buf`` (uint8, reused) or a fresh buffer.

    Reads are positional (``pread``), so threads may share ``fh``.
    """
    dtype = TORCH_DTYPES.get(info.dtype)
    if dtype is None:
        raise InvalidInputError(f"tensor {info.name} has dtype {info.dtype}, which torch cannot hold")
    nbytes = info.end - info.start
    if nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    raw = torch.empty(nbytes, dtype=torch.uint8) if buf is None else buf[:nbytes]
    view, offset = raw.numpy().data, header.data_offset + info.start
    while view:
        n = os.preadv(fh.fileno(), [view], offset)
        if n == 0:
            raise InvalidInputError(f"tensor {info.name} is truncated")
        view, offset = view[n:], offset + n
    return raw.view(dtype).reshape(info.shape)


class MappedShard:
    """A shard mapped copy-on-write, so merges read tensors straight from the page cache.

    Views stay valid while they live (the mapping is released with the last
    one); writing into a view would change a private copy, never the file.
    A tensor whose offset does not suit its dtype is read into memory instead.
    """

    def __init__(self, fh: BinaryIO, header: SafetensorsHeader) -> None:
        self._fh, self._header = fh, header
        size = os.fstat(fh.fileno()).st_size
        self._map = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) if size else None
        self._size = size
        self._ahead = 0  # readahead has been asked for every byte before this offset

    def _span(self, info: TensorInfo) -> tuple[int, int]:
        start = self._header.data_offset + info.start
        return start, start + info.end - info.start

    def tensor(self, info: TensorInfo) -> torch.Tensor:
        """The tensor, as a view of the mapping when it can be one."""
        dtype = TORCH_DTYPES.get(info.dtype)
        start, end = self._span(info)
        if self._map is None or dtype is None or end == start or start % dtype.itemsize:
            return read_tensor(self._fh, self._header, info)
        if end > len(self._map):
            raise InvalidInputError(f"tensor {info.name} is truncated")
        return torch.frombuffer(self._map, dtype=torch.uint8, count=end - start, offset=start).view(dtype).reshape(
            info.shape)

    def read_ahead(self, until: int) -> None:
        """Ask the kernel to read the file up to byte ``until`` into the page cache, asynchronously.

        One ``POSIX_FADV_WILLNEED`` over a large range reads only its first
        ``read_ahead_kb`` (the kernel truncates it), so the range goes in
        :data:`_AHEAD_CHUNK` pieces. On a warm cache each call only looks pages up.
        """
        until = min(until, self._size)
        if not hasattr(os, "posix_fadvise"):
            return
        while self._ahead < until:
            length = min(_AHEAD_CHUNK, until - self._ahead)
            try:
                os.posix_fadvise(self._fh.fileno(), self._ahead, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                return  # only a hint
            self._ahead += length

    def prefetch(self, info: TensorInfo) -> None:
        """Fault the tensor's pages in now (reading them from disk if need be), off the merging thread."""
        self._advise(info, _MADV_POPULATE_READ, inner=False)

    def release(self, info: TensorInfo) -> None:
        """Unmap the tensor's pages (they stay in the page cache), so the mapping adds little to RSS."""
        self._advise(info, _MADV_DONTNEED, inner=True)

    def _advise(self, info: TensorInfo, advice: int | None, *, inner: bool) -> None:
        start, end = self._span(info)
        if self._map is None or advice is None or end <= start or end > len(self._map):
            return
        # Pages shared with a neighbouring tensor are kept when releasing.
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE if inner else start - start % mmap.PAGESIZE
        last = end - end % mmap.PAGESIZE if inner else end
        if last > first:
            try:
                self._map.madvise(advice, first, last - first)
            except (OSError, AttributeError):
                pass  # an older kernel without MADV_POPULATE_READ: pages fault in as the merge reads them
