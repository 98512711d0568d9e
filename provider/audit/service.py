"""Recording audit events, and listing them for the admin API.

Two ways in. ``AuditLog.add`` puts the event into the request's own transaction:
account and admin changes are written with their event or not at all. ``AuditLog.record``
queues the event in memory and a background task writes the queue in batches (one COPY
on PostgreSQL, else one multi-row INSERT, every ``FLUSH_INTERVAL_S``): the token path
pays no round trip, and an event of a failed request (a wrong password) is kept whatever
its transaction does.
What a crash can lose: the queued events not yet written (README, "Audit trail").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from provider.audit.models import AuditEvent
from provider.clock import Clock
from provider.db import uuid7, uuid7s
from provider.errors import ValidationFailed
from provider.pagination import decode_time_cursor, encode_cursor

log = logging.getLogger("provider.audit")
audit_events = cast(Table, AuditEvent.__table__)

FLUSH_INTERVAL_S = 0.5
# A flush starts early once this many events wait.
FLUSH_BATCH = 500
# While the database cannot take them, at most this many events wait in memory; older
# ones are dropped first (and the drop is logged).
MAX_QUEUED = 20_000
USER_AGENT_MAX = 256


class EventType(enum.StrEnum):
    # (S105: names of events, not secrets.)
    LOGIN = "login"
    TOKEN_ISSUED = "token.issued"  # noqa: S105
    REFRESH_TOKEN_REUSED = "refresh_token.reused"  # noqa: S105
    TOKEN_REVOKED = "token.revoked"  # noqa: S105
    PASSWORD_CHANGED = "password.changed"  # noqa: S105
    PASSWORD_RESET = "password.reset"  # noqa: S105
    EMAIL_CHANGE_REQUESTED = "email.change_requested"
    EMAIL_CHANGED = "email.changed"
    ACCOUNT_DELETED = "account.deleted"
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DISABLED = "user.disabled"
    CLIENT_CREATED = "client.created"
    CLIENT_UPDATED = "client.updated"
    CLIENT_DELETED = "client.deleted"
    CLIENT_SECRET_ROTATED = "client.secret_rotated"  # noqa: S105
    KEY_GENERATED = "key.generated"
    KEY_IMPORTED = "key.imported"
    KEY_ACTIVATED = "key.activated"
    KEY_RETIRED = "key.retired"
    MFA_REQUIRED = "mfa.required"
    MFA_ENABLED = "mfa.enabled"
    MFA_DISABLED = "mfa.disabled"
    MFA_RECOVERY_CODES_REGENERATED = "mfa.recovery_codes_regenerated"
    MFA_RESET = "mfa.reset"
    MFA_LOCKED = "mfa.locked"
    LOGOUT = "logout"
    CONSENT_GRANTED = "consent.granted"
    CONSENT_WITHDRAWN = "consent.withdrawn"
    AUTHORIZATION_CODE_REUSED = "authorization_code.reused"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


CLI_ACTOR = "cli"


@dataclass(frozen=True)
class RequestContext:
    """Where a request came from, as the audit trail records it."""

    address: str | None = None
    user_agent: str | None = None


NO_CONTEXT = RequestContext()


def _columns(
    *, event: EventType, actor: str, now: datetime, outcome: Outcome = Outcome.SUCCESS,
    subject_user_id: uuid.UUID | None = None, client_id: str | None = None,
    context: RequestContext = NO_CONTEXT, details: Any,
) -> tuple[Any, ...]:
    """An event's columns in table order, all but ``id`` (``_COLUMNS[1:]``); ``details``
    as given (a dict for a row, its JSON text for the queue)."""
    address, agent = context.address, context.user_agent
    return (now, event.value, outcome.value, actor[:64], subject_user_id, client_id,
            address[:64] if address else None, agent[:USER_AGENT_MAX] if agent else None,
            details)


def event_row(*, details: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """The columns of one event (``_columns``' arguments). ``details`` name fields and
    fixed vocabulary only."""
    return dict(zip(_COLUMNS, (uuid7(), *_columns(details=details or {}, **fields)),
                    strict=True))


# Most queued events carry the same few details ({"grant_type": ...}): their JSON text,
# made once. Only details of strings (and None) are kept, so that equal keys mean equal
# text (1, 1.0 and True are one dict key, and would be one here); the store is emptied
# when full, so that details that differ every time (a session id) cannot keep the
# common ones out.
_details_texts: dict[tuple[Any, ...], str] = {}
DETAILS_TEXTS_MAX = 256


def _details_json(details: dict[str, Any] | None) -> str:
    """The details as JSON text. A value JSON cannot hold is written as its str(): an
    event is never refused, and never fails the request that records it."""
    if not details:
        return "{}"
    for name, value in details.items():  # (a loop: cheaper than all() over a generator)
        if type(name) is not str or (type(value) is not str and value is not None):
            return json.dumps(details, default=str)
    key = tuple(details.items())
    text = _details_texts.get(key)
    if text is None:
        if len(_details_texts) >= DETAILS_TEXTS_MAX:
            _details_texts.clear()
        text = _details_texts[key] = json.dumps(details)
    return text


class AuditLog:
    """This process's audit writer: in-transaction events, and a queue flushed in batches."""

    def __init__(self, engine: AsyncEngine, clock: Clock, *,
                 flush_interval_s: float = FLUSH_INTERVAL_S,
                 max_queued: int = MAX_QUEUED) -> None:
        self._engine = engine
        self._clock = clock
        self._flush_interval_s = flush_interval_s
        # Events as ``_columns`` makes them, details as JSON text; the id is made when
        # the batch is written.
        self._queue: deque[tuple[Any, ...]] = deque(maxlen=max_queued)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._failing = False  # the last write failed: an outage is under way
        self.dropped = 0

    # --- writing ----------------------------------------------------------------------

    def record(self, event: EventType, *, actor: str, details: dict[str, Any] | None = None,
               **fields: Any) -> None:
        """Queue an event; the background task writes it within about a second."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # deque(maxlen) drops the oldest on append
        # Plain values only (the details as JSON text): nothing for the garbage collector
        # to follow while the event waits for its batch.
        self._queue.append(_columns(event=event, actor=actor, now=self._clock.now(),
                                    details=_details_json(details), **fields))
        if len(self._queue) >= FLUSH_BATCH:
            self._wake.set()

    def add(self, session: AsyncSession, event: EventType, *, actor: str,
            **fields: Any) -> None:
        """Write an event in ``session``'s transaction: kept exactly when the change is."""
        session.add(AuditEvent(**event_row(event=event, actor=actor, now=self._clock.now(),
                                           **fields)))

    async def flush(self) -> int:
        """Write every queued event now (one COPY or multi-row INSERT per batch); how many."""
        async with self._flushing:
            written = 0
            while self._queue:
                batch = [self._queue.popleft()
                         for _ in range(min(len(self._queue), 1000))]
                try:
                    async with self._engine.begin() as conn:
                        await _write(conn, batch)
                except Exception as exc:
                    # Keep them for the next try (oldest first), within the bound. One
                    # line when writing stops working, not one per retry of an outage.
                    self._queue.extendleft(reversed(batch))
                    if not self._failing:
                        self._failing = True
                        log.error("audit events not written yet (%d waiting): %s",
                                  len(self._queue), type(exc).__name__)
                    raise
                written += len(batch)
            if self._failing:
                self._failing = False
                log.warning("audit events written again: %d", written)
            if self.dropped:
                log.error("audit events dropped while the database was unavailable: %d",
                          self.dropped)
                self.dropped = 0
            return written

    # --- the background writer ------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="audit-writer")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
            self._wake.clear()
            with contextlib.suppress(Exception):  # logged by flush(); retried next time
                await self.flush()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the writer and write what is left (bounded: shutdown must not hang)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout_s)
        if self._queue:
            log.error("audit events lost at shutdown: %d", len(self._queue))


# --- listing (admin API) -------------------------------------------------------------------


class InvalidTimeRange(ValidationFailed):
    code = "invalid_time_range"
    title = "since must be earlier than until."


async def list_events(
    session: AsyncSession, *, user_id: uuid.UUID | None, event_type: EventType | None,
    since: datetime | None, until: datetime | None, cursor: str | None, limit: int,
) -> tuple[list[AuditEvent], str | None]:
    """Events newest first (occurred_at, id), a keyset page at a time. ``since`` is
    inclusive, ``until`` exclusive."""
    if since is not None and until is not None and since >= until:
        raise InvalidTimeRange()
    query = select(AuditEvent)
    if user_id is not None:
        query = query.where(AuditEvent.subject_user_id == user_id)
    if event_type is not None:
        query = query.where(AuditEvent.type == event_type.value)
    if since is not None:
        query = query.where(AuditEvent.occurred_at >= since)
    if until is not None:
        query = query.where(AuditEvent.occurred_at < until)
    if cursor is not None:
        at, event_id = decode_time_cursor(cursor)
        query = query.where(or_(AuditEvent.occurred_at < at,
                                and_(AuditEvent.occurred_at == at, AuditEvent.id < event_id)))
    query = query.order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc()).limit(limit + 1)
    events = list((await session.scalars(query)).all())
    next_cursor = None
    if len(events) > limit:
        events = events[:limit]
        last = events[-1]
        next_cursor = encode_cursor(last.occurred_at.isoformat(), str(last.id))
    return events, next_cursor


_COLUMNS = tuple(column.name for column in audit_events.columns)
if _COLUMNS[:2] != ("id", "occurred_at") or _COLUMNS[-1] != "details":
    raise RuntimeError(f"audit_events columns are not in _columns' order: {_COLUMNS}")


async def _write(conn: AsyncConnection, batch: list[tuple[Any, ...]]) -> None:
    """One batch in one statement: PostgreSQL's COPY (about half the work of a multi-row
    INSERT on both sides, and every refresh queues an event), else that INSERT."""
    if conn.dialect.name != "postgresql":
        await conn.execute(insert(audit_events), [
            dict(zip(_COLUMNS, (uuid7(), *queued[:-1], json.loads(queued[-1])), strict=True))
            for queued in batch])
        return
    driver: Any = (await conn.get_raw_connection()).driver_connection
    # The details column takes the queued JSON text as it is.
    records = [(event_id, *queued) for event_id, queued in zip(uuid7s(len(batch)), batch,
                                                                strict=True)]
    await driver.copy_records_to_table(audit_events.name, records=records, columns=_COLUMNS)
