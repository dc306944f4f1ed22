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
    except Exception:  # any architecture transformers cannot build: fall back to shapes
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

    if device.type == "cpu":
        return _nf4_cpu(weight) if method == "nf4" else _int8_cpu(weight)
    out_features, in_features = weight.shape
    module: Any  # Linear4bit or Linear8bitLt: Params4bit wants the former
    with torch.device("meta"):
        if method == "nf4":
            module = bnb.nn.Linear4bit(
                in_features, out_features, bias=False, compute_dtype=compute_dtype, quant_type="nf4",
                compress_statistics=False, quant_storage=torch.uint8,
            )
        else:
            module = bnb.nn.Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False)
    # Quantize the parameter itself (as transformers does): Module.to() would copy only its .data.
    param: torch.nn.Parameter
    if method == "nf4":
        param = bnb.nn.Params4bit(  # type: ignore[misc]  # bitsandbytes types Params4bit.to as Tensor.to
            weight, requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCKSIZE,
            compress_statistics=False, quant_storage=torch.uint8, module=module,
        ).to(device)
    else:
        param = bnb.nn.Int8Params(  # type: ignore[misc]  # bitsandbytes types Int8Params.to as Tensor.to
            weight.to("cpu"), requires_grad=False, has_fp16_weights=False
        ).to(device)
    module.weight = param
    return {k: v.detach().to("cpu") for k, v in module.state_dict().items()}


def _row_step(cols: int, multiple: int = 1) -> int:
    """Rows per ~1 MB block, rounded up so a block holds a multiple of ``multiple`` elements."""
    step = max(1, (1 << 18) // cols)
    while (step * cols) % multiple:
        step += 1
    return step


def _nf4_cpu(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """bitsandbytes' CPU nf4 quantization, reproduced bit for bit, ~1 MB of rows at a time.

    bnb 0.50 has no native CPU kernel for this: its portable op spends ~70% of
    its time in ``torch.bucketize``. :func:`_quantize_nf4` is the same op with
    the bucketize replaced by an exact table lookup, about 10x faster. Every
    row block but the last holds a multiple of 64 elements, so quantization
    blocks and nibble pairs fall where they do for the whole tensor. The tests
    check the result against bitsandbytes and transformers byte for byte.
    """
    from bitsandbytes.functional import QuantState, get_4bit_type

    rows, cols = weight.shape
    step = _row_step(cols, 2 * NF4_BLOCKSIZE)
    packed, absmax = [], []
    for i in range(0, rows, step):
        p, a = _quantize_nf4(weight[i:i + step])
        packed.append(p)
        absmax.append(a)
    state = QuantState(
        absmax=torch.cat(absmax), shape=weight.shape, dtype=weight.dtype, blocksize=NF4_BLOCKSIZE,
        code=get_4bit_type("nf4", device=weight.device), quant_type="nf4",
    )
    # Linear4bit._save_to_state_dict's layout: the packed weight, then the quant state under "weight."
    out = {"weight": torch.cat(packed)}
    out.update({f"weight.{k}": v for k, v in state.as_dict(packed=True).items()})
    return out


def _quantize_nf4(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' default ``quantize_4bit`` op (nf4, blocksize 64, uint8 storage), step for step."""
    flat = tensor.reshape(-1).float()
    n = flat.numel()
    rem = n % NF4_BLOCKSIZE
    full = n - rem
    blocks = flat[:full].reshape(full // NF4_BLOCKSIZE, NF4_BLOCKSIZE)
    absmax = blocks.abs().amax(dim=-1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / am, -1, 1)])
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q8 = torch.from_numpy(_nf4_codes()(scaled.numpy()))
    return ((q8[::2] << 4) | q8[1::2]).unsqueeze(1), absmax


class _Nf4Codes:
    """``torch.bucketize(x, bounds)`` for ``x`` in [-1, 1], exactly, by table lookup.

    The range is cut into 4096 cells of width 2^-11 (exact in fp32). ``lo[j]``
    counts the bounds below cell ``j``; at most one bound falls inside a cell,
    and ``x > bnd[j]`` adds it. Computing the cell of ``x`` can round up across
    a cell edge only when ``x`` is within 2^-23 of it, which matters only if a
    bound lies that close to an edge: the constructor checks that none does.
    """

    CELLS = 4096

    def __init__(self, bounds: torch.Tensor) -> None:
        import numpy as np

        g = self.CELLS
        b = bounds.double().numpy()
        edges = -1 + np.arange(g + 1, dtype=np.float64) * (2 / g)
        if np.abs(b[None, :] - edges[:, None]).min() < 2**-20 or np.diff(b).min() <= 2 / g:
            raise RuntimeError("nf4 bounds too close to the lookup grid")
        self.lo = (b[None, :] < edges[:, None]).sum(1).astype(np.uint8)
        self.bnd = np.full(g + 1, np.inf, dtype=np.float32)
        for v in bounds.numpy():
            self.bnd[int((float(v) + 1) * g / 2)] = v

    def __call__(self, x):
        import numpy as np

        idx = ((x + np.float32(1)) * np.float32(self.CELLS / 2)).astype(np.int32)
        np.clip(idx, 0, self.CELLS, out=idx)  # also keeps NaNs in range
        return self.lo.take(idx) + (x > self.bnd.take(idx))


_NF4_CODES: _Nf4Codes | None = None


def _nf4_codes() -> _Nf4Codes:
    global _NF4_CODES
    if _NF4_CODES is None:
        from bitsandbytes.functional import get_4bit_type

        code = get_4bit_type("nf4", device="cpu").float()  # sorted ascending
        _NF4_CODES = _Nf4Codes((code[:-1] + code[1:]) / 2)  # bnb's bounds: midpoints of the code
    return _NF4_CODES


def _int8_cpu(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """``Int8Params``' row-wise absmax quantization, reproduced bit for bit, ~1 MB of rows at a time.

    bnb rounds the weight to fp16, takes each row's absmax and computes
    ``round(A * (127 / absmax))``, where fp16 times fp32 promotes to fp32. We
    do the same with the fp16 values widened to fp32 first (exact), which
    avoids the CPU's slow fp16 arithmetic. Rows are independent, so blocking
    changes nothing. The keys are ``Linear8bitLt._save_to_state_dict``'s: the
    int8 weight, ``SCB`` (per-row absmax) and ``weight_format`` 0 (row-major).
    """
    rows, cols = weight.shape
    step = _row_step(cols)
    codes, scales = [], []
    for i in range(0, rows, step):
        block = weight[i:i + step].to(torch.float16).float()  # (rows, cols), fp16-rounded values
        absmax = block.abs().amax(dim=1)  # (rows,)
        codes.append(torch.round(block * (127.0 / absmax.unsqueeze(-1))).to(torch.int8))
        scales.append(absmax)
    return {"weight": torch.cat(codes), "SCB": torch.cat(scales), "weight_format": torch.tensor(0, dtype=torch.uint8)}
