"""``peft-hub doctor``: what this machine's CLI would talk to, and what to fix.

Checks the hub URL (and where it came from), that the hub answers, its
version against this client's, the token, the database and blob store (the
hub's readiness check), and the local extras compose and the GPU runtime
need. Each check prints one line, and a fix under it when it failed. The
exit code is 1 when the hub checks fail; a missing extra is only reported,
since the registry commands do not need it.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass

import click

from peft_hub import __version__
from peft_hub.client.api import HubClient
from peft_hub.client.cli_common import json_option, pass_client
from peft_hub.client.http import clean_text, json_body, send
from peft_hub.errors import PeftHubError
from peft_hub.paths import token_file, url_file

#: The README's command for the compose and GPU extras.
EXTRAS_INSTALL = "pip install torch==2.13.0 && pip install '.[gpu]'"
EXTRAS = ("torch", "safetensors", "transformers", "peft", "bitsandbytes")
_SOURCES = {"given": "from --url or PEFT_HUB_URL", "saved": "saved beside the token", "default": "the default"}


@dataclass
class Check:
    """One line of the report: ``ok`` says whether it passed; ``fix`` what to do if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _hub_checks(hub: HubClient) -> list[Check]:
    source = _SOURCES.get(hub.url_source, hub.url_source)
    checks = [Check("url", True, f"{hub.url} ({source})")]
    try:
        send(hub.http, "GET", "/api/health")
    except PeftHubError as exc:
        checks.append(Check("hub", False, str(exc), f"start the hub (`peft-hub serve`), or set PEFT_HUB_URL; "
                                                     f"`peft-hub login` saves the URL to {url_file()}"))
        return checks
    checks.append(Check("hub", True, "answers /api/health"))
    try:
        info = json_body(send(hub.http, "GET", "/openapi.json"))
        version = clean_text(str(info["info"]["version"]), 40) if isinstance(info, dict) else "?"
    except (PeftHubError, KeyError, TypeError):
        version = "?"
    same = version == __version__
    checks.append(Check("version", same, f"hub {version}, client {__version__}",
                        "" if same else "install the same peft-hub version on both sides"))
    if not hub.token:
        checks.append(Check("token", False, "no token", f"run `peft-hub login` (saves it to {token_file()}) "
                                                        "or set PEFT_HUB_TOKEN"))
    else:
        try:
            me = hub.whoami()
            checks.append(Check("token", True, f"{clean_text(str(me.get('name')), 64)} "
                                               f"(scope {clean_text(str(me.get('scope')), 16)})"))
        except PeftHubError as exc:
            checks.append(Check("token", False, str(exc), "run `peft-hub login` with a valid token for this hub"))
    try:
        send(hub.http, "GET", "/api/health/ready")
        checks.append(Check("storage", True, "database and blob store answer"))
    except PeftHubError as exc:
        checks.append(Check("storage", False, str(exc), "see the hub's log; docs/operations.md lists the settings"))
    return checks


def _extra_checks() -> list[Check]:
    checks = []
    for module in EXTRAS:
        found = importlib.util.find_spec(module) is not None
        need = "quantize" if module == "bitsandbytes" else "compose, materialize, validate, demo"
        checks.append(Check(module, found, "installed" if found else f"not installed (needed by {need})",
                            "" if found else EXTRAS_INSTALL))
    return checks


@click.command()
@json_option
@pass_client
def doctor(hub: HubClient, as_json: bool) -> None:
    """Check the hub URL, the token, the hub's version and storage, and the local extras."""
    checks = _hub_checks(hub) + _extra_checks()
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            line = f"{'ok ' if c.ok else 'FIX'}  {c.name:<12} {c.detail}"
            click.secho(line + (f"\n     {'':<12} -> {c.fix}" if c.fix else ""), fg=None if c.ok else "yellow")
    hub_ok = all(c.ok for c in checks if c.name not in EXTRAS)
    if not hub_ok:
        raise SystemExit(1)
