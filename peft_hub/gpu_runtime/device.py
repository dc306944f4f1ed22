"""Device and dtype choices shared by materialize and validate."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, overload

import torch

from peft_hub.compose.io import SHORT_DTYPES
from peft_hub.compose.threads import intra_op_threads
from peft_hub.errors import InvalidInputError

DeviceChoice = Literal["auto", "cpu", "cuda"]
DtypeChoice = Literal["bf16", "fp16", "fp32"]

DTYPES: dict[str, torch.dtype] = {name: SHORT_DTYPES[name] for name in ("bf16", "fp16", "fp32")}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
#: The names transformers writes into ``config.json``.
CONFIG_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32",
}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when one is visible, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InvalidInputError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda was asked for but no CUDA device is visible")
    return torch.device(device)


@overload
def resolve_dtype(dtype: str | torch.dtype | None, *, default: torch.dtype) -> torch.dtype: ...
@overload
def resolve_dtype(dtype: str | torch.dtype | None, *, default: None = None) -> torch.dtype | None: ...
def resolve_dtype(dtype: str | torch.dtype | None, *, default: torch.dtype | None = None) -> torch.dtype | None:
    """Turn ``bf16``/``fp16``/``fp32`` (or a torch dtype) into a torch dtype; ``None`` gives ``default``."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise InvalidInputError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}") from None


def default_compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 elsewhere (CPU half matmuls are slow and lossy)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@contextmanager
def single_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch on one intra-op thread while on the CPU, then restore the setting.

    Streaming merges and tiny models are memory- or overhead-bound: a second
    thread adds little on an idle machine, and on a busy one its spin-waits
    made each step 5-35x slower in our measurements (see docs/runtime.md).
    """
    with intra_op_threads(1 if device.type == "cpu" else None):
        yield
