"""A LoRA adapter as a set of per-tensor updates to a base checkpoint.

PEFT saves a LoRA as ``base_model.model.<module>.lora_A.weight`` (``(r, in)``)
and ``...lora_B.weight`` (``(out, r)``); the merged weight is
``W + s * B @ A`` with ``s = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA),
``r`` and ``alpha`` read per module through ``rank_pattern``/``alpha_pattern``.
This module turns an adapter directory into :class:`TensorUpdate` objects,
one per base tensor it changes, and applies them in fp32 exactly as PEFT's
``merge`` does (including DoRA), without any model object.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from concurrent.futures import Executor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peft_hub.adapter import PEFT_PREFIX, pattern_value
from peft_hub.adapter_files import CONFIG_NAME, WEIGHTS_NAME
from peft_hub.errors import (
    IncompatibleAdaptersError,
    InvalidAdapterError,
    UnsupportedAdapterError,
)

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


@dataclass
class LoraDelta:
    """The low-rank factors of one module, with everything needed to merge them."""

    module: str
    A: torch.Tensor  # (r, in) for Linear/Conv1D; (r, num_embeddings) for embeddings
    B: torch.Tensor  # (out, r); (embedding_dim, r) for embeddings
    scale: float
    embedding: bool = False
    magnitude: torch.Tensor | None = None  # DoRA: (out,) or (embedding_dim,)

    def _factors(self, w: torch.Tensor, transposed: bool, base_key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(left, right)`` in fp32 on ``w``'s device with ``left @ right`` laid out like ``w``."""
        a = self.A.to(device=w.device, dtype=torch.float32)  # (r, in)
        b = self.B.to(device=w.device, dtype=torch.float32)  # (out, r)
        # Embeddings store (num_embeddings, dim), the transpose of B @ A; Conv1D stores (in, out).
        left, right = (a.T, b.T) if (self.embedding or transposed) else (b, a)
        if tuple(w.shape) != (left.shape[0], right.shape[1]):
            raise IncompatibleAdaptersError(
                f"{self.module}: B @ A has shape {(left.shape[0], right.shape[1])} but the base's {base_key} is "
                f"{tuple(w.shape)}; the adapter was trained on a different model"
            )
        return left, right

    def merge_rows(
        self, w: torch.Tensor, *, transposed: bool, base_key: str, dtype: torch.dtype,
        out: torch.Tensor | None = None, scratch: torch.Tensor | None = None, helper: Executor | None = None,
        emit: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor | None:
        """``w + s * left @ right`` in fp32, a few rows at a time, written into a ``dtype`` tensor.

        Blocks of ~4 MB stay in cache through the upcast, the fused
        multiply-add and the downcast, and no full-size fp32 copy exists. The
        bytes depend on the block height (MKL takes other paths for a few
        rows), not on where the buffers lie nor on which thread runs a block,
        so keep ``step`` as it is.

        Args:
            out: where to write (``dtype``, ``w``'s shape; may be ``w``); default: a new tensor.
                ``w`` is read only, unless it is ``out``.
            scratch: a reusable fp32 buffer on ``w``'s device for the blocks
                (a fresh block per step ran the merge 3x slower); two blocks' worth with ``helper``,
                and room for the downcast blocks too with ``emit`` (:meth:`scratch_size`).
            helper: a second thread that merges blocks alongside this one,
                each taking the next block as it finishes one (each block is
                computed exactly as alone, so the bytes do not change).
            emit: instead of filling ``out``, hand each finished block (``dtype``,
                ``(rows, cols)``, in scratch) to ``emit(first_row, block)`` on the
                thread that merged it, while it is still in cache; the block is
                reused once ``emit`` returns. Nothing is returned then.
        """
        left, right = self._factors(w, transposed, base_key)
        if emit is not None:
            if out is not None:
                raise ValueError(f"{base_key}: give out or emit, not both")
        elif out is None:
            out = torch.empty(w.shape, dtype=dtype, device=w.device)
        elif out.dtype != dtype or out.shape != w.shape:
            raise ValueError(f"{base_key}: out is {out.dtype} {tuple(out.shape)}, not {dtype} {tuple(w.shape)}")
        cols = w.shape[1]
        step = max(1, (1 << 20) // max(1, cols))
        starts = range(0, w.shape[0], step)
        lanes = 2 if helper is not None and len(starts) > 1 else 1
        low = emit is not None and dtype != torch.float32  # emitted blocks are downcast into the lane's tail
        span = self.scratch_size(cols, lanes=1, emit_dtype=dtype if emit is not None else None)
        if scratch is None or scratch.numel() < lanes * span or scratch.device != w.device:
            scratch = torch.empty(lanes * span, dtype=torch.float32, device=w.device)

        blocks = iter(starts)  # shared: each thread takes the next block, so a preempted one delays little
        lock = threading.Lock()

        def merge(lane: int) -> None:
            buf = scratch[lane * span:(lane + 1) * span]
            while True:
                with lock:
                    i = next(blocks, None)
                if i is None:
                    return
                rows = min(step, w.shape[0] - i)
                block = buf[: rows * cols].view(rows, cols)  # (rows, cols) fp32
                block.copy_(w[i:i + step])
                block.addmm_(left[i:i + step], right, alpha=self.scale)
                if emit is None:
                    assert out is not None
                    out[i:i + step] = block
                elif low:
                    done = buf[step * cols:].view(dtype)[: rows * cols].view(rows, cols)  # (rows, cols) dtype
                    emit(i, done.copy_(block))
                else:
                    emit(i, block)

        if lanes == 1:
            merge(0)
            return out
        assert helper is not None
        second = helper.submit(merge, 1)
        try:
            merge(0)
        finally:
            with lock:
                for _ in blocks:  # after an error here, leave the helper nothing more to start
                    pass
            if not second.cancel():  # it had started: it writes into out and scratch, so wait for it
                wait([second])
        if not second.cancelled():
            second.result()
        return out

    @staticmethod
    def scratch_size(cols: int, *, lanes: int, emit_dtype: torch.dtype | None = None) -> int:
        """fp32 elements of the ``scratch`` :meth:`merge_rows` wants for ``cols``-wide weights."""
        step = max(1, (1 << 20) // max(1, cols))
        low = 0 if emit_dtype is None or emit_dtype == torch.float32 else -(-step * cols * emit_dtype.itemsize // 4)
        return lanes * (step * cols + low)

    def merge_into(self, w: torch.Tensor, *, transposed: bool, base_key: str) -> torch.Tensor:
        """``w += s * B @ A`` in place (fp32 ``w``), laid out like the stored weight; then DoRA.

        ``addmm_`` fuses the product and the sum, so the full-size delta is
        never materialised: one pass over ``w`` and no temporary of its size.
        """
        left, right = self._factors(w, transposed, base_key)
        w.addmm_(left, right, alpha=self.scale)
        if self.magnitude is not None:
            _dora_(w, self.magnitude.to(device=w.device, dtype=torch.float32),
                   per_column=self.embedding or transposed)
        return w


@dataclass
class TensorUpdate:
    """Everything an adapter does to one base tensor."""

    key: str  # the adapter-side name (module path + ".weight"/".bias"), before mapping to the base
    replacement: torch.Tensor | None = None  # modules_to_save, trained biases, saved embedding layers
    lora: LoraDelta | None = None  # merged into a weight
    bias_delta: torch.Tensor | None = None  # lora_B.bias * s, added to a bias

    def apply(
        self, base: torch.Tensor | None, *, transposed: bool, base_key: str, dtype: torch.dtype = torch.float32,
        out: torch.Tensor | None = None, scratch: torch.Tensor | None = None, helper: Executor | None = None,
        emit: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor | None:
        """The updated tensor in ``dtype``, computed in fp32 (on ``base``'s device).

        Args:
            base: the stored base tensor (any float dtype), or None when the
                update is a pure replacement of a tensor the base lacks. It is
                only read (it may be a read-only mapping of the file).
            transposed: the base stores this weight as ``(in, out)`` (GPT-2's Conv1D).
            base_key: the base tensor's name, for error messages.
            dtype: the dtype of the result.
            out, scratch, helper: for a plain LoRA, where the result goes, a reusable
                fp32 buffer and a second merging thread (see :meth:`LoraDelta.merge_rows`);
                other updates return a new tensor.
            emit: for a plain LoRA, hand the result to ``emit`` block by block and
                return None (see :meth:`LoraDelta.merge_rows`); other updates ignore it.
        """
        if base is not None and self.plain_lora:
            assert self.lora is not None
            return self.lora.merge_rows(base, transposed=transposed, base_key=base_key, dtype=dtype,
                                        out=None if emit else out, scratch=scratch, helper=helper, emit=emit)
        return self._apply_fp32(base, transposed=transposed, base_key=base_key).to(dtype)

    @property
    def plain_lora(self) -> bool:
        """Whether the update is ``W + s * B @ A`` alone (merged row block by row block)."""
        return (self.replacement is None and self.bias_delta is None
                and self.lora is not None and self.lora.magnitude is None)

    def _apply_fp32(self, base: torch.Tensor | None, *, transposed: bool, base_key: str) -> torch.Tensor:
        w = self.replacement if self.replacement is not None else base
        if w is None:
            raise IncompatibleAdaptersError(f"the base model has no tensor {base_key} for {self.key}")
        if base is not None and tuple(w.shape) != tuple(base.shape):
            raise IncompatibleAdaptersError(
                f"{self.key}: the adapter carries shape {tuple(w.shape)} but the base's {base_key} is "
                f"{tuple(base.shape)} (was the vocabulary resized?)"
            )
        device = base.device if base is not None else w.device
        # Never modify the adapter's tensors, nor the base (which may map the file), in place.
        w = w.to(device=device, dtype=torch.float32, copy=True)
        if self.bias_delta is not None:
            w += self.bias_delta.to(device=device, dtype=torch.float32)
        if self.lora is not None:
            self.lora.merge_into(w, transposed=transposed, base_key=base_key)
        return w


def _dora_(merged: torch.Tensor, magnitude: torch.Tensor, *, per_column: bool) -> None:
    """DoRA's merge in place, ``m * V / ||V||`` with the norm taken per output unit.

    PEFT normalises each output unit over its inputs. For ``(out, in)``
    weights that is a row norm; Conv1D's ``(in, out)`` and embeddings'
    ``(num_embeddings, dim)`` keep the output units in the columns.
    """
    if per_column:
        norm = torch.linalg.norm(merged, dim=0)  # (out,) or (dim,)
        merged.mul_((magnitude / norm).view(1, -1))
    else:
        norm = torch.linalg.norm(merged, dim=1)  # (out,)
        merged.mul_((magnitude / norm).view(-1, 1))


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
    try:
        config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    except FileNotFoundError:
        raise InvalidAdapterError(f"{adapter_dir} has no {CONFIG_NAME}") from None
    check_mergeable(config)
    if not (adapter_dir / WEIGHTS_NAME).is_file():
        raise InvalidAdapterError(f"{adapter_dir} has no {WEIGHTS_NAME}")
    tensors = load_file(adapter_dir / WEIGHTS_NAME)
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
