"""A LoRA adapter as a set of per-tensor updates to a base checkpoint.

PEFT saves a LoRA as ``base_model.model.<module>.lora_A.weight`` (``(r, in)``)
and ``...lora_B.weight`` (``(out, r)``); the merged weight is
``W + s * B @ A`` with ``s = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA),
``r`` and ``alpha`` read per module through ``rank_pattern``/``alpha_pattern``.
This module turns an adapter directory into :class:`TensorUpdate` objects,
one per base tensor it changes, and pairs them with the base's tensors;
:mod:`peft_hub.gpu_runtime.lora_merge` applies them in fp32 exactly as PEFT's
``merge`` does (including DoRA), without any model object.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from peft_hub.adapter import PEFT_PREFIX, parse_config, pattern_value
from peft_hub.adapter_files import CONFIG_NAME, WEIGHTS_NAME, size_cap
from peft_hub.errors import (
    IncompatibleAdaptersError,
    InvalidAdapterError,
    UnsupportedAdapterError,
)
from peft_hub.gpu_runtime.lora_merge import LoraDelta, TensorUpdate
from peft_hub.safetensors_header import read_header_path

#: Config fields that change what a merged weight would be (or make merging meaningless).
#: A field set to anything but its default makes the adapter unmergeable here.
_UNMERGEABLE = {
    "layer_replication": "it duplicates layers, so the merged model has a different architecture",
    "target_parameters": "it adapts raw nn.Parameters (e.g. MoE experts), which this merge does not map",
    "alora_invocation_tokens": "activated LoRA only applies after its invocation tokens, so it cannot be merged",
    "trainable_token_indices": "trainable-token deltas are not supported by the streaming merge",
    "use_qalora": "QA-LoRA pools its inputs and is not a plain low-rank delta",
    "use_bdlora": "block-diagonal LoRA is not supported by the streaming merge",
    "arrow_config": "Arrow routes between adapters per token, so it cannot be merged",
    "kasa_config": "KaSA is not supported by the streaming merge",
    "monteclora_config": "MonteCLoRA is not supported by the streaming merge",
    "velora_config": "VeLoRA is not supported by the streaming merge",
}

_KEY = re.compile(
    r"^(?P<module>.+?)\.(?:"
    r"(?P<ab>lora_A|lora_B)\.(?P<param>weight|bias)"
    r"|(?P<emb>lora_embedding_A|lora_embedding_B)"
    r"|(?P<mag>lora_magnitude_vector)(?:\.weight)?"
    r"|base_layer\.(?P<base>weight|bias)"
    r")$"
)


def check_mergeable(config: dict[str, Any]) -> None:
    """Refuse, with the reason, adapters whose merge is not ``W + s * B @ A`` (or DoRA)."""
    if config.get("peft_type") != "LORA":
        raise UnsupportedAdapterError(
            f"only LoRA adapters can be merged into the base weights, not {config.get('peft_type')}"
        )
    for name, reason in _UNMERGEABLE.items():
        if config.get(name) not in (None, False, {}, [], ""):
            raise UnsupportedAdapterError(f"cannot merge: {name} is set and {reason}")


def load_updates(adapter_dir: str | Path, *, weight: float = 1.0) -> tuple[dict[str, Any], list[TensorUpdate]]:
    """Read an adapter directory into per-tensor updates.

    Args:
        adapter_dir: a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``).
        weight: multiplies every LoRA delta (not replacements); 1.0 merges as trained.

    Returns:
        The adapter config and one update per base tensor it changes, keyed by
        module-path names such as ``model.layers.0.self_attn.q_proj.weight``.

    Raises:
        UnsupportedAdapterError: not a LoRA, or a LoRA variant that cannot be merged.
        InvalidAdapterError: missing files, unknown keys, ranks that disagree with the config.
    """
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / CONFIG_NAME
    if not config_path.is_file():
        raise InvalidAdapterError(f"{adapter_dir} has no {CONFIG_NAME}")
    if config_path.stat().st_size > size_cap(CONFIG_NAME):
        raise InvalidAdapterError(f"{config_path} is larger than the {size_cap(CONFIG_NAME)} byte cap")
    # The hub's own checks, again: the directory may be a mirror's, an old revision's, or hand-made.
    config = parse_config(config_path.read_bytes())
    check_mergeable(config)
    if not (adapter_dir / WEIGHTS_NAME).is_file():
        raise InvalidAdapterError(f"{adapter_dir} has no {WEIGHTS_NAME}")
    read_header_path(adapter_dir / WEIGHTS_NAME)
    tensors = load_file(adapter_dir / WEIGHTS_NAME)
    for raw_key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InvalidAdapterError(f"{adapter_dir}: {raw_key} holds NaN or infinite values; merging it "
                                      "would make the model's weights NaN")
    if config.get("use_dora") and weight != 1.0:
        raise UnsupportedAdapterError("a DoRA adapter cannot be merged with a weight other than 1")

    parts: dict[str, dict[str, torch.Tensor]] = {}
    replacements: dict[str, torch.Tensor] = {}
    for raw_key, tensor in tensors.items():
        if not raw_key.startswith(PEFT_PREFIX):
            raise InvalidAdapterError(f"{WEIGHTS_NAME}: key {raw_key!r} does not start with {PEFT_PREFIX!r}")
        key = raw_key[len(PEFT_PREFIX):]
        m = _KEY.match(key)
        if m is None:
            if "lora_" in key:
                raise InvalidAdapterError(f"{WEIGHTS_NAME}: unrecognised LoRA key {raw_key!r}")
            replacements[key] = tensor  # modules_to_save, or a bias trained with bias="all"/"lora_only"
            continue
        module = m.group("module")
        if m.group("base"):
            replacements[f"{module}.{m.group('base')}"] = tensor  # save_embedding_layers copies
        elif m.group("ab"):
            parts.setdefault(module, {})[f"{m.group('ab')[-1]}.{m.group('param')}"] = tensor
        elif m.group("emb"):
            parts.setdefault(module, {})[f"E{m.group('emb')[-1]}"] = tensor
        else:
            parts.setdefault(module, {})["M"] = tensor

    updates: dict[str, TensorUpdate] = {k: TensorUpdate(k, replacement=v) for k, v in replacements.items()}
    for module, p in sorted(parts.items()):
        embedding = "EA" in p or "EB" in p
        a, b = (p.get("EA"), p.get("EB")) if embedding else (p.get("A.weight"), p.get("B.weight"))
        if a is None or b is None:
            raise InvalidAdapterError(f"{module}: the adapter has only one of its two LoRA factors")
        if a.dim() != 2 or b.dim() != 2:
            raise UnsupportedAdapterError(
                f"{module}: LoRA on convolutions ({a.dim()}-d factors) is not supported by the streaming merge"
            )
        r = pattern_value(config.get("rank_pattern") or {}, module, config.get("r"))
        alpha = pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha"))
        if not isinstance(r, int) or r <= 0 or not isinstance(alpha, (int, float)):
            raise InvalidAdapterError(f"{module}: r={r!r} and lora_alpha={alpha!r} are not a valid rank and alpha")
        if a.shape[0] != r or b.shape[1] != r:
            raise InvalidAdapterError(
                f"{module}: factors have rank {a.shape[0]}/{b.shape[1]} but {CONFIG_NAME} says r={r}"
            )
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        magnitude = p.get("M")
        if (magnitude is not None) != bool(config.get("use_dora")):
            raise InvalidAdapterError(f"{module}: use_dora and the presence of lora_magnitude_vector disagree")
        key = f"{module}.weight"
        upd = updates.setdefault(key, TensorUpdate(key))
        upd.lora = LoraDelta(module, a, b, scale * weight, embedding, magnitude)
        if "B.bias" in p:
            bkey = f"{module}.bias"
            updates.setdefault(bkey, TensorUpdate(bkey)).bias_delta = p["B.bias"].float() * scale * weight
    return config, list(updates.values())


def candidate_keys(key: str) -> list[str]:
    """Base-checkpoint names an adapter-side tensor name may appear under.

    Adapters name modules as the loaded model does (``model.layers.0...`` for
    a Llama CausalLM, ``transformer.h.0...`` for GPT-2); checkpoints saved from
    the bare backbone drop that first component, and adapters trained on a
    backbone lack it.
    """
    out = [key]
    parts = key.split(".")
    for i in (1, 2):
        if len(parts) - i >= 2:
            out.append(".".join(parts[i:]))
    for prefix in ("model.", "transformer.", "model.language_model.", "language_model.model."):
        out.append(prefix + key)
    return list(dict.fromkeys(out))


def map_to_base(updates: list[TensorUpdate], base_keys: set[str]) -> dict[str, TensorUpdate]:
    """Pair each update with the base tensor it changes.

    Raises:
        IncompatibleAdaptersError: an adapter module has no tensor in the base,
            or two updates land on the same base tensor.
    """
    mapped: dict[str, TensorUpdate] = {}
    missing: list[str] = []
    for upd in updates:
        found = next((k for k in candidate_keys(upd.key) if k in base_keys), None)
        if found is None:
            missing.append(upd.key)
            continue
        if found in mapped:
            raise IncompatibleAdaptersError(f"{upd.key} and {mapped[found].key} both map to {found}")
        mapped[found] = upd
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise IncompatibleAdaptersError(
            f"the adapter changes {len(missing)} tensor(s) the base model does not have: {shown}. "
            "Was it trained on a different base model?"
        )
    return mapped
