"""The ``peft-hub`` command line: the root group, the error table, and each
part's commands. Commands parse flags, call one library function and print."""

from __future__ import annotations

import sys

import click

from peft_hub import __version__
from peft_hub.errors import PeftHubError


class HubGroup(click.Group):
    """A group that turns our errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PeftHubError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="peft-hub")
@click.option("--url", envvar="PEFT_HUB_URL", default=None, help="Hub URL (default http://127.0.0.1:8000).")
@click.option("--token", envvar="PEFT_HUB_TOKEN", default=None, help="API token (default: the one saved by login).")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """peft-hub: push, pull, find and compose PEFT adapters."""
    from peft_hub.client import HubClient

    ctx.obj = HubClient(url=url, token=token)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from peft_hub.client.commands import COMMANDS as client_commands
    from peft_hub.compose.cli import COMMANDS as compose_commands
    from peft_hub.gpu_runtime.cli import COMMANDS as runtime_commands
    from peft_hub.hub.cli import COMMANDS as hub_commands

    for command in (*hub_commands, *client_commands, *compose_commands, *runtime_commands):
        cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="peft-hub")
