"""Adapter files written byte by byte, without torch, for tests that play a
hub or a client and need a valid (or deliberately broken) file quickly."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def zero_safetensors(tensors: dict[str, list[int]]) -> bytes:
    """A valid safetensors file of zero-filled 2-D F32 tensors with these shapes."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def tiny_lora_dir(path: Path, note: str) -> Path:
    """A valid rank-2 LoRA directory whose card says ``note`` (so each note is its own revision)."""
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
              "base_model_name_or_path": "tiny"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapter_model.safetensors").write_bytes(zero_safetensors({
        "base_model.model.layers.0.q_proj.lora_A.weight": [2, 4],
        "base_model.model.layers.0.q_proj.lora_B.weight": [4, 2],
    }))
    (path / "README.md").write_text(f"# {note}\n")
    return path
