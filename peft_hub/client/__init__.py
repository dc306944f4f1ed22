"""The peft-hub client library: push, pull, search and manage adapters.

>>> from peft_hub.client import HubClient
>>> with HubClient("http://127.0.0.1:8000") as hub:
...     hub.push("./my-adapter", name="alice/support")
"""

from peft_hub.client.api import HubClient, PulledAdapter, PushResult
from peft_hub.refs import Ref, parse_ref

__all__ = ["HubClient", "PulledAdapter", "PushResult", "Ref", "parse_ref"]
