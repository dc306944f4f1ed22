"""Commands for operators and accounts: gc, fsck, the audit log, tokens,
organisations and the local cache. They parse and print; HubClient works."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from peft_hub.client.api import HubClient
from peft_hub.client.cli_common import echo_json as _echo_json
from peft_hub.client.cli_common import pass_client
from peft_hub.client.http import clean_text
from peft_hub.errors import InvalidInputError
from peft_hub.units import human_size as _size


@click.command()
@click.option("--grace", "grace_seconds", type=int, default=None,
              help="Keep unreferenced blobs younger than this (seconds).")
@click.option("--dry-run", is_flag=True)
@pass_client
def gc(hub: HubClient, grace_seconds: int | None, dry_run: bool) -> None:
    """Delete blobs that no revision references (admin)."""
    out = hub.gc(grace_seconds=grace_seconds, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(out['deleted'])} blob(s), {_size(out['bytes_freed'])}; "
               f"{out['kept_in_grace']} kept within the grace period")


@click.group("cache")
def cache_group() -> None:
    """The local cache of pulled files ($PEFT_HUB_CACHE)."""


@cache_group.command("info")
@pass_client
def cache_info(hub: HubClient) -> None:
    """Show where the cache is and what it holds."""
    info = hub.cache.info()
    click.echo(f"{info['path']}: {info['blobs']} blob(s), {_size(info['bytes'])}, {info['snapshots']} snapshot(s), "
               f"{info['leftovers']} leftover(s)")


@cache_group.command("ls")
@pass_client
def cache_ls(hub: HubClient) -> None:
    """List the adapters assembled in the cache (owner/name@revision)."""
    snapshots = hub.cache.snapshots()
    if not snapshots:
        click.echo("No adapters in the cache.")
        return
    _table([("ADAPTER", "FILES", "SIZE", "PATH")] + [
        (f"{s.repo_id}@{s.revision[:12]}", str(s.files), _size(s.size), str(s.path)) for s in snapshots
    ])


@cache_group.command("verify")
@click.option("--repair", is_flag=True, help="Remove what is wrong; the next pull fetches it again.")
@pass_client
def cache_verify(hub: HubClient, repair: bool) -> None:
    """Hash every cached blob; report corrupt blobs and leftovers of killed pulls.

    Without --repair nothing is removed and the exit code is 1 when anything
    is wrong; with it, corrupt blobs (and the snapshots that link them) and
    leftovers are removed.
    """
    report = hub.cache.verify(repair=repair)
    done = " (removed)" if repair else ""
    for sha256 in report.corrupt:
        click.echo(f"corrupt   blob {sha256}: its bytes hash to something else{done}")
    for path in report.snapshots:
        click.echo(f"corrupt   snapshot {path}: links a corrupt blob{done}")
    for path in report.leftovers:
        click.echo(f"leftover  {path}{done}")
    found = f"{len(report.corrupt)} corrupt, {len(report.leftovers)} leftover(s)"
    click.echo(f"{report.blobs} blob(s), {_size(report.size)} verified in {report.root}: "
               + ("all good" if report.clean else found))
    if not (report.clean or repair):
        click.echo("Run `peft-hub cache verify --repair` to remove them.", err=True)
        raise SystemExit(1)


@click.group()
def token() -> None:
    """API tokens."""


_DURATION = re.compile(r"^(\d{1,7})([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration_or_time(text: str, flag: str) -> timedelta | datetime:
    """``30d``, ``12h``, ``90m`` (also ``s``, ``w``) as a duration, or an ISO
    date or time (UTC unless it names a zone); anything else is one clear error."""
    match = _DURATION.match(text.strip().lower())
    try:
        if match:
            amount = int(match.group(1))
            if amount == 0:
                raise InvalidInputError(f"{flag} {text!r}: the duration must be more than zero")
            return timedelta(seconds=amount * _UNIT_SECONDS[match.group(2)])
        at = datetime.fromisoformat(text.strip())
    except InvalidInputError:
        raise
    except (ValueError, OverflowError):
        raise InvalidInputError(f"{flag} expects a duration such as 30d, 12h or 90m, or an ISO date such as "
                                f"2030-01-31; got {text!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """``--expires``: when a new token stops working, from a duration or an ISO date."""
    now = now or datetime.now(timezone.utc)
    when = _duration_or_time(text, "--expires")
    try:
        at = now + when if isinstance(when, timedelta) else when
    except OverflowError:
        raise InvalidInputError(f"--expires {text!r} is too far in the future") from None
    if at <= now:
        raise InvalidInputError(f"--expires {text!r} is in the past")
    return at


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a duration ago (``7d``) or an ISO date or time."""
    now = now or datetime.now(timezone.utc)
    when = _duration_or_time(text, "--since")
    try:
        return now - when if isinstance(when, timedelta) else when
    except OverflowError:
        raise InvalidInputError(f"--since {text!r} is too far in the past") from None


def _when(value: str | None, empty: str = "-") -> str:
    """An ISO time from the hub as ``YYYY-MM-DD HH:MM`` UTC."""
    if not value:
        return empty
    try:
        return datetime.fromisoformat(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return value


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@token.command("create")
@click.option("--namespace", default=None, help="User the token acts as (admins only; created if new; default: you).")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True,
              help="No higher than your own token's.")
@click.option("--limit", "limits", multiple=True, help="Only allow these namespaces (repeatable).")
@click.option("--name", default="", help="A label shown by `token ls`.")
@click.option("--expires", default=None,
              help="Lifetime (30d, 12h, 90m) or an ISO date; default: never, or your token's expiry.")
@pass_client
def token_create(
    hub: HubClient, namespace: str | None, scope: str, limits: tuple[str, ...], name: str, expires: str | None
) -> None:
    """Create a token for yourself (an admin: for anyone). It is printed once."""
    expires_at = parse_expiry(expires) if expires is not None else None
    out = hub.create_token(scope=scope, namespace=namespace, limit=list(limits) or None, name=name,
                           expires_at=expires_at)
    click.echo(out["token"])


@token.command("ls")
@click.option("--user", default=None, help="Another user's tokens (admins only).")
@click.option("--json", "as_json", is_flag=True)
@pass_client
def token_ls(hub: HubClient, user: str | None, as_json: bool) -> None:
    """List your tokens (never their secrets); * marks the one in use."""
    tokens = hub.list_tokens(user=user)
    if as_json:
        _echo_json(tokens)
        return
    if not tokens:
        click.echo("No tokens.")
        return
    rows = [("ID", "NAME", "SCOPE", "LIMITS", "CREATED", "EXPIRES", "LAST USED")]
    for t in tokens:
        expires = _when(t["expires_at"], "never") + (" (expired)" if t.get("expired") else "")
        rows.append((f"{t['id']}{'*' if t.get('current') else ''}", t["name"] or "-", t["scope"],
                     ",".join(t["namespaces"]) if t["namespaces"] is not None else "all",
                     _when(t["created_at"]), expires, _when(t["last_used_at"], "never")))
    _table(rows)


@token.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@pass_client
def token_revoke(hub: HubClient, token_id: int) -> None:
    """Revoke token ID (from `token ls`); browsers signed in with it are signed out."""
    hub.revoke_token(token_id)
    click.echo(f"revoked token {token_id}")


@click.command("audit")
@click.option("--actor", default=None, help="Only events by this user.")
@click.option("--action", default=None, help="Only this action (token.create, gc, auth.failed_burst, …).")
@click.option("--since", default=None, help="Only events since this long ago (7d, 12h) or this ISO time.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_client
def audit(hub: HubClient, actor: str | None, action: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Show the audit log, newest first (admin)."""
    since_at = parse_since(since) if since is not None else None
    events = hub.audit(actor=actor, action=action, since=since_at, limit=limit)
    if as_json:
        _echo_json(events)
        return
    if not events:
        click.echo("No audit events.")
        return
    rows = [("AT", "ACTOR", "ACTION", "TARGET", "CLIENT", "DETAIL")]
    for e in events:
        rows.append((_when(e["at"]), e["actor"] or "-", e["action"], e["target"] or "-", e["client"] or "-",
                     json.dumps(e["detail"], sort_keys=True, separators=(",", ":")) if e["detail"] else ""))
    _table(rows)


@click.group()
def org() -> None:
    """Organisations: namespaces shared by their members."""


@org.command("add-member")
@click.argument("org_name", metavar="ORG")
@click.argument("user")
@pass_client
def org_add_member(hub: HubClient, org_name: str, user: str) -> None:
    """Add USER to ORG (both created if new; needs an admin token)."""
    hub.add_member(org_name, user)
    click.echo(f"{user} is a member of {org_name}")


@click.command("fsck")
@click.option("--repair", is_flag=True, help="Mark corrupt blobs and broken revisions (deletes and fetches nothing).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_client
def fsck(hub: HubClient, repair: bool, as_json: bool) -> None:
    """Check that the store holds every blob the revisions need, with the
    right size and sha256 (admin). Exits 1 when it finds a problem."""
    report = hub.fsck(repair=repair)
    if as_json:
        _echo_json(report)
    else:
        _print_fsck(report)
    if report.get("clean") is not True:
        click.get_current_context().exit(1)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _print_fsck(report: dict[str, Any]) -> None:
    """One line per file that needs a bad blob, then the totals (hub text cleaned for the terminal)."""
    click.echo(f"checked {_count(report.get('blobs_checked'))} blob(s), {_size(_count(report.get('bytes_checked')))}, "
               f"of {_count(report.get('revisions'))} revision(s)")
    listed = report.get("problems")
    problems = listed if isinstance(listed, list) else []
    for p in (p for p in problems if isinstance(p, dict)):
        kind, why = clean_text(str(p.get("problem")), 20), clean_text(str(p.get("detail") or ""), 200)
        files = [f for f in p.get("files") or [] if isinstance(f, dict)] if isinstance(p.get("files"), list) else []
        for f in files:
            click.echo(f"{kind:<14} {clean_text(str(f.get('adapter')), 140)}@{clean_text(str(f.get('revision')), 40)}  "
                       f"{clean_text(str(f.get('path')), 300)}  ({why})")
        if not files:
            click.echo(f"{kind:<14} sha256:{clean_text(str(p.get('sha256')), 64)}  ({why})")
        if _count(p.get("file_count")) > len(files):
            click.echo(f"{'':<14} ... and {_count(p.get('file_count')) - len(files)} more file(s)")
    counted = report.get("unreferenced")
    unref = counted if isinstance(counted, dict) else {}
    click.echo(f"unreferenced   {_count(unref.get('count'))} object(s), {_size(_count(unref.get('bytes')))} "
               "(not deleted; `peft-hub gc` collects them)")
    repaired = report.get("repaired")
    if isinstance(repaired, dict):
        click.echo(f"repaired       marked {_count(repaired.get('blobs_marked_corrupt'))} blob(s) corrupt and "
                   f"{_count(repaired.get('revisions_marked_broken'))} revision(s) broken; cleared "
                   f"{_count(repaired.get('blobs_cleared'))} blob(s) and {_count(repaired.get('revisions_cleared'))} "
                   f"revision(s); {_count(repaired.get('skipped_changed'))} changed while checked, "
                   "left for the next run")
    total = _count(report.get("problem_count"))
    if report.get("clean") is True:
        click.echo("clean")
    elif isinstance(repaired, dict):
        click.echo(f"{total} problem(s) marked; a push of an affected adapter uploads its missing and corrupt "
                   "blobs again")
    else:
        click.echo(f"{total} problem(s); `peft-hub fsck --repair` marks them")


ADMIN_COMMANDS = [gc, token, org, audit, fsck, cache_group]
