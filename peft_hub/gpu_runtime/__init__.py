"""Materialize, quantize and validate adapters (torch + transformers + peft).

Importing this package is cheap: the public functions are loaded on first
use, so ``peft_hub.gpu_runtime.cli`` can be imported without torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "materialize": "peft_hub.gpu_runtime.materializer",
    "MaterializeReport": "peft_hub.gpu_runtime.materializer",
    "validate": "peft_hub.gpu_runtime.validator",
    "ValidationReport": "peft_hub.gpu_runtime.validator",
    "build_char_tokenizer": "peft_hub.gpu_runtime.tokenizer",
    "save_char_tokenizer": "peft_hub.gpu_runtime.tokenizer",
    "run_demo": "peft_hub.gpu_runtime.demo",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
