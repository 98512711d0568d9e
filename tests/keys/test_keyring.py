"""KeyRing: parses each key once, follows the key directory, and publishes the JWKS."""

from __future__ import annotations

import json
import types
from datetime import timedelta
from typing import Any

import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import RSAKey

from provider.keys import service
from provider.keys.service import KeyRing, NoSigningKey
from provider.keys.store import KeyStore, add_key, retire, rotate
from tests.conftest import TestClock

LIFETIME = timedelta(minutes=15)
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class FakeMonotonic:
    """Stands in for ``time`` in provider.keys.service: the check interval on demand."""

    def __init__(self) -> None:
        self.value = 1000.0

    def monotonic(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> FakeMonotonic:
    fake = FakeMonotonic()
    monkeypatch.setattr(service, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture
def wall() -> TestClock:
    clock = TestClock()
    clock.freeze()
    return clock


@pytest.fixture
def parses(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kids the store parsed from PEM, in order (parsing is the expensive part)."""
    seen: list[str] = []
    load_key = store.load_key

    def counting(kid: str) -> RSAKey:
        seen.append(kid)
        return load_key(kid)

    monkeypatch.setattr(store, "load_key", counting)
    return seen


def ring_for(store: KeyStore, wall: TestClock) -> KeyRing:
    return KeyRing(store, wall, LIFETIME)


def jwks_kids(ring: KeyRing) -> list[str]:
    return [key["kid"] for key in json.loads(ring.jwks_json())["keys"]]


def test_signing_key_without_any_key_raises_no_signing_key(
    store: KeyStore, wall: TestClock,
) -> None:
    ring = ring_for(store, wall)
    with pytest.raises(NoSigningKey, match="provider keys generate"):
        ring.signing_key()
    assert json.loads(ring.jwks_json()) == {"keys": []}


def test_keys_are_parsed_once_and_reused_across_reloads(
    store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey], parses: list[str],
    monotonic: FakeMonotonic,
) -> None:
    first = add_key(store, rsa_keys[0])
    ring = ring_for(store, wall)
    kid, key = ring.signing_key()
    assert kid == first.kid
    for _ in range(5):
        monotonic.advance(2)
        assert ring.signing_key()[1] is key
    ring.reload()
    assert ring.signing_key()[1] is key
    assert parses == [first.kid]

    # A change on disk parses only the new key; the known one is the same object.
    second = add_key(store, rsa_keys[1])
    ring.reload()
    assert parses == [first.kid, second.kid]
    assert ring.verification_key(first.kid) is key


def test_snapshot_does_not_touch_the_disk_within_the_check_interval(
    store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey], monotonic: FakeMonotonic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_key(store, rsa_keys[0])
    ring = ring_for(store, wall)
    ring.snapshot()
    stats = 0
    fingerprint = store.fingerprint

    def counting() -> Any:
        nonlocal stats
        stats += 1
        return fingerprint()

    monkeypatch.setattr(store, "fingerprint", counting)
    for _ in range(100):
        ring.signing_key()
    assert stats == 0
    monotonic.advance(service.CHECK_INTERVAL_SECONDS)
    ring.signing_key()
    assert stats == 1


def test_rotation_by_another_store_is_noticed_after_the_check_interval(
    store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey], monotonic: FakeMonotonic,
) -> None:
    old = add_key(store, rsa_keys[0])
    pending = add_key(store, rsa_keys[1])
    ring = ring_for(store, wall)
    assert ring.signing_key()[0] == old.kid
    # Published ahead of activation, so resource servers learn it before it signs.
    assert jwks_kids(ring) == [old.kid, pending.kid]

    rotate(KeyStore(store.directory))  # the CLI, in another process

    monotonic.advance(service.CHECK_INTERVAL_SECONDS / 2)
    assert ring.signing_key()[0] == old.kid  # not yet looked
    monotonic.advance(service.CHECK_INTERVAL_SECONDS / 2)
    assert ring.signing_key()[0] == pending.kid
    assert ring.verification_key(old.kid) is not None


def test_deactivated_key_stays_in_jwks_while_its_tokens_may_live(
    store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey], monotonic: FakeMonotonic,
) -> None:
    old = add_key(store, rsa_keys[0])
    add_key(store, rsa_keys[1])
    new = rotate(store)
    deactivated_at = next(r for r in store.records() if r.kid == old.kid).deactivated_at
    assert deactivated_at is not None
    ring = ring_for(store, wall)

    wall.freeze(deactivated_at + LIFETIME - timedelta(seconds=1))
    ring.reload()
    assert jwks_kids(ring) == [old.kid, new.kid]
    assert ring.verification_key(old.kid) is not None

    # No file changes: the ring drops the key on its own once its tokens have expired.
    wall.freeze(deactivated_at + LIFETIME)
    monotonic.advance(service.CHECK_INTERVAL_SECONDS)
    assert jwks_kids(ring) == [new.kid]
    assert ring.verification_key(old.kid) is None
    assert ring.signing_key()[0] == new.kid


def test_retired_keys_never_appear(
    store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey], parses: list[str],
    monotonic: FakeMonotonic,
) -> None:
    active = add_key(store, rsa_keys[0])
    pending = add_key(store, rsa_keys[1])
    retire(store, pending.kid)
    ring = ring_for(store, wall)
    assert jwks_kids(ring) == [active.kid]
    assert ring.verification_key(pending.kid) is None
    assert pending.kid not in parses  # a retired key is not even parsed

    # A key retired while its tokens could still be live leaves at once.
    replacement = rotate(store)
    ring.reload()
    assert jwks_kids(ring) == [active.kid, replacement.kid]
    retire(KeyStore(store.directory), active.kid)
    monotonic.advance(service.CHECK_INTERVAL_SECONDS)
    assert jwks_kids(ring) == [replacement.kid]
    assert ring.verification_key(active.kid) is None


def test_jwks_has_public_members_only(
    store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey],
) -> None:
    add_key(store, rsa_keys[0])
    add_key(store, rsa_keys[1])
    ring = ring_for(store, wall)
    body = ring.jwks_json()
    document = json.loads(body)
    assert set(document) == {"keys"}
    assert len(document["keys"]) == 2
    for jwk in document["keys"]:
        assert set(jwk) == {"kty", "n", "e", "kid", "use", "alg"}
        assert not PRIVATE_MEMBERS & set(jwk)
        assert (jwk["kty"], jwk["use"], jwk["alg"]) == ("RSA", "sig", "RS256")
        # kid is the RFC 7638 thumbprint of exactly these public members.
        assert RSAKey.import_key({k: jwk[k] for k in ("kty", "n", "e")}).thumbprint() == jwk["kid"]
    assert b'"d"' not in body


def test_jwks_verifies_a_token_signed_with_the_active_key_in_another_library(
    store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey],
) -> None:
    add_key(store, rsa_keys[0])
    ring = ring_for(store, wall)
    kid, key = ring.signing_key()
    token = jose_jwt.encode({"alg": "RS256", "kid": kid}, {"sub": "someone"}, key)
    jwks = jwt.PyJWKSet.from_json(ring.jwks_json().decode())
    claims = jwt.decode(token, jwks[kid].key, algorithms=["RS256"])
    assert claims == {"sub": "someone"}


@pytest.mark.parametrize("kid", [None, 42, "", "../../etc/passwd", "x" * 43, ["a"]])
def test_verification_key_of_unknown_or_malformed_kid_is_none(
    store: KeyStore, wall: TestClock, rsa_keys: list[RSAKey], kid: object,
) -> None:
    add_key(store, rsa_keys[0])
    assert ring_for(store, wall).verification_key(kid) is None
