"""Where the token path's writes land on PostgreSQL: few pages, whatever the table size.

On a long-running deployment refresh_tokens and its indexes outgrow memory. A rotation
that touches random pages then reads and dirties a page per index it writes to. Two
things keep it to a few pages, and these tests hold them:
- a rotation's UPDATE of the consumed token (rotated_at) stays on the token's page as a
  heap-only tuple, so no index gets an entry for it (fillfactor 90 leaves the room);
- sessions and refresh tokens get time-ordered ids (UUIDv7), so what is inserted now goes
  to the right-hand end of the primary keys, and among the recent keys of the parent_id
  and session_id indexes.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from provider import db as db_module
from provider.db import create_engine, single_statement_engine, uuid7, uuid7s
from provider.tokens import refresh
from provider.tokens.models import RefreshToken
from tests.conftest import migrated_database

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENT_ID = "cl_storage"
USER_ID = uuid.uuid4()
TTL = timedelta(days=14)


@pytest.fixture(scope="module")
def database(postgres_server: str | None) -> Iterator[str]:
    if postgres_server is None:
        pytest.skip("page layout is PostgreSQL's")
    with migrated_database(postgres_server, "provider_storage") as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database)
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO users (id, email, profile, is_active, is_verified, is_admin,"
            " created_at, updated_at, session_epoch) VALUES"
            " (:id, 'storage@example.com', '{}', true, true, false, now(), now(), 0)"),
            {"id": USER_ID})
        await conn.execute(text(
            "INSERT INTO clients (client_id, name, is_public, grant_types, scopes, is_active,"
            " created_at, updated_at) VALUES (:id, 'storage', false, '[]', '[]', true,"
            " now(), now())"), {"id": CLIENT_ID})
    yield engine
    await engine.dispose()


async def sign_in(engine: AsyncEngine) -> tuple[refresh.Session, str]:
    now = datetime.now(UTC)
    session = refresh.new_session(user_id=USER_ID, client_id=CLIENT_ID, scope="api",
                                  amr=("pwd",), now=now, absolute_ttl=timedelta(days=30))
    token = await refresh.start_session_at_once(
        single_statement_engine(engine), session, session_epoch=0, now=now, idle_ttl=TTL)
    assert token is not None
    return session, token


async def block_of(engine: AsyncEngine, token: str) -> int:
    """The heap page the token's current row version is on."""
    async with engine.connect() as conn:
        ctid = (await conn.execute(
            text("SELECT ctid::text FROM refresh_tokens WHERE token_hash = :h"),
            {"h": refresh.digest(token)})).scalar_one()
    return int(ctid.strip("()").split(",")[0])


async def test_a_rotation_keeps_the_consumed_token_on_its_page(engine: AsyncEngine) -> None:
    """Fill refresh_tokens' first pages, then rotate tokens of a filled page: each consumed
    token's new row version stays on that page (a HOT update, no index entries). At the
    default fillfactor of 100 the first of them moves to another page."""
    async with engine.connect() as conn:
        options = (await conn.execute(text(
            "SELECT reloptions FROM pg_class WHERE relname = 'refresh_tokens'"))).scalar()
    assert options == ["fillfactor=90"]
    # The model says the same (what a create_all would make).
    assert RefreshToken.__table__.dialect_options["postgresql"]["with"] == {"fillfactor": 90}

    tokens = [(await sign_in(engine))[1] for _ in range(150)]
    blocks = [await block_of(engine, token) for token in tokens]
    assert blocks[-1] >= 2, "150 tokens should fill more than two pages"
    on_first = [token for token, block in zip(tokens, blocks, strict=True) if block == 0]
    assert len(on_first) > 40

    single = single_statement_engine(engine)
    for token in on_first[:4]:
        rotation = await refresh.rotate(
            engine, single, token=token, client_id=CLIENT_ID, now=datetime.now(UTC),
            idle_ttl=TTL, reuse_grace=timedelta(0))
        assert rotation.outcome is refresh.Outcome.ROTATED
        assert await block_of(engine, token) == 0


async def test_sessions_and_refresh_tokens_get_time_ordered_ids(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each id a millisecond after the last, by the id maker's own clock (the machine's
    # may stand still or step between two sign-ins).
    ticks = itertools.count(time.time_ns() // 1_000_000)
    monkeypatch.setattr(db_module, "time", SimpleNamespace(
        time_ns=lambda: next(ticks) * 1_000_000))
    first, token = await sign_in(engine)
    second, _ = await sign_in(engine)
    rotation = await refresh.rotate(
        engine, single_statement_engine(engine), token=token, client_id=CLIENT_ID,
        now=datetime.now(UTC), idle_ttl=TTL, reuse_grace=timedelta(0))
    assert rotation.outcome is refresh.Outcome.ROTATED
    assert first.id.version == second.id.version == 7
    assert first.id < second.id

    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT id, parent_id FROM refresh_tokens WHERE session_id = :s ORDER BY issued_at,"
            " parent_id NULLS FIRST"), {"s": first.id})).all()
    assert len(rows) == 2
    (first_token, no_parent), (successor, parent) = rows
    assert no_parent is None and parent == first_token
    assert first_token.version == successor.version == 7
    assert first_token < successor


async def test_refresh_token_keys_follow_issue_time_and_older_tokens_still_rotate(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token's key in the token_hash index begins with its issue time, so new keys go to
    the index's right-hand end; a token of the earlier format (43 random characters, its
    key a bare SHA-256) is still found, rotated, and succeeded by one of today's."""
    first, token = await sign_in(engine)
    issued_ms = int.from_bytes(refresh.digest(token)[:6])
    assert abs(issued_ms - time.time_ns() // 1_000_000) < 60_000
    # The next one issued 5 ms later by the token module's clock (not the machine's,
    # which may stand still or step between two sign-ins).
    later_ns = (issued_ms + 5) * 1_000_000
    monkeypatch.setattr(refresh, "time", SimpleNamespace(time_ns=lambda: later_ns))
    _, later = await sign_in(engine)
    monkeypatch.undo()
    assert len(token) == len(later) == refresh.REFRESH_TOKEN_LENGTH
    assert int.from_bytes(refresh.digest(later)[:6]) == issued_ms + 5
    assert refresh.digest(token) < refresh.digest(later)
    assert refresh.digest(token)[6:] == hashlib.sha256(token.encode()).digest()[:26]

    old = secrets.token_urlsafe(32)  # as tokens were issued before
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO refresh_tokens (id, token_hash, session_id, issued_at, expires_at)"
            " VALUES (:id, :h, :s, now(), now() + interval '1 day')"),
            {"id": uuid.uuid4(), "h": hashlib.sha256(old.encode()).digest(), "s": first.id})
    assert refresh.digest(old) == hashlib.sha256(old.encode()).digest()
    rotation = await refresh.rotate(
        engine, single_statement_engine(engine), token=old, client_id=CLIENT_ID,
        now=datetime.now(UTC), idle_ttl=TTL, reuse_grace=timedelta(0))
    assert rotation.outcome is refresh.Outcome.ROTATED
    assert rotation.refresh_token is not None
    assert len(rotation.refresh_token) == refresh.REFRESH_TOKEN_LENGTH


async def test_a_malformed_token_of_todays_length_is_just_unknown(
    engine: AsyncEngine,
) -> None:
    for junk in ("!" * 51, "é" * 51):  # no issue time to read: the bare digest
        assert refresh.digest(junk) == hashlib.sha256(junk.encode()).digest()
    for junk in ("!" * 51, "é" * 51, "A" * 50 + "="):
        rotation = await refresh.rotate(
            engine, single_statement_engine(engine), token=junk, client_id=CLIENT_ID,
            now=datetime.now(UTC), idle_ttl=TTL, reuse_grace=timedelta(0))
        assert rotation.outcome is refresh.Outcome.INVALID


@pytest.mark.parametrize("make", [lambda n: [uuid7() for _ in range(n)], uuid7s],
                         ids=["uuid7", "uuid7s"])
async def test_uuid7_layout(make: Callable[[int], list[uuid.UUID]]) -> None:
    """RFC 9562 §5.7: 48 bits of Unix milliseconds, version 7, variant 0b10, the rest
    random; one at a time or many together (the audit trail's batches)."""
    before = time.time_ns() // 1_000_000
    ids = make(1000)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    for value in ids:
        assert isinstance(value, uuid.UUID)
        assert uuid.UUID(str(value)) == value and uuid.UUID(bytes=value.bytes) == value
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert before <= value.int >> 80 <= after
    # The 74 random bits vary in every position (a fixed bit would show in 1000 draws).
    random_bits = [value.int & ((1 << 62) - 1) | ((value.int >> 64) & 0xFFF) << 62
                   for value in ids]
    ored = anded = random_bits[0]
    for bits in random_bits[1:]:
        ored |= bits
        anded &= bits
    assert ored == (1 << 74) - 1 and anded == 0
