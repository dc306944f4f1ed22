"""The peft-hub service: a FastAPI app over a database and a blob store.

``create_app`` and ``Settings`` load lazily, so the CLI can list and parse its
commands without importing FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_hub.hub.app import create_app
    from peft_hub.hub.config import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from peft_hub.hub.app import create_app

        return create_app
    if name == "Settings":
        from peft_hub.hub.config import Settings

        return Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
