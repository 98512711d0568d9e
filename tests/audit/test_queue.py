"""The audit trail's queue, written on both databases: events queued on the token path
arrive with their details, ids and times (PostgreSQL's COPY, SQLite's INSERT)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from provider.audit.models import AuditEvent
from provider.audit.service import (
    DETAILS_TEXTS_MAX,
    AuditLog,
    EventType,
    Outcome,
    RequestContext,
)
from provider.clock import SystemClock
from provider.db import create_engine
from tests.conftest import own_database


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, postgres_server: str | None,
             tmp_path: Path) -> Iterator[str]:
    with own_database(request.param, postgres_server, tmp_path,
                      "provider_audit_queue") as url:
        yield url


async def test_queued_events_are_written_with_their_details(database: str) -> None:
    engine = create_engine(database)
    try:
        log = AuditLog(engine, SystemClock())
        user_id = uuid.uuid4()
        before = datetime.now(UTC)
        context = RequestContext("192.0.2.7", "agent/1.0")
        for n in range(3):  # the same details each time: their text is made once
            log.record(EventType.TOKEN_ISSUED, actor="cl_a", client_id="cl_a",
                       context=context, details={"grant_type": "client_credentials"})
            log.record(EventType.LOGIN, actor="cl_a", client_id="cl_a",
                       outcome=Outcome.FAILURE, subject_user_id=user_id, context=context,
                       details={"method": "password", "reason": f"r{n}", "n": [n]})
        log.record(EventType.LOGOUT, actor="cl_a")
        assert await log.flush() == 7
        async with engine.connect() as conn:
            rows = (await conn.execute(select(AuditEvent.__table__))).mappings().all()
    finally:
        await engine.dispose()
    assert len(rows) == 7 and len({row["id"] for row in rows}) == 7
    for row in rows:
        assert row["id"].version == 7
        assert before <= row["occurred_at"].replace(tzinfo=UTC) <= datetime.now(UTC)
    issued = [row for row in rows if row["type"] == "token.issued"]
    assert [row["details"] for row in issued] == [{"grant_type": "client_credentials"}] * 3
    assert {(row["address"], row["user_agent"], row["outcome"]) for row in issued} == {
        ("192.0.2.7", "agent/1.0", "success")}
    logins = sorted((row for row in rows if row["type"] == "login"),
                    key=lambda row: row["details"]["reason"])
    assert [row["details"] for row in logins] == [
        {"method": "password", "reason": f"r{n}", "n": [n]} for n in range(3)]
    assert {row["subject_user_id"] for row in logins} == {user_id}
    [logout] = [row for row in rows if row["type"] == "logout"]
    assert logout["details"] == {} and logout["address"] is None


async def test_details_are_written_as_given(database: str) -> None:
    """Values that are one dict key (1, 1.0, True) keep their own JSON; a value JSON
    cannot hold is written as text instead of failing the request; details that change
    every time fill the store of texts and are still written right."""
    engine = create_engine(database)
    marker = uuid.uuid4()
    try:
        log = AuditLog(engine, SystemClock())
        given: list[dict[str, object]] = [{"n": 1}, {"n": True}, {"n": 1.0}, {"n": "1"},
                                          {"id": marker}]
        given += [{"session_id": str(n)} for n in range(DETAILS_TEXTS_MAX + 10)]
        given += [{"n": "1"}, {"session_id": "0"}]
        for number, details in enumerate(given):
            log.record(EventType.TOKEN_REVOKED, actor=f"a{number:04d}", details=details)
        assert await log.flush() == len(given)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(AuditEvent.__table__))).mappings().all()
    finally:
        await engine.dispose()
    written = [row["details"] for row in sorted(rows, key=lambda row: row["actor"])]
    expected = [*given[:4], {"id": str(marker)}, *given[5:]]
    assert written == expected
    assert [type(d["n"]) for d in written[:4]] == [int, bool, float, str]
