"""Lineage and the model card of a composed adapter (no torch)."""

from __future__ import annotations

import json
from typing import Any

import peft_hub
from peft_hub.adapter import LINEAGE_KEY, VLLM_DEFAULT_LORA_RANK, VLLM_LORA_RANKS, vllm_max_lora_rank

__all__ = ["LINEAGE_KEY", "lineage", "render_card", "vllm_max_lora_rank"]


def lineage(method: str, params: dict[str, Any], parents: list[dict[str, Any]]) -> dict[str, Any]:
    """The lineage record, in the shape the hub parses.

    Args:
        method: the compose method (``stack``, ``svd``, ``ties``, ``interpolate``, ...).
        params: the settings that determine the result.
        parents: ``{"ref", "revision", "sha256", "weight"}`` per parent.

    Returns:
        ``{"method", "params", "parents", "peft_hub_version"}``.
    """
    return {"method": method, "params": params, "parents": parents, "peft_hub_version": peft_hub.__version__}


def _fmt_weight(w: float) -> str:
    return f"{w:g}"


def render_card(
    *,
    record: dict[str, Any],
    base_model: str | None,
    rank: int,
    module_count: int,
    energy_kept: float,
    dtype: str,
    carried: list[str],
) -> str:
    """The README.md of a composed adapter.

    Args:
        record: the lineage record (see :func:`lineage`).
        base_model: the base model id, if known.
        rank: the largest rank of any module in the output.
        module_count: how many modules the adapter adapts.
        energy_kept: the overall fraction of ‖ΔW‖²_F kept.
        dtype: the tensors' dtype.
        carried: keys of full tensors carried through from the parents.

    Returns:
        Markdown with YAML front matter.
    """
    vllm = vllm_max_lora_rank(rank)
    front = ["---", "library_name: peft", "tags:", "- peft-hub", "- lora", f"- compose-{record['method']}"]
    if base_model:
        # A JSON string is a YAML double-quoted scalar, but YAML refuses \uD83D-style
        # surrogate escapes: write non-ASCII characters as themselves.
        front.insert(1, f"base_model: {json.dumps(base_model, ensure_ascii=False)}")
    lines = [*front, "---", "", "# Composed LoRA adapter", ""]
    lines.append(
        f"Made by `peft-hub compose` with method **{record['method']}** from {len(record['parents'])} parent(s)"
        + (f" on base model `{base_model}`." if base_model else ".")
    )
    lines += ["", "| parent | revision | weight | sha256 of adapter_model.safetensors |", "|---|---|---|---|"]
    for p in record["parents"]:
        rev = p["revision"][:12] if p["revision"] else "local"
        lines.append(f"| `{p['ref']}` | {rev} | {_fmt_weight(p['weight'])} | `{p['sha256'][:16]}…` |")
    params = ", ".join(f"{k}={v}" for k, v in record["params"].items() if v is not None)
    lines += [
        "",
        f"- Parameters: {params or 'none'}",
        f"- Modules: {module_count}; largest rank: {rank}; tensors: {dtype}",
        f"- Energy kept (fraction of ‖ΔW‖²_F over all modules; 1 means exact): {energy_kept:.6f}",
        "- Scaling is folded into the factors: every module has scale 1 (`lora_alpha` equals the rank, "
        "per module via `rank_pattern`/`alpha_pattern`), so any runtime that applies `lora_alpha / r` gets it right.",
    ]
    if vllm is None:
        lines.append(f"- vLLM: rank {rank} is above the largest `--max-lora-rank` vLLM accepts "
                     f"({VLLM_LORA_RANKS[-1]}).")
    else:
        note = "" if vllm <= VLLM_DEFAULT_LORA_RANK else f" (above vLLM's default of {VLLM_DEFAULT_LORA_RANK})"
        lines.append(f"- vLLM: serve with `--max-lora-rank {vllm}`{note}.")
    if carried:
        names = ", ".join(f"`{k}`" for k in carried)
        lines.append(f"- Full tensors carried through unchanged from the parents: {names}.")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from peft import PeftModel",
        "model = PeftModel.from_pretrained(base_model, \"path/to/this/adapter\")",
        "```",
        "",
        "## Lineage",
        "",
        f"Also stored in the safetensors metadata under `{LINEAGE_KEY}`.",
        "",
        "```json",
        json.dumps(record, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
