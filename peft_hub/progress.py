"""Progress bars that stay out of the way: off when stderr is not a terminal,
or when ``PEFT_HUB_DISABLE_PROGRESS_BARS`` is set to a true value."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm as _tqdm

_TRUE = {"1", "true", "yes", "on"}


def progress_disabled() -> bool:
    """Whether progress bars should be hidden in this process."""
    if os.environ.get("PEFT_HUB_DISABLE_PROGRESS_BARS", "").lower() in _TRUE:
        return True
    return not sys.stderr.isatty()


class tqdm(_tqdm):  # noqa: N801 - keeps tqdm's familiar name
    """``tqdm`` that respects :func:`progress_disabled` unless told otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("disable") is None or "disable" not in kwargs:
            kwargs["disable"] = progress_disabled()
        super().__init__(*args, **kwargs)
