"""Automatic rotation through a clock seam: publish ahead, activate, retire, with several
"processes" (key rings with stores and engines of their own) checking at the same moments:
every step is made exactly once, and every process agrees on the result at its next check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from joserfc.jwk import RSAKey
from sqlalchemy import select

from provider.db import create_engine
from provider.keys.lifecycle import Schedule, add_key, generate_key, maintenance_due, rotate
from provider.keys.service import KeyRing, Rotator
from provider.keys.store import (
    DatabaseKeyStore,
    DirectoryKeyStore,
    KeyChange,
    KeyRecord,
    KeyStore,
)
from provider.models import AuditEvent
from provider.services import Services, key_ring
from provider.settings import Settings
from tests.conftest import TestClock, make_keys_dir, make_settings
from tests.keys.conftest import SECRET, empty_key_tables, key_db_url

PERIOD = timedelta(days=1)
LEAD = timedelta(minutes=6)  # JWKS max-age 5 min + margin 1 min
LIFETIME = timedelta(minutes=16)  # token lifetime 15 min + margin 1 min
SCHEDULE = Schedule(period=PERIOD, lead=LEAD, lifetime=LIFETIME)
PROCESSES = 6
SECOND = timedelta(seconds=1)


@dataclass
class Fleet:
    """Several server processes' key rings over one key store, on one clock."""

    clock: TestClock
    stores: list[KeyStore]
    rings: list[KeyRing] = field(default_factory=list)
    changes: list[KeyChange] = field(default_factory=list)

    def __post_init__(self) -> None:
        for store in self.stores:
            rotator = Rotator(store, self.clock, SCHEDULE, "ES256",
                              on_change=self.changes.append)
            self.rings.append(KeyRing(store, self.clock, retire_after=LIFETIME,
                                      rotator=rotator))

    async def check_all(self) -> None:
        """Every process makes its once-a-second check at the same moment."""
        await asyncio.gather(*(ring.check() for ring in self.rings))
        await asyncio.gather(*(ring.refresh() for ring in self.rings))

    def signers(self) -> set[str]:
        return {ring.signing_key().kid for ring in self.rings}

    def published(self) -> set[frozenset[str]]:
        return {frozenset(ring.snapshot().keys) for ring in self.rings}

    def events(self) -> list[tuple[str, str]]:
        return [(event.value, record.kid) for change in self.changes
                for event, record in change.events]

    async def records(self) -> list[KeyRecord]:
        return await self.stores[0].records()


@pytest_asyncio.fixture(loop_scope="session",
                        params=["directory", "postgresql", "sqlite"])
async def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Fleet]:
    clock = TestClock()
    clock.freeze()
    if request.param == "directory":
        # As separate processes would: a store object each (the lock is the directory's).
        yield Fleet(clock, [DirectoryKeyStore(tmp_path / "keys") for _ in range(PROCESSES)])
        return
    url = key_db_url(request, request.param)
    engines = [create_engine(url, pool_size=2) for _ in range(PROCESSES)]
    await empty_key_tables(engines[0])
    try:
        yield Fleet(clock, [DatabaseKeyStore(engine, SECRET) for engine in engines])
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_full_cycle_publish_activate_retire_happens_once_and_everywhere(
    fleet: Fleet, rsa_keys: list[RSAKey],
) -> None:
    t0 = fleet.clock.now()
    first = await add_key(fleet.stores[0], rsa_keys[0], "RS256", now=t0, actor="cli")
    await fleet.check_all()
    assert fleet.signers() == {first.kid}

    # Not before the active key is PERIOD - LEAD old.
    fleet.clock.freeze(t0 + PERIOD - LEAD - SECOND)
    await fleet.check_all()
    assert fleet.changes == [] and len(await fleet.records()) == 1

    # Publish: one new key (of PROVIDER_SIGNING_ALG), in every process's JWKS, not signing.
    fleet.clock.freeze(t0 + PERIOD - LEAD)
    await fleet.check_all()
    records = await fleet.records()
    assert len(records) == 2
    second = records[1]
    assert (second.status, second.alg, second.created_at) == ("published", "ES256",
                                                             t0 + PERIOD - LEAD)
    assert fleet.published() == {frozenset({first.kid, second.kid})}
    assert fleet.signers() == {first.kid}

    # Activate at PERIOD, when it has been published for LEAD: everywhere at once.
    fleet.clock.freeze(t0 + PERIOD - SECOND)
    await fleet.check_all()
    assert fleet.signers() == {first.kid}
    fleet.clock.freeze(t0 + PERIOD)
    await fleet.check_all()
    assert fleet.signers() == {second.kid}
    assert fleet.published() == {frozenset({first.kid, second.kid})}

    # The old key stays published while its tokens may be valid, then is retired.
    fleet.clock.freeze(t0 + PERIOD + LIFETIME - SECOND)
    await fleet.check_all()
    assert fleet.published() == {frozenset({first.kid, second.kid})}
    fleet.clock.freeze(t0 + PERIOD + LIFETIME)
    await fleet.check_all()
    assert fleet.published() == {frozenset({second.kid})}
    states = {r.kid: r.status for r in await fleet.records()}
    assert states == {first.kid: "retired", second.kid: "active"}
    assert await fleet.stores[0].private_keys(await fleet.records()) != {}
    assert first.kid not in await fleet.stores[0].private_keys(await fleet.records())

    # Each step was made by exactly one process.
    assert fleet.events() == [("key.generated", second.kid), ("key.activated", second.kid),
                              ("key.retired", first.kid)]

    # And the next cycle follows from the new key's activation.
    fleet.clock.freeze(t0 + 2 * PERIOD - LEAD)
    await fleet.check_all()
    third = (await fleet.records())[2]
    fleet.clock.freeze(t0 + 2 * PERIOD)
    await fleet.check_all()
    assert fleet.signers() == {third.kid}
    assert len(fleet.events()) == 5


async def test_a_late_publish_still_waits_the_full_lead_before_signing(
    fleet: Fleet, rsa_keys: list[RSAKey],
) -> None:
    """Rotation switched on over a key older than the period: the next key is published
    at once, and signs only once resource servers can have fetched it."""
    t0 = fleet.clock.now()
    first = await add_key(fleet.stores[0], rsa_keys[0], "RS256", now=t0 - 3 * PERIOD,
                          actor="cli")
    await fleet.check_all()
    second = (await fleet.records())[1]
    assert second.created_at == t0 and fleet.signers() == {first.kid}
    fleet.clock.freeze(t0 + LEAD - SECOND)
    await fleet.check_all()
    assert fleet.signers() == {first.kid}
    fleet.clock.freeze(t0 + LEAD)
    await fleet.check_all()
    assert fleet.signers() == {second.kid}
    assert [e for e, _ in fleet.events()] == ["key.generated", "key.activated"]


async def test_a_key_published_by_hand_is_the_one_rotation_activates(
    fleet: Fleet, rsa_keys: list[RSAKey],
) -> None:
    t0 = fleet.clock.now()
    await add_key(fleet.stores[0], rsa_keys[0], "RS256", now=t0, actor="cli")
    mine = await generate_key(fleet.stores[0], "RS256", now=t0 + timedelta(hours=1),
                              actor="cli")
    fleet.clock.freeze(t0 + PERIOD)
    await fleet.check_all()
    assert fleet.signers() == {mine.kid}
    assert len(await fleet.records()) == 2  # no key of its own was made


def test_maintenance_due_names_the_next_step() -> None:
    from datetime import UTC, datetime

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    active = KeyRecord(kid="a" * 43, status="active", created_at=t0, activated_at=t0)
    pending = KeyRecord(kid="b" * 43, status="published", created_at=t0 + PERIOD - LEAD)
    old = KeyRecord(kid="c" * 43, status="published", created_at=t0 - PERIOD,
                    activated_at=t0 - PERIOD, deactivated_at=t0)
    assert maintenance_due([active], t0 + PERIOD - LEAD - SECOND, SCHEDULE) is None
    assert maintenance_due([active], t0 + PERIOD - LEAD, SCHEDULE) == "publish"
    assert maintenance_due([active, pending], t0 + PERIOD - SECOND, SCHEDULE) is None
    assert maintenance_due([active, pending], t0 + PERIOD, SCHEDULE) == "activate"
    assert maintenance_due([old, active], t0 + LIFETIME - SECOND, SCHEDULE) is None
    assert maintenance_due([old, active], t0 + LIFETIME, SCHEDULE) == "retire"


async def test_a_servers_rotation_steps_reach_the_audit_trail(
    services: Services, settings: Settings, tmp_path: Path,
) -> None:
    """As a server wires it (provider.services.key_ring): the directory store's steps are
    queued on the audit log, with the actor `system`."""
    keys = make_keys_dir(tmp_path / "keys")
    configured = make_settings(settings.database_url, keys, key_rotation_days=1)
    clock = TestClock()
    clock.freeze()
    ring = key_ring(configured, clock, DirectoryKeyStore(keys), services.audit)
    await ring.refresh()
    clock.advance(timedelta(days=1) - configured.key_publish_lead)
    await ring.check()
    published = (await ring.store.records())[1]
    assert ring.signing_key().kid != published.kid
    await services.audit.flush()
    async with services.engine.connect() as conn:
        rows = (await conn.execute(select(AuditEvent.type, AuditEvent.actor, AuditEvent.details)
                                   .where(AuditEvent.type == "key.generated"))).all()
    assert ("key.generated", "system", {"kid": published.kid, "status": "published"}) in [
        tuple(row) for row in rows]


async def rotated_by_hand(
    settings: Settings, tmp_path: Path, store_class: type[DirectoryKeyStore],
) -> tuple[Path, Settings, TestClock, KeyRing, str]:
    """A server's key ring without automatic rotation, on a frozen clock, whose key was
    just replaced by `provider keys rotate --now`; the replaced key's kid."""
    keys = make_keys_dir(tmp_path / "keys")
    configured = make_settings(settings.database_url, keys)
    assert configured.key_rotation is None
    clock = TestClock()
    clock.freeze()
    ring = key_ring(configured, clock, store_class(keys))
    await ring.refresh()
    old = ring.signing_key().kid
    await rotate(DirectoryKeyStore(keys), alg="RS256", now=clock.now(), lead=timedelta(0),
                 actor="cli", force=True)
    await ring.check()
    return keys, configured, clock, ring, old


async def test_a_key_rotated_out_by_hand_is_retired_once_its_tokens_expired(
    settings: Settings, tmp_path: Path,
) -> None:
    """Without PROVIDER_KEY_ROTATION_DAYS a server still retires: the key `provider keys
    rotate` replaced leaves the JWKS, then its status is `retired` and its private half
    is gone from the directory (README: "then it is retired")."""
    keys, configured, clock, ring, old = await rotated_by_hand(settings, tmp_path,
                                                               DirectoryKeyStore)
    store = ring.store
    assert ring.signing_key().kid != old
    retire_after = configured.longest_token_ttl + configured.key_publish_margin
    clock.advance(retire_after - SECOND)
    await ring.check()
    assert {r.kid: r.status for r in await store.records()}[old] == "published"
    assert old in ring.snapshot().keys
    clock.advance(SECOND)
    await ring.check()
    assert {r.kid: r.status for r in await store.records()}[old] == "retired"
    assert old not in ring.snapshot().keys
    assert not any(old in p.name for p in keys.iterdir())


class ReadOnlyStore(DirectoryKeyStore):
    """A keys directory the server may read but not write (a mounted secret, say)."""

    async def apply(self, planner, *, actor: str, now=None):  # type: ignore[no-untyped-def]
        raise OSError(30, "Read-only file system")


async def test_a_store_the_server_cannot_write_leaves_the_keys_in_use_and_says_so_once(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Retirement fails on a read-only keys directory: the keys in use keep working and
    the JWKS still drops the old key on time; one warning says so, not one a second."""
    import logging

    _, configured, clock, ring, old = await rotated_by_hand(settings, tmp_path,
                                                            ReadOnlyStore)
    store = ring.store
    new = ring.signing_key().kid
    caplog.set_level(logging.INFO, logger="provider.keys")
    clock.advance(configured.longest_token_ttl + configured.key_publish_margin)
    for _ in range(3):
        await ring.check()
    assert set(ring.snapshot().keys) == {new}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "key maintenance" in warnings[0], warnings
    assert old in {r.kid for r in await store.records()}  # not retired: it could not be
