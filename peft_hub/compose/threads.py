"""How many intra-op threads torch uses for a piece of compose's work.

Thin and small operations (QR of a (11008, 64) matrix, the SVD of a (64, k)
sketch, reductions a block at a time) open many short OpenMP parallel
regions. When another process holds a core, every region waits for the
preempted thread; on the 2-core benchmark machine a thin QR took 73 ms with
2 threads instead of 5 ms with 1, and a blocked float64 norm of a 4096 x 11008
matrix 660 ms instead of 70 ms. Large matrix products are not hurt and do
use every core, so the setting is switched around the small work only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads (None: leave as is), restoring the setting after.

    The setting is process-wide: do not rely on it from several threads at once.
    """
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
