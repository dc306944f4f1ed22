"""Client commands: each parses flags, calls one HubClient method, prints."""

from __future__ import annotations

import sys
from typing import Any

import click

from peft_hub.client.admin_commands import ADMIN_COMMANDS
from peft_hub.client.api import HubClient
from peft_hub.client.cli_common import echo_json as _echo_json
from peft_hub.client.cli_common import json_option, pass_client
from peft_hub.client.doctor import doctor
from peft_hub.client.http import clean_text
from peft_hub.errors import InvalidInputError
from peft_hub.repo_kinds import KINDS, Kind
from peft_hub.units import human_size as _size


def _login_token(hub: HubClient, token: str | None) -> str:
    """The token to log in with: ``login --token``, the root ``--token``/``PEFT_HUB_TOKEN``,
    a prompt on a terminal, or one line on stdin (``echo $T | peft-hub login``)."""
    token = token or (hub.token if hub.token_given else None)
    if token is None and sys.stdin.isatty():
        token = click.prompt("Token", hide_input=True, err=True)
    elif token is None:
        token = sys.stdin.readline()
    token = (token or "").strip()
    if not token:
        raise InvalidInputError("no token given: run `peft-hub login --token phub_…`, or pipe the token on stdin")
    return token


@click.command()
@click.option("--token", "token_", default=None, help="An API token (phub_…); default: the root --token, "
              "$PEFT_HUB_TOKEN, a prompt, or one line on stdin.")
@json_option
@pass_client
def login(hub: HubClient, token_: str | None, as_json: bool) -> None:
    """Check a token against the hub, then save it and the hub's URL for later commands."""
    me = hub.login(_login_token(hub, token_))
    if as_json:
        _echo_json({**me, "url": hub.url})
        return
    click.echo(f"Logged in to {hub.url} as {me['name']} ({me['scope']}); saved the token and the URL.")


@click.command()
@json_option
@pass_client
def whoami(hub: HubClient, as_json: bool) -> None:
    """Show who the current token belongs to."""
    me = hub.whoami()
    if as_json:
        _echo_json({**me, "url": hub.url})
        return
    orgs = f", orgs: {', '.join(me['orgs'])}" if me["orgs"] else ""
    click.echo(f"{me['name']} (scope: {me['scope']}{orgs}) at {hub.url}")


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--name", default=None, help="owner/name or name (default: the directory's name, in your namespace).")
@click.option("--tag", "tags", multiple=True, help="Also point this tag at the new revision (repeatable).")
@click.option("--private/--public", default=None,
              help="Visibility (default: public for new adapters, unchanged otherwise).")
@click.option("-m", "--message", default="", help="A note stored with the revision.")
@click.option("--kind", type=click.Choice(KINDS), default=None,
              help="What the directory holds: a PEFT adapter (the default) or a transformers base model.")
@json_option
@pass_client
def push(hub: HubClient, path: str, name: str | None, tags: tuple[str, ...], private: bool | None, message: str,
         kind: Kind | None, as_json: bool) -> None:
    """Validate and upload an adapter (or, with --kind model, a base model) directory as a new revision."""
    result = hub.push(path, name=name, tags=tags, private=private, message=message, kind=kind)
    if as_json:
        _echo_json({"id": result.repo_id, "revision": result.revision, "created": result.created,
                    "files_uploaded": result.files_uploaded, "bytes_uploaded": result.bytes_uploaded})
        return
    state = "new revision" if result.created else "unchanged, same revision"
    click.echo(
        f"{result.repo_id}@{result.revision} ({state}; uploaded {result.files_uploaded} file(s), "
        f"{_size(result.bytes_uploaded)})"
    )


@click.command()
@click.argument("ref")
@click.option("-o", "--output", default=None, type=click.Path(file_okay=False),
              help="Directory to write (default: ./NAME): new or empty, or an earlier pull of the same adapter.")
@click.option("--into-existing", is_flag=True,
              help="Write into a non-empty directory that holds something else (nothing there is deleted).")
@json_option
@pass_client
def pull(hub: HubClient, ref: str, output: str | None, into_existing: bool, as_json: bool) -> None:
    """Download an adapter (owner/name[@tag-or-revision]), verifying every file.

    Into a new or empty directory the adapter appears whole or not at all;
    a directory holding an earlier pull of the same adapter is updated in
    place (only the adapter's files change); any other non-empty directory
    is refused unless --into-existing. A revision may be a unique prefix of
    7 or more hex digits.
    """
    target = output or hub.resolve(ref).name
    pulled = hub.pull(ref, target, into_existing=into_existing)
    if as_json:
        _echo_json({"id": pulled.repo_id, "revision": pulled.revision, "path": str(pulled.path),
                    "files": pulled.files, "bytes_downloaded": pulled.bytes_downloaded})
        return
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
@json_option
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
        rows.append((a["id"], a["base_model"] or "-", a["method"] or "-", str(a["rank"] or "-"), _size(a["size"]),
                     str(a["downloads"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    at_least = "" if result.get("total_exact", True) else "+"  # the hub stopped counting: at least this many
    click.echo(f"{result['total']}{at_least} adapter(s), page {result['page']}")


ls = click.Command("ls", callback=search.callback, params=search.params, help=search.help)


@click.command()
@click.argument("ref")
@json_option
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
            click.secho(f"  BROKEN     {clean_text(str(f.get('path')))}: {clean_text(str(f.get('problem')))} "
                        "in the hub's store (re-push the adapter to repair it)", fg="red")


@click.command()
@click.argument("ref")
@click.argument("tag_name", metavar="TAG")
@click.option("--delete", is_flag=True, help="Remove the tag instead.")
@json_option
@pass_client
def tag(hub: HubClient, ref: str, tag_name: str, delete: bool, as_json: bool) -> None:
    """Point TAG at the revision REF names (owner/name@rev, a 7+ hex prefix works; default main)."""
    if delete:
        hub.delete_tag(ref, tag_name)
        _echo_json({"tag": tag_name, "deleted": True}) if as_json else click.echo(f"deleted tag {tag_name}")
    else:
        out = hub.set_tag(ref, tag_name)
        _echo_json(out) if as_json else click.echo(f"{tag_name} -> {out['revision']}")


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
@json_option
@pass_client
def eval_add(
    hub: HubClient, ref: str, metrics: tuple[str, ...], dataset: str, dataset_version: str | None, split: str | None,
    base: bool, as_json: bool,
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
    if as_json:
        _echo_json(out)
        return
    click.echo(f"added {out['added']} eval(s) to revision {out['revision']}")


@eval_group.command("ls")
@click.argument("ref")
@json_option
@pass_client
def eval_ls(hub: HubClient, ref: str, as_json: bool) -> None:
    """List an adapter's evals (the first column is the id `eval rm` takes)."""
    evals = hub.evals(ref)
    if as_json:
        _echo_json(evals)
        return
    for e in evals:
        click.echo(f"{e['id']:<6} {e['revision'][:12]}  {e['metric']:<16} {e['value']:<12.6g} "
                   f"{e['dataset']} {e['split'] or ''}")


@eval_group.command("rm")
@click.argument("ref")
@click.argument("eval_id", type=int)
@json_option
@pass_client
def eval_rm(hub: HubClient, ref: str, eval_id: int, as_json: bool) -> None:
    """Remove one eval result by its id (from `eval ls`)."""
    hub.delete_eval(ref, eval_id)
    _echo_json({"removed": eval_id}) if as_json else click.echo(f"removed eval {eval_id}")


@click.command()
@click.argument("ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_client
def rm(hub: HubClient, ref: str, yes: bool, as_json: bool) -> None:
    """Delete an adapter and all its revisions."""
    repo_id = hub.resolve(ref).repo_id
    if not yes and not sys.stdin.isatty():
        raise InvalidInputError(f"not deleting {repo_id} without a terminal to confirm: pass --yes")
    if not yes:
        click.confirm(f"Delete {repo_id} and all its revisions?", abort=True)
    hub.delete(repo_id)
    _echo_json({"deleted": repo_id}) if as_json else click.echo(f"deleted {repo_id}")


COMMANDS = [login, whoami, doctor, push, pull, search, ls, show, tag, eval_group, rm, *ADMIN_COMMANDS]
