"""``validate``: the base and each adapter, side by side, on the same data.

The base is loaded once (optionally quantized with bitsandbytes); every
adapter is attached to it with PEFT under its own name and switched on in
turn, and the base row is computed with the adapters disabled. Metrics:

- ``loss``: mean cross-entropy per scored token over the whole file (a micro
  average, so it does not depend on the batch size); ``perplexity = exp(loss)``;
- ``token_accuracy``: the share of scored tokens where the argmax is the label;
- ``exact_match`` (with ``--prompts``): greedy generation, stripped, equals the
  stripped reference.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from peft_hub import __version__
from peft_hub.adapter import parse_config
from peft_hub.adapter_files import CONFIG_NAME, size_cap
from peft_hub.errors import IncompatibleAdaptersError, InvalidAdapterError, InvalidInputError
from peft_hub.gpu_runtime.device import (
    DTYPE_NAMES,
    default_compute_dtype,
    resolve_device,
    resolve_dtype,
)
from peft_hub.gpu_runtime.jsonl import IGNORE, encode_loss_row, pad_batch, read_jsonl
from peft_hub.gpu_runtime.quantize import QUANTIZATIONS, Quantization
from peft_hub.gpu_runtime.refs import ResolvedAdapter, resolve_adapters, resolve_base, split_spec
from peft_hub.gpu_runtime.report import ModelResult, ValidationReport
from peft_hub.gpu_runtime.tokenizer import load_tokenizer
from peft_hub.progress import tqdm

__all__ = ["ValidationReport", "validate"]


def validate(
    base: str | Path,
    adapters: str | Sequence[str] = (),
    *,
    data: str | Path,
    prompts: str | Path | None = None,
    quantize: Quantization = "none",
    batch_size: int = 8,
    max_samples: int | None = None,
    max_new_tokens: int | None = None,
    max_length: int = 1024,
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
    split: str = "validation",
    tokenizer: str | Path | None = None,
    client: Any = None,
    output: str | Path | None = None,
    push_evals: bool = False,
) -> ValidationReport:
    """Evaluate the base and each adapter on ``data`` (and ``prompts``).

    Args:
        base: a local transformers model directory (a materialized one too).
        adapters: ``"A,B,A+B"`` or a list; each entry is a ref, a directory or
            a ``+``-composition. Empty: the base alone.
        data: JSONL of ``{"text"}`` or ``{"prompt", "completion"}`` rows.
        prompts: JSONL of ``{"prompt", "reference"}`` rows for exact match.
        quantize: load the base with bitsandbytes ``int8`` or ``nf4``.
        batch_size: rows per forward pass / generate call.
        max_samples: a seeded random subset of each file.
        max_new_tokens: generation budget (default: longest reference + 2 tokens).
        max_length: truncate longer rows.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        dtype: compute dtype; default bf16 on CUDA, fp32 on CPU.
        seed: seeds sampling and torch.
        split: recorded with each result.
        tokenizer: a directory with the tokenizer (default: ``base``).
        client: a ``HubClient``, for hub refs and ``push_evals``.
        output: write the report as JSON here.
        push_evals: attach each adapter's results to its hub revision.

    Returns:
        A :class:`ValidationReport`.
    """
    base_ref = resolve_base(base, client)  # a hub ref is pulled through the client's cache
    base = base_ref.path
    specs = _split_list(adapters)
    if quantize not in QUANTIZATIONS:
        raise InvalidInputError(f"unknown quantization {quantize!r}: use one of {', '.join(QUANTIZATIONS)}")
    if batch_size < 1:
        raise InvalidInputError("--batch-size must be at least 1")
    if push_evals and client is None:
        raise InvalidInputError("--push-evals needs a hub client")
    dev = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, default=default_compute_dtype(dev))
    tok = load_tokenizer(tokenizer or base)
    data_file = read_jsonl(data, required=(("text",), ("prompt", "completion")), max_samples=max_samples, seed=seed)
    prompt_file = (
        read_jsonl(prompts, required=(("prompt", "reference"),), max_samples=max_samples, seed=seed)
        if prompts else None
    )
    encoded = [encode_loss_row(row, tok, max_length) for row in data_file.rows]
    if not any(label != IGNORE for _, labels in encoded for label in labels[1:]):
        raise InvalidInputError(f"{data_file.name}: no row has a token to score")

    with tempfile.TemporaryDirectory(prefix="peft-hub-validate-") as scratch:
        resolved: list[tuple[str, Path, list[ResolvedAdapter]]] = []
        for i, spec in enumerate(specs):
            sub = Path(scratch) / str(i)
            sub.mkdir()
            path, parents, _ = resolve_adapters(spec, scratch=sub, client=client)
            check_peft_config(path)
            resolved.append((spec, path, parents))
        if push_evals:
            for spec, _, parents in resolved:
                if len(parents) != 1 or not parents[0].from_hub:
                    raise InvalidInputError(
                        f"--push-evals: {spec!r} is not a hub adapter (push it first, then validate it by its ref)"
                    )
        model, quant_label = _load_base(base, quantize, compute_dtype, dev)
        names = [f"adapter_{i}" for i in range(len(resolved))]
        if resolved:
            model = _attach_adapters(model, names, resolved)
        model.eval()

    def run(label: str) -> ModelResult:
        torch.manual_seed(seed)
        metrics = _loss_metrics(model, encoded, batch_size, dev, tok.pad_token_id, label)
        samples: list[dict[str, str]] = []
        if prompt_file is not None:
            em, samples = _generation_metrics(model, tok, prompt_file.rows, batch_size, max_new_tokens, dev, label)
            metrics["exact_match"] = em
        return ModelResult(name=label, adapter=None, metrics=metrics, samples=samples[:5])

    with torch.no_grad():
        ctx = model.disable_adapter() if resolved else contextlib.nullcontext()
        with ctx:
            results = [run("base")]
        for name, (spec, _, parents) in zip(names, resolved, strict=True):
            model.set_adapter(name)
            result = run(spec)
            pinned = parents[0].pinned if len(parents) == 1 else None
            result.adapter = {"parents": [p.to_dict() for p in parents], "pinned": pinned}
            results.append(result)

    report = ValidationReport(
        base_model=base_ref.pinned or str(base), quantization=quant_label, device=str(dev),
        dtype=DTYPE_NAMES.get(compute_dtype, str(compute_dtype)), seed=seed, split=split,
        dataset=data_file.describe(), prompts=prompt_file.describe() if prompt_file else None,
        models=results, peft_hub_version=__version__,
    )
    if push_evals:
        for result in results[1:]:
            if result.adapter is not None:  # set on every result but the base's
                report.pushed[result.name] = client.add_evals(result.adapter["pinned"], report.evals_for(result.name))
    if output is not None:
        Path(output).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _split_list(adapters: str | Sequence[str]) -> list[str]:
    if isinstance(adapters, str):
        adapters = [a for a in adapters.split(",") if a.strip()]
    specs = [a.strip() for a in adapters]
    for spec in specs:
        split_spec(spec)
    if len(set(specs)) != len(specs):
        raise InvalidInputError("the same adapter is listed twice")
    return specs


def check_peft_config(path: Path) -> None:
    """Check an adapter's config before PEFT reads it: the hub's checks again, and no regex
    that PEFT's Python ``re`` would backtrack on for hours (``target_modules``,
    ``rank_pattern`` keys, ...; see :func:`peft_hub.config_checks.python_regex_problem`).

    Raises:
        InvalidAdapterError: naming the field.
    """
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise InvalidAdapterError(f"{path} has no {CONFIG_NAME}")
    if config_path.stat().st_size > size_cap(CONFIG_NAME):
        raise InvalidAdapterError(f"{config_path} is larger than the {size_cap(CONFIG_NAME)} byte cap")
    try:  # check_config refuses, among the rest, what peft_regex_problem finds
        parse_config(config_path.read_bytes())
    except InvalidAdapterError as exc:
        raise InvalidAdapterError(f"{path}: {exc.message}") from None


def _attach_adapters(model: Any, names: list[str], resolved: list[tuple[str, Path, list[ResolvedAdapter]]]) -> Any:
    """Wrap the base in a PeftModel holding every adapter under its own name."""
    from peft import PeftModel

    for i, (name, (spec, path, _)) in enumerate(zip(names, resolved, strict=True)):
        try:
            if i == 0:
                model = PeftModel.from_pretrained(model, path, adapter_name=name)
            else:
                model.load_adapter(path, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:  # PEFT's "target modules not found", shape errors
            raise IncompatibleAdaptersError(f"cannot attach {spec} to the base: {exc}") from exc
    return model


def _check_cpu_4bit(model: Any, device: torch.device) -> None:
    """bitsandbytes' CPU 4-bit kernels (AVX512-BF16 path) need ``in_features % 64 == 0``."""
    if device.type != "cpu":
        return
    import bitsandbytes as bnb

    for name, module in model.named_modules():
        if (isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False)
                and module.in_features % 64):
            raise InvalidInputError(
                f"bitsandbytes' CPU 4-bit kernels need in_features to be a multiple of 64, and {name} has "
                f"{module.in_features}: use --quantize int8 or none here, or a GPU"
            )


def _load_base(base: Path, quantize: Quantization, dtype: torch.dtype, device: torch.device) -> tuple[Any, str]:
    """Load the base model; returns it and a label for its quantization."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    from peft_hub.progress import progress_disabled

    if progress_disabled():  # transformers' "Loading weights" bar follows our setting
        hf_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(base)
    existing = getattr(config, "quantization_config", None)
    if existing and quantize != "none":
        raise InvalidInputError(f"{base} is already quantized; validate it without --quantize")
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantize == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    elif quantize == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if quantize != "none" or existing:
        kwargs["device_map"] = {"": str(device)}
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if quantize == "none" and not existing:
        model.to(device)  # type: ignore[arg-type]  # transformers' stub for to() has lost torch's signature
    label: str = quantize
    if existing:
        qc = existing if isinstance(existing, dict) else existing.to_dict()
        label = "nf4" if qc.get("load_in_4bit") else "int8" if qc.get("load_in_8bit") else str(qc.get("quant_method"))
        label += " (pre-quantized)"
    if label.startswith("nf4"):
        _check_cpu_4bit(model, device)
    if label.startswith("int8"):
        # bitsandbytes logs the same fp16-cast notice on every int8 matmul.
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_OnceFilter())
    return model.eval(), label


class _OnceFilter(logging.Filter):
    """Let each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _loss_metrics(model: Any, encoded: list[tuple[list[int], list[int]]], batch_size: int, device: torch.device,
                  pad_id: int, label: str) -> dict[str, float]:
    """Micro-averaged next-token loss and accuracy over the scored tokens."""
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i][0]), i))
    loss_sum, scored, correct = 0.0, 0, 0
    for start in tqdm(range(0, len(order), batch_size), desc=f"loss [{label}]", leave=False):
        batch = [encoded[i] for i in order[start:start + batch_size]]
        ids = torch.tensor(pad_batch([b[0] for b in batch], pad_id), device=device)
        labels = torch.tensor(pad_batch([b[1] for b in batch], IGNORE), device=device)
        mask = torch.tensor(pad_batch([[1] * len(b[0]) for b in batch], 0), device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        target = labels[:, 1:]  # (B, T-1): token t is predicted at position t-1
        loss_sum += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
        ).item()
        valid = target != IGNORE
        scored += int(valid.sum())
        correct += int(((logits.argmax(-1) == target) & valid).sum())
    loss = loss_sum / scored
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "token_accuracy": correct / scored,
            "tokens": float(scored)}


def _generation_metrics(
    model: Any, tok: Any, rows: list[dict[str, Any]], batch_size: int, max_new_tokens: int | None,
    device: torch.device, label: str,
) -> tuple[float, list[dict[str, str]]]:
    """Greedy generation on each prompt; exact match of the stripped texts."""
    from transformers import GenerationConfig

    prompts = [tok(r["prompt"], add_special_tokens=True)["input_ids"] for r in rows]
    if max_new_tokens is None:
        longest = max(len(tok(r["reference"], add_special_tokens=False)["input_ids"]) for r in rows)
        max_new_tokens = min(longest + 2, 256)
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    order = sorted(range(len(rows)), key=lambda i: (-len(prompts[i]), i))
    predictions: dict[int, str] = {}
    for start in tqdm(range(0, len(order), batch_size), desc=f"generate [{label}]", leave=False):
        idx = order[start:start + batch_size]
        ids = torch.tensor(pad_batch([prompts[i] for i in idx], tok.pad_token_id, left=True), device=device)
        mask = torch.tensor(pad_batch([[1] * len(prompts[i]) for i in idx], 0, left=True), device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        for i, seq in zip(idx, out[:, ids.shape[1]:], strict=True):
            predictions[i] = tok.decode(seq, skip_special_tokens=True)
    hits = [predictions[i].strip() == rows[i]["reference"].strip() for i in range(len(rows))]
    samples = [
        {"prompt": rows[i]["prompt"], "reference": rows[i]["reference"], "prediction": predictions[i]}
        for i in range(len(rows))
    ]
    return sum(hits) / len(hits), samples

