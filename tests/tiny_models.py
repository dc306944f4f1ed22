"""Tiny transformers models and PEFT adapters built from configs, for tests.

Nothing can be downloaded here, so every test model is built from a config
with a fixed seed. Adapters are initialised with non-zero B so that their
deltas are not trivially zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def tiny_llama(seed: int = 0, *, vocab_size: int = 128, hidden: int = 32, layers: int = 2):
    """A Llama-style causal LM with random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0, *, vocab_size: int = 128, hidden: int = 32, layers: int = 2):
    """A GPT-2-style causal LM (Conv1D layers, fan_in_fan_out) with random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=128)
    return GPT2LMHeadModel(config).eval()


def save_base(model, path: Path) -> Path:
    """Save a base model directory (config + safetensors)."""
    model.save_pretrained(path)
    return path


def make_lora(
    base,
    path: Path,
    *,
    r: int = 4,
    alpha: float = 8,
    target_modules: list[str] | None = None,
    seed: int = 1,
    base_name: str = "tiny-llama",
    **lora_kwargs: Any,
) -> Path:
    """Attach a randomly initialised LoRA to ``base``, save it, and detach it.

    Args:
        base: a transformers model (left unchanged afterwards).
        path: where to save the adapter directory.
        r, alpha, target_modules: the LoRA settings.
        seed: seeds the random A and B.
        base_name: written as ``base_model_name_or_path``.
        lora_kwargs: any other ``LoraConfig`` field (rank_pattern, use_rslora, ...).

    Returns:
        ``path``.
    """
    import copy

    from peft import LoraConfig, get_peft_model

    if target_modules is None:
        target_modules = GPT2_TARGETS if base.config.model_type == "gpt2" else LLAMA_TARGETS
    if base.config.model_type == "gpt2":
        lora_kwargs.setdefault("fan_in_fan_out", True)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=target_modules,
        init_lora_weights=False, task_type="CAUSAL_LM", **lora_kwargs,
    )
    model = get_peft_model(copy.deepcopy(base), config)
    model.peft_config["default"].base_model_name_or_path = base_name
    # save_embedding_layers=False: "auto" would look the base name up on the Hub.
    model.save_pretrained(path, save_embedding_layers=False)
    return path


def dir_bytes(path: str | Path) -> dict[str, bytes]:
    """Every file of a directory by name, to compare adapters byte for byte."""
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir())}
