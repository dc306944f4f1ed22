"""A LoRA's per-tensor updates, applied in fp32 exactly as PEFT's ``merge`` does.

A :class:`TensorUpdate` is everything an adapter does to one base tensor: a
replacement, a bias delta, and a :class:`LoraDelta` (``W + s * B @ A``, then
DoRA's rescaling when the adapter has a magnitude vector), computed without
any model object. :mod:`peft_hub.gpu_runtime.lora` builds them from an
adapter directory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, wait
from dataclasses import dataclass

import torch

from peft_hub.errors import IncompatibleAdaptersError


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
