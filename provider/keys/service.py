"""The in-process key ring: the active signer, verification keys and the JWKS document.

PEM parsing costs tens of milliseconds, so keys are parsed once per process and kept;
the ring looks at the key directory at most once a second and reloads when the CLI
changed it, so every server process agrees on the active key after a rotation.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from joserfc.jwk import RSAKey

from provider.clock import Clock
from provider.keys.store import KeyRecord, KeyStore, is_valid_kid

log = logging.getLogger("provider.keys")

CHECK_INTERVAL_SECONDS = 1.0


class NoSigningKey(Exception):
    """No active key: run ``provider keys generate``."""


@dataclass(frozen=True)
class Snapshot:
    active_kid: str | None
    keys: dict[str, RSAKey]
    """Every key that verifies: the active one and the published ones."""
    jwks_json: bytes


class KeyRing:
    def __init__(self, store: KeyStore, clock: Clock, token_lifetime: timedelta) -> None:
        self._store = store
        self._clock = clock
        # A deactivated key stays in the JWKS while tokens it signed may still be live.
        self._token_lifetime = token_lifetime
        self._parsed: dict[str, RSAKey] = {}
        self._fingerprint: tuple[int, int] | None = None
        self._checked_at = float("-inf")
        self._records: list[KeyRecord] = []
        self._snapshot = Snapshot(None, {}, b'{"keys":[]}')

    def snapshot(self) -> Snapshot:
        monotonic = time.monotonic()
        if monotonic - self._checked_at >= CHECK_INTERVAL_SECONDS:
            self._checked_at = monotonic
            fingerprint = self._store.fingerprint()
            if fingerprint != self._fingerprint:
                self._reload(fingerprint)
            elif self._has_expiring_keys():
                self._snapshot = self._build(self._records)
        return self._snapshot

    def reload(self) -> None:
        """Force a re-read (tests and the CLI)."""
        self._checked_at = float("-inf")
        self._fingerprint = None
        self.snapshot()

    def signing_key(self) -> tuple[str, RSAKey]:
        snap = self.snapshot()
        if snap.active_kid is None:
            raise NoSigningKey("no active signing key; run `provider keys generate`")
        return snap.active_kid, snap.keys[snap.active_kid]

    def verification_key(self, kid: object) -> RSAKey | None:
        if not isinstance(kid, str) or not is_valid_kid(kid):
            return None
        return self.snapshot().keys.get(kid)

    def jwks_json(self) -> bytes:
        return self.snapshot().jwks_json

    def _reload(self, fingerprint: tuple[int, int] | None) -> None:
        records = self._store.records()
        for record in records:
            if record.status != "retired" and record.kid not in self._parsed:
                self._parsed[record.kid] = self._store.load_key(record.kid)
        self._records = records
        self._fingerprint = fingerprint
        self._snapshot = self._build(records)
        log.info("signing keys loaded: active=%s", self._snapshot.active_kid)

    def _is_published(self, record: KeyRecord) -> bool:
        if record.status == "active":
            return True
        if record.status == "retired":
            return False
        if record.deactivated_at is None:  # published ahead of its activation
            return True
        return self._clock.now() < record.deactivated_at + self._token_lifetime

    def _has_expiring_keys(self) -> bool:
        return any(
            r.status == "published" and r.deactivated_at is not None
            and r.kid in self._snapshot.keys and not self._is_published(r)
            for r in self._records
        )

    def _build(self, records: list[KeyRecord]) -> Snapshot:
        keys = {r.kid: self._parsed[r.kid] for r in records if self._is_published(r)}
        active = next((r.kid for r in records if r.status == "active"), None)
        jwks = {
            "keys": [
                {**key.as_dict(private=False), "kid": kid, "use": "sig", "alg": "RS256"}
                for kid, key in keys.items()
            ]
        }
        body = json.dumps(jwks, separators=(",", ":")).encode()
        return Snapshot(active, keys, body)
