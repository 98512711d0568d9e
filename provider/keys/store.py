"""Signing keys on disk: one PEM per key named by its kid, plus ``keys.json`` for state.

The directory is the source of truth that several server processes share: the CLI
writes it (atomically, under a lock), servers notice the change and reload.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

STATE_FILE = "keys.json"
MIN_RSA_BITS = 2048
# A kid is an RFC 7638 SHA-256 thumbprint: 43 base64url characters. Anything else is
# refused before it can reach a file name (path traversal) or a lookup.
KID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")

KeyStatus = Literal["active", "published", "retired"]


class KeyStoreError(Exception):
    """A key operation that cannot be done; the message is safe to show."""


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    status: KeyStatus
    created_at: datetime
    activated_at: datetime | None = None
    # When it stopped signing; its tokens may live until this + the longest token TTL.
    deactivated_at: datetime | None = None

    def to_json(self) -> dict[str, str | None]:
        data = asdict(self)
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, str | None]) -> KeyRecord:
        def when(name: str) -> datetime | None:
            value = data.get(name)
            return datetime.fromisoformat(value) if value else None

        created = when("created_at")
        if created is None or data.get("status") not in ("active", "published", "retired"):
            raise KeyStoreError(f"{STATE_FILE} has a malformed entry")
        return cls(
            kid=str(data["kid"]),
            status=data["status"],  # type: ignore[arg-type]
            created_at=created,
            activated_at=when("activated_at"),
            deactivated_at=when("deactivated_at"),
        )


def is_valid_kid(kid: str) -> bool:
    return bool(KID_PATTERN.fullmatch(kid))


class KeyStore:
    """Reads and writes the keys directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def pem_path(self, kid: str) -> Path:
        _check_kid(kid)
        return self.directory / f"{kid}.pem"

    def fingerprint(self) -> tuple[int, int] | None:
        """Changes whenever the state file is rewritten (cheap: one stat)."""
        try:
            st = self.state_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def records(self) -> list[KeyRecord]:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot read {self.state_path}: {exc}") from None
        return [KeyRecord.from_json(item) for item in raw.get("keys", [])]

    def load_key(self, kid: str) -> RSAKey:
        path = self.pem_path(kid)
        try:
            key = RSAKey.import_key(path.read_bytes())
        except FileNotFoundError:
            raise KeyStoreError(f"key file missing: {path}") from None
        if key.thumbprint() != kid:
            raise KeyStoreError(f"{path} does not hold the key its name says")
        return key

    @contextmanager
    def editing(self) -> Iterator[list[KeyRecord]]:
        """Lock the directory, yield the records to modify, write them back atomically."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self.records()
            yield records
            self._write_state(records)

    def _write_state(self, records: list[KeyRecord]) -> None:
        tmp = self.state_path.with_suffix(".json.tmp")
        body = json.dumps({"keys": [r.to_json() for r in records]}, indent=2) + "\n"
        tmp.write_text(body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.state_path)

    def write_pem(self, key: RSAKey) -> str:
        kid = key.thumbprint()
        path = self.pem_path(kid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.as_pem(private=True))
        return kid


def now_utc() -> datetime:
    return datetime.now(UTC)


def parse_private_pem(data: bytes) -> RSAKey:
    """An RSA private key of at least 2048 bits, or KeyStoreError."""
    # cryptography checks type and size first: joserfc warns (SecurityWarning) on a
    # short key, which would be noise on the CLI's stderr and an error under -W error.
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyStoreError("not an RSA private key in PEM form") from None
        raise KeyStoreError(
            "the PEM holds a public key; a private key is needed to sign"
        ) from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise KeyStoreError("not an RSA private key in PEM form")
    if private.key_size < MIN_RSA_BITS:
        raise KeyStoreError(
            f"RSA key is {private.key_size} bits; at least {MIN_RSA_BITS} are required"
        )
    return RSAKey.import_key(data)


def generate_key(store: KeyStore, *, activate: bool | None = None) -> KeyRecord:
    """Create a new RSA-2048 key. It signs at once when asked, or when no key signs yet."""
    return add_key(store, RSAKey.generate_key(MIN_RSA_BITS, private=True), activate=activate)


def add_key(store: KeyStore, key: RSAKey, *, activate: bool | None = None) -> KeyRecord:
    now = now_utc()
    with store.editing() as records:
        kid = key.thumbprint()
        if any(r.kid == kid for r in records):
            raise KeyStoreError(f"key {kid} is already in the key store")
        store.write_pem(key)
        record = KeyRecord(kid=kid, status="published", created_at=now)
        records.append(record)
        if activate or (activate is None and not any(r.status == "active" for r in records)):
            _activate(records, kid, now)
        return next(r for r in records if r.kid == kid)


def rotate(store: KeyStore) -> KeyRecord:
    """Make the newest published, never-used key sign (generating one if there is none).

    Publishing a key first (``keys generate``) and rotating later lets resource servers
    that cache the JWKS learn the key before any token carries it.
    """
    now = now_utc()
    with store.editing() as records:
        pending = [r for r in records if r.status == "published" and r.activated_at is None]
        if pending:
            kid = max(pending, key=lambda r: r.created_at).kid
        else:
            key = RSAKey.generate_key(MIN_RSA_BITS, private=True)
            kid = store.write_pem(key)
            records.append(KeyRecord(kid=kid, status="published", created_at=now))
        _activate(records, kid, now)
        return next(r for r in records if r.kid == kid)


def _check_kid(kid: str) -> None:
    if not is_valid_kid(kid):
        raise KeyStoreError(f"not a key id: {kid!r}")


def activate(store: KeyStore, kid: str) -> KeyRecord:
    _check_kid(kid)
    now = now_utc()
    with store.editing() as records:
        target = next((r for r in records if r.kid == kid), None)
        if target is None:
            raise KeyStoreError(f"no key {kid}")
        if target.status == "retired":
            raise KeyStoreError(f"key {kid} is retired and cannot sign again")
        _activate(records, kid, now)
        return next(r for r in records if r.kid == kid)


def retire(store: KeyStore, kid: str) -> KeyRecord:
    """Take a key out of the JWKS for good: tokens it signed stop verifying."""
    _check_kid(kid)
    with store.editing() as records:
        for index, record in enumerate(records):
            if record.kid != kid:
                continue
            if record.status == "active":
                raise KeyStoreError(
                    f"key {kid} is the active signing key; rotate to another key first"
                )
            records[index] = replace(
                record, status="retired", deactivated_at=record.deactivated_at or now_utc()
            )
            return records[index]
        raise KeyStoreError(f"no key {kid}")


def _activate(records: list[KeyRecord], kid: str, now: datetime) -> None:
    for index, record in enumerate(records):
        if record.kid == kid:
            records[index] = replace(record, status="active", activated_at=now)
        elif record.status == "active":
            records[index] = replace(record, status="published", deactivated_at=now)


SECRET_KEY_FILE = "secret.key"  # noqa: S105 (a file name)


def load_secret_key(configured: str | None, directory: Path) -> bytes:
    """The server secret (HMAC of one-time codes, encryption of TOTP secrets).

    PROVIDER_SECRET_KEY when set; otherwise a 256-bit key generated once into the keys
    directory, so every process that shares the directory shares the secret.
    """
    if configured:
        if len(configured) < 32:
            raise KeyStoreError("PROVIDER_SECRET_KEY must be at least 32 characters")
        return configured.encode("utf-8")
    path = directory / SECRET_KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError:
        raise KeyStoreError(f"{path} is not a hex-encoded key") from None
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Write a complete file under a temporary name, then link it into place: a process
    # that starts at the same moment sees either no file or the whole key, never half.
    tmp = directory / f".{SECRET_KEY_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(os.urandom(32).hex())
    try:
        os.link(tmp, path)
    except FileExistsError:  # another process made it first: use theirs
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())
