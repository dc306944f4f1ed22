"""What every client command module shares: the client decorator and printing helpers."""

from __future__ import annotations

import json
from typing import Any

import click

from peft_hub.client.api import HubClient

pass_client = click.make_pass_decorator(HubClient)


def human_size(n: int | None) -> str:
    n = n or 0
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))
