"""KeyRing: the token path reads memory only; once a second the ring asks the store for
its version and reloads (parsing only new keys) when it moved; keys leave the JWKS once
their tokens have expired; the JWKS holds public halves with their algorithm."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from provider.keys.algorithms import ALGORITHMS, REGISTRIES, Algorithm, PrivateKey
from provider.keys.lifecycle import add_key, generate_key, retire, rotate
from provider.keys.service import KeyRing, NoSigningKey
from provider.keys.store import (
    DatabaseKeyStore,
    DirectoryKeyStore,
    KeyChange,
    KeyRecord,
    KeyStore,
    Planner,
)
from tests.conftest import TestClock
from tests.keys.conftest import now

LIFETIME = timedelta(minutes=16)  # the longest token lifetime plus the margin
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class CountingStore:
    """A real store that counts what the ring asks of it."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.description = store.description
        self.versions = 0
        self.reads = 0
        self.parsed: list[str] = []

    async def version(self) -> Hashable | None:
        self.versions += 1
        return await self.store.version()

    async def records(self) -> list[KeyRecord]:
        self.reads += 1
        return await self.store.records()

    async def private_keys(self, records: Sequence[KeyRecord]) -> dict[str, PrivateKey]:
        self.parsed += [r.kid for r in records]
        return await self.store.private_keys(records)

    async def apply(self, planner: Planner, *, actor: str,
                    now: datetime | None = None) -> KeyChange | None:
        return await self.store.apply(planner, actor=actor, now=now)


@pytest.fixture
def wall() -> TestClock:
    clock = TestClock()
    clock.freeze()
    return clock


def ring_for(store: KeyStore, wall: TestClock, **kwargs: object) -> KeyRing:
    return KeyRing(store, wall, retire_after=LIFETIME, **kwargs)  # type: ignore[arg-type]


def jwks_kids(ring: KeyRing) -> list[str]:
    return [key["kid"] for key in json.loads(ring.jwks_json())["keys"]]


async def add(store: KeyStore, key: PrivateKey, alg: Algorithm = "RS256",
              **kwargs: object) -> KeyRecord:
    return await add_key(store, key, alg, now=now(), actor="test", **kwargs)  # type: ignore[arg-type]


async def test_without_any_key_there_is_no_signer_and_an_empty_jwks(
    store: DirectoryKeyStore, wall: TestClock,
) -> None:
    ring = ring_for(store, wall)
    await ring.refresh()
    with pytest.raises(NoSigningKey, match="provider keys generate"):
        ring.signing_key()
    assert json.loads(ring.jwks_json()) == {"keys": []}


async def test_keys_are_parsed_once_and_reused_across_reloads(
    any_store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey],
) -> None:
    first = await add(any_store, rsa_keys[0])
    counting = CountingStore(any_store)
    ring = ring_for(counting, wall)
    await ring.refresh()
    key = ring.signing_key().key
    for _ in range(5):
        await ring.refresh()
        assert ring.signing_key().key is key
    assert (counting.reads, counting.parsed) == (1, [first.kid])  # versions only
    await ring.refresh(force=True)
    assert ring.signing_key().key is key

    # A change parses only the new key; the known one is the same object.
    second = await add(any_store, rsa_keys[1])
    await ring.refresh()
    assert counting.parsed == [first.kid, second.kid]
    verifying = ring.verification_key(first.kid)
    assert verifying is not None and verifying.key is key


async def test_the_token_path_never_asks_the_store(
    any_store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey],
) -> None:
    record = await add(any_store, rsa_keys[0])
    counting = CountingStore(any_store)
    ring = ring_for(counting, wall)
    await ring.refresh()
    asked = (counting.versions, counting.reads, len(counting.parsed))
    for _ in range(1000):
        assert ring.signing_key().kid == record.kid
        assert ring.verification_key(record.kid) is not None
        ring.jwks_json()
    assert (counting.versions, counting.reads, len(counting.parsed)) == asked


async def test_a_rotation_by_another_process_is_seen_at_the_next_check(
    any_store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey],
) -> None:
    old = await add_key(any_store, rsa_keys[0], "RS256", now=now() - timedelta(hours=1),
                        actor="test")
    pending = await add_key(any_store, rsa_keys[1], "RS256",
                            now=now() - timedelta(hours=1), actor="test")
    ring = ring_for(any_store, wall)
    await ring.refresh()
    assert ring.signing_key().kid == old.kid
    # Published ahead of activation, so resource servers learn it before it signs.
    assert jwks_kids(ring) == [old.kid, pending.kid]

    await rotate(any_store, alg="RS256", now=now(), lead=timedelta(minutes=6),
                 actor="cli")  # the CLI, elsewhere
    assert ring.signing_key().kid == old.kid  # not yet looked
    await ring.refresh()
    assert ring.signing_key().kid == pending.kid
    assert ring.verification_key(old.kid) is not None


async def test_a_deactivated_key_stays_in_the_jwks_while_its_tokens_may_live(
    store: DirectoryKeyStore, wall: TestClock, rsa_keys: list[RSAKey],
) -> None:
    old = await add(store, rsa_keys[0])
    new = await add(store, rsa_keys[1], activate=True)
    deactivated_at = next(r for r in await store.records() if r.kid == old.kid).deactivated_at
    assert deactivated_at is not None
    counting = CountingStore(store)
    ring = ring_for(counting, wall)

    wall.freeze(deactivated_at + LIFETIME - timedelta(seconds=1))
    await ring.refresh()
    assert jwks_kids(ring) == [old.kid, new.kid]
    assert ring.verification_key(old.kid) is not None

    # No change in the store: the ring drops the key on its own once its tokens expired.
    wall.freeze(deactivated_at + LIFETIME)
    await ring.refresh()
    assert jwks_kids(ring) == [new.kid]
    assert ring.verification_key(old.kid) is None
    assert ring.signing_key().kid == new.kid
    assert counting.reads == 1


async def test_retired_keys_never_appear(
    store: DirectoryKeyStore, wall: TestClock, rsa_keys: list[RSAKey],
) -> None:
    active = await add(store, rsa_keys[0])
    pending = await add(store, rsa_keys[1])
    await retire(store, pending.kid, now=now(), actor="test")
    counting = CountingStore(store)
    ring = ring_for(counting, wall)
    await ring.refresh()
    assert jwks_kids(ring) == [active.kid]
    assert ring.verification_key(pending.kid) is None
    assert pending.kid not in counting.parsed  # a retired key is not even parsed

    # A key retired while its tokens could still be live leaves at once.
    replacement = await add(store, rsa_keys[2], activate=True)
    await ring.refresh()
    assert jwks_kids(ring) == [active.kid, replacement.kid]
    await retire(DirectoryKeyStore(store.directory), active.kid, now=now(), actor="test")
    await ring.refresh()
    assert jwks_kids(ring) == [replacement.kid]
    assert ring.verification_key(active.kid) is None


async def test_the_jwks_has_public_members_only_with_each_keys_algorithm(
    store: DirectoryKeyStore, wall: TestClock, rsa_keys: list[RSAKey], ec_keys: list[ECKey],
    ed_keys: list[OKPKey],
) -> None:
    await add(store, rsa_keys[0], "RS256")
    await add(store, rsa_keys[1], "PS256")
    await add(store, ec_keys[0], "ES256")
    await add(store, ed_keys[0], "EdDSA")
    ring = ring_for(store, wall)
    await ring.refresh()
    body = ring.jwks_json()
    document = json.loads(body)
    assert set(document) == {"keys"}
    members = {"RSA": {"n", "e"}, "EC": {"crv", "x", "y"}, "OKP": {"crv", "x"}}
    seen = []
    for jwk in document["keys"]:
        assert set(jwk) == {"kty", "kid", "use", "alg"} | members[jwk["kty"]]
        assert not PRIVATE_MEMBERS & set(jwk)
        assert jwk["use"] == "sig"
        seen.append((jwk["kty"], jwk["alg"], jwk.get("crv")))
        # kid is the RFC 7638 thumbprint of exactly these public members.
        public = {k: jwk[k] for k in {"kty"} | members[jwk["kty"]]}
        assert jwt.PyJWK(public).key is not None
        cls = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}[jwk["kty"]]
        assert cls.import_key(public).thumbprint() == jwk["kid"]
    assert seen == [("RSA", "RS256", None), ("RSA", "PS256", None), ("EC", "ES256", "P-256"),
                    ("OKP", "EdDSA", "Ed25519")]
    assert ring.algorithms() == ("ES256", "EdDSA", "PS256", "RS256")
    assert b'"d"' not in body


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_the_jwks_verifies_a_token_of_the_active_key_in_another_library(
    store: DirectoryKeyStore, wall: TestClock, alg: Algorithm,
) -> None:
    await generate_key(store, alg, now=now(), actor="test")
    ring = ring_for(store, wall)
    await ring.refresh()
    signer = ring.signing_key()
    token = jose_jwt.encode({"alg": alg, "kid": signer.kid}, {"sub": "someone"}, signer.key,
                            registry=REGISTRIES[alg])
    jwks = jwt.PyJWKSet.from_json(ring.jwks_json().decode())
    assert jwt.decode(token, jwks[signer.kid].key, algorithms=[alg]) == {"sub": "someone"}


@pytest.mark.parametrize("kid", [None, 42, "", "../../etc/passwd", "x" * 43, ["a"]])
async def test_verification_key_of_unknown_or_malformed_kid_is_none(
    store: DirectoryKeyStore, wall: TestClock, rsa_keys: list[RSAKey], kid: object,
) -> None:
    await add(store, rsa_keys[0])
    ring = ring_for(store, wall)
    await ring.refresh()
    assert ring.verification_key(kid) is None


async def test_the_background_task_sees_a_change_within_about_a_second(
    any_store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    first = await add(any_store, rsa_keys[0])
    ring = KeyRing(any_store, TestClock(), retire_after=LIFETIME)
    await ring.refresh()
    ring.start()
    try:
        second = await add(any_store, rsa_keys[1], activate=True)
        changed_at = asyncio.get_running_loop().time()
        while ring.signing_key().kid == first.kid:
            assert asyncio.get_running_loop().time() - changed_at < 5, "not seen in 5 s"
            await asyncio.sleep(0.05)
        assert ring.signing_key().kid == second.kid
    finally:
        await ring.close()


async def test_a_failing_store_keeps_the_keys_in_use_and_says_so_once(
    tmp_path: Path, rsa_keys: list[RSAKey], caplog: pytest.LogCaptureFixture,
) -> None:
    from provider.db import create_engine
    from tests.conftest import migrate
    from tests.keys.conftest import SECRET

    url = f"sqlite:///{tmp_path}/keys.db"
    migrate(url)
    engine = create_engine(url)
    try:
        store = DatabaseKeyStore(engine, SECRET)
        record = await add(store, rsa_keys[0])
        ring = KeyRing(store, TestClock(), retire_after=LIFETIME, check_interval=0.05)
        await ring.refresh()
        (tmp_path / "keys.db").rename(tmp_path / "elsewhere.db")  # the database is gone
        caplog.set_level(logging.INFO, logger="provider.keys")

        def lines(level: int) -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelno == level]

        async def until(condition: Callable[[], bool]) -> None:
            deadline = asyncio.get_running_loop().time() + 10
            while not condition():
                assert asyncio.get_running_loop().time() < deadline, caplog.records
                await asyncio.sleep(0.02)

        ring.start()
        await until(lambda: ring.checks >= 10)  # ten failed checks
        assert ring.signing_key().kid == record.kid
        failures = lines(logging.ERROR)
        assert len(failures) == 1, failures
        assert failures[0].startswith(
            "signing keys not checked (the current ones stay in use): KeyStoreError")
        (tmp_path / "elsewhere.db").rename(tmp_path / "keys.db")
        await until(lambda: bool(lines(logging.WARNING)))
        assert lines(logging.WARNING) == ["signing keys checked again"]
    finally:
        await ring.close()
        await engine.dispose()
