"""peft-hub: a registry and composition hub for PEFT adapters."""

__version__ = "0.1.0"

from peft_hub.errors import PeftHubError

__all__ = ["PeftHubError", "__version__"]
