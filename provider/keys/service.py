"""The in-process key ring: the active signer, the verification keys and the JWKS
document, kept in memory; and the background task that keeps them current.

Parsing a private key costs up to tens of milliseconds and the store may be a database,
so the token path never touches either: it reads the ring's current snapshot, a plain
attribute. Once a second a background task asks the store for its version (one stat, or
one one-row query) and reloads only when it moved, parsing only keys it has not seen;
it also drops keys whose tokens can no longer be valid, and, with automatic rotation on,
makes the rotation step that is due (provider.keys.lifecycle). So every process agrees
on the active key within about a second of a change, whichever process or CLI made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from provider.clock import Clock
from provider.keys.algorithms import Algorithm, PrivateKey
from provider.keys.lifecycle import Schedule, maintenance_due, new_key, plan_maintenance
from provider.keys.store import KeyChange, KeyRecord, KeyStore, is_valid_kid

log = logging.getLogger("provider.keys")

CHECK_INTERVAL_SECONDS = 1.0
# Who the audit trail names for what automatic rotation does.
SYSTEM_ACTOR = "system"


class NoSigningKey(Exception):
    """No active key: run ``provider keys generate``."""


@dataclass(frozen=True)
class LoadedKey:
    kid: str
    alg: Algorithm
    key: PrivateKey


@dataclass(frozen=True)
class Snapshot:
    active: LoadedKey | None
    keys: dict[str, LoadedKey]
    """Every key that verifies: the active one and the published ones."""
    jwks_json: bytes
    algorithms: tuple[Algorithm, ...]
    """The algorithms of the published keys."""
    records: tuple[KeyRecord, ...]
    changes_at: datetime | None
    """When a published key next leaves the JWKS on its own (its tokens have expired)."""


EMPTY = Snapshot(None, {}, b'{"keys":[]}', (), (), None)


class Rotator:
    """Automatic rotation, run by every server process; the store's conditional edit
    lets exactly one of them make each step."""

    def __init__(self, store: KeyStore, clock: Clock, schedule: Schedule, alg: Algorithm,
                 *, on_change: Callable[[KeyChange], None] | None = None) -> None:
        self._store = store
        self._clock = clock
        self.schedule = schedule
        self._alg = alg
        self._on_change = on_change

    async def tick(self, records: list[KeyRecord]) -> KeyChange | None:
        """Make the step that is due, if any; the change, or None."""
        due = maintenance_due(records, self._clock.now(), self.schedule)
        if due is None:
            return None
        spare = await new_key(self._alg) if due == "publish" else None
        change = await self._store.apply(
            lambda current: plan_maintenance(current, self._clock.now(), self.schedule,
                                             spare, self._alg),
            actor=SYSTEM_ACTOR, now=self._clock.now())
        if change is not None:
            for event, record in change.events:
                log.info("key rotation: %s %s (%s)", event.value, record.kid, record.alg)
            if self._on_change is not None:
                self._on_change(change)
        return change


class KeyRing:
    def __init__(self, store: KeyStore, clock: Clock, *, retire_after: timedelta,
                 rotator: Rotator | None = None,
                 check_interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self._store = store
        self._clock = clock
        # A key that stopped signing stays in the JWKS while tokens it signed may still
        # be valid: the longest token lifetime plus the margin.
        self._retire_after = retire_after
        self.rotator = rotator
        self._interval = check_interval
        self._parsed: dict[str, PrivateKey] = {}
        self._version: object = object()  # equal to no version: the first refresh loads
        self._records: list[KeyRecord] = []
        self._snapshot = EMPTY
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._maintenance_failing = False
        self.checks = 0  # beats of the background task so far

    @property
    def store(self) -> KeyStore:
        return self._store

    # --- the token path: memory only ------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def signing_key(self) -> LoadedKey:
        active = self._snapshot.active
        if active is None:
            raise NoSigningKey("no active signing key; run `provider keys generate`")
        return active

    def verification_key(self, kid: object) -> LoadedKey | None:
        if not isinstance(kid, str) or not is_valid_kid(kid):
            return None
        return self._snapshot.keys.get(kid)

    def jwks_json(self) -> bytes:
        return self._snapshot.jwks_json

    def algorithms(self) -> tuple[Algorithm, ...]:
        return self._snapshot.algorithms

    # --- keeping current -----------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> None:
        """Reload when the store's version moved (or ``force``); otherwise only let keys
        whose tokens have all expired leave the JWKS."""
        now = self._clock.now()
        version = await self._store.version()
        if force or version != self._version:
            records = await self._store.records()
            wanted = [r for r in records if r.kid not in self._parsed
                      and r.status != "retired" and self._is_published(r, now)]
            if wanted:
                self._parsed.update(await self._store.private_keys(wanted))
            live = {r.kid for r in records if r.status != "retired"}
            self._parsed = {kid: key for kid, key in self._parsed.items() if kid in live}
            self._records, self._version = records, version
            before = self._snapshot.active
            self._snapshot = self._build(records, now)
            active = self._snapshot.active
            if before is None or active is None or before.kid != active.kid:
                log.info("signing keys loaded from the %s: active=%s (%s)",
                         self._store.description, active.kid if active else None,
                         active.alg if active else "-")
        elif self._snapshot.changes_at is not None and now >= self._snapshot.changes_at:
            self._snapshot = self._build(self._records, now)

    async def check(self) -> None:
        """One beat of the background task: refresh, then the rotation step due. A step
        that fails (a read-only keys directory, a database role that may not write the
        keys) is said once and tried again at the next beat; the keys in use and their
        refresh are not concerned."""
        await self.refresh()
        if self.rotator is None:
            return
        try:
            changed = await self.rotator.tick(list(self._records))
        except Exception as exc:
            if not self._maintenance_failing:
                self._maintenance_failing = True
                reason = (str(exc).splitlines() or [""])[0]
                log.warning("key maintenance (rotation, retirement) not done, the keys in "
                            "use are unaffected: %s: %s", type(exc).__name__, reason)
            return
        if self._maintenance_failing:
            self._maintenance_failing = False
            log.warning("key maintenance done again")
        if changed:
            await self.refresh(force=True)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="key-ring")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.checks += 1
            try:
                await self.check()
            except Exception as exc:
                # The database may be down: keep signing with what we have, and say so
                # once, not once a second.
                if not self._failing:
                    self._failing = True
                    reason = (str(exc).splitlines() or [""])[0]
                    log.error("signing keys not checked (the current ones stay in use): "
                              "%s: %s", type(exc).__name__, reason)
                continue
            if self._failing:
                self._failing = False
                log.warning("signing keys checked again")

    # --- building a snapshot ---------------------------------------------------------------

    def _is_published(self, record: KeyRecord, now: datetime) -> bool:
        if record.status == "active":
            return True
        if record.status == "retired":
            return False
        if record.deactivated_at is None:  # published ahead of its activation
            return True
        return now < record.deactivated_at + self._retire_after

    def _build(self, records: list[KeyRecord], now: datetime) -> Snapshot:
        keys = {r.kid: LoadedKey(r.kid, r.alg, self._parsed[r.kid]) for r in records
                if self._is_published(r, now) and r.kid in self._parsed}
        active = next((keys.get(r.kid) for r in records if r.status == "active"), None)
        jwks = {"keys": [{**loaded.key.as_dict(private=False), "kid": kid, "use": "sig",
                          "alg": loaded.alg} for kid, loaded in keys.items()]}
        leaving = [r.deactivated_at + self._retire_after for r in records
                   if r.kid in keys and r.status == "published" and r.deactivated_at]
        return Snapshot(
            active=active,
            keys=keys,
            jwks_json=json.dumps(jwks, separators=(",", ":")).encode(),
            algorithms=tuple(sorted({loaded.alg for loaded in keys.values()})),
            records=tuple(records),
            changes_at=min(leaving) if leaving else None,
        )
