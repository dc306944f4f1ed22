"""Moved to :mod:`peft_hub.staging` (shared with compose and the runtime's output directories)."""

from peft_hub.staging import (
    CREATING_SECONDS,
    STAGING_RE,
    STALE_SECONDS,
    claim,
    delete,
    lock,
    scandir,
    staging_dir,
    staging_leftovers,
    sweep,
)

__all__ = [
    "CREATING_SECONDS", "STAGING_RE", "STALE_SECONDS", "claim", "delete", "lock", "scandir", "staging_dir",
    "staging_leftovers", "sweep",
]
