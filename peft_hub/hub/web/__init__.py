"""The web catalog (placeholder until the catalog lands)."""

from fastapi import FastAPI

from peft_hub.hub.config import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Add the catalog's routes and middleware to the hub."""
