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


def url_file(token_path: Path | None = None) -> Path:
    """Where the hub's URL is saved, beside the token (``login`` and the hub's first start write it)."""
    return (token_path or token_file()).with_name("url")


def saved_url() -> str | None:
    """The URL saved beside the token, if any."""
    try:
        url = url_file().read_text().strip()
    except OSError:
        return None
    return url if url.startswith(("http://", "https://")) and url.isprintable() and len(url) < 2048 else None


def save_url(url: str, token_path: Path | None = None) -> Path:
    """Save the hub's URL beside the token, atomically, for later commands."""
    return _write_private(url_file(token_path), url.rstrip("/"))


def cache_dir() -> Path:
    """``$PEFT_HUB_CACHE``, or ``~/.cache/peft-hub``: pulled blobs by sha256."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peft-hub"
    return Path(os.environ.get("PEFT_HUB_CACHE") or default).expanduser()


def save_token(token: str, path: Path | None = None) -> Path:
    """Write a token readable only by this user, atomically."""
    return _write_private(path or token_file(), token)


def _write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)
    return path
