"""Small, seeded training loops for the demo: pretrain a tiny base, train a LoRA.

Plain AdamW loops rather than the HF Trainer: fewer moving parts, and every
step is reproducible from the seed on the CPU.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch

from peft_hub.gpu_runtime.jsonl import IGNORE, encode_loss_row, pad_batch
from peft_hub.gpu_runtime.tokenizer import build_char_tokenizer
from peft_hub.progress import tqdm

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def pretrain_base(
    out_dir: Path,
    corpus: str,
    *,
    steps: int = 150,
    hidden: int = 128,
    layers: int = 4,
    seq_len: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Build a small Llama from a config, train it on ``corpus``, save it with a char tokenizer.

    Returns:
        ``{"params", "steps", "first_loss", "final_loss"}`` (losses are per-batch training losses).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = build_char_tokenizer()
    ids = torch.tensor(tok(corpus, add_special_tokens=False)["input_ids"])  # (N,)
    config = LlamaConfig(
        vocab_size=128, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(device).train()  # type: ignore[arg-type]  # transformers' .to() stub
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in tqdm(range(steps), desc="pretrain"):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=max(1, steps // 10))
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch_size,), generator=gen)
        x = torch.stack([ids[s:s + seq_len] for s in starts]).to(device)  # (B, T)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval().to("cpu").save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"params": sum(p.numel() for p in model.parameters()), "steps": steps,
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None}


def train_lora(
    base_dir: Path,
    rows: list[dict[str, str]],
    out_dir: Path,
    *,
    steps: int = 300,
    r: int = 8,
    alpha: float = 16,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    base_name: str | None = None,
    replay: str | None = None,
    replay_fraction: float = 0.0,
    replay_chars: int = 32,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Train a LoRA on ``{"prompt", "completion"}`` rows (loss on the completion) and save it.

    With ``replay`` (plain text, e.g. the pretraining corpus), that share of
    each batch is random ``replay_chars``-character windows of it, scored as text: the
    adapter then learns its task while keeping the base's behaviour elsewhere,
    which makes it disturb other adapters less when they are composed.

    Returns:
        ``{"steps", "first_loss", "final_loss", "trainable_params"}``.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    # Any: it becomes a PeftModel below.
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = model.to(device)
    config = LoraConfig(
        r=r, lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates lora_alpha as int; it scales by any number
        target_modules=LLAMA_TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, config)
    model.peft_config["default"].base_model_name_or_path = base_name or str(base_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    encoded = [encode_loss_row(row, tok, 256) for row in rows]
    rng = random.Random(seed)
    model.train()
    losses = []
    replay_text = replay or ""  # n_replay is 0 without replay text
    for step in tqdm(range(steps), desc=f"lora {Path(out_dir).name}"):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=max(1, steps // 10))
        n_replay = int(batch_size * replay_fraction) if replay else 0
        batch = [encoded[i] for i in rng.choices(range(len(encoded)), k=batch_size - n_replay)]
        for _ in range(n_replay):
            start = rng.randrange(0, max(1, len(replay_text) - replay_chars))
            batch.append(encode_loss_row({"text": replay_text[start:start + replay_chars]}, tok, 256))
        x = torch.tensor(pad_batch([b[0] for b in batch], tok.pad_token_id), device=device)
        y = torch.tensor(pad_batch([b[1] for b in batch], IGNORE), device=device)
        mask = torch.tensor(pad_batch([[1] * len(b[0]) for b in batch], 0), device=device)
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    # save_embedding_layers=False: otherwise PEFT looks the base name up on the Hub to check the vocabulary
    model.eval().to("cpu").save_pretrained(str(out_dir), save_embedding_layers=False)
    return {"steps": steps, "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "trainable_params": sum(p.numel() for p in params)}
