"""``materialize``: bake one adapter (or a composition) into a standalone model.

The result is an ordinary transformers model directory: ``config.json``
(with a ``quantization_config`` when quantized), safetensors shards laid out
like the base's, an index when the base has one, the base's tokenizer and
generation files, and ``peft_hub_materialize.json`` recording what went in.
The full model is never instantiated; see :mod:`peft_hub.gpu_runtime.stream`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from peft_hub import __version__
from peft_hub.errors import InvalidInputError
from peft_hub.gpu_runtime.device import (
    CONFIG_DTYPE_NAMES,
    DTYPE_NAMES,
    resolve_device,
    resolve_dtype,
)
from peft_hub.gpu_runtime.lora import load_updates, map_to_base
from peft_hub.gpu_runtime.quantize import (
    QUANTIZATIONS,
    Quantization,
    model_layout,
    quantization_config,
)
from peft_hub.gpu_runtime.refs import parse_weights, resolve_adapters, resolve_base
from peft_hub.gpu_runtime.shards import INDEX_NAME, TORCH_DTYPES, open_checkpoint, read_json_file
from peft_hub.gpu_runtime.stream import stream_merge
from peft_hub.model_files import MODEL_FILE_CAPS
from peft_hub.outdir import plan_output

INFO_NAME = "peft_hub_materialize.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".pkl")


@dataclass
class MaterializeReport:
    """What :func:`materialize` wrote."""

    output_dir: str
    base: str
    adapters: list[dict[str, Any]]
    weights: list[float] | None
    method: str | None
    dtype: str
    quantization: str
    device: str
    merged: int
    copied: int
    cast: int
    quantized: int
    shards: int
    bytes_written: int
    seconds: float
    peft_hub_version: str = __version__
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def materialize(
    base: str | Path,
    adapters: str | Sequence[str],
    output_dir: str | Path,
    *,
    weights: str | Sequence[float] | None = None,
    method: str | None = None,
    rank: int | None = None,
    density: float | None = None,
    dtype: str | torch.dtype | None = None,
    quantize: Quantization = "none",
    device: str = "auto",
    client: Any = None,
    force: bool = False,
) -> MaterializeReport:
    """Merge ``adapters`` into ``base`` and write a loadable model directory.

    Args:
        base: a local transformers model directory with safetensors weights.
        adapters: ``"A+B"`` or a list of refs; each a directory or a hub ref.
        output_dir: where to write: new, empty, or an earlier materialize output
            (updated in place); see :mod:`peft_hub.outdir`.
        weights: one weight per adapter (for one adapter: scales its delta).
        method, rank, density: how several adapters are composed (see ``compose_dirs``).
        dtype: ``bf16``/``fp16``/``fp32``; default: the base's floating dtype.
        quantize: ``none``, ``int8`` or ``nf4`` (bitsandbytes).
        device: ``auto``, ``cpu`` or ``cuda``: where merges and quantization run.
        client: a ``HubClient`` for refs that are not local directories.
        force: write into a non-empty ``output_dir`` that holds something else
            (files of the same name are replaced, nothing else is deleted).

    Returns:
        A :class:`MaterializeReport`.

    Raises:
        InvalidInputError: bad base, output or options.
        UnsupportedAdapterError: an adapter that cannot be merged.
        IncompatibleAdaptersError: the adapter does not fit the base.
    """
    started = time.perf_counter()
    base_ref = resolve_base(base, client)  # a hub ref is pulled through the client's cache
    base, out = base_ref.path, Path(output_dir)
    if quantize not in QUANTIZATIONS:
        raise InvalidInputError(f"unknown quantization {quantize!r}: use one of {', '.join(QUANTIZATIONS)}")
    if out.resolve() == base.resolve():
        raise InvalidInputError("the output directory must differ from the base")
    target = plan_output(out, kind="materialize", identity="materialize", into_existing=force, inputs=[base],
                         flag="--force")
    ckpt = open_checkpoint(base)
    check_inside(base, base / "config.json")
    base_config = read_json_file(base / "config.json", MODEL_FILE_CAPS["config.json"])
    if base_config.get("quantization_config"):
        raise InvalidInputError(f"{base} is already quantized; materialize from the unquantized base model")
    compute = resolve_device(device)
    base_dtype = TORCH_DTYPES[ckpt.floating_dtype() or "F32"]
    out_dtype = resolve_dtype(dtype, default=base_dtype)

    with tempfile.TemporaryDirectory(prefix="peft-hub-materialize-") as scratch:
        adapter_dir, resolved, weight = resolve_adapters(
            adapters, scratch=Path(scratch), weights=weights, method=method, rank=rank, density=density,
            client=client,
        )
        adapter_config, updates = load_updates(adapter_dir, weight=weight)
    mapped = map_to_base(updates, set(ckpt.weight_map))
    # Only quantization needs the module tree (which weights are Linear). Without it,
    # Conv1D weights are recognised by shape and the adapter's fan_in_fan_out, which
    # PEFT rewrites to match the module type when it creates the adapter.
    if quantize != "none":
        check_module_counts(base_config, len(ckpt.weight_map) or sum(len(h.tensors) for h in ckpt.headers.values()))
    layout = model_layout(base) if quantize != "none" else None
    if quantize != "none" and layout is None:
        raise InvalidInputError(f"cannot quantize: transformers cannot build the architecture of {base}")

    staging = target.stage()
    try:
        stats = stream_merge(
            ckpt, mapped, staging, dtype=out_dtype, device=compute, quantize=quantize, layout=layout,
            fan_in_fan_out=bool(adapter_config.get("fan_in_fan_out")),
        )
        config = dict(base_config)
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = CONFIG_DTYPE_NAMES.get(out_dtype, str(out_dtype).removeprefix("torch."))
        if layout is not None:  # exactly when quantizing (checked above)
            config["quantization_config"] = quantization_config(quantize, out_dtype, layout.skip_modules)
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _copy_side_files(base, staging)
        report = MaterializeReport(
            output_dir=str(out), base=base_ref.pinned or str(base), adapters=[r.to_dict() for r in resolved],
            weights=parse_weights(weights, len(resolved)),
            method=method, dtype=DTYPE_NAMES.get(out_dtype, str(out_dtype)), quantization=quantize,
            device=str(compute), merged=stats.merged, copied=stats.copied, cast=stats.cast,
            quantized=stats.quantized, shards=len(ckpt.headers), bytes_written=stats.bytes_written,
            seconds=0.0,
        )
        report.seconds = round(time.perf_counter() - started, 3)
        report.files = sorted(p.name for p in staging.iterdir()) + [INFO_NAME]
        (staging / INFO_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        target.commit()
    finally:
        target.abort()
    return report


#: config.json counts that multiply the modules transformers builds (on the meta device, but each a Python object).
_MODULE_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers",
                  "num_experts", "num_local_experts", "n_routed_experts")


def check_module_counts(config: dict[str, Any], tensors: int) -> None:
    """Refuse a config whose layer or expert count exceeds the checkpoint's tensor count.

    Each layer or expert has at least one weight, so a larger count is a lie,
    and building it (to find the Linear modules to quantize) would take hours:
    a 2-tensor checkpoint can claim 2^40 layers.
    """
    stack: list[tuple[dict[str, Any], int]] = [(config, 0)]
    while stack:
        node, depth = stack.pop()
        for key, value in node.items():
            if isinstance(value, dict) and depth < 4:  # text_config, vision_config, ...
                stack.append((value, depth + 1))
            elif key in _MODULE_COUNTS and isinstance(value, int) and value > tensors:
                raise InvalidInputError(
                    f"config.json says {key}={value}, but the checkpoint holds only {tensors} tensors: "
                    "the config does not describe these weights"
                )


def _copy_side_files(base: Path, dest: Path) -> None:
    """Tokenizer, generation config, chat template, README…: every small non-weight file."""
    for child in sorted(base.iterdir()):
        if (
            not child.is_file()
            or child.name.startswith(".")
            or child.name in ("config.json", INDEX_NAME, INFO_NAME)
            or child.name.lower().endswith(_WEIGHT_SUFFIXES)
            or child.name.endswith(".index.json")
        ):
            continue
        check_inside(base, child)
        shutil.copy2(child, dest / child.name)


def check_inside(base: Path, path: Path) -> None:
    """Refuse a file of the base that is a symbolic link out of it.

    The side files are copied into the output, which the user may push: a
    ``merges.txt`` linking to ``~/.aws/credentials`` would publish it. Links
    within the directory are followed, and so are those of a Hugging Face cache
    snapshot (``snapshots/<revision>/x -> ../../blobs/<sha>``) into its repo's folder.
    """
    if not path.is_symlink():
        return
    root = base.resolve()
    home = root.parent.parent if root.parent.name == "snapshots" else root
    target = path.resolve()
    if target != home and home not in target.parents:
        raise InvalidInputError(
            f"{path} is a symbolic link to {target}, outside the base model directory; materialize copies "
            "it into the output, so copy the file itself into the base if it belongs there"
        )
