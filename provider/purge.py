"""Self-cleaning tables: delete what can never be used again, in bounded batches.

Dead rows: login sessions that expired or were revoked longer ago than an access token
lives (so none of their tokens can still be live), with their refresh tokens; used or
expired email codes and mfa_tokens; expired denylist entries; audit events past
PROVIDER_AUDIT_RETENTION; authorization codes a day past their expiry (until then a
used one is kept, so that its reuse is recognised and revokes what it issued); browser
sessions that ended or expired. Each statement deletes at most ``batch_size`` rows in a
short transaction of its own, so the token path never waits long on a purge. On
PostgreSQL one process at a time purges (a transaction-level advisory lock); on SQLite,
writers are serialised by the database anyway and the deletes are idempotent.
"""

from __future__ import annotations

import contextlib
import logging
from asyncio import sleep
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from time import monotonic
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, delete, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from provider.audit.models import AuditEvent
from provider.clock import Clock
from provider.codes.models import EmailCode
from provider.db import is_sqlite
from provider.mfa.models import MfaToken
from provider.settings import Settings
from provider.tokens.models import (
    AuthorizationCode,
    LoginSession,
    RefreshToken,
    RevokedAccessToken,
)
from provider.web.models import BrowserSession

log = logging.getLogger("provider.purge")

ls = cast(Table, LoginSession.__table__)
rt = cast(Table, RefreshToken.__table__)
codes = cast(Table, EmailCode.__table__)
denylist = cast(Table, RevokedAccessToken.__table__)
mfa_tokens = cast(Table, MfaToken.__table__)
audit = cast(Table, AuditEvent.__table__)
auth_codes = cast(Table, AuthorizationCode.__table__)
browser_sessions = cast(Table, BrowserSession.__table__)

TABLES = ("login_sessions", "refresh_tokens", "email_codes", "mfa_tokens",
          "revoked_access_tokens", "audit_events", "authorization_codes",
          "browser_sessions")
# A used authorization code is kept this long past its expiry: presented again within
# it, it still revokes what its one use issued (RFC 6749 §4.1.2).
CODE_KEPT_AFTER_EXPIRY = timedelta(days=1)
# pg_try_advisory_lock key: "prvpurge" as a big-endian int8.
LOCK_KEY = int.from_bytes(b"prvpurge", "big")


@dataclass
class PurgeReport:
    """Rows deleted (or, in a dry run, that would be) per table."""

    dry_run: bool
    # False when another process held the lock: nothing was done.
    ran: bool = True
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "ran": self.ran, "counts": dict(self.counts)}

    def summary(self) -> str:
        return " ".join(f"{table}={n}" for table, n in self.counts.items())


@dataclass(frozen=True)
class Cutoffs:
    now: datetime
    # Sessions that ended (expired or revoked) before this can have no live access token
    # left: one issued at the last moment lives an access token's lifetime past the end,
    # and is checked against its session's row, which must be there until then.
    ended_before: datetime
    audit_before: datetime

    @classmethod
    def of(cls, settings: Settings, now: datetime) -> Cutoffs:
        return cls(now=now, ended_before=now - settings.access_token_ttl,
                   audit_before=now - settings.audit_retention)


def dead_sessions(c: Cutoffs) -> ColumnElement[bool]:
    return or_(ls.c.expires_at <= c.ended_before, ls.c.revoked_at <= c.ended_before)


def dead_codes(c: Cutoffs) -> ColumnElement[bool]:
    # issue() restarts the failure count of such a row anyway: nothing in it is needed.
    return or_(codes.c.used_at.is_not(None), codes.c.expires_at <= c.now)


def dead_mfa_tokens(c: Cutoffs) -> ColumnElement[bool]:
    return or_(mfa_tokens.c.used_at.is_not(None), mfa_tokens.c.expires_at <= c.now)


def dead_denials(c: Cutoffs) -> ColumnElement[bool]:
    return denylist.c.expires_at <= c.now


def old_events(c: Cutoffs) -> ColumnElement[bool]:
    return audit.c.occurred_at < c.audit_before


def dead_authorization_codes(c: Cutoffs) -> ColumnElement[bool]:
    return auth_codes.c.expires_at <= c.now - CODE_KEPT_AFTER_EXPIRY


def dead_browser_sessions(c: Cutoffs) -> ColumnElement[bool]:
    return or_(browser_sessions.c.ended_at.is_not(None),
               browser_sessions.c.expires_at <= c.now)


class Purger:
    def __init__(self, engine: AsyncEngine, single: AsyncEngine, settings: Settings,
                 clock: Clock, *, pause_s: float | None = None) -> None:
        self.engine = engine
        self.single = single
        self.settings = settings
        self.clock = clock
        # Rest between batches (gives the token path the database's attention).
        self.pause_s = settings.purge_pause.total_seconds() if pause_s is None else pause_s
        self.share = settings.purge_share

    async def run(self, *, dry_run: bool = False) -> PurgeReport:
        report = PurgeReport(dry_run=dry_run)
        cutoffs = Cutoffs.of(self.settings, self.clock.now())
        if dry_run:
            await self._count(cutoffs, report)
            return report
        async with self._exclusive() as acquired:
            if not acquired:
                report.ran = False
                return report
            await self._delete_sessions(cutoffs, report)
            for table, key, condition in (
                ("email_codes", codes.c.id, dead_codes(cutoffs)),
                ("mfa_tokens", mfa_tokens.c.id, dead_mfa_tokens(cutoffs)),
                ("revoked_access_tokens", denylist.c.jti, dead_denials(cutoffs)),
                ("audit_events", audit.c.id, old_events(cutoffs)),
                ("authorization_codes", auth_codes.c.id, dead_authorization_codes(cutoffs)),
                ("browser_sessions", browser_sessions.c.id, dead_browser_sessions(cutoffs)),
            ):
                report.counts[table] = await self._delete_batches(key, condition)
        return report

    # --- one process at a time ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[bool]:
        """Hold PostgreSQL's advisory lock for the whole purge, in a transaction of its
        own that stays open meanwhile (a crashed purger's lock goes with its connection);
        SQLite: just run.

        A transaction-level lock, not a session-level one: behind PgBouncer in
        transaction mode a session lock would stay on a server connection that other
        clients then use, and its unlock could go to another. An open transaction keeps
        its server connection until it ends, and ending it releases the lock."""
        if is_sqlite(self.engine):
            yield True
            return
        async with self.engine.connect() as conn, conn.begin():
            acquired = bool((await conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": LOCK_KEY})).scalar())
            # That statement ran on the extended protocol, whose finished portal keeps its
            # snapshot while the transaction idles: the whole database's xmin horizon
            # would stay where it was when the purge began, and neither VACUUM nor a
            # page's pruning could remove a row that died during the run (the rotation's
            # HOT updates need the latter). A statement on the simple protocol replaces
            # that portal, and the transaction holds no snapshot.
            driver: Any = (await conn.get_raw_connection()).driver_connection
            await driver.execute("SELECT 1")
            yield acquired

    # --- deleting ---------------------------------------------------------------------------

    async def _delete_sessions(self, cutoffs: Cutoffs, report: PurgeReport) -> None:
        """Dead sessions, ``batch_size`` at a time, each batch after its refresh tokens,
        which go at most ``batch_size`` per statement too: a session refreshed all day
        has hundreds, and a batch of such sessions in one statement was one long burst of
        work beside the token path. A dead session stays dead (expiry and revocation are
        final), so its tokens may go over several statements; a purge stopped midway
        leaves dead sessions with fewer tokens, and the next one finishes them."""
        condition = dead_sessions(cutoffs)
        size = self.settings.purge_batch_size
        while True:
            started = monotonic()
            async with self.single.begin() as conn:
                doomed = list((await conn.execute(
                    select(ls.c.id).where(condition).limit(size))).scalars())
            if not doomed:
                return
            # Finding them is work too (a scan that prunes the pages it passes).
            await self._rest(monotonic() - started)
            # Explicitly, to count them; ON DELETE CASCADE would take them anyway.
            tokens = select(rt.c.id).where(rt.c.session_id.in_(doomed)).limit(size)
            while True:
                deleted = await self._delete(delete(rt).where(rt.c.id.in_(
                    tokens.scalar_subquery())))
                report.counts["refresh_tokens"] += deleted
                if deleted < size:
                    break
            report.counts["login_sessions"] += await self._delete(
                delete(ls).where(ls.c.id.in_(doomed), condition),
                then_rest=len(doomed) == size)
            if len(doomed) < size:
                return

    async def _delete(self, statement: Any, *, then_rest: bool | None = None) -> int:
        """One DELETE in a transaction of its own, then a rest if ``then_rest``; by default
        when it deleted a whole batch (so that more is likely to follow)."""
        started = monotonic()
        async with self.single.begin() as conn:
            deleted = int((await conn.execute(statement)).rowcount)
        if then_rest is None:
            then_rest = deleted >= self.settings.purge_batch_size
        if then_rest:
            await self._rest(monotonic() - started)
        return deleted

    async def _delete_batches(self, key: Any, condition: ColumnElement[bool]) -> int:
        """DELETE ... WHERE key IN (SELECT key ... LIMIT n) AND condition, until done. The
        condition is repeated outside so that a row changed meanwhile (a code re-issued)
        is re-checked by PostgreSQL before it goes."""
        table = key.table
        size = self.settings.purge_batch_size
        total = 0
        while True:
            batch = select(key).where(condition).limit(size).scalar_subquery()
            deleted = await self._delete(delete(table).where(key.in_(batch), condition))
            total += deleted
            if deleted < size:
                return total

    async def _rest(self, worked_s: float) -> None:
        await sleep(rest_after(worked_s, share=self.share, pause_s=self.pause_s))

    async def _count(self, cutoffs: Cutoffs, report: PurgeReport) -> None:
        sessions = select(ls.c.id).where(dead_sessions(cutoffs))
        queries = {
            "login_sessions": select(func.count()).where(dead_sessions(cutoffs))
            .select_from(ls),
            "refresh_tokens": select(func.count()).select_from(rt)
            .where(rt.c.session_id.in_(sessions)),
            "email_codes": select(func.count()).select_from(codes).where(dead_codes(cutoffs)),
            "mfa_tokens": select(func.count()).select_from(mfa_tokens)
            .where(dead_mfa_tokens(cutoffs)),
            "revoked_access_tokens": select(func.count()).select_from(denylist)
            .where(dead_denials(cutoffs)),
            "audit_events": select(func.count()).select_from(audit).where(old_events(cutoffs)),
            "authorization_codes": select(func.count()).select_from(auth_codes)
            .where(dead_authorization_codes(cutoffs)),
            "browser_sessions": select(func.count()).select_from(browser_sessions)
            .where(dead_browser_sessions(cutoffs)),
        }
        async with self.single.connect() as conn:
            for table, query in queries.items():
                report.counts[table] = int((await conn.execute(query)).scalar_one())


def rest_after(worked_s: float, *, share: float, pause_s: float) -> float:
    """The rest after a batch that took ``worked_s``: long enough that the purge works at
    most ``share`` of the time, and at least ``pause_s``."""
    return max(pause_s, worked_s * (1 - share) / share)


async def purge_periodically(purger: Purger, interval: timedelta) -> None:
    """The opt-in in-process task: purge every ``interval``; one log line per run."""
    while True:
        await sleep(interval.total_seconds())
        try:
            report = await purger.run()
        except Exception as exc:  # the database may be away: try again next time
            log.error("purge failed: %s", type(exc).__name__)
            continue
        if report.ran:
            log.info("purge: %s", report.summary())
