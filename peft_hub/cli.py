"""The ``peft-hub`` command line: the root group, the error table, and each
part's commands. Commands parse flags, call one library function and print."""

from __future__ import annotations

import sys

import click

from peft_hub import __version__
from peft_hub.client.doctor import EXTRAS_INSTALL
from peft_hub.errors import PeftHubError

#: Modules only the extras install: a command that needs one says what to install.
EXTRA_MODULES = frozenset({"torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors"})


class HubGroup(click.Group):
    """A group that turns our errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PeftHubError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            sys.exit(1)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").partition(".")[0]
            if missing not in EXTRA_MODULES:
                raise
            command = ctx.invoked_subcommand or "this command"
            click.secho(f"Error: peft-hub {command} needs {missing}, which is not installed: {EXTRAS_INSTALL}",
                        fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="peft-hub")
@click.option("--url", envvar="PEFT_HUB_URL", default=None,
              help="Hub URL (default: the one saved by login or the hub's first start, else http://127.0.0.1:8000).")
@click.option("--token", envvar="PEFT_HUB_TOKEN", default=None, help="API token (default: the one saved by login).")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """peft-hub: push, pull, find and compose PEFT adapters.

    \b
    Refs: ./path, ../path, /path and ~/path are local directories;
    name and owner/name[@tag-or-revision] always mean the hub.
    Shell completion: eval "$(_PEFT_HUB_COMPLETE=bash_source peft-hub)"
    (zsh_source, fish_source for other shells). Trouble? peft-hub doctor.
    """
    from peft_hub.client import HubClient

    ctx.obj = HubClient(url=url, token=token)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from peft_hub.client.commands import COMMANDS as CLIENT_COMMANDS
    from peft_hub.client.event_commands import COMMANDS as EVENT_COMMANDS
    from peft_hub.compose.cli import COMMANDS as COMPOSE_COMMANDS
    from peft_hub.gpu_runtime.cli import COMMANDS as RUNTIME_COMMANDS
    from peft_hub.hub.cli import COMMANDS as HUB_COMMANDS

    for command in (*HUB_COMMANDS, *CLIENT_COMMANDS, *EVENT_COMMANDS, *COMPOSE_COMMANDS, *RUNTIME_COMMANDS):
        cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="peft-hub")
