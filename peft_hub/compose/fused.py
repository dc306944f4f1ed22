"""Block-by-block kernels for the dense merge methods: threshold trims and one-pass disjoint means.

Every pass walks the flat task tensors :data:`BLOCK` entries at a time, so
that the temporaries of a block (its magnitudes, masks, the vote and the sums)
stay in the core's cache, live in buffers reused from block to block (a fresh
256 KB tensor per operation is an mmap and costs more than the operation), and
each task tensor is read from memory once per pass instead of once per
whole-tensor operation. The blocks are split among Python threads, each
running torch on one intra-op thread (see :mod:`peft_hub.compose.threads`).
The threshold search uses numpy, whose boolean selection is many times faster
than torch's on CPU. CPU tensors only.

The arithmetic is the one :mod:`peft_hub.compose.merge_methods` documents,
done in the same order, so results are the same bits; the one choice left
open by the definition, which of several entries tied in magnitude at the
trim threshold are kept, is made here by flat index (the lowest first).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from peft_hub.compose.spec import MajoritySign
from peft_hub.compose.threads import intra_op_threads

#: Entries per block: a dozen float32 temporaries of this size fit in one core's L2.
BLOCK = 1 << 16
#: Entries sampled to bracket the threshold before the exact count.
SAMPLE = 1 << 16


@dataclass(frozen=True)
class Cut:
    """The entries a magnitude trim keeps: ``|x| > value``, and ``|x| == value`` at flat index ``<= last``.

    ``mask`` (a flat bool tensor) replaces both: PEFT's ``topk`` selection
    when the input holds NaN, which magnitudes cannot order, or DARE's random
    keep mask, whose survivors are then divided by ``rescale``.
    """

    value: float
    last: int
    mask: torch.Tensor | None = None
    rescale: float | None = None


def _blocks(n: int) -> Iterator[slice]:
    for start in range(0, n, BLOCK):
        yield slice(start, min(start + BLOCK, n))


def _magnitudes(flat: torch.Tensor) -> np.ndarray:
    """``flat`` as a numpy array numpy can order (a float32 copy for dtypes it lacks, exact for them)."""
    flat = flat.detach()
    if flat.dtype not in (torch.float16, torch.float32, torch.float64):
        flat = flat.float()
    return flat.numpy()


def magnitude_cut(flat: torch.Tensor, k: int) -> Cut | None:
    """Where to cut a flat tensor so that exactly its ``k`` largest-magnitude entries are kept.

    A random sample brackets the k-th largest magnitude; one pass counts the
    entries above the bracket and collects those inside it (numpy: its
    boolean selection is many times faster than torch's on CPU), whose exact
    k-th value is then selected; the whole tensor is selected only if the
    bracket missed. Ties at the threshold are kept lowest flat index first.

    Args:
        flat: (n,) task tensor.
        k: how many entries to keep.

    Returns:
        The cut, or None when every entry is kept (``k >= n``).
    """
    n = flat.numel()
    if k >= n:
        return None
    if k <= 0:
        return Cut(math.inf, -1)
    x = _magnitudes(flat)
    # Uniform positions (a fixed seed: the sample only decides the speed, never the result); a stride would
    # see the same few columns in every row of a low-rank product, whose magnitudes are not typical.
    picks = np.random.default_rng(0).integers(0, n, size=min(SAMPLE, n))
    sample = np.sort(np.abs(x[picks]))[::-1]  # (s,) descending
    s, p = sample.size, k / n
    margin = 4 * math.sqrt(s * p * (1 - p)) + 16
    hi_rank, lo_rank = math.floor(p * s - margin), math.ceil(p * s + margin)
    hi = float(sample[hi_rank]) if hi_rank >= 0 else math.inf
    lo = float(sample[lo_rank]) if lo_rank < s else -1.0
    a, m, m2 = np.empty(min(BLOCK, n), x.dtype), np.empty(min(BLOCK, n), bool), np.empty(min(BLOCK, n), bool)
    count_above, magnitude_sum, inside = 0, 0.0, []
    for sl in _blocks(n):
        w = sl.stop - sl.start
        np.abs(x[sl], out=a[:w])
        count_above += int(np.count_nonzero(np.greater(a[:w], hi, out=m[:w])))
        magnitude_sum += float(a[:w].sum(dtype=np.float64))  # NaN iff an entry is NaN (all are >= 0)
        np.greater_equal(a[:w], lo, out=m[:w])
        inside.append(a[:w][m[:w] & np.less_equal(a[:w], hi, out=m2[:w])])
    if math.isnan(magnitude_sum):  # NaN: keep topk's choice, NaN counted largest
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.topk(flat.abs(), k=k, largest=True, sorted=False).indices] = True
        return Cut(math.nan, -1, mask)
    cands = np.concatenate(inside)  # (c,) magnitudes in [lo, hi]
    if not 0 < k - count_above <= cands.size:  # the sample missed: select over everything
        count_above, cands = 0, np.abs(x)
    rank = k - count_above  # the rank-th largest candidate is the threshold
    value = np.partition(cands, cands.size - rank)[cands.size - rank]
    need = rank - int(np.count_nonzero(cands > value))  # tied entries to keep, >= 1
    tied = int(np.count_nonzero(cands == value))
    if need == tied:
        return Cut(float(value), n - 1)
    seen = 0
    for sl in _blocks(n):
        eq = np.abs(x[sl]) == value
        here = int(np.count_nonzero(eq))
        if seen + here >= need:
            return Cut(float(value), sl.start + int(np.flatnonzero(eq)[need - seen - 1]))
        seen += here
    raise AssertionError("unreachable: fewer tied entries than counted")


class _Scratch:
    """Block-sized buffers, reused: a fresh 256 KB tensor per operation costs more than the operation."""

    def __init__(self, like: torch.Tensor, tasks: int) -> None:
        size, dtype = min(BLOCK, like.numel()), like.dtype
        self.t = [torch.empty(size, dtype=dtype) for _ in range(tasks)]  # trimmed task blocks
        self.abs, self.tmp, self.vote, self.sign, self.total, self.count = (
            torch.empty(size, dtype=dtype) for _ in range(6)
        )
        self.ones = torch.ones(size, dtype=dtype)
        self.keep, self.eq = torch.empty(size, dtype=torch.bool), torch.empty(size, dtype=torch.bool)

    def view(self, buf: torch.Tensor, sl: slice) -> torch.Tensor:
        return buf[: sl.stop - sl.start]


def _trimmed(flats: Sequence[torch.Tensor], cuts: Sequence[Cut | None], sl: slice, ws: _Scratch) -> list[torch.Tensor]:
    """The block ``sl`` of every task, trimmed: ``x · keep`` as PEFT writes it."""
    out = []
    for i, (f, cut) in enumerate(zip(flats, cuts, strict=True)):
        x = f[sl]
        if cut is None:
            out.append(x)
            continue
        if cut.mask is not None:
            keep = cut.mask[sl]
        else:
            a, keep = torch.abs(x, out=ws.view(ws.abs, sl)), ws.view(ws.keep, sl)
            if cut.last >= sl.stop - 1:
                torch.ge(a, cut.value, out=keep)
            else:
                torch.gt(a, cut.value, out=keep)
                if cut.last >= sl.start:
                    j = cut.last - sl.start + 1
                    keep[:j] |= torch.eq(a[:j], cut.value, out=ws.view(ws.eq, sl)[:j])
        t = torch.mul(x, keep, out=ws.view(ws.t[i], sl))
        out.append(t if cut.rescale is None else t.div_(cut.rescale))
    return out


def _disjoint_block(
    ts: Sequence[torch.Tensor], method: MajoritySign, ws: _Scratch, sl: slice, out: torch.Tensor
) -> None:
    """Elect the sign of each entry and average the agreeing entries, for one block, into ``out``."""
    vote, tmp, sign = ws.view(ws.vote, sl), ws.view(ws.tmp, sl), ws.view(ws.sign, sl)
    total, count, agree = ws.view(ws.total, sl), ws.view(ws.count, sl), ws.view(ws.abs, sl)
    if method == "total":
        torch.add(ts[0], ts[1], out=vote) if len(ts) > 1 else vote.copy_(ts[0])
        for t in ts[2:]:
            vote += t
    else:
        torch.sign(ts[0], out=vote)
        for t in ts[1:]:
            vote += torch.sign(t, out=tmp)
    # +1 where the vote is >= 0, else -1. A vote of -0.0 (every task ±0 there) gets -1, which no task then
    # agrees with either way; a NaN vote comes with a NaN task, whose product makes the entry NaN either way.
    torch.copysign(ws.view(ws.ones, sl), vote, out=sign)
    total.zero_()
    count.zero_()
    for t in ts:
        torch.gt(torch.mul(t, sign, out=tmp), 0, out=agree)  # t.sign() == sign, as 0/1: zeros and NaN never agree
        total.addcmul_(t, agree)  # total += t·agree: the product is exact, so one rounding as before
        count += agree
    torch.div(total, count.clamp_(min=1.0), out=out)


def ties_pass(
    tensors: Sequence[torch.Tensor],
    cuts: Sequence[Cut | None],
    method: MajoritySign,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Trim, elect and average in one pass over the blocks.

    Args:
        tensors: task tensors, same shape.
        cuts: one per task (None keeps the task whole).
        method: ``total`` or ``frequency`` sign election.
        out: where to write (may be one of ``tensors``: a block is read before it is written).

    Returns:
        The merged tensor, shaped as ``tensors[0]``.
    """
    flats = [t.reshape(-1) for t in tensors]
    result = torch.empty_like(flats[0]) if out is None else out.view(-1)

    def run(part: range) -> None:
        ws = _Scratch(flats[0], len(flats))
        for i in part:
            sl = slice(i * BLOCK, min((i + 1) * BLOCK, flats[0].numel()))
            _disjoint_block(_trimmed(flats, cuts, sl, ws), method, ws, sl, result[sl])

    _in_parallel(run, -(-flats[0].numel() // BLOCK))
    return result.reshape(tensors[0].shape)


def _in_parallel(run: Callable[[range], None], blocks: int) -> None:
    """``run`` over the block indices, split among as many Python threads as torch has intra-op threads.

    Each thread runs torch on one intra-op thread (the small block operations
    release the GIL); blocks are independent, so the result does not depend on the split.
    """
    workers = max(1, min(torch.get_num_threads(), blocks // 8))
    parts = [range(blocks * w // workers, blocks * (w + 1) // workers) for w in range(workers)]
    with torch.no_grad(), intra_op_threads(1):
        if workers == 1:
            run(parts[0])
            return
        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(run, p) for p in parts]:
                f.result()


def sum_pass(tensors: Sequence[torch.Tensor], cuts: Sequence[Cut | None]) -> torch.Tensor:
    """``Σ trimmed tasks``, summed in task order from zero, in one pass over the blocks."""
    flats = [t.reshape(-1) for t in tensors]
    result = torch.empty_like(flats[0])
    ws = _Scratch(flats[0], len(flats))
    with torch.no_grad(), intra_op_threads(1):
        for sl in _blocks(flats[0].numel()):
            acc = result[sl].zero_()
            for t in _trimmed(flats, cuts, sl, ws):
                acc += t
    return result.reshape(tensors[0].shape)


def trim(tensor: torch.Tensor, cut: Cut) -> torch.Tensor:
    """``tensor · keep`` for the cut, a new tensor (dropped entries are ±0, as the product makes them)."""
    flat = tensor.reshape(-1)
    result = torch.empty_like(flat)
    ws = _Scratch(flat, 1)
    with torch.no_grad(), intra_op_threads(1):
        for sl in _blocks(flat.numel()):
            result[sl] = _trimmed([flat], [cut], sl, ws)[0]
    return result.reshape(tensor.shape)


def dare_cut(n: int, density: float, generator: torch.Generator) -> Cut:
    """DARE's keep mask for a flat tensor of ``n`` entries, ``u < density`` with ``u ~ U[0, 1)``, as a cut.

    Drawn block by block into one buffer: the generator yields the same
    stream as one ``torch.rand(n)`` call, so the mask is the same for the same
    seed, and the generator ends in the same state.
    """
    size = min(BLOCK, n)
    u, mask = torch.empty(size), torch.empty(n, dtype=torch.bool)
    with torch.no_grad(), intra_op_threads(1):
        for sl in _blocks(n):
            w = sl.stop - sl.start
            torch.lt(torch.rand(w, generator=generator, dtype=torch.float32, out=u[:w]), density, out=mask[sl])
    return Cut(math.nan, -1, mask, rescale=density)


def drop_rescale_(flat: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE in place on a flat tensor: ``x · (u < density) / density`` with ``u ~ U[0, 1)``.

    The uniforms are drawn block by block into one buffer; the generator
    yields the same stream as one ``torch.rand(n)`` call, so the mask is the
    same for the same seed.
    """
    size = min(BLOCK, flat.numel())
    u, keep, tmp = torch.empty(size), torch.empty(size, dtype=torch.bool), torch.empty(size, dtype=flat.dtype)
    with torch.no_grad(), intra_op_threads(1):
        for sl in _blocks(flat.numel()):
            w = sl.stop - sl.start
            torch.rand(w, generator=generator, dtype=torch.float32, out=u[:w])
            torch.lt(u[:w], density, out=keep[:w])
            torch.div(torch.mul(flat[sl], keep[:w], out=tmp[:w]), density, out=flat[sl])
    return flat
