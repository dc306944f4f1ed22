"""Human-readable sizes, one unit system everywhere: IEC binary units
(1 KiB = 1024 B), as the CLI, the web pages and the docs print them."""

from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: int | float | None, *, missing: str = "0 B") -> str:
    """``n`` bytes as ``"512 B"``, ``"1.5 KiB"``, ``"2.0 GiB"``; ``missing`` for None.

    Args:
        n: a byte count (negative and non-numeric values print as given bytes).
        missing: what to print for None.

    Returns:
        The size with one decimal above bytes, in the largest unit below 1024.
    """
    if n is None:
        return missing
    size = float(n)
    if size != size or size < 0:  # NaN or negative: not a size, show it as is
        return f"{n} B"
    for unit in UNITS:
        if size < 1024 or unit == UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable: the last unit always returns
