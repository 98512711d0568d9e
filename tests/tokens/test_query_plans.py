"""The token path's statements find their rows by key at any table size, with or without
fresh statistics (PostgreSQL).

A table that just grew has statistics from before (autovacuum analyses it later, or never
where it is off), and the planner then guesses. A full index on login_sessions.revoked_at
once let it guess that `revoked_at IS NULL` (true of every live session) was selective:
each refresh bitmap-scanned all sessions, 14 ms instead of 0.3 ms, and the refresh grant
lost 40 % of its speed. These tests read the plans of the hot statements over a database
of 20,000 sessions, before and after ANALYZE, and accept only key lookups.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql import ClauseElement

from provider.db import async_url
from provider.tokens import refresh as refresh_sql
from provider.tokens import revocation
from provider.tokens.jwt import AccessClaims
from provider.users.models import User
from tests.conftest import migrated_database

pytestmark = pytest.mark.asyncio(loop_scope="module")

SESSIONS = 20_000
CLIENT_ID = "cl_plans"
# A whole-table read of a table that grows, and the indexes a one-row lookup may use: keys,
# and the two that select one family's few tokens. Anything else (client_id, expires_at,
# revoked_at) matches most rows of a busy deployment.
SEQ_SCAN = re.compile(r"Seq Scan on (login_sessions|refresh_tokens|users|revoked_access_tokens)")
INDEX_USED = re.compile(r"(?:Index Scan|Index Only Scan) using (\w+)|Bitmap Index Scan on (\w+)")
KEY_INDEXES = {"pk_login_sessions", "pk_refresh_tokens", "uq_refresh_tokens_token_hash",
               "ix_refresh_tokens_parent_id", "ix_refresh_tokens_session_id", "pk_users",
               "pk_clients", "pk_revoked_access_tokens"}
USER_ID = uuid.uuid4()
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def big_database(postgres_server: str | None) -> Iterator[str]:
    if postgres_server is None:
        pytest.skip("query plans are PostgreSQL's")
    with migrated_database(postgres_server, "provider_plans") as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(big_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url(big_database))
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO users (id, email, profile, is_active, is_verified, is_admin,"
            " created_at, updated_at, session_epoch) VALUES"
            " ($1, 'plans@example.com', '{}', true, true, false, now(), now(), 0)",
            (USER_ID,))
        await conn.exec_driver_sql(
            "INSERT INTO users (id, email, profile, is_active, is_verified, is_admin,"
            " created_at, updated_at, session_epoch)"
            " SELECT gen_random_uuid(), 'u' || n || '@example.com', '{}', true, true, false,"
            " now(), now(), 0 FROM generate_series(1, $1) AS n", (SESSIONS,))
        await conn.exec_driver_sql(
            "INSERT INTO clients (client_id, name, is_public, grant_types, scopes, is_active,"
            " created_at, updated_at) SELECT 'cl_' || n, 'other', false, '[]', '[]', true,"
            " now(), now() FROM generate_series(1, 2000) AS n")
        await conn.exec_driver_sql(
            "INSERT INTO clients (client_id, name, is_public, grant_types, scopes, is_active,"
            " created_at, updated_at) VALUES ($1, 'plans', false, '[]', '[]', true, now(),"
            " now())", (CLIENT_ID,))
        await conn.exec_driver_sql(
            "INSERT INTO revoked_access_tokens (jti, expires_at)"
            " SELECT md5(n::text), now() + interval '15 minutes'"
            " FROM generate_series(1, $1) AS n", (SESSIONS,))
        # Every session is live and of the same client and user: what a busy first-party
        # app looks like, and what makes a guess on revoked_at or client_id expensive.
        await conn.exec_driver_sql(
            "INSERT INTO login_sessions (id, user_id, client_id, scope, amr, auth_time,"
            " created_at, expires_at, session_epoch)"
            " SELECT gen_random_uuid(), $1, $2, 'api', '[\"pwd\"]', now(), now(),"
            " now() + interval '30 days', 0 FROM generate_series(1, $3)",
            (USER_ID, CLIENT_ID, SESSIONS))
        await conn.exec_driver_sql(
            "INSERT INTO refresh_tokens (id, token_hash, session_id, issued_at, expires_at)"
            " SELECT gen_random_uuid(), sha256(id::text::bytea), id, now(),"
            " now() + interval '14 days' FROM login_sessions")
    yield engine
    await engine.dispose()



async def plan(engine: AsyncEngine, statement: ClauseElement, params: dict[str, Any]) -> str:
    """EXPLAIN (no ANALYZE: nothing runs) of the statement with these parameters."""
    compiled = statement.compile(dialect=engine.dialect)
    values = compiled.construct_params(params)
    args = tuple(values[name] for name in compiled.positiontup or ())
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql(f"EXPLAIN (COSTS OFF) {compiled}", args)
        return "\n".join(row[0] for row in rows)


def broad_reads(text: str) -> list[str]:
    """What in the plan reads more than the rows asked for."""
    broad = [m.group(0) for m in SEQ_SCAN.finditer(text)]
    for match in INDEX_USED.finditer(text):
        if (match.group(1) or match.group(2)) not in KEY_INDEXES:
            broad.append(match.group(0))
    return broad


def rotation_params() -> dict[str, Any]:
    return {
        "p_token_hash": secrets.token_bytes(32), "p_client_id": CLIENT_ID, "p_now": NOW,
        "p_idle_expires_at": NOW + timedelta(days=14), "p_new_id": uuid.uuid4(),
        "p_new_hash": secrets.token_bytes(32),
    }


def bearer_check() -> tuple[ClauseElement, dict[str, Any]]:
    iat = int(NOW.timestamp())
    claims = AccessClaims(sub=str(USER_ID), client_id=CLIENT_ID, scope=frozenset({"api"}),
                          jti=secrets.token_hex(16), exp=iat + 900, iat=iat,
                          sid=str(uuid.uuid4()), raw={})
    condition = revocation.access_token_stands(claims)
    return select(User.username, User.email).where(condition), {}


@pytest.mark.parametrize("analyzed", [False, True], ids=["stale-statistics", "analyzed"])
async def test_hot_statements_find_rows_by_key(engine: AsyncEngine, analyzed: bool) -> None:
    if analyzed:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
    statements: dict[str, tuple[ClauseElement, dict[str, Any]]] = {
        "rotation": (refresh_sql._PG_ROTATE, rotation_params()),
        "refusal": (refresh_sql._FIND_FOR_REFUSAL, {"p_token_hash": secrets.token_bytes(32)}),
        "grace retry": (refresh_sql._SUPERSEDE_CHILD, {
            **rotation_params(), "p_parent_id": uuid.uuid4(), "p_session_id": uuid.uuid4()}),
        "bearer check": bearer_check(),
    }
    plans = await asyncio.gather(*(plan(engine, s, p) for s, p in statements.values()))
    bad = {}
    for name, text in zip(statements, plans, strict=True):
        if broad_reads(text) or (name != "refusal" and "pk_login_sessions" not in text):
            bad[name] = text
    assert not bad, "\n\n".join(f"{name}:\n{text}" for name, text in bad.items())
