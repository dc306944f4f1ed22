"""Client commands: each parses flags, calls one HubClient method, prints."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from peft_hub.client.api import HubClient
from peft_hub.client.http import clean_text
from peft_hub.errors import InvalidInputError

pass_client = click.make_pass_decorator(HubClient)


def _size(n: int | None) -> str:
    n = n or 0
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.command()
@click.option("--token", "token_", prompt=True, hide_input=True, help="An API token (phub_…).")
@pass_client
def login(hub: HubClient, token_: str) -> None:
    """Check a token against the hub and save it for later commands."""
    me = hub.login(token_.strip())
    click.echo(f"Logged in to {hub.url} as {me['name']} ({me['scope']}).")


@click.command()
@pass_client
def whoami(hub: HubClient) -> None:
    """Show who the current token belongs to."""
    me = hub.whoami()
    orgs = f", orgs: {', '.join(me['orgs'])}" if me["orgs"] else ""
    click.echo(f"{me['name']} (scope: {me['scope']}{orgs}) at {hub.url}")


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--name", default=None, help="owner/name or name (default: the directory's name, in your namespace).")
@click.option("--tag", "tags", multiple=True, help="Also point this tag at the new revision (repeatable).")
@click.option("--private/--public", default=None, help="Visibility (default: public for new adapters, unchanged otherwise).")
@click.option("-m", "--message", default="", help="A note stored with the revision.")
@pass_client
def push(hub: HubClient, path: str, name: str | None, tags: tuple[str, ...], private: bool | None, message: str) -> None:
    """Validate and upload an adapter directory as a new revision."""
    result = hub.push(path, name=name, tags=tags, private=private, message=message)
    state = "new revision" if result.created else "unchanged, same revision"
    click.echo(
        f"{result.repo_id}@{result.revision} ({state}; uploaded {result.files_uploaded} file(s), "
        f"{_size(result.bytes_uploaded)})"
    )


@click.command()
@click.argument("ref")
@click.option("-o", "--output", default=None, type=click.Path(file_okay=False), help="Directory to write (default: ./NAME).")
@pass_client
def pull(hub: HubClient, ref: str, output: str | None) -> None:
    """Download an adapter (owner/name[@tag-or-revision]), verifying every file."""
    target = output or hub.resolve(ref).name
    pulled = hub.pull(ref, target)
    click.echo(f"{pulled.repo_id}@{pulled.revision} -> {pulled.path} (downloaded {_size(pulled.bytes_downloaded)})")


@click.command("search")
@click.argument("query", required=False)
@click.option("--base-model", default=None, help="Exact base model name.")
@click.option("--method", default=None, help="PEFT method (lora, ia3, prefix_tuning, …).")
@click.option("--min-rank", type=int, default=None)
@click.option("--max-rank", type=int, default=None)
@click.option("--target-module", default=None, help="Adapters that target this module name.")
@click.option("--owner", default=None)
@click.option("--tag", default=None)
@click.option("--sort", type=click.Choice(["updated", "downloads", "name", "rank", "size"]), default="updated")
@click.option("--page", type=int, default=1)
@click.option("--per-page", type=int, default=20)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, each result with its owner/name id.")
@pass_client
def search(hub: HubClient, query: str | None, as_json: bool, **filters: Any) -> None:
    """Find adapters by text and filters."""
    result = hub.search(query, **filters)
    if as_json:
        _echo_json(result)
        return
    if not result["items"]:
        click.echo("No adapters found.")
        return
    rows = [("ADAPTER", "BASE MODEL", "METHOD", "RANK", "SIZE", "DOWNLOADS")]
    for a in result["items"]:
        rows.append((a["id"], a["base_model"] or "-", a["method"] or "-", str(a["rank"] or "-"), _size(a["size"]), str(a["downloads"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    click.echo(f"{result['total']} adapter(s), page {result['page']}")


ls = click.Command("ls", callback=search.callback, params=search.params, help=search.help)


@click.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@pass_client
def show(hub: HubClient, ref: str, as_json: bool) -> None:
    """Show an adapter's metadata, files and tags."""
    info = hub.info(ref)
    if as_json:
        _echo_json(info)
        return
    meta = info["meta"]
    click.echo(f"{info['id']}@{info['revision']}{'  (private)' if info['private'] else ''}")
    for label, value in (
        ("base model", meta["base_model"]), ("method", meta["method"]), ("rank", meta["rank"]),
        ("alpha", meta["alpha"]), ("rslora", meta["use_rslora"]), ("dora", meta["use_dora"]),
        ("targets", ", ".join(meta["target_modules"])), ("task", meta["task_type"]),
        ("params", f"{meta['trainable_params']:,}"), ("dtype", meta["dtype"]), ("size", _size(meta["total_size"])),
        ("tags", ", ".join(f"{t}->{s[:12]}" for t, s in info["tags"].items())),
    ):
        if value not in (None, ""):
            click.echo(f"  {label:<11}{value}")
    for f in info["files"]:
        click.echo(f"  file       {f['path']:<28} {_size(f['size']):>9}  sha256:{f['sha256'][:16]}…")
    broken = info.get("broken")
    if isinstance(broken, dict):  # marked by `peft-hub fsck --repair`
        for f in broken.get("files") or []:
            click.secho(f"  BROKEN     {clean_text(str(f.get('path')))}: {clean_text(str(f.get('problem')))} in the hub's "
                        "store (re-push the adapter to repair it)", fg="red")


@click.command()
@click.argument("ref")
@click.argument("tag_name", metavar="TAG")
@click.option("--delete", is_flag=True, help="Remove the tag instead.")
@pass_client
def tag(hub: HubClient, ref: str, tag_name: str, delete: bool) -> None:
    """Point TAG at the revision REF names (owner/name@rev; default main)."""
    if delete:
        hub.delete_tag(ref, tag_name)
        click.echo(f"deleted tag {tag_name}")
    else:
        out = hub.set_tag(ref, tag_name)
        click.echo(f"{tag_name} -> {out['revision']}")


@click.group("eval")
def eval_group() -> None:
    """Evaluation results attached to revisions."""


@eval_group.command("add")
@click.argument("ref")
@click.option("--metric", "metrics", multiple=True, required=True, help="NAME=VALUE (repeatable).")
@click.option("--dataset", required=True)
@click.option("--dataset-version", default=None)
@click.option("--split", default=None)
@click.option("--base", is_flag=True, help="These are the base model's scores (shown as the baseline in the catalog).")
@pass_client
def eval_add(
    hub: HubClient, ref: str, metrics: tuple[str, ...], dataset: str, dataset_version: str | None, split: str | None,
    base: bool,
) -> None:
    """Attach metrics to a revision: --metric accuracy=0.91 --dataset legal-qa."""
    evals = []
    for item in metrics:
        name, sep, value = item.partition("=")
        try:
            evals.append({"metric": name.strip(), "value": float(value), "dataset": dataset,
                          "dataset_version": dataset_version, "split": split,
                          "extra": {"variant": "base"} if base else {}})
        except ValueError:
            raise InvalidInputError(f"--metric expects NAME=NUMBER, got {item!r}") from None
        if not sep or not name.strip():
            raise InvalidInputError(f"--metric expects NAME=NUMBER, got {item!r}")
    out = hub.add_evals(ref, evals)
    click.echo(f"added {out['added']} eval(s) to revision {out['revision']}")


@eval_group.command("ls")
@click.argument("ref")
@pass_client
def eval_ls(hub: HubClient, ref: str) -> None:
    """List an adapter's evals (the first column is the id `eval rm` takes)."""
    for e in hub.evals(ref):
        click.echo(f"{e['id']:<6} {e['revision'][:12]}  {e['metric']:<16} {e['value']:<12.6g} {e['dataset']} {e['split'] or ''}")


@eval_group.command("rm")
@click.argument("ref")
@click.argument("eval_id", type=int)
@pass_client
def eval_rm(hub: HubClient, ref: str, eval_id: int) -> None:
    """Remove one eval result by its id (from `eval ls`)."""
    hub.delete_eval(ref, eval_id)
    click.echo(f"removed eval {eval_id}")


@click.command()
@click.argument("ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_client
def rm(hub: HubClient, ref: str, yes: bool) -> None:
    """Delete an adapter and all its revisions."""
    repo_id = hub.resolve(ref).repo_id
    if not yes:
        click.confirm(f"Delete {repo_id} and all its revisions?", abort=True)
    hub.delete(repo_id)
    click.echo(f"deleted {repo_id}")


@click.command()
@click.option("--grace", "grace_seconds", type=int, default=None, help="Keep unreferenced blobs younger than this (seconds).")
@click.option("--dry-run", is_flag=True)
@pass_client
def gc(hub: HubClient, grace_seconds: int | None, dry_run: bool) -> None:
    """Delete blobs that no revision references (admin)."""
    out = hub.gc(grace_seconds=grace_seconds, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(out['deleted'])} blob(s), {_size(out['bytes_freed'])}; {out['kept_in_grace']} kept within the grace period")


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
    click.echo(f"{report.blobs} blob(s), {_size(report.size)} verified in {report.root}: "
               + ("all good" if report.clean else f"{len(report.corrupt)} corrupt, {len(report.leftovers)} leftover(s)"))
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


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@token.command("create")
@click.option("--namespace", default=None, help="User the token acts as (admins only; created if new; default: you).")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True,
              help="No higher than your own token's.")
@click.option("--limit", "limits", multiple=True, help="Only allow these namespaces (repeatable).")
@click.option("--name", default="", help="A label shown by `token ls`.")
@click.option("--expires", default=None, help="Lifetime (30d, 12h, 90m) or an ISO date; default: never, or your token's expiry.")
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
    problems = report.get("problems") if isinstance(report.get("problems"), list) else []
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
    unref = report.get("unreferenced") if isinstance(report.get("unreferenced"), dict) else {}
    click.echo(f"unreferenced   {_count(unref.get('count'))} object(s), {_size(_count(unref.get('bytes')))} "
               "(not deleted; `peft-hub gc` collects them)")
    repaired = report.get("repaired")
    if isinstance(repaired, dict):
        click.echo(f"repaired       marked {_count(repaired.get('blobs_marked_corrupt'))} blob(s) corrupt and "
                   f"{_count(repaired.get('revisions_marked_broken'))} revision(s) broken; cleared "
                   f"{_count(repaired.get('blobs_cleared'))} blob(s) and {_count(repaired.get('revisions_cleared'))} "
                   f"revision(s); {_count(repaired.get('skipped_changed'))} changed while checked, left for the next run")
    total = _count(report.get("problem_count"))
    if report.get("clean") is True:
        click.echo("clean")
    elif isinstance(repaired, dict):
        click.echo(f"{total} problem(s) marked; a push of an affected adapter uploads its missing and corrupt blobs again")
    else:
        click.echo(f"{total} problem(s); `peft-hub fsck --repair` marks them")


COMMANDS = [login, whoami, push, pull, search, ls, show, tag, eval_group, rm, gc, token, org, audit, fsck,
            cache_group]
