"""JSONL evaluation data: reading, sampling and tokenizing.

Loss rows are ``{"text": ...}`` (every token scored) or
``{"prompt": ..., "completion": ...}`` (only completion tokens scored).
Prompt rows for generation are ``{"prompt": ..., "reference": ...}``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_hub.adapter import sha256_file
from peft_hub.errors import InvalidInputError

IGNORE = -100


@dataclass
class JsonlFile:
    """A JSONL file, the rows kept, and its identity for eval records."""

    path: Path
    rows: list[dict[str, Any]]
    total_rows: int
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "rows": len(self.rows), "total_rows": self.total_rows}


def read_jsonl(
    path: str | Path, *, required: tuple[tuple[str, ...], ...], max_samples: int | None = None, seed: int = 0
) -> JsonlFile:
    """Read a JSONL file whose rows each have one of the ``required`` key sets.

    Args:
        path: the file.
        required: alternatives, e.g. ``(("text",), ("prompt", "completion"))``.
        max_samples: keep a seeded random subset of this many rows (in file order).
        seed: seeds that subset.

    Raises:
        InvalidInputError: unreadable file, bad JSON or missing keys (with the line number).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist")
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path.name}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not any(
                all(isinstance(row.get(k), str) for k in keys) for keys in required
            ):
                wanted = " or ".join("{" + ", ".join(f'"{k}": str' for k in keys) + "}" for keys in required)
                raise InvalidInputError(f"{path.name}:{lineno}: each row must be {wanted}")
            rows.append(row)
    if not rows:
        raise InvalidInputError(f"{path} holds no rows")
    total = len(rows)
    if max_samples is not None and max_samples < total:
        if max_samples < 1:
            raise InvalidInputError("--max-samples must be at least 1")
        keep = sorted(random.Random(seed).sample(range(total), max_samples))
        rows = [rows[i] for i in keep]
    return JsonlFile(path, rows, total, sha256_file(path))


def encode_loss_row(row: dict[str, Any], tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one loss row; labels are ``-100`` where not scored.

    The prompt is encoded with the tokenizer's special tokens (e.g. BOS), the
    completion without, and EOS is appended so that stopping is scored too.
    Prompt and completion are encoded separately so the boundary is exact.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if "text" in row and "prompt" not in row:
        ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"]
        if eos and (not ids or ids[-1] != eos[0]):
            ids = ids + eos
        labels = list(ids)
    else:
        prompt = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + eos
        ids = prompt + completion
        labels = [IGNORE] * len(prompt) + completion
    return ids[:max_length], labels[:max_length]


def pad_batch(seqs: list[list[int]], value: int, *, left: bool = False) -> list[list[int]]:
    """Pad to the longest sequence (on the left for generation)."""
    width = max(len(s) for s in seqs)
    return [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in seqs]
