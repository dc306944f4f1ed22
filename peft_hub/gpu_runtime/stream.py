"""The streaming merge: one pass over the base's shards, one tensor at a time.

Each output shard mirrors a base shard (same file name, same tensors). A
tensor the adapter changes is read, merged in fp32 on the compute device and
written in the output dtype; a tensor it does not change is copied as raw
bytes (or only cast when the output dtype differs). With quantization, each
Linear weight is also quantized as it goes.

Reads, merges and writes overlap: the shard is mapped copy-on-write, a reader
thread asks the kernel to read :data:`READ_AHEAD` bytes ahead (so a cold
disk reads while the CPU merges) and faults the next tensors' pages in,
while the calling thread (with one helper on the CPU, block by block) merges
from the mapping and writes each ~2 MB block at its place in the output file
as soon as it is computed, still in cache (one pass over memory fewer than
writing whole tensors later). A writer thread copies untouched tensors and
writes the other computed ones (casts, quantization outputs) from pooled
buffers. Both hand-offs are bounded (:data:`DEPTH` tensors; at most
:data:`BUDGET` bytes of buffers), so memory stays a few tensors whatever the
checkpoint's size.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from peft_hub.compose.io import tensor_bytes
from peft_hub.errors import IncompatibleAdaptersError
from peft_hub.gpu_runtime.device import DTYPE_NAMES, single_cpu_thread
from peft_hub.gpu_runtime.lora import candidate_keys
from peft_hub.gpu_runtime.lora_merge import TensorUpdate
from peft_hub.gpu_runtime.quantize import ModelLayout, Quantization, quantize_weight
from peft_hub.gpu_runtime.shard_writer import BufferPool, ShardWriter
from peft_hub.gpu_runtime.shards import (
    FLOAT_DTYPES,
    INDEX_NAME,
    ST_DTYPES,
    TORCH_DTYPES,
    Checkpoint,
    MappedShard,
    read_tensor,
)
from peft_hub.progress import tqdm
from peft_hub.safetensors_header import SafetensorsHeader, TensorInfo

#: Tensors read ahead of the merge, and merged tensors queued for the writer.
DEPTH = 2
#: Bytes of read buffers in flight at once (a larger tensor goes alone).
BUDGET = 96 << 20
#: Bytes of the shard asked into the page cache ahead of the tensor being read.
READ_AHEAD = 64 << 20
#: ``emit(first_row, block)``: where merge_rows hands each finished row block.
Emit = Callable[[int, torch.Tensor], None]


@dataclass
class MergeStats:
    """What the pass did, tensor by tensor."""

    merged: int = 0  # changed by the adapter
    copied: int = 0  # raw bytes, untouched
    cast: int = 0  # untouched but cast to the output dtype
    quantized: int = 0
    bytes_written: int = 0
    weight_map: dict[str, str] = field(default_factory=dict)


@dataclass
class _Job:
    """One output tensor: copied as raw bytes, written from memory, or read, computed and written."""

    name: str
    st: str  # safetensors dtype code
    shape: tuple[int, ...]
    copy_from: int | None = None  # raw copy: the absolute offset in the base shard
    tensor: torch.Tensor | None = None  # already computed (quantization outputs)
    source: TensorInfo | None = None  # read this base tensor ...
    #: ... and turn it into the output, given an empty output-shaped tensor on the CPU (or None),
    #: or (``blocks``) hand it to an emit callback block by block and return None
    make: Callable[[torch.Tensor, torch.Tensor | None, Emit | None], torch.Tensor | None] | None = None
    blocks: bool = False  # a plain LoRA merged on the CPU: written block by block by the merging threads
    progress: int = 0  # base bytes it accounts for


def to_checkpoint_names(model_names: set[str], base_keys: set[str]) -> set[str]:
    """Map module-tree parameter names onto the names the checkpoint uses."""
    out = set()
    for name in model_names:
        found = next((k for k in candidate_keys(name) if k in base_keys), None)
        if found is not None:
            out.add(found)
    return out


def is_transposed(
    key: str, base_shape: tuple[int, ...], update: TensorUpdate, transposed: set[str] | None, fan_in_fan_out: bool
) -> bool:
    """Whether the base stores this weight as ``(in, out)``.

    The module tree (Conv1D or not) decides when we have it; otherwise the
    shapes do, and the adapter's ``fan_in_fan_out`` settles square weights.
    """
    if transposed is not None:
        return key in transposed
    lora = update.lora
    if lora is None or lora.embedding:
        return False
    out_in = (lora.B.shape[0], lora.A.shape[1])
    if tuple(base_shape) == out_in[::-1] and out_in[0] != out_in[1]:
        return True
    if tuple(base_shape) == out_in and out_in[0] != out_in[1]:
        return False
    return fan_in_fan_out


def stream_merge(
    ckpt: Checkpoint,
    updates: dict[str, TensorUpdate],
    out_dir: Path,
    *,
    dtype: torch.dtype,
    device: torch.device,
    quantize: Quantization = "none",
    layout: ModelLayout | None = None,
    fan_in_fan_out: bool = False,
) -> MergeStats:
    """Write the merged checkpoint's shards (and index) into ``out_dir``.

    Args:
        ckpt: the base checkpoint.
        updates: base tensor name -> what the adapter does to it.
        out_dir: an existing, empty directory.
        dtype: the output dtype of floating tensors.
        device: where merges (and quantization) run.
        quantize: ``none``, ``int8`` or ``nf4`` (bitsandbytes).
        layout: module types from :func:`~peft_hub.gpu_runtime.quantize.model_layout`
            (required to quantize).
        fan_in_fan_out: the adapter's flag, used only when ``layout`` is None.

    Returns:
        Counts, bytes written and the new weight map.
    """
    with single_cpu_thread(device), _merge_helper(device) as helper:
        return _stream_merge(ckpt, updates, out_dir, dtype=dtype, device=device, quantize=quantize,
                             layout=layout, fan_in_fan_out=fan_in_fan_out, helper=helper)


@contextmanager
def _merge_helper(device: torch.device) -> Iterator[ThreadPoolExecutor | None]:
    """A second thread for the CPU merge's row blocks (each on one torch thread), when there is a second core."""
    if device.type != "cpu" or (os.cpu_count() or 1) < 2:
        yield None
        return
    with ThreadPoolExecutor(1, thread_name_prefix="materialize-merge") as helper:
        yield helper


def _stream_merge(
    ckpt: Checkpoint,
    updates: dict[str, TensorUpdate],
    out_dir: Path,
    *,
    dtype: torch.dtype,
    device: torch.device,
    quantize: Quantization,
    layout: ModelLayout | None,
    fan_in_fan_out: bool,
    helper: ThreadPoolExecutor | None,
) -> MergeStats:
    base_keys = set(ckpt.weight_map)
    transposed = to_checkpoint_names(layout.transposed, base_keys) if layout else None
    qweights = to_checkpoint_names(layout.linear, base_keys) if (layout and quantize != "none") else set()
    out_st = ST_DTYPES[dtype]
    stats = MergeStats()
    # merge_rows' fp32 blocks and their downcasts (one of each per merging thread), reused
    scratch = torch.empty((2 if helper else 1) << 21, dtype=torch.float32, device=device)
    pool = BufferPool(BUDGET)
    bar = tqdm(total=ckpt.total_bytes, unit="B", unit_scale=True, desc="materialize")
    for shard, header in ckpt.headers.items():
        jobs: list[_Job] = []
        with open(ckpt.root / shard, "rb") as fh:
            for name, info in sorted(header.tensors.items(), key=lambda kv: kv[1].start):
                upd = updates.get(name)
                floating = info.dtype in FLOAT_DTYPES
                st = out_st if floating else info.dtype
                nbytes = info.end - info.start

                def merged(raw: torch.Tensor, out: torch.Tensor | None = None, emit: Emit | None = None,
                           name: str = name, info: TensorInfo = info,
                           upd: TensorUpdate | None = upd) -> torch.Tensor | None:
                    t = raw.to(device)  # read only: on the CPU, a view of the mapped shard
                    # What can leave the output's range: anything written as fp16 (65504 at most), and the
                    # rescaled updates (DoRA's norms, replacements); a plain LoRA computed in fp32 and
                    # written as bf16 or fp32 cannot, from the finite factors lora.py accepts.
                    check = dtype == torch.float16 or (upd is not None and not upd.plain_lora)
                    if upd is None:
                        cast = t.to(dtype) if out is None else out.copy_(t)
                        return check_finite(name, cast) if check else cast
                    if emit is not None and check:
                        emit = _checked(name, emit)
                    result = upd.apply(
                        t, base_key=name, dtype=dtype, out=out, scratch=scratch, helper=helper, emit=emit,
                        transposed=is_transposed(name, info.shape, upd, transposed, fan_in_fan_out),
                    )
                    return result if result is None or not check else check_finite(name, result)

                if name in qweights:
                    w = merged(read_tensor(fh, header, info))
                    assert w is not None
                    if transposed is not None and name in transposed:
                        w = w.T.contiguous()  # transformers quantizes Conv1D weights as (out, in)
                    prefix = name[: -len("weight")]
                    for k, t in quantize_weight(w, quantize, compute_dtype=dtype, device=device).items():
                        jobs.append(_Job(prefix + k, ST_DTYPES[t.dtype], tuple(t.shape), tensor=t,
                                         progress=nbytes if prefix + k == name else 0))
                    stats.quantized += 1
                    stats.merged += upd is not None
                elif upd is not None:
                    if not floating:
                        raise IncompatibleAdaptersError(f"the adapter changes {name}, which is not floating-point")
                    blocks = device.type == "cpu" and len(info.shape) == 2 and upd.plain_lora
                    jobs.append(_Job(name, st, info.shape, source=info, make=merged, progress=nbytes, blocks=blocks))
                    stats.merged += 1
                elif floating and info.dtype != out_st:
                    jobs.append(_Job(name, st, info.shape, source=info, make=merged, progress=nbytes))
                    stats.cast += 1
                else:
                    jobs.append(_Job(name, st, info.shape, copy_from=header.data_offset + info.start,
                                     progress=nbytes))
                    stats.copied += 1
            metadata = {**header.metadata, "format": "pt"}
            with ShardWriter(out_dir / shard, [(j.name, j.st, j.shape) for j in jobs], metadata) as writer:
                _run(jobs, fh, header, writer, pool, bar, device)
            for job in jobs:
                stats.weight_map[job.name] = shard
            stats.bytes_written += writer.data_bytes
    bar.close()
    if ckpt.sharded:
        index_metadata: dict[str, object] = {**ckpt.index_metadata, "total_size": stats.bytes_written}
        index = {"metadata": index_metadata, "weight_map": dict(sorted(stats.weight_map.items()))}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return stats


def _run(jobs: list[_Job], fh: BinaryIO, header: SafetensorsHeader, writer: ShardWriter, pool: BufferPool,
         bar: Any, device: torch.device) -> None:
    """Write ``jobs`` in file order, reading ahead on one thread and writing on another.

    Merged plain LoRAs (``blocks``) are written by the merging threads as they go; the
    writer thread copies and writes the rest, all at fixed offsets, so the two never wait on each other.

    The first error of any stage is raised here, after both threads have stopped.
    """

    shard = MappedShard(fh, header)
    shard.read_ahead(header.data_offset + READ_AHEAD)
    to_cpu = device.type == "cpu"

    def read(job: _Job) -> torch.Tensor:
        assert job.source is not None
        # Cold files: the disk reads the next tensors (merged or copied) while this one is merged.
        shard.read_ahead(header.data_offset + job.source.end + READ_AHEAD)
        shard.prefetch(job.source)
        return shard.tensor(job.source)

    def write(job: _Job, value: torch.Tensor | None, buf: torch.Tensor | None) -> None:
        try:
            if job.copy_from is not None:
                writer.copy_raw(job.name, fh, job.copy_from)
            else:
                assert value is not None
                writer.write(job.name, value)
            bar.update(job.progress)
        finally:
            if buf is not None:
                pool.give(buf)

    sources: Iterator[_Job] = (j for j in jobs if j.source is not None)
    reads: deque[Future[torch.Tensor]] = deque()
    writes: deque[Future[None]] = deque()  # in file order, as the writer runs them
    held: deque[Future[None]] = deque()  # those holding a buffer or a computed tensor
    with ThreadPoolExecutor(1, thread_name_prefix="materialize-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="materialize-write") as out:
        try:
            def read_ahead() -> None:
                while len(reads) < DEPTH and (nxt := next(sources, None)) is not None:
                    reads.append(reader.submit(read, nxt))

            read_ahead()
            for job in jobs:
                value, buf = job.tensor, None
                if job.make is not None:
                    assert job.source is not None
                    raw = reads.popleft().result()
                    read_ahead()
                    if job.blocks:
                        _merge_blocks(job, raw, writer)  # written here, block by block
                        bar.update(job.progress)
                    else:
                        out_view = None
                        if to_cpu:
                            out_dtype = TORCH_DTYPES[job.st]
                            nbytes = math.prod(job.shape) * out_dtype.itemsize
                            buf = pool.take(nbytes)
                            out_view = buf[:nbytes].view(out_dtype).view(job.shape)
                        value = job.make(raw, out_view, None)
                        del out_view
                    del raw
                    shard.release(job.source)
                if not job.blocks:
                    writes.append(out.submit(write, job, value, buf))
                    if value is not None:
                        held.append(writes[-1])
                while len(held) > DEPTH:
                    held.popleft().result()
                while writes and writes[0].done():
                    writes.popleft().result()  # a failed write stops the pass here
            for fut in writes:
                fut.result()
        except BaseException:
            pool.close()
            for ahead in reads:
                ahead.cancel()
            for queued in writes:
                queued.cancel()
            raise


def check_finite(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t``, a computed weight (or a block of one), unless it holds NaN or an infinity: a merge whose
    values left the output dtype's range (float16 ends at 65504) or a cast of a base that did."""
    if not t.numel():
        return t
    low, high = torch.aminmax(t)  # NaN propagates; one pass, 15x faster than isfinite(t).all() on the CPU
    if not bool(low.isfinite() & high.isfinite()):
        top = torch.finfo(t.dtype).max
        raise IncompatibleAdaptersError(
            f"{name}: the output weight holds NaN or values beyond {DTYPE_NAMES.get(t.dtype, str(t.dtype))}'s "
            f"range (±{top:.6g}); nothing was written. Materialize in a wider dtype (--dtype bf16 or fp32)"
        )
    return t


def _checked(name: str, emit: Emit) -> Emit:
    """``emit`` after :func:`check_finite` of each block (still in cache, on the merging thread)."""
    def checked(first_row: int, block: torch.Tensor) -> None:
        emit(first_row, check_finite(name, block))
    return checked


def _merge_blocks(job: _Job, raw: torch.Tensor, writer: ShardWriter) -> None:
    """Merge a plain LoRA into ``raw`` and write each row block at its place in the file as it is computed."""
    assert job.make is not None
    offset, nbytes = writer.claim(job.name)
    row_bytes = nbytes // max(1, job.shape[0])

    def emit(first_row: int, block: torch.Tensor) -> None:  # on the merging thread, block still in cache
        data = tensor_bytes(block)
        if first_row * row_bytes + data.nbytes > nbytes:
            raise RuntimeError(f"{job.name}: a merged block runs past the tensor's end")
        writer.write_at(offset + first_row * row_bytes, data)

    if job.make(raw, None, emit) is not None:
        raise RuntimeError(f"{job.name}: the merge returned a tensor instead of writing its blocks")
