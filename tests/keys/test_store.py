"""The keys directory store: its files, its state file, its lock, and importing PEMs.

Operations common to both stores are in test_lifecycle.py; the database store's own
matters (encryption at rest, the version row) in test_database_store.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import RSAKey

from provider.keys.algorithms import KeyMaterialError, parse_private_pem
from provider.keys.lifecycle import activate, add_key, generate_key, retire
from provider.keys.store import (
    STATE_FILE,
    DirectoryKeyStore,
    KeyChange,
    KeyRecord,
    KeyStoreError,
    is_valid_kid,
)
from tests.keys.conftest import now


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def rfc7638_thumbprint(pem: bytes) -> str:
    """Computed here from the RFC, independently of joserfc."""
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    numbers = private.public_key().public_numbers()
    members = {"e": b64url_uint(numbers.e), "kty": "RSA", "n": b64url_uint(numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def pem_of(private: object, *, public: bool = False, password: bytes | None = None) -> bytes:
    if public:
        return private.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    return private.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


async def add(store: DirectoryKeyStore, key: RSAKey, **kwargs: object) -> KeyRecord:
    return await add_key(store, key, "RS256", now=now(), actor="test", **kwargs)  # type: ignore[arg-type]


# --- records --------------------------------------------------------------------------


def test_key_record_json_round_trip_keeps_every_field() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    record = KeyRecord(kid="k" * 43, status="published", created_at=created,
                       activated_at=created + timedelta(days=1),
                       deactivated_at=created + timedelta(days=2), alg="ES256")
    data = record.to_json()
    assert data == {
        "kid": "k" * 43,
        "status": "published",
        "created_at": "2026-01-02T03:04:05.678901+00:00",
        "activated_at": "2026-01-03T03:04:05.678901+00:00",
        "deactivated_at": "2026-01-04T03:04:05.678901+00:00",
        "alg": "ES256",
    }
    assert KeyRecord.from_json(json.loads(json.dumps(data))) == record


def test_key_record_json_round_trip_without_optional_instants() -> None:
    record = KeyRecord(kid="k" * 43, status="active", created_at=datetime.now(UTC))
    assert KeyRecord.from_json(record.to_json()) == record


def test_a_state_file_from_before_algorithms_reads_as_rs256() -> None:
    entry = {"kid": "k" * 43, "status": "active", "created_at": "2026-01-01T00:00:00+00:00",
             "activated_at": None, "deactivated_at": None}
    assert KeyRecord.from_json(entry).alg == "RS256"


@pytest.mark.parametrize("entry", [
    {"kid": "k" * 43, "status": "signing", "created_at": "2026-01-01T00:00:00+00:00"},
    {"kid": "k" * 43, "status": "active"},
    {"kid": "k" * 43, "status": "active", "created_at": "yesterday"},
    {"kid": "k" * 43, "status": "active", "created_at": "2026-01-01T00:00:00+00:00",
     "alg": "HS256"},
    {"kid": "k" * 43, "status": "active", "created_at": "2026-01-01T00:00:00+00:00",
     "alg": "none"},
    {"kid": 7, "status": "active", "created_at": "2026-01-01T00:00:00+00:00"},
])
def test_key_record_from_json_refuses_malformed_entry(entry: dict[str, object]) -> None:
    with pytest.raises(KeyStoreError, match="malformed"):
        KeyRecord.from_json(entry)


async def test_records_of_missing_directory_is_empty(store: DirectoryKeyStore) -> None:
    assert await store.records() == []
    assert await store.version() is None


@pytest.mark.parametrize("body", ["{not json", "[]", '{"keys": {}}', '{"keys": [1]}'])
async def test_records_of_corrupt_state_file_raise_key_store_error(
    store: DirectoryKeyStore, body: str,
) -> None:
    store.directory.mkdir()
    store.state_path.write_text(body)
    with pytest.raises(KeyStoreError, match=r"cannot read|malformed"):
        await store.records()


# --- files ----------------------------------------------------------------------------


async def test_generate_key_writes_private_files_with_owner_only_modes(
    store: DirectoryKeyStore,
) -> None:
    record = await generate_key(store, "RS256", now=now(), actor="test")
    pem = store.pem_path(record.kid)
    assert mode(store.directory) == 0o700
    assert mode(pem) == 0o600
    assert mode(store.state_path) == 0o600
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not list(store.directory.glob("*.tmp"))
    state = json.loads(store.state_path.read_text())
    assert state == {"keys": [record.to_json()]}


async def test_kid_is_the_rfc7638_thumbprint_of_the_key(store: DirectoryKeyStore) -> None:
    record = await generate_key(store, "RS256", now=now(), actor="test")
    assert is_valid_kid(record.kid)
    assert record.kid == rfc7638_thumbprint(store.pem_path(record.kid).read_bytes())


async def test_private_keys_return_the_keys_that_were_stored(
    store: DirectoryKeyStore, rsa_keys: list[RSAKey],
) -> None:
    record = await add(store, rsa_keys[0])
    loaded = (await store.private_keys([record]))[record.kid]
    assert loaded.is_private
    assert loaded.as_dict(private=True) == rsa_keys[0].as_dict(private=True)


async def test_a_pem_whose_thumbprint_does_not_match_its_name_is_refused(
    store: DirectoryKeyStore, rsa_keys: list[RSAKey],
) -> None:
    first = await add(store, rsa_keys[0])
    second = await add(store, rsa_keys[1])
    # Someone copies the wrong PEM over a key's file.
    shutil.copyfile(store.pem_path(second.kid), store.pem_path(first.kid))
    with pytest.raises(KeyStoreError, match="does not hold the key its name says"):
        await store.private_keys([first])


async def test_a_key_whose_file_is_missing_says_so(
    store: DirectoryKeyStore, rsa_keys: list[RSAKey],
) -> None:
    record = await add(store, rsa_keys[0])
    store.pem_path(record.kid).unlink()
    with pytest.raises(KeyStoreError, match="key file missing"):
        await store.private_keys([record])


async def test_a_key_of_another_type_than_its_algorithm_is_refused(
    store: DirectoryKeyStore, rsa_keys: list[RSAKey],
) -> None:
    record = await add(store, rsa_keys[0])
    claimed = KeyRecord(kid=record.kid, status="active", created_at=record.created_at,
                        alg="ES256")
    with pytest.raises(KeyStoreError, match="not a key for ES256"):
        await store.private_keys([claimed])


@pytest.mark.parametrize("kid", [
    "../../etc/passwd", "../" + "a" * 40, "a" * 42, "a" * 44, "a/" + "b" * 41, "", "a" * 43 + "\n",
])
async def test_kids_that_are_not_thumbprints_never_reach_the_file_system(
    store: DirectoryKeyStore, kid: str,
) -> None:
    assert not is_valid_kid(kid)
    with pytest.raises(KeyStoreError, match="not a key id"):
        store.pem_path(kid)
    with pytest.raises(KeyStoreError, match="not a key id"):
        await retire(store, kid, now=now(), actor="test")
    with pytest.raises(KeyStoreError, match="not a key id"):
        await activate(store, kid, now=now(), actor="test")
    assert not store.directory.exists()


async def test_version_changes_on_every_write(
    store: DirectoryKeyStore, rsa_keys: list[RSAKey],
) -> None:
    await add(store, rsa_keys[0])
    before = await store.version()
    await add(store, rsa_keys[1])
    assert await store.version() not in (None, before)


async def test_retiring_deletes_the_private_key_file(
    store: DirectoryKeyStore, rsa_keys: list[RSAKey],
) -> None:
    await add(store, rsa_keys[0])
    published = await add(store, rsa_keys[1])
    await retire(store, published.kid, now=now(), actor="test")
    assert not store.pem_path(published.kid).exists()
    assert [r.status for r in await store.records()] == ["active", "retired"]


async def test_a_failed_edit_writes_nothing(
    store: DirectoryKeyStore, rsa_keys: list[RSAKey],
) -> None:
    await add(store, rsa_keys[0])
    before = store.state_path.read_bytes()

    def crash(records: list[KeyRecord]) -> KeyChange:
        raise KeyStoreError("crash half-way")

    with pytest.raises(KeyStoreError):
        await store.apply(crash, actor="test")
    assert store.state_path.read_bytes() == before


# --- concurrency ----------------------------------------------------------------------


def test_concurrent_additions_from_two_stores_both_land(
    tmp_path: Path, rsa_keys: list[RSAKey],
) -> None:
    directory = tmp_path / "keys"
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def add_three(keys: list[RSAKey]) -> None:
        own = DirectoryKeyStore(directory)  # as two CLI processes would: separate instances
        start.wait()
        try:
            for key in keys:
                asyncio.run(add(own, key))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add_three, args=(rsa_keys[i::2],)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    records = DirectoryKeyStore(directory).read_records()
    assert sorted(r.kid for r in records) == sorted(k.thumbprint() for k in rsa_keys)
    assert [r.status for r in records].count("active") == 1


async def test_an_edit_holds_the_directory_lock_until_written(
    store: DirectoryKeyStore, rsa_keys: list[RSAKey],
) -> None:
    await add(store, rsa_keys[0])
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def slow(records: list[KeyRecord]) -> KeyChange:
        inside.set()
        release.wait(timeout=10)
        order.append("slow")
        record = KeyRecord(kid=rsa_keys[1].thumbprint(), status="published",
                           created_at=datetime.now(UTC))
        return KeyChange([*records, record], {record.kid: rsa_keys[1]})

    first = threading.Thread(target=DirectoryKeyStore(store.directory).apply_now,
                             args=(slow,))
    first.start()
    assert inside.wait(timeout=10)

    def second_editor() -> None:
        asyncio.run(add(DirectoryKeyStore(store.directory), rsa_keys[2]))
        order.append("second")

    second = threading.Thread(target=second_editor)
    second.start()
    second.join(timeout=0.3)
    assert second.is_alive(), "a second editor got in while the first held the lock"
    release.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert order == ["slow", "second"]
    kids = [r.kid for r in await store.records()]
    assert kids == [rsa_keys[0].thumbprint(), rsa_keys[1].thumbprint(), rsa_keys[2].thumbprint()]


# --- importing PEMs -------------------------------------------------------------------


def test_parse_private_pem_accepts_rsa_2048_in_pkcs1_and_pkcs8() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = pem_of(private)
    pkcs1 = private.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
    assert parse_private_pem(pkcs8).thumbprint() == rfc7638_thumbprint(pkcs8)
    assert parse_private_pem(pkcs1).thumbprint() == rfc7638_thumbprint(pkcs8)


def test_parse_private_pem_accepts_ec_p256_and_ed25519() -> None:
    p256 = parse_private_pem(pem_of(ec.generate_private_key(ec.SECP256R1())))
    assert p256.as_dict(private=False)["crv"] == "P-256"
    ed = parse_private_pem(pem_of(ed25519.Ed25519PrivateKey.generate()))
    assert ed.as_dict(private=False)["crv"] == "Ed25519"


def test_parse_private_pem_refuses_a_short_key_without_a_warning() -> None:
    # filterwarnings=error: a SecurityWarning from joserfc would fail this test.
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    with pytest.raises(KeyMaterialError) as caught:
        parse_private_pem(pem_of(short))
    assert str(caught.value) == "RSA key is 1024 bits; at least 2048 are required"


def test_parse_private_pem_refuses_other_curves() -> None:
    with pytest.raises(KeyMaterialError) as caught:
        parse_private_pem(pem_of(ec.generate_private_key(ec.SECP384R1())))
    assert str(caught.value) == "EC key on secp384r1; only P-256 (ES256) is supported"


def test_parse_private_pem_refuses_a_public_key() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(KeyMaterialError) as caught:
        parse_private_pem(pem_of(private, public=True))
    assert str(caught.value) == "the PEM holds a public key; a private key is needed to sign"


@pytest.mark.parametrize("data", [
    b"",
    b"garbage \x00\xff",
    b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048), password=b"pw"),
], ids=["empty", "garbage", "truncated", "encrypted"])
def test_parse_private_pem_refuses_what_is_not_a_private_key(data: bytes) -> None:
    with pytest.raises(KeyMaterialError) as caught:
        parse_private_pem(data)
    assert str(caught.value) == "not a private key in PEM form"


def test_state_file_name_is_keys_json(store: DirectoryKeyStore) -> None:
    assert store.state_path == store.directory / STATE_FILE == store.directory / "keys.json"
