"""What every client command module shares: the client decorator and printing helpers."""

from __future__ import annotations

import json
from typing import Any

import click

from peft_hub.client.api import HubClient

pass_client = click.make_pass_decorator(HubClient)


#: ``--json``: print the result as JSON (for scripts) instead of text.
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))
