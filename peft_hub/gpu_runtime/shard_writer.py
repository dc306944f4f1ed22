"""Writing a merged checkpoint's shards: tensor by tensor, positionally, and
untouched tensors copied as raw bytes; and the reusable buffers tensors
computed whole go through.

:class:`ShardWriter` gives each tensor a fixed place from the header, so
merging threads write their row blocks there in any order; the file's
blocks are reserved first (``fallocate``), and closing checks every byte
was written. :class:`BufferPool` bounds the memory of tensors in flight.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO

import torch

from peft_hub import disk
from peft_hub.compose.io import header_layout, tensor_bytes
from peft_hub.errors import InvalidInputError

__all__ = ["BufferPool", "ShardWriter"]

_COPY_CHUNK = 16 * 1024 * 1024
_ROUND = 1 << 20  # buffer sizes are rounded up to this, so similar tensors share buffers


class BufferPool:
    """Reusable CPU byte buffers for tensors in flight, at most ``budget`` bytes in use.

    A tensor larger than the budget still gets a buffer, alone. Reuse matters:
    fresh buffers cost a page fault per 4 KB on first touch.
    """

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._free: list[torch.Tensor] = []
        self._busy = 0
        self._closed = False
        self._cond = threading.Condition()

    def take(self, nbytes: int) -> torch.Tensor:
        """A uint8 buffer of at least ``nbytes``; waits while the budget is used up."""
        size = -(-max(nbytes, 1) // _ROUND) * _ROUND
        with self._cond:
            while not self._closed and self._busy and self._busy + size > self._budget:
                self._cond.wait()
            if self._closed:
                raise RuntimeError("the buffer pool was closed")
            fits = [i for i, b in enumerate(self._free) if b.numel() >= size]
            if fits:
                buf = self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
            else:
                # Drop idle buffers until a new one fits next to them under the budget.
                self._free.sort(key=torch.Tensor.numel)
                while self._free and self._busy + size + sum(b.numel() for b in self._free) > self._budget:
                    self._free.pop(0)
                buf = torch.empty(size, dtype=torch.uint8)
            self._busy += buf.numel()
            return buf

    def give(self, buf: torch.Tensor) -> None:
        """Return a buffer from :meth:`take`."""
        with self._cond:
            self._busy -= buf.numel()
            if buf.numel() <= self._budget and not self._closed:
                self._free.append(buf)
            self._cond.notify_all()

    def close(self) -> None:
        """Wake and fail every waiting :meth:`take` (on errors, so no thread waits forever)."""
        with self._cond:
            self._closed = True
            self._free.clear()
            self._cond.notify_all()


class ShardWriter:
    """Write a safetensors file whose header is known before its data.

    The header is written first from ``specs`` (name, dtype, shape). Every
    tensor has a fixed place, so its bytes are written positionally, in any
    order and from any thread: whole from memory (:meth:`write`), as raw bytes
    copied from another file (:meth:`copy_raw`), or piece by piece by whoever
    claimed its place (:meth:`claim`, then :meth:`write_at`). The file's
    blocks are reserved first (:func:`peft_hub.disk.reserve`). :meth:`close` checks
    that every tensor was claimed, and that as many bytes were written as the
    file has (a missing block would leave a hole of the right length).
    """

    def __init__(self, path: Path, specs: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]):
        prefix, slots = header_layout(specs, metadata)
        self._slots = {name: (len(prefix) + offset, nbytes) for name, (offset, nbytes) in slots.items()}
        self._unclaimed = set(self._slots)
        self._lock = threading.Lock()
        self.path = path
        self.data_bytes = sum(nbytes for _, nbytes in slots.values())
        self._size = len(prefix) + self.data_bytes
        self._written = 0  # bytes written so far (close checks it adds up to the file's size)
        # Closed by close(); unbuffered: every write is a positional pwrite or copy_file_range.
        self._fh = open(path, "wb", buffering=0)
        # Off the caller's path (the call can wait ~10 ms on the journal); joined before the file is closed.
        self._reserving = threading.Thread(target=disk.reserve, args=(self._fh.fileno(), self._size),
                                           name="materialize-reserve", daemon=True)
        self._reserving.start()
        try:
            self.write_at(0, memoryview(prefix))
        except BaseException:
            self._close_file()
            raise

    def claim(self, name: str) -> tuple[int, int]:
        """The file offset and length of ``name``'s bytes, which the caller then writes (once)."""
        with self._lock:
            if name not in self._unclaimed:
                raise RuntimeError(f"{self.path.name}: {name} is not a tensor of this file, or was written twice")
            self._unclaimed.remove(name)
        return self._slots[name]

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` (thread-safe: positional)."""
        fd, total = self._fh.fileno(), data.nbytes
        while data:
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
        with self._lock:
            self._written += total

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a tensor (any device) whose dtype and shape match its spec."""
        offset, nbytes = self.claim(name)
        view = tensor_bytes(tensor)
        if view.nbytes != nbytes:
            raise RuntimeError(f"{name}: {view.nbytes} bytes written where the header says {nbytes}")
        self.write_at(offset, view)

    def copy_raw(self, name: str, src: BinaryIO, offset: int) -> None:
        """Copy a tensor's bytes straight from another file, starting at ``offset``."""
        dst, remaining = self.claim(name)
        src_fd, dst_fd = src.fileno(), self._fh.fileno()
        if hasattr(os, "copy_file_range"):
            try:
                while remaining:
                    n = os.copy_file_range(src_fd, dst_fd, min(remaining, 1 << 30), offset, dst)
                    if n == 0:
                        raise InvalidInputError(f"{name}: source file ended early")
                    offset, dst, remaining = offset + n, dst + n, remaining - n
                    with self._lock:
                        self._written += n
                return
            except OSError:
                pass  # e.g. across file systems that refuse it; fall back to read/write
        while remaining:  # positional reads: the same handle may be read by another thread
            chunk = os.pread(src_fd, min(remaining, _COPY_CHUNK), offset)
            if not chunk:
                raise InvalidInputError(f"{name}: source file ended early")
            self.write_at(dst, memoryview(chunk))
            remaining -= len(chunk)
            offset += len(chunk)
            dst += len(chunk)

    def _close_file(self) -> None:
        self._reserving.join()  # never close the descriptor under a running fallocate (it could be reused)
        self._fh.close()

    def close(self) -> None:
        self._reserving.join()
        size = os.fstat(self._fh.fileno()).st_size
        self._close_file()
        if self._unclaimed:
            raise RuntimeError(f"{self.path.name}: {len(self._unclaimed)} tensors were never written")
        if size != self._size or self._written != self._size:
            raise RuntimeError(f"{self.path.name}: {self._written} bytes written where the header makes "
                               f"{self._size} (the file has {size})")

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._close_file()
