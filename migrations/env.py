"""Alembic environment (async). The URL comes from provider's Settings or the caller."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from provider.db import create_engine
from provider.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    from provider.settings import Settings

    return Settings().database_url


def _pragma(connection: Connection, statement: str) -> list[Any]:
    """Run a pragma on the driver's connection: no BEGIN before it (SQLAlchemy's own
    execution would start a transaction, inside which SQLite ignores some pragmas)."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(statement)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _configure(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        # SQLite's batch mode copies a table and drops the old one, and dropping a table
        # with foreign keys on deletes its rows first, cascading into the tables that
        # reference it (login_sessions -> users). The pragma only works outside a
        # transaction, so it is set before the migration's; checked again at the end.
        _pragma(connection, "PRAGMA foreign_keys=OFF")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.dialect.name == "sqlite":
        broken = _pragma(connection, "PRAGMA foreign_key_check")
        _pragma(connection, "PRAGMA foreign_keys=ON")
        if broken:
            raise RuntimeError(f"the migration left rows with dangling foreign keys: {broken}")


async def _run_async() -> None:
    engine = create_engine(_url(), pgbouncer=bool(config.attributes.get("pgbouncer")))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    asyncio.run(_run_async())


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
