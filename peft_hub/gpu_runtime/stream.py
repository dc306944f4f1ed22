"""The streaming merge: one pass over the base's shards, one tensor at a time.

Each output shard mirrors a base shard (same file name, same tensors). A
tensor the adapter changes is read, merged in fp32 on the compute device and
written in the output dtype; a tensor it does not change is copied as raw
bytes (or only cast when the output dtype differs). With quantization, each
Linear weight is also quantized as it goes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from peft_hub.errors import IncompatibleAdaptersError
from peft_hub.gpu_runtime.device import single_cpu_thread
from peft_hub.gpu_runtime.lora import TensorUpdate, candidate_keys
from peft_hub.gpu_runtime.quantize import ModelLayout, Quantization, quantize_weight
from peft_hub.gpu_runtime.shards import (
    FLOAT_DTYPES,
    INDEX_NAME,
    ST_DTYPES,
    Checkpoint,
    ShardWriter,
    read_tensor,
)
from peft_hub.progress import tqdm

#: Writes one planned tensor into the open output shard.
Emit = Callable[[ShardWriter], None]


@dataclass
class MergeStats:
    """What the pass did, tensor by tensor."""

    merged: int = 0  # changed by the adapter
    copied: int = 0  # raw bytes, untouched
    cast: int = 0  # untouched but cast to the output dtype
    quantized: int = 0
    bytes_written: int = 0
    weight_map: dict[str, str] = field(default_factory=dict)


def _put(name: str, tensor: torch.Tensor) -> Emit:
    return lambda writer: writer.write(name, tensor)


def _write(name: str, make: Callable[[], torch.Tensor]) -> Emit:
    """Write ``make()`` when its turn comes, so only one tensor is built at a time."""
    return lambda writer: writer.write(name, make())


def _cast(name: str, load: Callable[[], torch.Tensor], dtype: torch.dtype) -> Emit:
    return lambda writer: writer.write(name, load().to(dtype))


def _copy(name: str, src: BinaryIO, offset: int) -> Emit:
    return lambda writer: writer.copy_raw(name, src, offset)


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
    with single_cpu_thread(device):
        return _stream_merge(ckpt, updates, out_dir, dtype=dtype, device=device, quantize=quantize,
                             layout=layout, fan_in_fan_out=fan_in_fan_out)


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
) -> MergeStats:
    base_keys = set(ckpt.weight_map)
    transposed = to_checkpoint_names(layout.transposed, base_keys) if layout else None
    qweights = to_checkpoint_names(layout.linear, base_keys) if (layout and quantize != "none") else set()
    out_st = ST_DTYPES[dtype]
    stats = MergeStats()
    bar = tqdm(total=ckpt.total_bytes, unit="B", unit_scale=True, desc="materialize")
    for shard, header in ckpt.headers.items():
        plan: list[tuple[str, str, tuple[int, ...], Emit]] = []
        with open(ckpt.root / shard, "rb") as fh:
            for name, info in sorted(header.tensors.items(), key=lambda kv: kv[1].start):
                upd = updates.get(name)
                floating = info.dtype in FLOAT_DTYPES
                st = out_st if floating else info.dtype

                def load(info=info, header=header) -> torch.Tensor:
                    return read_tensor(fh, header, info).to(device)

                def value(name=name, info=info, upd=upd) -> torch.Tensor:
                    t = load(info)
                    if upd is None:
                        return t.to(dtype)
                    return upd.apply(
                        t, base_key=name, dtype=dtype,
                        transposed=is_transposed(name, info.shape, upd, transposed, fan_in_fan_out),
                    )

                if name in qweights:
                    w = value()
                    if transposed is not None and name in transposed:
                        w = w.T.contiguous()  # transformers quantizes Conv1D weights as (out, in)
                    prefix = name[: -len("weight")]
                    for k, t in quantize_weight(w, quantize, compute_dtype=dtype, device=device).items():
                        key = prefix + k
                        plan.append((key, ST_DTYPES[t.dtype], tuple(t.shape), _put(key, t)))
                    stats.quantized += 1
                    stats.merged += upd is not None
                elif upd is not None:
                    if not floating:
                        raise IncompatibleAdaptersError(f"the adapter changes {name}, which is not floating-point")
                    plan.append((name, st, info.shape, _write(name, value)))
                    stats.merged += 1
                elif floating and info.dtype != out_st:
                    plan.append((name, st, info.shape, _cast(name, load, dtype)))  # load's defaults hold this info
                    stats.cast += 1
                else:
                    offset = header.data_offset + info.start
                    plan.append((name, st, info.shape, _copy(name, fh, offset)))
                    stats.copied += 1
            metadata = {**header.metadata, "format": "pt"}
            with ShardWriter(out_dir / shard, [(n, d, s) for n, d, s, _ in plan], metadata) as writer:
                for name, _, _, emit in plan:
                    emit(writer)
                    stats.weight_map[name] = shard
                    if name in header.tensors:  # not the extra quantization-state tensors
                        bar.update(header.tensors[name].end - header.tensors[name].start)
            stats.bytes_written += writer.data_bytes
    bar.close()
    if ckpt.sharded:
        index_metadata: dict[str, object] = {**ckpt.index_metadata, "total_size": stats.bytes_written}
        index = {"metadata": index_metadata, "weight_map": dict(sorted(stats.weight_map.items()))}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return stats

