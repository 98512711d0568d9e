"""KeyStore: the keys directory, its state file, and the operations the CLI runs on it."""

from __future__ import annotations

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
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import RSAKey

from provider.keys.store import (
    STATE_FILE,
    KeyRecord,
    KeyStore,
    KeyStoreError,
    activate,
    add_key,
    generate_key,
    is_valid_kid,
    parse_private_pem,
    retire,
    rotate,
)


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


# --- records --------------------------------------------------------------------------


def test_key_record_json_round_trip_keeps_every_field() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    record = KeyRecord(kid="k" * 43, status="published", created_at=created,
                       activated_at=created + timedelta(days=1),
                       deactivated_at=created + timedelta(days=2))
    data = record.to_json()
    assert data == {
        "kid": "k" * 43,
        "status": "published",
        "created_at": "2026-01-02T03:04:05.678901+00:00",
        "activated_at": "2026-01-03T03:04:05.678901+00:00",
        "deactivated_at": "2026-01-04T03:04:05.678901+00:00",
    }
    assert KeyRecord.from_json(json.loads(json.dumps(data))) == record


def test_key_record_json_round_trip_without_optional_instants() -> None:
    record = KeyRecord(kid="k" * 43, status="active", created_at=datetime.now(UTC))
    assert KeyRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize("entry", [
    {"kid": "k" * 43, "status": "signing", "created_at": "2026-01-01T00:00:00+00:00"},
    {"kid": "k" * 43, "status": "active"},
])
def test_key_record_from_json_refuses_malformed_entry(entry: dict[str, str]) -> None:
    with pytest.raises(KeyStoreError, match="malformed"):
        KeyRecord.from_json(entry)


def test_records_of_missing_directory_is_empty(store: KeyStore) -> None:
    assert store.records() == []
    assert store.fingerprint() is None


def test_records_of_corrupt_state_file_raise_key_store_error(store: KeyStore) -> None:
    store.directory.mkdir()
    store.state_path.write_text("{not json")
    with pytest.raises(KeyStoreError, match="cannot read"):
        store.records()


# --- files ----------------------------------------------------------------------------


def test_generate_key_writes_private_files_with_owner_only_modes(store: KeyStore) -> None:
    record = generate_key(store)
    pem = store.pem_path(record.kid)
    assert mode(store.directory) == 0o700
    assert mode(pem) == 0o600
    assert mode(store.state_path) == 0o600
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not list(store.directory.glob("*.tmp"))
    state = json.loads(store.state_path.read_text())
    assert state == {"keys": [record.to_json()]}


def test_kid_is_the_rfc7638_thumbprint_of_the_key(store: KeyStore) -> None:
    record = generate_key(store)
    assert is_valid_kid(record.kid)
    assert record.kid == rfc7638_thumbprint(store.pem_path(record.kid).read_bytes())


def test_load_key_returns_the_private_key_that_was_stored(
    store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    record = add_key(store, rsa_keys[0])
    loaded = store.load_key(record.kid)
    assert loaded.is_private
    assert loaded.thumbprint() == record.kid == rsa_keys[0].thumbprint()
    assert loaded.as_dict(private=True) == rsa_keys[0].as_dict(private=True)


def test_load_key_refuses_a_pem_whose_thumbprint_does_not_match_its_name(
    store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    first = add_key(store, rsa_keys[0])
    second = add_key(store, rsa_keys[1])
    # Someone copies the wrong PEM over a key's file.
    shutil.copyfile(store.pem_path(second.kid), store.pem_path(first.kid))
    with pytest.raises(KeyStoreError, match="does not hold the key its name says"):
        store.load_key(first.kid)


def test_load_key_of_a_missing_file_says_so(store: KeyStore, rsa_keys: list[RSAKey]) -> None:
    record = add_key(store, rsa_keys[0])
    store.pem_path(record.kid).unlink()
    with pytest.raises(KeyStoreError, match="key file missing"):
        store.load_key(record.kid)


@pytest.mark.parametrize("kid", [
    "../../etc/passwd", "../" + "a" * 40, "a" * 42, "a" * 44, "a/" + "b" * 41, "", "a" * 43 + "\n",
])
def test_kids_that_are_not_thumbprints_never_reach_the_file_system(
    store: KeyStore, kid: str,
) -> None:
    assert not is_valid_kid(kid)
    with pytest.raises(KeyStoreError, match="not a key id"):
        store.pem_path(kid)
    with pytest.raises(KeyStoreError, match="not a key id"):
        store.load_key(kid)
    with pytest.raises(KeyStoreError, match="not a key id"):
        retire(store, kid)
    with pytest.raises(KeyStoreError, match="not a key id"):
        activate(store, kid)
    assert not store.directory.exists()


def test_fingerprint_changes_on_every_write(store: KeyStore, rsa_keys: list[RSAKey]) -> None:
    add_key(store, rsa_keys[0])
    before = store.fingerprint()
    add_key(store, rsa_keys[1])
    assert store.fingerprint() not in (None, before)


# --- the key life cycle ---------------------------------------------------------------


def test_first_key_signs_and_later_keys_are_published_only(
    store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    first = add_key(store, rsa_keys[0])
    second = add_key(store, rsa_keys[1])
    assert (first.status, second.status) == ("active", "published")
    assert first.activated_at is not None
    assert second.activated_at is None and second.deactivated_at is None
    assert [r.kid for r in store.records()] == [first.kid, second.kid]


def test_add_key_with_activate_takes_over_signing(
    store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    first = add_key(store, rsa_keys[0])
    second = add_key(store, rsa_keys[1], activate=True)
    records = {r.kid: r for r in store.records()}
    assert second.status == "active"
    assert records[first.kid].status == "published"
    assert records[first.kid].deactivated_at == second.activated_at


def test_add_key_twice_is_refused_and_changes_nothing(
    store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    add_key(store, rsa_keys[0])
    before = store.state_path.read_bytes()
    with pytest.raises(KeyStoreError, match="already in the key store"):
        add_key(store, rsa_keys[0])
    assert store.state_path.read_bytes() == before


def test_rotate_activates_the_newest_pending_key(
    store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    old = add_key(store, rsa_keys[0])
    add_key(store, rsa_keys[1])
    newest = add_key(store, rsa_keys[2])
    rotated = rotate(store)
    assert rotated.kid == newest.kid
    assert rotated.status == "active"
    statuses = {r.kid: r.status for r in store.records()}
    assert statuses[old.kid] == "published"
    assert list(statuses.values()).count("active") == 1


def test_rotate_without_pending_key_generates_one(
    store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    old = add_key(store, rsa_keys[0])
    rotated = rotate(store)
    assert rotated.kid != old.kid
    assert store.load_key(rotated.kid).thumbprint() == rotated.kid
    # A key that has signed before is not "pending": a second rotation makes a new one.
    assert rotate(store).kid not in (old.kid, rotated.kid)


def test_retire_refuses_the_active_key(store: KeyStore, rsa_keys: list[RSAKey]) -> None:
    active = add_key(store, rsa_keys[0])
    with pytest.raises(KeyStoreError, match="active signing key"):
        retire(store, active.kid)
    assert store.records()[0].status == "active"


def test_retire_of_a_published_key_is_final(store: KeyStore, rsa_keys: list[RSAKey]) -> None:
    add_key(store, rsa_keys[0])
    published = add_key(store, rsa_keys[1])
    retired = retire(store, published.kid)
    assert retired.status == "retired"
    assert retired.deactivated_at is not None
    assert store.records()[1] == retired
    with pytest.raises(KeyStoreError, match="retired and cannot sign again"):
        activate(store, published.kid)


def test_retire_of_an_unknown_kid_is_refused(store: KeyStore, rsa_keys: list[RSAKey]) -> None:
    add_key(store, rsa_keys[0])
    with pytest.raises(KeyStoreError, match="no key"):
        retire(store, rsa_keys[1].thumbprint())


def test_a_failed_edit_writes_nothing(store: KeyStore, rsa_keys: list[RSAKey]) -> None:
    add_key(store, rsa_keys[0])
    before = store.state_path.read_bytes()
    with pytest.raises(RuntimeError), store.editing() as records:
        records.clear()
        raise RuntimeError("crash half-way")
    assert store.state_path.read_bytes() == before


# --- concurrency ----------------------------------------------------------------------


def test_concurrent_additions_from_two_stores_both_land(
    tmp_path: Path, rsa_keys: list[RSAKey],
) -> None:
    directory = tmp_path / "keys"
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def add_three(keys: list[RSAKey]) -> None:
        own = KeyStore(directory)  # as two CLI processes would: separate instances
        start.wait()
        try:
            for key in keys:
                add_key(own, key)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add_three, args=(rsa_keys[i::2],)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    records = KeyStore(directory).records()
    assert sorted(r.kid for r in records) == sorted(k.thumbprint() for k in rsa_keys)
    assert [r.status for r in records].count("active") == 1


def test_editing_holds_the_directory_lock_until_written(
    store: KeyStore, rsa_keys: list[RSAKey],
) -> None:
    add_key(store, rsa_keys[0])
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def slow_editor() -> None:
        with KeyStore(store.directory).editing() as records:
            inside.set()
            release.wait(timeout=10)
            records.append(KeyRecord(kid=rsa_keys[1].thumbprint(), status="published",
                                     created_at=datetime.now(UTC)))
            order.append("slow")

    def second_editor() -> None:
        add_key(KeyStore(store.directory), rsa_keys[2])
        order.append("second")

    first = threading.Thread(target=slow_editor)
    first.start()
    assert inside.wait(timeout=10)
    second = threading.Thread(target=second_editor)
    second.start()
    second.join(timeout=0.3)
    assert second.is_alive(), "a second editor got in while the first held the lock"
    release.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert order == ["slow", "second"]
    kids = [r.kid for r in store.records()]
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


def test_parse_private_pem_refuses_a_short_key_without_a_warning() -> None:
    # filterwarnings=error: a SecurityWarning from joserfc would fail this test.
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    with pytest.raises(KeyStoreError) as caught:
        parse_private_pem(pem_of(short))
    assert str(caught.value) == "RSA key is 1024 bits; at least 2048 are required"


def test_parse_private_pem_refuses_a_public_key() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(KeyStoreError) as caught:
        parse_private_pem(pem_of(private, public=True))
    assert str(caught.value) == "the PEM holds a public key; a private key is needed to sign"


@pytest.mark.parametrize("data", [
    b"",
    b"garbage \x00\xff",
    b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    pem_of(ec.generate_private_key(ec.SECP256R1())),
    pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048), password=b"pw"),
], ids=["empty", "garbage", "truncated", "ec-key", "encrypted"])
def test_parse_private_pem_refuses_what_is_not_an_rsa_private_key(data: bytes) -> None:
    with pytest.raises(KeyStoreError) as caught:
        parse_private_pem(data)
    assert str(caught.value) == "not an RSA private key in PEM form"


def test_state_file_name_is_keys_json(store: KeyStore) -> None:
    assert store.state_path == store.directory / STATE_FILE == store.directory / "keys.json"
