"""The Alembic history on PostgreSQL and SQLite: upgrade, no drift, downgrade, upgrade.

Each backend gets a database of its own (not the suite's shared one), because the
test drops every table.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Boolean,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    column,
    insert,
    inspect,
    select,
    table,
    text,
)
from sqlalchemy.engine import Connection

from provider.cli import alembic_config
from provider.db import UTCDateTime, create_engine
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


# The tables as they were before login_sessions, typed so that values bind on both
# backends (SQLite keeps UUIDs as hex text).
_UTC = UTCDateTime()
_old_users = table("users", column("id", Uuid()), column("email", String()),
                   column("profile", JSON()), column("is_active", Boolean()),
                   column("is_verified", Boolean()), column("is_admin", Boolean()),
                   column("created_at", _UTC), column("updated_at", _UTC))
_old_clients = table("clients", column("client_id", String()), column("name", String()),
                     column("is_public", Boolean()), column("grant_types", JSON()),
                     column("scopes", JSON()), column("is_active", Boolean()),
                     column("created_at", _UTC), column("updated_at", _UTC))
_tokens_table = table(
    "refresh_tokens", column("id", Uuid()), column("token_hash", LargeBinary()),
    column("family_id", Uuid()), column("session_id", Uuid()), column("parent_id", Uuid()),
    column("client_id", String()), column("user_id", Uuid()), column("scope", Text()),
    column("issued_at", _UTC), column("expires_at", _UTC), column("family_expires_at", _UTC),
    column("auth_time", _UTC), column("rotated_at", _UTC), column("revoked_at", _UTC))
_sessions_table = table(
    "login_sessions", column("id", Uuid()), column("user_id", Uuid()),
    column("client_id", String()), column("scope", Text()), column("session_epoch", Integer()),
    column("revoked_at", _UTC), column("expires_at", _UTC))
OLD_USER = uuid.UUID("00000000-0000-4000-8000-000000000001")
OLD_LIVE = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
OLD_REVOKED = uuid.UUID("00000000-0000-4000-8000-0000000000a2")
OLD_TOKENS = [uuid.UUID(f"00000000-0000-4000-8000-00000000010{i}") for i in range(4)]
AT = datetime(2026, 11, 20, 10, tzinfo=UTC)
LATER = AT + timedelta(hours=1)
FAMILY_END = AT + timedelta(days=90)


def _seed_old_families(connection: Connection) -> None:
    """A live family rotated twice (root -> middle -> live leaf) and a revoked one."""
    connection.execute(insert(_old_users).values(
        id=OLD_USER, email="old@example.com", profile={}, is_active=True, is_verified=True,
        is_admin=False, created_at=AT, updated_at=AT))
    connection.execute(insert(_old_clients).values(
        client_id="cl_old", name="old", is_public=False, grant_types=["refresh_token"],
        scopes=["openid"], is_active=True, created_at=AT, updated_at=AT))
    rows = [  # id, family, parent, rotated_at, revoked_at
        (OLD_TOKENS[0], OLD_LIVE, None, LATER, None),
        (OLD_TOKENS[1], OLD_LIVE, OLD_TOKENS[0], LATER, None),
        (OLD_TOKENS[2], OLD_LIVE, OLD_TOKENS[1], None, None),
        (OLD_TOKENS[3], OLD_REVOKED, None, None, LATER),
    ]
    for number, (token_id, family, parent, rotated_at, revoked_at) in enumerate(rows):
        connection.execute(insert(_tokens_table).values(
            id=token_id, token_hash=bytes([number]) * 32, family_id=family, parent_id=parent,
            client_id="cl_old", user_id=OLD_USER, scope="openid", issued_at=AT,
            expires_at=AT + timedelta(days=30), family_expires_at=FAMILY_END, auth_time=AT,
            rotated_at=rotated_at, revoked_at=revoked_at))
    connection.commit()


def _sessions(connection: Connection) -> dict[uuid.UUID, tuple[Any, ...]]:
    t = _sessions_table
    rows = connection.execute(select(t.c.id, t.c.user_id, t.c.client_id, t.c.scope,
                                     t.c.session_epoch, t.c.revoked_at, t.c.expires_at))
    return {row[0]: tuple(row[1:]) for row in rows}


def _token_families(connection: Connection, name: str) -> dict[uuid.UUID, uuid.UUID]:
    t = _tokens_table
    return {row[0]: row[1] for row in connection.execute(select(t.c.id, t.c[name]))}


def test_login_sessions_revision_moves_families_into_sessions_and_back(fresh_url: str) -> None:
    config = config_for(fresh_url)
    command.upgrade(config, "eac89a9247d2")  # the revision before login_sessions
    inspect_db(fresh_url, _seed_old_families)
    by_token = {OLD_TOKENS[0]: OLD_LIVE, OLD_TOKENS[1]: OLD_LIVE, OLD_TOKENS[2]: OLD_LIVE,
                OLD_TOKENS[3]: OLD_REVOKED}

    command.upgrade(config, "5a1c0de5e551")
    assert inspect_db(fresh_url, _sessions) == {
        OLD_LIVE: (OLD_USER, "cl_old", "openid", 0, None, FAMILY_END),
        OLD_REVOKED: (OLD_USER, "cl_old", "openid", 0, LATER, FAMILY_END),
    }
    assert inspect_db(fresh_url, lambda c: _token_families(c, "session_id")) == by_token
    # Later revisions leave the moved rows alone and bring the schema to the models'.
    command.upgrade(config, "head")
    assert inspect_db(fresh_url, _sessions) == {
        OLD_LIVE: (OLD_USER, "cl_old", "openid", 0, None, FAMILY_END),
        OLD_REVOKED: (OLD_USER, "cl_old", "openid", 0, LATER, FAMILY_END),
    }
    assert inspect_db(fresh_url, schema_drift) == []

    command.downgrade(config, "eac89a9247d2")
    assert inspect_db(fresh_url, lambda c: _token_families(c, "family_id")) == by_token
    t = _tokens_table
    revoked = inspect_db(fresh_url, lambda c: c.execute(
        select(t.c.id).where(t.c.revoked_at.is_not(None))).scalars().all())
    assert revoked == [OLD_TOKENS[3]]


MFA_REVISION = "55588a072e1c"
MFA_TABLES = {"totp_authenticators", "recovery_codes", "mfa_tokens"}


def test_mfa_revision_adds_its_tables_and_keeps_users(fresh_url: str) -> None:
    """Issue 8's revision only adds tables: users from before it are untouched (and have
    no second factor); its downgrade drops exactly those tables."""
    config = config_for(fresh_url)
    command.upgrade(config, "ab0d1b37df9a")  # the revision before MFA
    inspect_db(fresh_url, lambda c: (c.execute(insert(_old_users).values(
        id=OLD_USER, email="old@example.com", profile={}, is_active=True, is_verified=True,
        is_admin=False, created_at=AT, updated_at=AT)), c.commit()))
    assert not MFA_TABLES & inspect_db(fresh_url, table_names)

    command.upgrade(config, MFA_REVISION)
    assert MFA_TABLES <= inspect_db(fresh_url, table_names)
    columns = inspect_db(fresh_url, lambda c: {
        name: {col["name"] for col in inspect(c).get_columns(name)} for name in MFA_TABLES})
    assert columns["totp_authenticators"] == {"user_id", "secret_encrypted", "created_at",
                                              "confirmed_at", "last_used_step"}
    assert columns["recovery_codes"] == {"id", "user_id", "code_hash", "created_at",
                                         "used_at"}
    assert columns["mfa_tokens"] == {"id", "token_hash", "user_id", "client_id", "scope",
                                     "session_epoch", "created_at", "expires_at",
                                     "attempts", "used_at"}
    emails = inspect_db(fresh_url, lambda c: c.execute(
        select(_old_users.c.email)).scalars().all())
    assert emails == ["old@example.com"]

    command.downgrade(config, "ab0d1b37df9a")
    assert not MFA_TABLES & inspect_db(fresh_url, table_names)
    assert inspect_db(fresh_url, lambda c: c.execute(
        select(_old_users.c.email)).scalars().all()) == ["old@example.com"]


CODE_FLOW_REVISION = "fa58341a5b9d"
CODE_FLOW_TABLES = {"authorization_codes", "browser_sessions", "consents"}
CODE_FLOW_CLIENT_COLUMNS = {"redirect_uris", "post_logout_redirect_uris", "is_first_party"}


def _client_columns(connection: Connection) -> set[str]:
    return {col["name"] for col in inspect(connection).get_columns("clients")}


def test_code_flow_revision_gives_existing_clients_empty_uris_and_back(fresh_url: str) -> None:
    """Issue 10's revision: existing clients get no redirect URI (so no code flow until an
    admin registers one) and are not first-party; the downgrade drops the new tables
    and columns and keeps the clients."""
    config = config_for(fresh_url)
    command.upgrade(config, "c3f1a7e2b9d4")  # the revision before the code flow
    inspect_db(fresh_url, lambda c: (c.execute(insert(_old_clients).values(
        client_id="cl_old", name="old", is_public=False, grant_types=["password"],
        scopes=["openid"], is_active=True, created_at=AT, updated_at=AT)), c.commit()))
    assert not CODE_FLOW_CLIENT_COLUMNS & inspect_db(fresh_url, _client_columns)

    command.upgrade(config, CODE_FLOW_REVISION)
    assert CODE_FLOW_TABLES <= inspect_db(fresh_url, table_names)
    clients = table("clients", column("client_id", String()), column("redirect_uris", JSON()),
                    column("post_logout_redirect_uris", JSON()),
                    column("is_first_party", Boolean()))
    rows = inspect_db(fresh_url, lambda c: c.execute(select(
        clients.c.client_id, clients.c.redirect_uris, clients.c.post_logout_redirect_uris,
        clients.c.is_first_party)).all())
    assert [tuple(r) for r in rows] == [("cl_old", [], [], False)]

    command.downgrade(config, "c3f1a7e2b9d4")
    assert not CODE_FLOW_TABLES & inspect_db(fresh_url, table_names)
    assert not CODE_FLOW_CLIENT_COLUMNS & inspect_db(fresh_url, _client_columns)
    assert inspect_db(fresh_url, lambda c: c.execute(
        select(_old_clients.c.client_id)).scalars().all()) == ["cl_old"]


KEYS_REVISION = "d7e4b1a9c2f0"
KEY_TABLES = {"signing_keys", "signing_key_state"}


def test_keys_revision_adds_its_tables_with_the_version_row(fresh_url: str) -> None:
    """Issue 9's revision only adds the database key store's tables, the version counter
    starting at 0 in its one row; its downgrade drops exactly them."""
    config = config_for(fresh_url)
    command.upgrade(config, "fa58341a5b9d")  # the revision before it (issue 10's)
    before = inspect_db(fresh_url, table_names)
    assert not KEY_TABLES & before

    command.upgrade(config, KEYS_REVISION)
    assert inspect_db(fresh_url, table_names) == before | KEY_TABLES
    columns = inspect_db(fresh_url, lambda c: {
        name: {col["name"] for col in inspect(c).get_columns(name)} for name in KEY_TABLES})
    assert columns == {
        "signing_keys": {"kid", "alg", "status", "created_at", "activated_at",
                         "deactivated_at", "private_key_encrypted"},
        "signing_key_state": {"id", "version"},
    }
    rows = inspect_db(fresh_url, lambda c: c.execute(
        text("SELECT id, version FROM signing_key_state")).all())
    assert [tuple(row) for row in rows] == [(1, 0)]

    command.downgrade(config, "fa58341a5b9d")
    assert inspect_db(fresh_url, table_names) == before


FILLFACTOR_REVISION = "4b8e2f6a1c3d"


def test_fillfactor_revision_sets_and_resets_refresh_tokens_storage(fresh_url: str) -> None:
    """refresh_tokens gets fillfactor 90 on PostgreSQL (room for HOT rotations,
    tests/tokens/test_storage.py); the downgrade takes it back. SQLite: nothing to do."""
    config = config_for(fresh_url)

    def options(connection: Connection) -> Any:
        if connection.dialect.name != "postgresql":
            return None
        return connection.execute(text(
            "SELECT reloptions FROM pg_class WHERE relname = 'refresh_tokens'")).scalar()

    command.upgrade(config, KEYS_REVISION)  # the revision before it
    assert inspect_db(fresh_url, options) is None
    command.upgrade(config, FILLFACTOR_REVISION)
    expected = ["fillfactor=90"] if fresh_url.startswith("postgresql") else None
    assert inspect_db(fresh_url, options) == expected
    command.downgrade(config, KEYS_REVISION)
    assert inspect_db(fresh_url, options) is None


ACCOUNT_SCOPE_REVISION = "8c2d5e7f3a41"


def as_of(table: Table, *later_columns: str) -> Table:
    """``table`` without the columns that later revisions add, defaults and all."""
    return Table(table.name, MetaData(),
                 *(c._copy() for c in table.columns if c.name not in later_columns))


def test_account_scope_revision_keeps_first_party_apps_on_the_account_api(
        fresh_url: str) -> None:
    """The account API needs `account` from this revision on: clients trusted as
    first-party (password grant, or is_first_party) are allowed it, and their live
    sessions get it; third-party clients and ended sessions are left as they were."""
    config = config_for(fresh_url)
    command.upgrade(config, "4b8e2f6a1c3d")  # the revision before
    users, clients, sessions = (Base.metadata.tables[name]
                                for name in ("users", "clients", "login_sessions"))
    users = as_of(users, "is_registration_pending")  # a later revision's column
    expired = AT + timedelta(days=1)
    rows = {  # session id: client, scope, revoked_at, expires_at
        uuid.UUID(int=1): ("cl_password", "openid profile", None, FAMILY_END),
        uuid.UUID(int=2): ("cl_password", "", None, FAMILY_END),
        uuid.UUID(int=3): ("cl_password", "openid", LATER, FAMILY_END),
        uuid.UUID(int=4): ("cl_password", "openid", None, expired),
        uuid.UUID(int=5): ("cl_first", "openid account", None, FAMILY_END),
        uuid.UUID(int=6): ("cl_third", "openid email", None, FAMILY_END),
        uuid.UUID(int=7): ("cl_first", "accounts", None, FAMILY_END),
    }

    def seed(connection: Connection) -> None:
        connection.execute(insert(users).values(id=OLD_USER, email="old@example.com",
                                                created_at=AT, updated_at=AT))
        for client_id, grants, scopes, first_party in (
                ("cl_password", ["password", "refresh_token"], ["openid", "profile"], False),
                ("cl_first", ["authorization_code"], ["openid", "account"], True),
                ("cl_third", ["authorization_code", "refresh_token"], ["openid", "email"],
                 False)):
            connection.execute(insert(clients).values(
                client_id=client_id, name=client_id, grant_types=grants, scopes=scopes,
                is_first_party=first_party, created_at=AT, updated_at=AT))
        for session_id, (client_id, scope, revoked_at, expires_at) in rows.items():
            connection.execute(insert(sessions).values(
                id=session_id, user_id=OLD_USER, client_id=client_id, scope=scope, amr=["pwd"],
                auth_time=AT, created_at=AT, expires_at=expires_at, session_epoch=0,
                revoked_at=revoked_at))
        connection.commit()

    inspect_db(fresh_url, seed)
    command.upgrade(config, ACCOUNT_SCOPE_REVISION)
    assert dict(inspect_db(fresh_url, lambda c: c.execute(
        select(clients.c.client_id, clients.c.scopes)).all())) == {
        "cl_password": ["openid", "profile", "account"],
        "cl_first": ["openid", "account"],
        "cl_third": ["openid", "email"],
    }
    assert dict(inspect_db(fresh_url, lambda c: c.execute(
        select(sessions.c.id, sessions.c.scope)).all())) == {
        uuid.UUID(int=1): "openid profile account",
        uuid.UUID(int=2): "account",
        uuid.UUID(int=3): "openid",  # revoked
        uuid.UUID(int=4): "openid",  # expired
        uuid.UUID(int=5): "openid account",
        uuid.UUID(int=6): "openid email",  # third party
        uuid.UUID(int=7): "accounts account",  # a lookalike is not the scope
    }
    # The downgrade keeps the rows (the previous code ignores the scope).
    command.downgrade(config, "4b8e2f6a1c3d")
    command.upgrade(config, "head")
    assert inspect_db(fresh_url, schema_drift) == []


def test_password_clients_revision_marks_them_first_party(fresh_url: str) -> None:
    """A client allowed the password grant was trusted with passwords: it becomes
    first-party (the grant is for those only); others keep their flag."""
    config = config_for(fresh_url)
    command.upgrade(config, ACCOUNT_SCOPE_REVISION)
    clients = Base.metadata.tables["clients"]

    def seed(connection: Connection) -> None:
        for client_id, grants, first_party in (
                ("cl_password", ["password", "refresh_token"], False),
                ("cl_code", ["authorization_code"], False),
                ("cl_first", ["authorization_code"], True)):
            connection.execute(insert(clients).values(
                client_id=client_id, name=client_id, grant_types=grants, scopes=["openid"],
                is_first_party=first_party, created_at=AT, updated_at=AT))
        connection.commit()

    inspect_db(fresh_url, seed)
    command.upgrade(config, "3f9a6c1d2e85")
    assert dict(inspect_db(fresh_url, lambda c: c.execute(
        select(clients.c.client_id, clients.c.is_first_party)).all())) == {
        "cl_password": True, "cl_code": False, "cl_first": True}
    command.downgrade(config, ACCOUNT_SCOPE_REVISION)
    command.upgrade(config, "head")
    assert inspect_db(fresh_url, schema_drift) == []
