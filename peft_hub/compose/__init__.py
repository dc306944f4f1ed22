"""Compose LoRA adapters: exact stacking, exact SVD truncation, TIES/DARE merges.

Pure tensor math (:mod:`.lowrank`, :mod:`.merge_methods`) is kept apart from
the safetensors streaming (:mod:`.io`, :mod:`.engine`). The names below load
lazily, so ``import peft_hub.compose.cli`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_hub.compose.api import ComposeReport, compose_dirs, interpolate_dirs

__all__ = ["ComposeReport", "compose_dirs", "interpolate_dirs"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from peft_hub.compose import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
