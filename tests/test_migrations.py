"""The Alembic history on PostgreSQL and SQLite: upgrade, no drift, downgrade, upgrade.

Each backend gets a database of its own (not the suite's shared one), because the
test drops every table.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from provider.cli import alembic_config
from provider.db import create_engine
from provider.models import Base
from tests.pgserver import create_database, drop_database


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/migrations.db"
        return
    server = request.getfixturevalue("postgres_server")
    if server is None:
        pytest.skip("no PostgreSQL available")
    name = f"provider_migrations_{secrets.token_hex(4)}"
    url = create_database(server, name)
    try:
        yield url
    finally:
        drop_database(server, name)


def config_for(url: str) -> Config:
    config = alembic_config(url)
    config.attributes["configure_logging"] = False
    return config


def inspect_db(url: str, work: Any) -> Any:
    """Run ``work(sync_connection)`` against ``url`` (the test is sync: a loop of its own)."""

    async def run() -> Any:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def schema_drift(connection: Connection) -> list[Any]:
    # The same options as migrations/env.py, so this sees what `alembic check` would.
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "render_as_batch": connection.dialect.name == "sqlite"},
    )
    return list(compare_metadata(context, Base.metadata))


def table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def leftover_types(connection: Connection) -> list[str]:
    """Enum and other user-defined types a downgrade forgot (PostgreSQL only)."""
    if connection.dialect.name != "postgresql":
        return []
    rows = connection.execute(text(
        "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c') "
        "AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid)"
    ))
    return [row[0] for row in rows]


def test_migrations_upgrade_check_downgrade_upgrade(fresh_url: str) -> None:
    config = config_for(fresh_url)
    script = ScriptDirectory.from_config(config)
    heads = script.get_heads()
    assert len(heads) == 1, f"the migration history has several heads: {heads}"
    head = heads[0]
    model_tables = set(Base.metadata.tables)

    command.upgrade(config, "head")
    assert inspect_db(fresh_url, current_revision) == head
    assert inspect_db(fresh_url, table_names) == model_tables | {"alembic_version"}

    drift = inspect_db(fresh_url, schema_drift)
    assert drift == [], (
        "the models and the migrations disagree; write a migration "
        "(`alembic revision --autogenerate -m ...`, then review it):\n"
        + "\n".join(map(repr, drift))
    )

    command.downgrade(config, "base")
    assert inspect_db(fresh_url, table_names) == {"alembic_version"}
    assert inspect_db(fresh_url, current_revision) is None
    assert inspect_db(fresh_url, leftover_types) == []

    command.upgrade(config, "head")
    assert inspect_db(fresh_url, current_revision) == head
    assert inspect_db(fresh_url, schema_drift) == []


def test_migrations_each_revision_downgrades_and_upgrades_again(fresh_url: str) -> None:
    """The "stairway": every revision's downgrade undoes its upgrade, one step at a time."""
    config = config_for(fresh_url)
    revisions = list(ScriptDirectory.from_config(config).walk_revisions("base", "heads"))
    for revision in reversed(revisions):  # walk_revisions goes newest first
        command.upgrade(config, revision.revision)
        command.downgrade(config, revision.down_revision or "base")
        command.upgrade(config, revision.revision)
        assert inspect_db(fresh_url, current_revision) == revision.revision
