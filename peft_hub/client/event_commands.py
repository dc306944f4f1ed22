"""``peft-hub webhook`` and ``peft-hub deployments``: they parse and print;
:mod:`peft_hub.client.events` does the work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from peft_hub.client import events
from peft_hub.client.api import HubClient
from peft_hub.client.cli_common import echo_json, pass_client
from peft_hub.client.http import clean_text


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _text(value: Any, limit: int = 120) -> str:
    """A value from the hub, safe to print on one line."""
    return "-" if value is None or value == "" else clean_text(str(value), limit)


@click.group("webhook")
def webhook() -> None:
    """Signed HTTP callbacks on pushes, tag moves and deletes."""


@webhook.command("add")
@click.argument("url")
@click.option("--secret", envvar="PEFT_HUB_WEBHOOK_SECRET", required=True,
              help="16-256 characters; bodies are signed with HMAC-SHA256 of it (env PEFT_HUB_WEBHOOK_SECRET).")
@click.option("--adapter", default=None, help="One adapter, owner/name.")
@click.option("--namespace", default=None, help="Every adapter of a namespace.")
@click.option("--events", "event_list", default="tag,push,delete", show_default=True,
              help="Comma-separated: tag, push, delete.")
@pass_client
def webhook_add(hub: HubClient, url: str, secret: str, adapter: str | None, namespace: str | None,
                event_list: str) -> None:
    """Send the events of an adapter or a namespace to URL."""
    if (adapter is None) == (namespace is None):
        raise click.UsageError("give exactly one of --adapter and --namespace")
    hook = events.add_webhook(hub, url, secret=secret, adapter=adapter, namespace=namespace,
                              events=event_list.split(","))
    scope = hook.get("adapter") or f"{hook.get('namespace')}/*"
    click.echo(f"webhook {_text(hook.get('id'))}: {_text(','.join(hook.get('events') or []))} of "
               f"{_text(scope)} -> {_text(hook.get('url'), 300)}")


@webhook.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_client
def webhook_ls(hub: HubClient, as_json: bool) -> None:
    """List your webhooks (an admin: every one); secrets are never shown."""
    hooks = events.list_webhooks(hub)
    if as_json:
        echo_json(hooks)
        return
    if not hooks:
        click.echo("No webhooks.")
        return
    _table([("ID", "SCOPE", "EVENTS", "BY", "URL")] + [
        (_text(h.get("id")), _text(h.get("adapter") or f"{h.get('namespace')}/*"),
         _text(",".join(h.get("events") or [])), _text(h.get("created_by")), _text(h.get("url"), 300))
        for h in hooks
    ])


@webhook.command("rm")
@click.argument("hook_id", type=int)
@pass_client
def webhook_rm(hub: HubClient, hook_id: int) -> None:
    """Remove a webhook and its delivery records."""
    events.remove_webhook(hub, hook_id)
    click.echo(f"removed webhook {hook_id}")


@webhook.command("deliveries")
@click.argument("hook_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_client
def webhook_deliveries(hub: HubClient, hook_id: int, as_json: bool) -> None:
    """Show a webhook's latest deliveries: status, attempts, response, last error."""
    rows = events.list_deliveries(hub, hook_id)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("No deliveries yet.")
        return
    _table([("DELIVERY", "EVENT", "REPO", "TAG", "STATUS", "ATTEMPTS", "CODE", "NEXT", "LAST ERROR")] + [
        (_text(r.get("id")), _text(r.get("event")), _text(r.get("repo")), _text(r.get("tag")), _text(r.get("status")),
         _text(r.get("attempts")), _text(r.get("response_code")), _text(r.get("next_attempt_at")),
         _text(r.get("last_error"), 80))
        for r in rows
    ])


@click.command("deployments")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_client
def deployments(hub: HubClient, as_json: bool) -> None:
    """Which adapter refs each registered server serves, at which revision."""
    servers = events.list_deployments(hub)
    if as_json:
        echo_json(servers)
        return
    if not servers:
        click.echo("No deployments registered.")
        return
    rows = [("SERVER", "BASE MODEL", "ADAPTER", "REVISION", "LAST SEEN")]
    for server in servers:
        first = (_text(server.get("server_id")), _text(server.get("base_model")))
        adapters = server.get("adapters") or []
        if not adapters:
            rows.append((*first, "-", "-", _text(server.get("last_seen"))))
        for number, entry in enumerate(adapters):
            head = first if number == 0 else ("", "")
            rows.append((*head, _text(entry.get("ref")), _text(entry.get("revision"), 12)[:12],
                         _text(server.get("last_seen")) if number == 0 else ""))
    _table(rows)


COMMANDS = [webhook, deployments]
