"""Commands that run the hub itself: ``serve`` and ``db upgrade|current|check``."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import click

#: What ``pip install 'peft-hub[hub]'`` adds; the base install (client and CLI) has none of it.
HUB_MODULES = frozenset({
    "alembic", "annotated_types", "anyio", "boto3", "botocore", "fastapi", "httptools", "jinja2", "limits",
    "markdown_it", "multipart", "nh3", "psycopg", "pydantic", "pydantic_settings", "python_multipart", "sqlalchemy",
    "sqlmodel", "starlette", "uvicorn", "uvloop",
})


_Invoke = TypeVar("_Invoke", bound=Callable[..., Any])


def _hub_installed(invoke: _Invoke) -> _Invoke:
    """A server dependency missing at run time is one line naming the extra, not a traceback."""

    def wrapper(self: click.Command, ctx: click.Context) -> Any:
        try:
            return invoke(self, ctx)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] not in HUB_MODULES:
                raise
            from peft_hub.errors import PeftHubError

            raise PeftHubError(f"peft-hub {ctx.info_name} needs the server, which is not installed "
                               f"({exc.name} is missing): pip install 'peft-hub[hub]'") from None

    return cast(_Invoke, wrapper)


class HubCommand(click.Command):
    """A command that needs the ``[hub]`` extra."""

    invoke = _hub_installed(click.Command.invoke)


class HubCommandGroup(click.Group):
    """A group whose commands need the ``[hub]`` extra."""

    invoke = _hub_installed(click.Group.invoke)


@click.command(cls=HubCommand)
@click.option("--host", envvar="PEFT_HUB_HOST", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", envvar="PEFT_HUB_PORT", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on.")
@click.option("--db-url", envvar="PEFT_HUB_DB_URL", default=None,
              help="Database URL (default: SQLite under ~/.peft-hub).")
@click.option("--storage", envvar="PEFT_HUB_STORAGE", default=None,
              help="Blob storage: a directory or s3://bucket/prefix.")
@click.option("--upstream", envvar="PEFT_HUB_UPSTREAM", default=None,
              help="An HF-compatible hub to mirror repos from on a read miss (default: none).")
@click.option("--log-level", envvar="PEFT_HUB_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--workers", envvar="PEFT_HUB_WORKERS", default=None, type=click.IntRange(1, 64),
              help="Server processes sharing the port [default: min(4, CPU cores)].")
def serve(host: str, port: int, db_url: str | None, storage: str | None, upstream: str | None, log_level: str,
          workers: int | None) -> None:
    """Start the hub (embedded SQLite and local files unless told otherwise).

    The port is bound first, then the banner names the URL. On the first
    start (when it saves the admin's token) the hub also saves its URL
    beside the token, so the CLI on this machine finds it on any port;
    PEFT_HUB_URL and --url still win.

    With several workers the database is migrated and bootstrapped once,
    here, before they start; each worker then finds nothing to do.
    """
    import uvicorn
    from sqlalchemy.engine import make_url

    from peft_hub.hub import Settings, create_app
    from peft_hub.hub.protocol import server_options

    given = {"db_url": db_url, "storage": storage, "host": host, "port": port, "upstream": upstream}
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    settings = Settings(**overrides)
    workers = workers or default_workers()
    _hub_logging(log_level)
    sock = _bind(host, port)
    url = _local_url(host, sock.getsockname()[1])
    db_shown = make_url(settings.db_url).render_as_string(hide_password=True)
    workers_shown = f", {workers} workers" if workers > 1 else ""
    click.echo(f"peft-hub serving on {url} (db: {db_shown}, storage: {settings.storage}{workers_shown})")
    token_before = _read(settings.token_file)
    # X-Forwarded-For is believed only from the proxies named in
    # PEFT_HUB_TRUSTED_PROXIES: rate limits and the audit log key on the address.
    proxies = settings.trusted_proxies
    if workers > 1:
        _serve_workers(settings, overrides, sock, workers, log_level, url,
                       announce=lambda: _announce(settings, url, token_before))
        return
    config = uvicorn.Config(create_app(settings), log_level=log_level, proxy_headers=bool(proxies),
                            forwarded_allow_ips=proxies or None, **server_options())

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:  # uvicorn's signature
            await super().startup(sockets)
            if self.started:
                _announce(settings, url, token_before)

    _Server(config).run(sockets=[sock])


def _serve_workers(settings, overrides: dict[str, Any], sock: socket.socket, workers: int, log_level: str,
                   url: str, announce: Callable[[], None]) -> None:
    """Serve with uvicorn's supervisor: ``workers`` spawned processes accept
    on ``sock``; one that dies is replaced.

    The database is migrated and bootstrapped here first, once, so the first
    admin's token is printed once and saved before any worker answers. Each
    worker builds its settings from the environment, so the flags go there,
    with a session secret shared by all (what one worker signs, an upload URL
    or a multipart ticket, another must accept).
    """
    import secrets
    import threading

    import anyio
    from uvicorn import Config
    from uvicorn.supervisors import Multiprocess

    from peft_hub.errors import PeftHubError
    from peft_hub.hub.app import prepare_database, say_token
    from peft_hub.hub.protocol import server_options

    token = anyio.run(prepare_database, settings)
    if token:
        say_token(settings, token)
    os.environ.update({f"PEFT_HUB_{key.upper()}": str(value) for key, value in overrides.items()})
    os.environ["PEFT_HUB_LOG_LEVEL"] = log_level
    os.environ[_SUPERVISOR] = str(os.getpid())
    if not settings.session_secret:
        os.environ["PEFT_HUB_SESSION_SECRET"] = secrets.token_urlsafe(32)
    proxies = settings.trusted_proxies
    config = Config(f"{__name__}:worker_app", factory=True, workers=workers, log_level=log_level,
                    proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None, **server_options(workers))
    answered = threading.Event()

    def announce_when_answering() -> None:
        if _wait_answering(url):
            answered.set()
            announce()

    threading.Thread(target=announce_when_answering, daemon=True).start()
    Multiprocess(config, sockets=[sock]).run()
    if not answered.is_set():
        raise PeftHubError("the hub's workers stopped before any answered; see the log above")


def _wait_answering(url: str, timeout: float = 600.0) -> bool:
    """Whether ``url``'s health check answered 200 within ``timeout`` seconds."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=5) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


#: The supervisor's pid, for its workers (see :func:`_die_with_supervisor`).
_SUPERVISOR = "PEFT_HUB_SUPERVISOR_PID"


def _die_with_supervisor() -> None:
    """Have the kernel kill this worker when its supervisor dies, even by
    ``kill -9``; else orphaned workers would go on serving on the port, and
    holding their uploads' files, with no one to stop them (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if str(os.getppid()) != os.environ.get(_SUPERVISOR, str(os.getppid())):
        os._exit(1)  # the supervisor died before the line above


def worker_app():
    """The app one ``serve --workers`` process runs, from ``PEFT_HUB_*`` settings."""
    from peft_hub.hub import Settings, create_app

    _die_with_supervisor()
    _hub_logging(os.environ.get("PEFT_HUB_LOG_LEVEL", "info"))
    return create_app(Settings())


def default_workers() -> int:
    """One worker per core, at most 4: a worker is a process (its own
    memory, its own pools), and past a few of them the database, not
    Python, is what requests wait for."""
    return max(1, min(4, os.cpu_count() or 1))


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is printed; a failure is one line."""
    from peft_hub.errors import PeftHubError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "it is already in use (another peft-hub serve?)" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise PeftHubError(f"cannot listen on {host}:{port}: {why}; choose another with --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _local_url(host: str, port: int) -> str:
    """The URL a CLI on this machine uses: a wildcard address means the loopback."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _read(path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _announce(settings, url: str, token_before: str | None) -> None:
    """After start-up: save the URL beside a token this start saved, and name PEFT_HUB_URL."""
    from peft_hub.paths import save_url, url_file

    saved = url_file(settings.token_file)
    token_now = _read(settings.token_file)
    if token_now is not None and (token_now != token_before or not saved.exists()):
        with contextlib.suppress(OSError):
            save_url(url, settings.token_file)
    if _read(saved) == url + "\n":
        click.echo(f"The CLI on this machine will use {url} (saved to {saved}); elsewhere set PEFT_HUB_URL={url}")
    else:
        click.echo(f"For the CLI: export PEFT_HUB_URL={url}")


def _hub_logging(level: str) -> None:
    """Show the hub's own log lines (start-up waits, dependency failures) on
    stderr, as uvicorn shows its own; uvicorn configures only its loggers."""
    import logging

    logger = logging.getLogger("peft_hub")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


@click.group(cls=HubCommandGroup)
def db() -> None:
    """Database maintenance."""


_DB_URL = click.option("--db-url", envvar="PEFT_HUB_DB_URL", default=None, help="Database URL (default: the hub's).")


@contextlib.contextmanager
def _engine(db_url: str | None) -> Iterator[Any]:
    """The hub's database engine (or ``db_url``'s), disposed when the block ends."""
    from peft_hub.hub import Settings
    from peft_hub.hub.db import make_engine

    overrides: dict[str, Any] = {"db_url": db_url} if db_url else {}
    engine = make_engine(Settings(**overrides).db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@db.command("upgrade")
@_DB_URL
def db_upgrade(db_url: str | None) -> None:
    """Apply pending schema migrations (Alembic revisions; the hub also applies them at start)."""
    from peft_hub.hub.migrations import upgrade

    with _engine(db_url) as engine:
        applied = upgrade(engine)
    click.echo("\n".join(f"applied {m}" for m in applied) or "database is up to date")


@db.command("current")
@_DB_URL
def db_current(db_url: str | None) -> None:
    """Print the database's schema revision."""
    from peft_hub.hub.migrations import current

    with _engine(db_url) as engine:
        click.echo(current(engine))


@db.command("check")
@_DB_URL
def db_check(db_url: str | None) -> None:
    """Compare the models with the database's schema (as ``alembic check``); exit 1 on a difference."""
    from peft_hub.hub.migrations import check

    with _engine(db_url) as engine:
        diffs = check(engine)
    for diff in diffs:
        click.echo(diff)
    if diffs:
        raise click.ClickException(f"{len(diffs)} difference(s) between the models and the schema: "
                                   "a model changed without a revision, or the database is not at head")
    click.echo("the models and the schema agree")


COMMANDS = [serve, db]
