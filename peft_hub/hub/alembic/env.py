"""Run the revisions: on the connection :func:`peft_hub.hub.alembic.config`
passed in (the hub, ``peft-hub db``), else on a database of its own (the
``alembic`` command in a checkout: ``-x db_url=URL``, else ``PEFT_HUB_DB_URL``,
else the hub's default), or as SQL text with ``alembic ... --sql``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from peft_hub.hub.alembic import context_options


def _url() -> str:
    from peft_hub.hub import Settings

    given = context.get_x_argument(as_dictionary=True).get("db_url")
    return given or Settings().db_url  # Settings reads PEFT_HUB_DB_URL


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **context_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        url = _url()
        context.configure(url=url, literal_binds=True, **context_options(make_url(url).get_backend_name()))
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from peft_hub.hub.db import make_engine

    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


main()
