"""Where signing keys live: a directory (one PEM per key, named by its kid, and
``keys.json`` for their state) or the database (``signing_keys``, private keys encrypted
under a key derived from the server secret).

Both stores answer the same few questions (the state of every key, the private keys, a
cheap version that changes with every edit) and apply an edit the same way: a planner
looks at the current records and says what changes, and the store writes all of it or
nothing, never on top of a change it did not see (the directory under an exclusive
lock; the database by ``UPDATE signing_key_state ... WHERE version = :seen``). So of two
processes that plan the same rotation at the same moment, exactly one applies it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from provider.audit.models import AuditEvent
from provider.audit.service import EventType, event_row
from provider.keys.algorithms import (
    DEFAULT_ALGORITHM,
    Algorithm,
    KeyMaterialError,
    PrivateKey,
    from_pem,
    is_algorithm,
    to_pem,
)
from provider.keys.models import SigningKey, SigningKeyState

STATE_FILE = "keys.json"
# A kid is an RFC 7638 SHA-256 thumbprint: 43 base64url characters. Anything else is
# refused before it can reach a file name (path traversal) or a lookup.
KID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")
# An edit that keeps meeting other processes' edits gives up after this many tries.
EDIT_ATTEMPTS = 5

KeyStatus = Literal["active", "published", "retired"]
STATUSES: tuple[KeyStatus, ...] = ("active", "published", "retired")


class KeyStoreError(Exception):
    """A key operation that cannot be done; the message is safe to show."""


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    status: KeyStatus
    created_at: datetime
    """Published from this instant on: a key is in the JWKS as soon as it is stored."""
    activated_at: datetime | None = None
    # When it stopped signing; its tokens may live until this + the longest token TTL.
    deactivated_at: datetime | None = None
    alg: Algorithm = DEFAULT_ALGORITHM

    @property
    def is_pending(self) -> bool:
        """Published ahead of use and never signed."""
        return self.status == "published" and self.activated_at is None

    def to_json(self) -> dict[str, str | None]:
        data = asdict(self)
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        def when(name: str) -> datetime | None:
            value = data.get(name)
            return datetime.fromisoformat(value) if isinstance(value, str) and value else None

        try:
            created = when("created_at")
        except ValueError:
            created = None
        alg = data.get("alg", DEFAULT_ALGORITHM)  # files written before algorithms: RS256
        if (created is None or data.get("status") not in STATUSES or not is_algorithm(alg)
                or not isinstance(data.get("kid"), str)):
            raise KeyStoreError(f"{STATE_FILE} has a malformed entry")
        return cls(
            kid=str(data["kid"]),
            status=data["status"],
            created_at=created,
            activated_at=when("activated_at"),
            deactivated_at=when("deactivated_at"),
            alg=alg,
        )


def is_valid_kid(kid: object) -> bool:
    return isinstance(kid, str) and bool(KID_PATTERN.fullmatch(kid))


def check_kid(kid: str) -> None:
    if not is_valid_kid(kid):
        raise KeyStoreError(f"not a key id: {kid!r}")


@dataclass
class KeyChange:
    """What an edit does: the whole new state, the key material of new keys, and one
    audit event per key whose state changed."""

    records: list[KeyRecord]
    new_keys: dict[str, PrivateKey] = field(default_factory=dict)
    events: list[tuple[EventType, KeyRecord]] = field(default_factory=list)
    # Set by the store: whether the events were written with the change (database).
    events_written: bool = False


Planner = Callable[[list[KeyRecord]], KeyChange | None]
"""Looks at the current records and returns the change to make, None for "nothing to
do", or raises KeyStoreError. Called again if another process changed the set meanwhile,
so it must be pure (no key generation inside)."""


class KeyStore(Protocol):
    description: str

    async def version(self) -> Hashable | None:
        """Changes with every edit; cheap (one stat, or one one-row query)."""
        ...

    async def records(self) -> list[KeyRecord]: ...

    async def private_keys(self, records: Sequence[KeyRecord]) -> dict[str, PrivateKey]:
        """The parsed private keys of ``records`` (never of retired ones)."""
        ...

    async def apply(self, planner: Planner, *, actor: str,
                    now: datetime | None = None) -> KeyChange | None:
        """Plan on the current records and write the change, all or nothing."""
        ...


def _check_change(before: list[KeyRecord], change: KeyChange) -> None:
    """A planner may add keys and change states; it never drops a record."""
    after = {r.kid for r in change.records}
    if not {r.kid for r in before} <= after:
        raise AssertionError("a key change may not drop records")
    if sum(r.status == "active" for r in change.records) > 1:
        raise AssertionError("a key change may not leave two active keys")
    known = {r.kid for r in before}
    for record in change.records:
        if (record.kid not in known and record.kid not in change.new_keys
                and record.status != "retired"):
            raise AssertionError(f"new key {record.kid} comes without its key material")


def _parse(pem: bytes, record: KeyRecord, where: str) -> PrivateKey:
    try:
        key = from_pem(pem, record.alg)
    except KeyMaterialError as exc:
        raise KeyStoreError(f"{where}: {exc}") from None
    if key.thumbprint() != record.kid:
        raise KeyStoreError(f"{where} does not hold the key its name says")
    return key


# --- the directory ---------------------------------------------------------------------------


class DirectoryKeyStore:
    """The keys directory: the CLI edits it under an exclusive lock and writes the state
    file atomically; servers notice a change by the state file's mtime and inode."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.description = f"directory {directory}"

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def pem_path(self, kid: str) -> Path:
        check_kid(kid)
        return self.directory / f"{kid}.pem"

    def fingerprint(self) -> tuple[int, int] | None:
        try:
            st = self.state_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def read_records(self) -> list[KeyRecord]:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot read {self.state_path}: {exc}") from None
        items = raw.get("keys", []) if isinstance(raw, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise KeyStoreError(f"{STATE_FILE} has a malformed entry")
        return [KeyRecord.from_json(item) for item in items]

    def load_key(self, record: KeyRecord) -> PrivateKey:
        path = self.pem_path(record.kid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"key file missing: {path}") from None
        return _parse(data, record, str(path))

    async def version(self) -> Hashable | None:
        return self.fingerprint()

    async def records(self) -> list[KeyRecord]:
        return self.read_records()

    async def private_keys(self, records: Sequence[KeyRecord]) -> dict[str, PrivateKey]:
        wanted = [r for r in records if r.status != "retired"]
        # Parsing an RSA key takes tens of milliseconds: not on the event loop.
        return await asyncio.to_thread(lambda: {r.kid: self.load_key(r) for r in wanted})

    async def apply(self, planner: Planner, *, actor: str,
                    now: datetime | None = None) -> KeyChange | None:
        # The lock may be held by another process: wait for it off the event loop.
        return await asyncio.to_thread(self.apply_now, planner)

    def apply_now(self, planner: Planner) -> KeyChange | None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            before = self.read_records()
            change = planner(list(before))
            if change is None:
                return None
            _check_change(before, change)
            for key in change.new_keys.values():
                self._write_pem(key)
            self._write_state(change.records)
            # A retired key may never sign again: its private half goes.
            was_retired = {r.kid for r in before if r.status == "retired"}
            for record in change.records:
                if record.status == "retired" and record.kid not in was_retired:
                    self.pem_path(record.kid).unlink(missing_ok=True)
            return change

    def _write_state(self, records: Iterable[KeyRecord]) -> None:
        tmp = self.state_path.with_suffix(".json.tmp")
        body = json.dumps({"keys": [r.to_json() for r in records]}, indent=2) + "\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.replace(tmp, self.state_path)

    def _write_pem(self, key: PrivateKey) -> str:
        kid = key.thumbprint()
        path = self.pem_path(kid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(to_pem(key))
        return kid


# --- the database ----------------------------------------------------------------------------

signing_keys = cast(Table, SigningKey.__table__)
key_state = cast(Table, SigningKeyState.__table__)
audit_events = cast(Table, AuditEvent.__table__)


class KeyBox:
    """Private keys at rest: AES-256-GCM under a key derived (HKDF) from the server
    secret, with the kid as associated data, so a sealed key only opens as its own row."""

    VERSION = b"\x01"

    def __init__(self, server_secret: bytes) -> None:
        self._aead = AESGCM(derive_key(server_secret, "signing-key-encryption/v1"))

    def seal(self, kid: str, pem: bytes) -> bytes:
        nonce = os.urandom(12)
        return self.VERSION + nonce + self._aead.encrypt(nonce, pem, kid.encode("ascii"))

    def open(self, kid: str, sealed: bytes) -> bytes:
        if sealed[:1] != self.VERSION or len(sealed) < 1 + 12 + 16:
            raise KeyStoreError(f"signing key {kid} is stored in an unknown form")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], kid.encode("ascii"))
        except InvalidTag:
            raise KeyStoreError(
                f"signing key {kid} cannot be decrypted: PROVIDER_SECRET_KEY is not the "
                "secret it was stored with") from None


class DatabaseKeyStore:
    """``signing_keys`` and ``signing_key_state`` in the database every host shares.

    ``engine`` runs the edits (real transactions); ``reader`` (the same pool in autocommit
    on PostgreSQL) the one-row version check each server process makes once a second.
    """

    description = "database"

    def __init__(self, engine: AsyncEngine, server_secret: bytes,
                 reader: AsyncEngine | None = None) -> None:
        self._engine = engine
        self._reader = reader or engine
        self._box = KeyBox(server_secret)

    async def version(self) -> Hashable | None:
        async with self._reader.connect() as conn:
            return await self._version(conn)

    async def _version(self, conn: AsyncConnection) -> int:
        try:
            value = (await conn.execute(
                select(key_state.c.version).where(key_state.c.id == 1))).scalar()
        except (ProgrammingError, OperationalError) as exc:
            if _is_missing_table(exc):
                raise KeyStoreError("the database has no signing_keys table; run "
                                    "`provider migrate`") from None
            raise
        if value is None:
            raise KeyStoreError("signing_key_state has no row; run `provider migrate`")
        return int(value)

    async def records(self) -> list[KeyRecord]:
        async with self._reader.connect() as conn:
            return await self._records(conn)

    async def _records(self, conn: AsyncConnection) -> list[KeyRecord]:
        t = signing_keys
        try:
            rows = (await conn.execute(
                select(t.c.kid, t.c.status, t.c.created_at, t.c.activated_at,
                       t.c.deactivated_at, t.c.alg).order_by(t.c.created_at, t.c.kid))).all()
        except (ProgrammingError, OperationalError) as exc:
            if _is_missing_table(exc):
                raise KeyStoreError("the database has no signing_keys table; run "
                                    "`provider migrate`") from None
            raise
        records = []
        for kid, status, created_at, activated_at, deactivated_at, alg in rows:
            if status not in STATUSES or not is_algorithm(alg):
                raise KeyStoreError(f"signing_keys has a malformed row ({kid})")
            records.append(KeyRecord(kid=kid, status=status, created_at=created_at,
                                     activated_at=activated_at,
                                     deactivated_at=deactivated_at, alg=alg))
        return records

    async def private_keys(self, records: Sequence[KeyRecord]) -> dict[str, PrivateKey]:
        wanted = {r.kid: r for r in records if r.status != "retired"}
        if not wanted:
            return {}
        t = signing_keys
        async with self._reader.connect() as conn:
            rows = (await conn.execute(select(t.c.kid, t.c.private_key_encrypted)
                                       .where(t.c.kid.in_(list(wanted))))).all()
        sealed = {kid: value for kid, value in rows}

        def parse() -> dict[str, PrivateKey]:
            keys = {}
            for kid, record in wanted.items():
                value = sealed.get(kid)
                if value is None:
                    raise KeyStoreError(f"signing key {kid} has no key material")
                keys[kid] = _parse(self._box.open(kid, bytes(value)), record,
                                   f"signing key {kid}")
            return keys

        return await asyncio.to_thread(parse)

    async def apply(self, planner: Planner, *, actor: str,
                    now: datetime | None = None) -> KeyChange | None:
        for _ in range(EDIT_ATTEMPTS):
            async with self._reader.connect() as conn:
                seen = await self._version(conn)
                before = await self._records(conn)
            change = planner(list(before))
            if change is None:
                return None
            _check_change(before, change)
            sealed = {kid: self._box.seal(kid, to_pem(key))
                      for kid, key in change.new_keys.items()}
            try:
                await self._write(seen, before, change, sealed, actor,
                                  now or datetime.now(UTC))
            except _Moved:
                continue
            change.events_written = True
            return change
            # Another process changed the key set since we looked: plan again on its
            # result (a rotation it already made is then no longer due).
        raise KeyStoreError("the key set kept changing under this command; run it again")

    async def _write(self, seen: int, before: list[KeyRecord], change: KeyChange,
                     sealed: dict[str, bytes], actor: str, now: datetime) -> None:
        old = {r.kid: r for r in before}
        t = signing_keys
        async with self._engine.begin() as conn:
            moved = await conn.execute(
                update(key_state).where(key_state.c.id == 1, key_state.c.version == seen)
                .values(version=seen + 1))
            if moved.rowcount != 1:
                raise _Moved  # rolls the (empty) transaction back
            for record in change.records:
                previous = old.get(record.kid)
                if previous is None:
                    await conn.execute(insert(t).values(
                        kid=record.kid, alg=record.alg, status=record.status,
                        created_at=record.created_at, activated_at=record.activated_at,
                        deactivated_at=record.deactivated_at,
                        private_key_encrypted=sealed.get(record.kid)))  # None: retired
                elif previous != record:
                    values: dict[str, Any] = {
                        "status": record.status, "activated_at": record.activated_at,
                        "deactivated_at": record.deactivated_at}
                    if record.status == "retired":
                        values["private_key_encrypted"] = None
                    await conn.execute(update(t).where(t.c.kid == record.kid).values(**values))
            if change.events:
                await conn.execute(insert(audit_events), [
                    event_row(event=event, actor=actor, now=now,
                              details={"kid": record.kid, "status": record.status})
                    for event, record in change.events])


class _Moved(Exception):
    """The key set's version moved on between planning and writing."""


def _is_missing_table(exc: DBAPIError) -> bool:
    text = str(exc.orig or exc).lower()
    return "signing_key" in text and ("does not exist" in text or "no such table" in text)


# --- the server secret -------------------------------------------------------------------------


SECRET_KEY_FILE = "secret.key"  # noqa: S105 (a file name)


def derive_key(server_secret: bytes, purpose: str) -> bytes:
    """A 256-bit key for one purpose, derived from the server secret (HKDF-SHA256, RFC
    5869): the secret itself keys email codes, so each use gets a key of its own."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"provider/{purpose}".encode()).derive(server_secret)


def load_secret_key(configured: str | None, directory: Path) -> bytes:
    """The server secret (HMAC of one-time codes, encryption of TOTP secrets and of
    signing keys in the database).

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
