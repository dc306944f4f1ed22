"""Per-tensor bitsandbytes quantization, in the exact format transformers loads.

We quantize while streaming: each Linear weight is merged, quantized by
bitsandbytes' own ``Params4bit``/``Int8Params`` and serialized through the
bnb module's own ``state_dict``, so the files are what
``model.save_pretrained`` would write for a model loaded with the same
``BitsAndBytesConfig``. Which modules are quantized is decided the way
transformers decides it, on a model built on the meta device (no memory),
and written into ``llm_int8_skip_modules`` so loading agrees exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from peft_hub.errors import InvalidInputError

Quantization = Literal["none", "int8", "nf4"]
QUANTIZATIONS = ("none", "int8", "nf4")
NF4_BLOCKSIZE = 64


@dataclass
class ModelLayout:
    """What the base's module tree says about its weights (built on the meta device)."""

    transposed: set[str] = field(default_factory=set)  # weight names stored (in, out): Conv1D
    linear: set[str] = field(default_factory=set)  # weight names of Linear/Conv1D modules bnb would quantize
    skip_modules: list[str] = field(default_factory=list)  # transformers' modules_to_not_convert


def model_layout(base_dir: Path) -> ModelLayout | None:
    """Build the base on the meta device and read module types off it.

    Returns None when transformers cannot build the architecture; callers then
    fall back to shapes and the adapter's ``fan_in_fan_out``.
    """
    import warnings

    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    try:
        config = AutoConfig.from_pretrained(base_dir)
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - any architecture transformers cannot build: fall back to shapes
        return None
    skip = sorted(set(get_keys_to_not_convert(model)) | set(getattr(model, "_keep_in_fp32_modules", None) or []))
    layout = ModelLayout(skip_modules=skip)
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            layout.transposed.add(f"{name}.weight")
        if (isinstance(module, Conv1D) or type(module) is torch.nn.Linear) and should_convert_module(name, skip):
            layout.linear.add(f"{name}.weight")
    return layout


def quantization_config(method: Quantization, compute_dtype: torch.dtype, skip_modules: list[str]) -> dict[str, Any]:
    """The ``quantization_config`` to write into ``config.json``."""
    from transformers import BitsAndBytesConfig

    if method == "nf4":
        cfg = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=False, llm_int8_skip_modules=skip_modules,
        )
    elif method == "int8":
        cfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    else:
        raise InvalidInputError(f"unknown quantization {method!r}: use one of {', '.join(QUANTIZATIONS)}")
    return cfg.to_dict()


def quantize_weight(
    weight: torch.Tensor, method: Quantization, *, compute_dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Quantize one ``(out, in)`` weight the way transformers' bnb loader does.

    Args:
        weight: the merged weight in the model dtype, ``(out, in)`` (transpose Conv1D first).
        method: ``nf4`` or ``int8``.
        compute_dtype: the 4-bit compute dtype recorded in the quant state.
        device: where bitsandbytes quantizes (CUDA when present).

    Returns:
        The module's state-dict entries relative to the module, e.g.
        ``{"weight": ..., "weight.absmax": ..., ...}`` (nf4) or
        ``{"weight": ..., "SCB": ..., "weight_format": ...}`` (int8), on the CPU.
    """
    import bitsandbytes as bnb

    out_features, in_features = weight.shape
    with torch.device("meta"):
        if method == "nf4":
            module = bnb.nn.Linear4bit(
                in_features, out_features, bias=False, compute_dtype=compute_dtype, quant_type="nf4",
                compress_statistics=False, quant_storage=torch.uint8,
            )
        else:
            module = bnb.nn.Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False)
    # Quantize the parameter itself (as transformers does): Module.to() would copy only its .data.
    if method == "nf4":
        param = bnb.nn.Params4bit(
            weight, requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCKSIZE,
            compress_statistics=False, quant_storage=torch.uint8, module=module,
        ).to(device)
    else:
        param = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=False).to(device)
    module.weight = param
    return {k: v.detach().to("cpu") for k, v in module.state_dict().items()}
