"""The peft-hub service: a FastAPI app over a database and a blob store."""

from peft_hub.hub.app import create_app
from peft_hub.hub.config import Settings

__all__ = ["Settings", "create_app"]
