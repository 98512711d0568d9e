"""The key life cycle on every store (the keys directory; the database store on
PostgreSQL and SQLite): generate, import, rotate (and its refusals), retire, and moving
a whole key set between stores with export and import."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey

from provider.keys.algorithms import ALGORITHMS, Algorithm
from provider.keys.lifecycle import (
    TooEarly,
    activate,
    add_key,
    export_keys,
    generate_key,
    import_keys,
    retire,
    rotate,
)
from provider.keys.store import DirectoryKeyStore, KeyRecord, KeyStore, KeyStoreError
from tests.keys.conftest import now

LEAD = timedelta(minutes=6)  # the JWKS max-age (5 min) plus the margin (1 min)


async def states(store: KeyStore) -> dict[str, str]:
    return {r.kid: r.status for r in await store.records()}


async def test_the_first_key_signs_and_later_keys_are_published_only(
    any_store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    first = await add_key(any_store, rsa_keys[0], "RS256", now=now(), actor="test")
    second = await add_key(any_store, rsa_keys[1], "RS256", now=now(), actor="test")
    assert (first.status, second.status) == ("active", "published")
    assert first.activated_at is not None
    assert second.activated_at is None and second.deactivated_at is None
    assert [r.kid for r in await any_store.records()] == [first.kid, second.kid]


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_generated_keys_are_of_their_algorithm_and_come_back_whole(
    any_store: KeyStore, alg: Algorithm,
) -> None:
    record = await generate_key(any_store, alg, now=now(), actor="test")
    assert record.alg == alg
    [stored] = await any_store.records()
    assert stored == record
    key = (await any_store.private_keys([stored]))[record.kid]
    assert key.thumbprint() == record.kid and key.is_private
    kty = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}[alg]
    assert key.as_dict(private=False)["kty"] == kty


async def test_adding_a_key_twice_is_refused_and_changes_nothing(
    any_store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    await add_key(any_store, rsa_keys[0], "RS256", now=now(), actor="test")
    version = await any_store.version()
    with pytest.raises(KeyStoreError, match="already in the key store"):
        await add_key(any_store, rsa_keys[0], "RS256", now=now(), actor="test")
    assert await any_store.version() == version


async def test_a_key_that_does_not_fit_its_algorithm_is_refused(
    any_store: KeyStore, ec_keys: list[ECKey], ed_keys: list[OKPKey],
) -> None:
    with pytest.raises(KeyStoreError, match="not a key for RS256"):
        await add_key(any_store, ec_keys[0], "RS256", now=now(), actor="test")
    with pytest.raises(KeyStoreError, match="not a key for ES256"):
        await add_key(any_store, ed_keys[0], "ES256", now=now(), actor="test")
    assert await any_store.records() == []


async def test_activate_takes_over_signing(any_store: KeyStore, rsa_keys: list[RSAKey]) -> None:
    first = await add_key(any_store, rsa_keys[0], "RS256", now=now(), actor="test")
    second = await add_key(any_store, rsa_keys[1], "RS256", now=now(), actor="test",
                           activate=True)
    records = {r.kid: r for r in await any_store.records()}
    assert second.status == "active"
    assert records[first.kid].status == "published"
    assert records[first.kid].deactivated_at == second.activated_at


# --- rotate ------------------------------------------------------------------------------


async def test_rotate_with_nothing_published_ahead_is_refused_and_writes_nothing(
    any_store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    await add_key(any_store, rsa_keys[0], "RS256", now=now(), actor="test")
    version = await any_store.version()
    with pytest.raises(TooEarly) as caught:
        await rotate(any_store, alg="RS256", now=now(), lead=LEAD, actor="test")
    assert str(caught.value) == (
        "no key is published ahead of use: run `provider keys generate`, wait 360 s "
        "(resource servers cache the JWKS; the max-age plus a margin), then rotate; or "
        "rotate --now after a compromise")
    assert await any_store.version() == version


async def test_rotate_refuses_a_key_published_for_less_than_the_lead(
    any_store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    t0 = now()
    await add_key(any_store, rsa_keys[0], "RS256", now=t0, actor="test")
    pending = await add_key(any_store, rsa_keys[1], "RS256", now=t0, actor="test")
    version = await any_store.version()
    with pytest.raises(TooEarly) as caught:
        await rotate(any_store, alg="RS256", now=t0 + timedelta(seconds=100), lead=LEAD,
                     actor="test")
    assert str(caught.value) == (
        f"key {pending.kid} has been published for 100 s; resource servers may cache the "
        "JWKS for 360 s (max-age plus margin), so its tokens could be refused: rotate "
        "again in 261 s, or pass --now after a compromise")
    assert await any_store.version() == version
    rotated = await rotate(any_store, alg="RS256", now=t0 + LEAD, lead=LEAD, actor="test")
    assert rotated.kid == pending.kid and rotated.status == "active"


async def test_rotate_activates_the_newest_waiting_key(
    any_store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    t0 = now() - LEAD - timedelta(minutes=1)
    old = await add_key(any_store, rsa_keys[0], "RS256", now=t0, actor="test")
    await add_key(any_store, rsa_keys[1], "RS256", now=t0, actor="test")
    newest = await add_key(any_store, rsa_keys[2], "RS256",
                           now=t0 + timedelta(seconds=1), actor="test")
    rotated = await rotate(any_store, alg="RS256", now=now(), lead=LEAD, actor="test")
    assert rotated.kid == newest.kid
    result = await states(any_store)
    assert result[old.kid] == "published"
    assert list(result.values()).count("active") == 1


async def test_rotate_now_activates_a_fresh_key_at_once(
    any_store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    old = await add_key(any_store, rsa_keys[0], "RS256", now=now(), actor="test")
    pending = await add_key(any_store, rsa_keys[1], "RS256", now=now(), actor="test")
    forced = await rotate(any_store, alg="RS256", now=now(), lead=LEAD, actor="test",
                          force=True)
    assert forced.kid == pending.kid
    # Nothing waits now: --now generates a key and signs with it (a compromise).
    again = await rotate(any_store, alg="ES256", now=now(), lead=LEAD, actor="test",
                         force=True)
    assert again.kid not in (old.kid, pending.kid) and again.alg == "ES256"
    assert (await states(any_store))[again.kid] == "active"
    key = (await any_store.private_keys([again]))[again.kid]
    assert key.thumbprint() == again.kid


# --- retire ------------------------------------------------------------------------------


async def test_retire_refuses_the_active_key(any_store: KeyStore, rsa_keys: list[RSAKey]) -> None:
    active = await add_key(any_store, rsa_keys[0], "RS256", now=now(), actor="test")
    with pytest.raises(KeyStoreError, match="active signing key; rotate to another key first"):
        await retire(any_store, active.kid, now=now(), actor="test")
    assert (await states(any_store)) == {active.kid: "active"}


async def test_retire_is_final_and_drops_the_private_key(
    any_store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    await add_key(any_store, rsa_keys[0], "RS256", now=now(), actor="test")
    published = await add_key(any_store, rsa_keys[1], "RS256", now=now(), actor="test")
    retired = await retire(any_store, published.kid, now=now(), actor="test")
    assert retired.status == "retired" and retired.deactivated_at is not None
    assert (await any_store.records())[1] == retired
    assert await any_store.private_keys([retired]) == {}
    with pytest.raises(KeyStoreError, match="retired and cannot sign again"):
        await activate(any_store, published.kid, now=now(), actor="test")


async def test_retire_of_an_unknown_kid_is_refused(
    any_store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    await add_key(any_store, rsa_keys[0], "RS256", now=now(), actor="test")
    with pytest.raises(KeyStoreError, match="no key"):
        await retire(any_store, rsa_keys[1].thumbprint(), now=now(), actor="test")


# --- export and import --------------------------------------------------------------------


async def make_key_set(store: KeyStore, rsa: RSAKey, ec: ECKey, ed: OKPKey) -> list[KeyRecord]:
    """An old key (retired), the active one, and one waiting: every state."""
    t0 = now() - timedelta(hours=2)
    old = await add_key(store, rsa, "RS256", now=t0, actor="test")
    await add_key(store, ec, "ES256", now=t0 + timedelta(minutes=1), actor="test",
                  activate=True)
    await retire(store, old.kid, now=t0 + timedelta(hours=1), actor="test")
    await add_key(store, ed, "EdDSA", now=now(), actor="test")
    return await store.records()


async def test_a_key_set_moves_between_stores_with_its_states(
    any_store: KeyStore, tmp_path: Path, rsa_keys: list[RSAKey], ec_keys: list[ECKey],
    ed_keys: list[OKPKey],
) -> None:
    source = DirectoryKeyStore(tmp_path / "source")
    original = await make_key_set(source, rsa_keys[0], ec_keys[0], ed_keys[0])

    assert await import_keys(any_store, source.directory, now=now(), actor="test") == original
    assert await any_store.records() == original
    keys = await any_store.private_keys(original)
    assert sorted(keys) == sorted(r.kid for r in original if r.status != "retired")
    # Importing the same set again changes nothing.
    version = await any_store.version()
    await import_keys(any_store, source.directory, now=now(), actor="test")
    assert await any_store.version() == version

    # ...and back out, as a keys directory a server can use.
    exported = tmp_path / "exported"
    assert await export_keys(any_store, exported) == original
    back = DirectoryKeyStore(exported)
    assert await back.records() == original
    back_keys = await back.private_keys(original)
    assert {kid: k.as_dict(private=True) for kid, k in back_keys.items()} \
        == {kid: k.as_dict(private=True) for kid, k in keys.items()}
    assert sorted(p.name for p in exported.glob("*.pem")) == sorted(
        f"{r.kid}.pem" for r in original if r.status != "retired")


async def test_importing_a_key_set_into_a_store_with_other_keys_is_refused(
    any_store: KeyStore, tmp_path: Path, rsa_keys: list[RSAKey], ec_keys: list[ECKey],
    ed_keys: list[OKPKey],
) -> None:
    source = DirectoryKeyStore(tmp_path / "source")
    await make_key_set(source, rsa_keys[0], ec_keys[0], ed_keys[0])
    mine = await add_key(any_store, rsa_keys[1], "RS256", now=now(), actor="test")
    with pytest.raises(KeyStoreError) as caught:
        await import_keys(any_store, source.directory, now=now(), actor="test")
    assert str(caught.value) == (
        "the key store already holds other keys; import a key set into an empty store "
        "only (single keys: `provider keys import PEM_FILE`)")
    assert await states(any_store) == {mine.kid: "active"}


async def test_export_refuses_a_directory_that_is_not_empty(
    any_store: KeyStore, tmp_path: Path, rsa_keys: list[RSAKey],
) -> None:
    await add_key(any_store, rsa_keys[0], "RS256", now=now(), actor="test")
    target = tmp_path / "full"
    target.mkdir()
    (target / "something").write_text("x")
    with pytest.raises(KeyStoreError, match="is not an empty directory"):
        await export_keys(any_store, target)
    assert sorted(p.name for p in target.iterdir()) == ["something"]


async def test_a_key_set_without_exactly_one_active_key_is_refused(
    any_store: KeyStore, tmp_path: Path, rsa_keys: list[RSAKey],
) -> None:
    source = DirectoryKeyStore(tmp_path / "source")
    first = await add_key(source, rsa_keys[0], "RS256", now=now(), actor="test")
    await add_key(source, rsa_keys[1], "RS256", now=now(), actor="test")
    state = source.state_path.read_text().replace('"active"', '"published"')
    source.state_path.write_text(state)
    with pytest.raises(KeyStoreError, match="does not have exactly one active key"):
        await import_keys(any_store, source.directory, now=now(), actor="test")
    assert await any_store.records() == []
    assert first.status == "active"
