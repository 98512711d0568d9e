"""The life of a signing key, the same on either store: generated or imported
(published: in the JWKS, not yet signing), activated (signs; the previous key stays
published), retired (out of the JWKS; its private half is dropped).

Every operation is a planner applied by the store (provider.keys.store): a pure function
of the current records, re-run if another process changed the set meanwhile. Key
generation happens before, never inside a planner.

Automatic rotation (``maintenance``) runs in every server process; each due step is one
conditional edit, so exactly one process makes it:

- publish: when the active key is ``period - lead`` old and no key waits, a new one is
  stored (so it is published);
- activate: when the active key is ``period`` old and the waiting key has been
  published for ``lead`` (the JWKS max-age plus a margin), the waiting key signs;
- retire: a key that stopped signing ``lifetime`` ago (the longest token lifetime plus
  the margin) can have no valid token left, and is retired.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from provider.audit.service import EventType
from provider.keys.algorithms import Algorithm, PrivateKey, fits, generate
from provider.keys.store import (
    DirectoryKeyStore,
    KeyChange,
    KeyRecord,
    KeyStore,
    KeyStoreError,
    check_kid,
)


async def new_key(alg: Algorithm) -> PrivateKey:
    """A fresh key (RSA generation takes up to a second: off the event loop)."""
    return await asyncio.to_thread(generate, alg)


def _activate(records: list[KeyRecord], kid: str, now: datetime) -> list[KeyRecord]:
    result = []
    for record in records:
        if record.kid == kid:
            record = replace(record, status="active", activated_at=now)
        elif record.status == "active":
            record = replace(record, status="published", deactivated_at=now)
        result.append(record)
    return result


def _events_between(before: list[KeyRecord], after: list[KeyRecord],
                    added: EventType) -> list[tuple[EventType, KeyRecord]]:
    """An event per key that came (its status says whether it signs at once) or changed
    state (a deactivation is not an event of its own: it is the other side of an
    activation)."""
    old = {r.kid: r for r in before}
    events: list[tuple[EventType, KeyRecord]] = []
    for record in after:
        previous = old.get(record.kid)
        if previous is None:
            events.append((added, record))
        elif record.status != previous.status and record.status == "active":
            events.append((EventType.KEY_ACTIVATED, record))
        elif record.status != previous.status and record.status == "retired":
            events.append((EventType.KEY_RETIRED, record))
    return events


def _applied(change: KeyChange | None) -> KeyChange:
    if change is None:  # the planners of the CLI's operations always change something
        raise KeyStoreError("the key store made no change")
    return change


def _find(records: list[KeyRecord], kid: str) -> KeyRecord:
    for record in records:
        if record.kid == kid:
            return record
    raise KeyStoreError(f"no key {kid}")


# --- operations of the CLI ----------------------------------------------------------------


async def add_key(store: KeyStore, key: PrivateKey, alg: Algorithm, *, now: datetime,
                  actor: str, activate: bool | None = None,
                  event: EventType = EventType.KEY_IMPORTED) -> KeyRecord:
    """Store ``key`` for ``alg``. It signs at once when asked, or when no key signs yet;
    otherwise it is published for a later rotation."""
    if not fits(key, alg):
        raise KeyStoreError(f"the key is not a key for {alg}")
    kid = key.thumbprint()

    def plan(records: list[KeyRecord]) -> KeyChange:
        if any(r.kid == kid for r in records):
            raise KeyStoreError(f"key {kid} is already in the key store")
        after = [*records, KeyRecord(kid=kid, status="published", created_at=now, alg=alg)]
        if activate or (activate is None and not any(r.status == "active" for r in records)):
            after = _activate(after, kid, now)
        return KeyChange(after, {kid: key}, _events_between(records, after, event))

    return _find(_applied(await store.apply(plan, actor=actor, now=now)).records, kid)


async def generate_key(store: KeyStore, alg: Algorithm, *, now: datetime, actor: str,
                       activate: bool | None = None) -> KeyRecord:
    return await add_key(store, await new_key(alg), alg, now=now, actor=actor,
                         activate=activate, event=EventType.KEY_GENERATED)


class TooEarly(KeyStoreError):
    """Activating now would hand resource servers tokens signed by a key they may not
    have fetched yet."""


async def rotate(store: KeyStore, *, alg: Algorithm, now: datetime, lead: timedelta,
                 actor: str, force: bool = False) -> KeyRecord:
    """Make the newest waiting key sign. Refused (TooEarly) when it has been published
    for less than ``lead``, or when no key waits, unless ``force`` (a compromise), which
    then generates a key and activates it at once."""
    spare = await new_key(alg) if force else None

    def plan(records: list[KeyRecord]) -> KeyChange:
        pending = [r for r in records if r.is_pending]
        lead_s = int(lead.total_seconds())
        if not pending:
            if spare is None:
                raise TooEarly(
                    "no key is published ahead of use: run `provider keys generate`, wait "
                    f"{lead_s} s (resource servers cache the JWKS; the max-age plus a "
                    "margin), then rotate; or rotate --now after a compromise")
            kid = spare.thumbprint()
            after = _activate([*records, KeyRecord(kid=kid, status="published",
                                                   created_at=now, alg=alg)], kid, now)
            return KeyChange(after, {kid: spare},
                             _events_between(records, after, EventType.KEY_GENERATED))
        newest = max(pending, key=lambda r: r.created_at)
        published_for = now - newest.created_at
        if published_for < lead and not force:
            wait = int((lead - published_for).total_seconds()) + 1
            raise TooEarly(
                f"key {newest.kid} has been published for "
                f"{int(published_for.total_seconds())} s; resource servers may cache the "
                f"JWKS for {lead_s} s (max-age plus margin), so its tokens could be "
                f"refused: rotate again in {wait} s, or pass --now after a compromise")
        after = _activate(records, newest.kid, now)
        return KeyChange(after, {}, _events_between(records, after, EventType.KEY_GENERATED))

    change = _applied(await store.apply(plan, actor=actor, now=now))
    return next(r for r in change.records if r.status == "active")


async def activate(store: KeyStore, kid: str, *, now: datetime, actor: str) -> KeyRecord:
    check_kid(kid)

    def plan(records: list[KeyRecord]) -> KeyChange:
        target = _find(records, kid)
        if target.status == "retired":
            raise KeyStoreError(f"key {kid} is retired and cannot sign again")
        after = _activate(records, kid, now)
        return KeyChange(after, {}, _events_between(records, after, EventType.KEY_GENERATED))

    return _find(_applied(await store.apply(plan, actor=actor, now=now)).records, kid)


async def retire(store: KeyStore, kid: str, *, now: datetime, actor: str) -> KeyRecord:
    """Take a key out of the JWKS for good: tokens it signed stop verifying."""
    check_kid(kid)

    def plan(records: list[KeyRecord]) -> KeyChange:
        target = _find(records, kid)
        if target.status == "active":
            raise KeyStoreError(
                f"key {kid} is the active signing key; rotate to another key first")
        after = [replace(r, status="retired", deactivated_at=r.deactivated_at or now)
                 if r.kid == kid else r for r in records]
        return KeyChange(after, {}, _events_between(records, after, EventType.KEY_GENERATED))

    return _find(_applied(await store.apply(plan, actor=actor, now=now)).records, kid)


# --- moving key sets between stores ----------------------------------------------------------


async def export_keys(store: KeyStore, directory: Path) -> list[KeyRecord]:
    """Write the whole key set, states included, as a keys directory (usable as
    PROVIDER_KEYS_DIR, or for `keys import` into another store). ``directory`` must not
    exist or be empty. Retired keys are listed without key material (they have none)."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise KeyStoreError(f"{directory} is not an empty directory")
    records = await store.records()
    if not records:
        raise KeyStoreError("the key store holds no keys")
    keys = await store.private_keys(records)

    def plan(existing: list[KeyRecord]) -> KeyChange:
        if existing:
            raise KeyStoreError(f"{directory} is not an empty directory")
        return KeyChange(list(records), dict(keys))

    await DirectoryKeyStore(directory).apply(plan, actor="cli")
    return records


async def import_keys(store: KeyStore, directory: Path, *, now: datetime,
                      actor: str) -> list[KeyRecord]:
    """Copy a whole key set (a keys directory, e.g. from `keys export`), states
    included, into an empty store. Refused when the store already holds other keys (two
    active keys cannot be); nothing to do when it holds exactly these already."""
    if not directory.is_dir():
        raise KeyStoreError(f"{directory} is not a directory")
    source = DirectoryKeyStore(directory)
    records = await source.records()
    if not records:
        raise KeyStoreError(f"{directory} holds no keys")
    if sum(r.status == "active" for r in records) != 1:
        raise KeyStoreError(f"{directory} does not have exactly one active key")
    keys = await source.private_keys(records)

    def plan(existing: list[KeyRecord]) -> KeyChange | None:
        if {r.kid: r.status for r in existing} == {r.kid: r.status for r in records}:
            return None  # already imported
        if existing:
            raise KeyStoreError(
                "the key store already holds other keys; import a key set into an empty "
                "store only (single keys: `provider keys import PEM_FILE`)")
        return KeyChange(list(records), dict(keys),
                         [(EventType.KEY_IMPORTED, r) for r in records])

    await store.apply(plan, actor=actor, now=now)
    return records


# --- automatic rotation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    period: timedelta | None
    """A new key signs this long after the previous one started; None: rotation is by
    hand (`provider keys rotate`), and only retirement is automatic."""
    lead: timedelta
    """A key is published at least this long before it signs (JWKS max-age + margin)."""
    lifetime: timedelta
    """A key that stopped signing stays published this long (longest token TTL + margin)."""

    def publish_due(self, active: KeyRecord, now: datetime) -> bool:
        if self.period is None:
            return False
        started = active.activated_at or active.created_at
        return now >= started + self.period - self.lead

    def activation_due(self, active: KeyRecord, pending: KeyRecord, now: datetime) -> bool:
        if self.period is None:
            return False
        started = active.activated_at or active.created_at
        return now >= started + self.period and now >= pending.created_at + self.lead

    def retirement_due(self, record: KeyRecord, now: datetime) -> bool:
        return (record.status == "published" and record.deactivated_at is not None
                and now >= record.deactivated_at + self.lifetime)


def maintenance_due(records: list[KeyRecord], now: datetime, schedule: Schedule) -> str | None:
    """What automatic rotation would do now: "publish", "activate", "retire" or None.
    Cheap: every process asks it of its cached records once a second."""
    if any(schedule.retirement_due(r, now) for r in records):
        return "retire"
    active = next((r for r in records if r.status == "active"), None)
    if active is None or active.activated_at is None:
        return None
    pending = [r for r in records if r.is_pending]
    if not pending:
        return "publish" if schedule.publish_due(active, now) else None
    newest = max(pending, key=lambda r: r.created_at)
    return "activate" if schedule.activation_due(active, newest, now) else None


def plan_maintenance(records: list[KeyRecord], now: datetime, schedule: Schedule,
                     spare: PrivateKey | None, alg: Algorithm) -> KeyChange | None:
    """Every step that is due on ``records`` now; None when none is (or when a publish is
    due but no key was generated for it: the caller asks again with one)."""
    after = [replace(r, status="retired") if schedule.retirement_due(r, now) else r
             for r in records]
    new_keys: dict[str, PrivateKey] = {}
    active = next((r for r in after if r.status == "active"), None)
    if active is not None and active.activated_at is not None:
        pending = [r for r in after if r.is_pending]
        if pending:
            newest = max(pending, key=lambda r: r.created_at)
            if schedule.activation_due(active, newest, now):
                after = _activate(after, newest.kid, now)
        elif schedule.publish_due(active, now) and spare is not None:
            kid = spare.thumbprint()
            after = [*after, KeyRecord(kid=kid, status="published", created_at=now, alg=alg)]
            new_keys[kid] = spare
    if after == records:
        return None
    return KeyChange(after, new_keys, _events_between(records, after, EventType.KEY_GENERATED))
