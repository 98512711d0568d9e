"""The database key store's own matters, on PostgreSQL and SQLite: private keys
encrypted at rest, the version row, audit events written with the change, and edits
that never land on top of a change they did not see."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from joserfc.jwk import RSAKey
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from provider.db import create_engine
from provider.keys.algorithms import to_pem
from provider.keys.lifecycle import add_key, generate_key, retire, rotate
from provider.keys.store import (
    DatabaseKeyStore,
    KeyBox,
    KeyChange,
    KeyRecord,
    KeyStoreError,
    signing_keys,
)
from provider.models import AuditEvent
from tests.keys.conftest import SECRET, now


async def sealed_of(engine: AsyncEngine, kid: str) -> bytes | None:
    async with engine.connect() as conn:
        value = (await conn.execute(select(signing_keys.c.private_key_encrypted)
                                    .where(signing_keys.c.kid == kid))).scalar()
    return None if value is None else bytes(value)


async def test_private_keys_are_stored_encrypted_and_bound_to_their_kid(
    db_store: DatabaseKeyStore, key_engine: AsyncEngine, rsa_keys: list[RSAKey],
) -> None:
    record = await add_key(db_store, rsa_keys[0], "RS256", now=now(), actor="test")
    sealed = await sealed_of(key_engine, record.kid)
    assert sealed is not None
    pem = to_pem(rsa_keys[0])
    assert b"PRIVATE KEY" not in sealed and pem not in sealed
    assert KeyBox(SECRET).open(record.kid, sealed) == pem
    # Sealed under the kid: the same ciphertext does not open as another key's row.
    with pytest.raises(KeyStoreError, match="cannot be decrypted"):
        KeyBox(SECRET).open(rsa_keys[1].thumbprint(), sealed)
    # Two seals of one key differ (a fresh nonce each time).
    assert KeyBox(SECRET).seal(record.kid, pem) != KeyBox(SECRET).seal(record.kid, pem)


async def test_another_secret_cannot_open_the_keys_and_says_why(
    db_store: DatabaseKeyStore, key_engine: AsyncEngine, rsa_keys: list[RSAKey],
) -> None:
    record = await add_key(db_store, rsa_keys[0], "RS256", now=now(), actor="test")
    stranger = DatabaseKeyStore(key_engine, b"another secret of at least 32 bytes!!")
    assert await stranger.records() == [record]  # the state is not secret
    with pytest.raises(KeyStoreError) as caught:
        await stranger.private_keys([record])
    assert str(caught.value) == (
        f"signing key {record.kid} cannot be decrypted: PROVIDER_SECRET_KEY is not the "
        "secret it was stored with")


async def test_a_ciphertext_moved_to_another_row_does_not_open(
    db_store: DatabaseKeyStore, key_engine: AsyncEngine, rsa_keys: list[RSAKey],
) -> None:
    first = await add_key(db_store, rsa_keys[0], "RS256", now=now(), actor="test")
    second = await add_key(db_store, rsa_keys[1], "RS256", now=now(), actor="test")
    moved = await sealed_of(key_engine, first.kid)
    async with key_engine.begin() as conn:
        await conn.execute(update(signing_keys).where(signing_keys.c.kid == second.kid)
                           .values(private_key_encrypted=moved))
    with pytest.raises(KeyStoreError, match=f"signing key {second.kid} cannot be decrypted"):
        await db_store.private_keys([second])


async def test_a_retired_key_keeps_its_row_but_not_its_key(
    db_store: DatabaseKeyStore, key_engine: AsyncEngine, rsa_keys: list[RSAKey],
) -> None:
    await add_key(db_store, rsa_keys[0], "RS256", now=now(), actor="test")
    published = await add_key(db_store, rsa_keys[1], "RS256", now=now(), actor="test")
    await retire(db_store, published.kid, now=now(), actor="test")
    assert await sealed_of(key_engine, published.kid) is None
    assert [r.status for r in await db_store.records()] == ["active", "retired"]


async def test_the_version_moves_on_with_every_change_and_only_then(
    db_store: DatabaseKeyStore, rsa_keys: list[RSAKey],
) -> None:
    assert await db_store.version() == 0
    await add_key(db_store, rsa_keys[0], "RS256", now=now(), actor="test")
    assert await db_store.version() == 1
    pending = await add_key(db_store, rsa_keys[1], "RS256", now=now(), actor="test")
    await db_store.records()
    await db_store.private_keys([pending])
    assert await db_store.version() == 2
    with pytest.raises(KeyStoreError):
        await retire(db_store, rsa_keys[0].thumbprint(), now=now(), actor="test")
    assert await db_store.version() == 2


async def test_audit_events_are_written_with_the_change(
    db_store: DatabaseKeyStore, key_engine: AsyncEngine,
) -> None:
    t0 = now() - timedelta(hours=1)
    first = await generate_key(db_store, "ES256", now=t0, actor="cli")
    second = await generate_key(db_store, "ES256", now=t0, actor="cli")
    await rotate(db_store, alg="ES256", now=now(), lead=timedelta(minutes=6), actor="cli")
    await retire(db_store, first.kid, now=now(), actor="cli")
    async with key_engine.connect() as conn:
        rows = (await conn.execute(
            select(AuditEvent.type, AuditEvent.actor, AuditEvent.details)
            .where(AuditEvent.type.like("key.%")).order_by(AuditEvent.occurred_at))).all()
    # (Events of one change share their instant: compared in a fixed order.)
    assert sorted((r.type, r.actor, r.details["kid"], r.details["status"]) for r in rows) \
        == sorted([
            ("key.generated", "cli", first.kid, "active"),  # the first key signs at once
            ("key.generated", "cli", second.kid, "published"),
            ("key.activated", "cli", second.kid, "active"),
            ("key.retired", "cli", first.kid, "retired"),
        ])


async def test_of_parallel_edits_planned_on_one_state_exactly_one_lands(
    key_engine: AsyncEngine, rsa_keys: list[RSAKey],
) -> None:
    """Eight "processes" (stores with engines of their own) plan the same rotation from
    the same records at once: one applies it, the others find it done when they plan
    again, and only then."""
    url = key_engine.url.render_as_string(hide_password=False)
    engines = [create_engine(url, pool_size=1) for _ in range(8)]
    stores = [DatabaseKeyStore(engine, SECRET) for engine in engines]
    try:
        old = await add_key(stores[0], rsa_keys[0], "RS256", now=now(), actor="test")
        waiting = await add_key(stores[0], rsa_keys[1], "RS256", now=now(), actor="test")
        planned: list[str] = []
        start = asyncio.Event()

        async def rotate_if_due(store: DatabaseKeyStore) -> KeyChange | None:
            def plan(records: list[KeyRecord]) -> KeyChange | None:
                if not any(r.kid == waiting.kid and r.is_pending for r in records):
                    return None  # done by someone else
                planned.append("x")
                after = [replace(r, status="active", activated_at=now())
                         if r.kid == waiting.kid else
                         replace(r, status="published", deactivated_at=now())
                         for r in records]
                return KeyChange(after)
            await start.wait()
            return await store.apply(plan, actor="test")

        tasks = [asyncio.ensure_future(rotate_if_due(store)) for store in stores]
        await asyncio.sleep(0)
        start.set()
        results = await asyncio.gather(*tasks)
        assert sum(result is not None for result in results) == 1
        assert await stores[0].version() == 3
        assert {r.kid: r.status for r in await stores[0].records()} == {
            old.kid: "published", waiting.kid: "active"}
        assert len(planned) >= 1
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_database_without_the_tables_says_to_migrate(tmp_path: object) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/empty.db")
    try:
        store = DatabaseKeyStore(engine, SECRET)
        with pytest.raises(KeyStoreError) as caught:
            await store.version()
        assert str(caught.value) == (
            "the database has no signing_keys table; run `provider migrate`")
    finally:
        await engine.dispose()


async def test_a_server_whose_key_database_is_down_says_so_at_start(tmp_path: object) -> None:
    from provider.app import create_app
    from tests.conftest import make_settings

    settings = make_settings("postgresql://nobody@127.0.0.1:1/none", Path(str(tmp_path)),
                             key_store="database", secret_key="s" * 16 + "t" * 16)
    app = create_app(settings)
    with pytest.raises(RuntimeError) as caught:
        async with app.router.lifespan_context(app):
            pass  # pragma: no cover - never reached
    assert str(caught.value).startswith(
        "signing keys cannot be loaded: the database is unavailable (")
