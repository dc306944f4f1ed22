"""Commands that run the hub itself: ``serve`` and ``db upgrade``."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", envvar="PEFT_HUB_HOST", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", envvar="PEFT_HUB_PORT", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--db-url", envvar="PEFT_HUB_DB_URL", default=None, help="Database URL (default: SQLite under ~/.peft-hub).")
@click.option("--storage", envvar="PEFT_HUB_STORAGE", default=None, help="Blob storage: a directory or s3://bucket/prefix.")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
def serve(host: str, port: int, db_url: str | None, storage: str | None, log_level: str) -> None:
    """Start the hub (embedded SQLite and local files unless told otherwise)."""
    import uvicorn
    from sqlalchemy.engine import make_url

    from peft_hub.hub import Settings, create_app

    overrides = {k: v for k, v in {"db_url": db_url, "storage": storage, "host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    _hub_logging(log_level)
    db_shown = make_url(settings.db_url).render_as_string(hide_password=True)
    click.echo(f"peft-hub serving on http://{host}:{port} (db: {db_shown}, storage: {settings.storage})")
    # X-Forwarded-For is believed only from the proxies named in
    # PEFT_HUB_TRUSTED_PROXIES: rate limits and the audit log key on the address.
    proxies = settings.trusted_proxies
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level,
                proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None)


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


@click.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@click.option("--db-url", envvar="PEFT_HUB_DB_URL", default=None, help="Database URL (default: the hub's).")
def db_upgrade(db_url: str | None) -> None:
    """Apply pending schema migrations."""
    from peft_hub.hub import Settings
    from peft_hub.hub.db import make_engine
    from peft_hub.hub.migrations import upgrade

    settings = Settings(**({"db_url": db_url} if db_url else {}))
    applied = upgrade(make_engine(settings.db_url))
    click.echo("\n".join(f"applied {m}" for m in applied) or "database is up to date")


COMMANDS = [serve, db]
