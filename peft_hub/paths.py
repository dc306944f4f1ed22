"""Where peft-hub keeps things on this machine, shared by the hub and the CLI."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$PEFT_HUB_HOME``, or ``~/.peft-hub``: the embedded hub's data and the saved token."""
    return Path(os.environ.get("PEFT_HUB_HOME") or Path.home() / ".peft-hub").expanduser()


def token_file() -> Path:
    """Where ``login`` and the hub's first start save a token for the CLI."""
    return home() / "token"


def cache_dir() -> Path:
    """``$PEFT_HUB_CACHE``, or ``~/.cache/peft-hub``: pulled blobs by sha256."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peft-hub"
    return Path(os.environ.get("PEFT_HUB_CACHE") or default).expanduser()


def save_token(token: str, path: Path | None = None) -> Path:
    """Write a token readable only by this user, atomically."""
    path = path or token_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)
    return path
