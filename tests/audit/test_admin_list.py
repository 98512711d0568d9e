"""GET /admin/audit-events: admin only, newest first, filters, keyset cursor, clear 422s."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from provider.audit.models import AuditEvent
from provider.audit.service import EventType, event_row
from provider.services import Services
from tests.admin.helpers import (
    INSUFFICIENT_SCOPE,
    INSUFFICIENT_SCOPE_CHALLENGE,
    MISSING_TOKEN,
    Session,
    assert_validation_error,
)
from tests.factories import Factory
from tests.helpers import assert_oauth_error, assert_problem, bearer, login

PATH = "/admin/audit-events"
EVENT_FIELDS = {"id", "occurred_at", "type", "outcome", "actor", "subject_user_id",
                "client_id", "address", "user_agent", "details"}


async def seed(services: Services, user_id: uuid.UUID, times: list[datetime],
               event: EventType = EventType.PASSWORD_CHANGED) -> None:
    async with services.engine.begin() as conn:
        await conn.execute(insert(AuditEvent), [
            event_row(event=event, actor=str(user_id), now=at, subject_user_id=user_id)
            for at in times
        ])


async def page(http: httpx.AsyncClient, admin: Session, **params: Any) -> dict[str, Any]:
    response = await http.get(PATH, headers=admin.headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_list_needs_an_admin_token(client: httpx.AsyncClient, factory: Factory,
                                             ) -> None:
    anonymous = await client.get(PATH)
    assert_oauth_error(anonymous, 401, *MISSING_TOKEN, www_authenticate='Bearer realm="provider"')
    user = await factory.user()
    oauth = await factory.client()
    tokens = await login(client, oauth, user, scope="openid")
    plain = await client.get(PATH, headers=bearer(tokens["access_token"]))
    assert_oauth_error(plain, 403, *INSUFFICIENT_SCOPE,
                       www_authenticate=INSUFFICIENT_SCOPE_CHALLENGE)


async def test_events_come_newest_first_page_by_page_with_filters(
    client: httpx.AsyncClient, admin: Session, services: Services
) -> None:
    user_id = uuid.uuid4()
    base = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    # Five events, two of them in the same instant (the id breaks the tie).
    times = [base, base + timedelta(minutes=1), base + timedelta(minutes=1),
             base + timedelta(minutes=2), base + timedelta(minutes=3)]
    await seed(services, user_id, times)
    await seed(services, user_id, [base + timedelta(minutes=4)], EventType.EMAIL_CHANGED)

    first = await page(client, admin, user_id=str(user_id), type="password.changed", limit=2)
    assert [set(item) for item in first["items"]] == [EVENT_FIELDS] * 2
    seen = first["items"]
    cursor = first["next_cursor"]
    while cursor:
        more = await page(client, admin, user_id=str(user_id), type="password.changed",
                          limit=2, cursor=cursor)
        seen += more["items"]
        cursor = more["next_cursor"]
    assert len(seen) == 5 and len({e["id"] for e in seen}) == 5
    instants = [datetime.fromisoformat(e["occurred_at"]) for e in seen]
    assert instants == sorted(times, reverse=True)
    tied = [e["id"] for e in seen if datetime.fromisoformat(e["occurred_at"]) == times[1]]
    assert tied == sorted(tied, reverse=True)
    assert {e["subject_user_id"] for e in seen} == {str(user_id)}
    assert {e["type"] for e in seen} == {"password.changed"}

    everything = await page(client, admin, user_id=str(user_id))
    assert [e["type"] for e in everything["items"]] == ["email.changed"] + ["password.changed"] * 5
    assert everything["next_cursor"] is None

    window = await page(client, admin, user_id=str(user_id),
                        since=(base + timedelta(minutes=1)).isoformat(),
                        until=(base + timedelta(minutes=3)).isoformat())
    # since inclusive, until exclusive
    assert [datetime.fromisoformat(e["occurred_at"]) for e in window["items"]] == [
        times[3], times[1], times[2]]


async def test_events_of_this_process_are_listed_at_once(
    client: httpx.AsyncClient, admin: Session, factory: Factory
) -> None:
    """Token-path events wait in a queue; the list writes this process's queue first."""
    user = await factory.user()
    oauth = await factory.client()
    await login(client, oauth, user)
    listed = await page(client, admin, user_id=user.id)
    assert [e["type"] for e in listed["items"]] == ["token.issued", "login"]


@pytest.mark.parametrize(("params", "errors"), [
    ({"user_id": "not-a-uuid"}, [(["query", "user_id"], "uuid_parsing")]),
    ({"type": "no.such.event"}, [(["query", "type"], "enum")]),
    ({"since": "2026-06-01T12:00:00"}, [(["query", "since"], "timezone_aware")]),
    ({"until": "yesterday"}, [(["query", "until"], "datetime_from_date_parsing")]),
    ({"limit": "0"}, [(["query", "limit"], "greater_than_equal")]),
    ({"limit": "101"}, [(["query", "limit"], "less_than_equal")]),
])
async def test_bad_filters_answer_422_naming_the_parameter(
    client: httpx.AsyncClient, admin: Session, params: dict[str, str],
    errors: list[tuple[list[Any], str]],
) -> None:
    response = await client.get(PATH, headers=admin.headers, params=params)
    assert_validation_error(response, *errors)


async def test_an_empty_time_range_or_a_forged_cursor_answers_422(
    client: httpx.AsyncClient, admin: Session
) -> None:
    at = "2026-06-01T12:00:00+00:00"
    empty = await client.get(PATH, headers=admin.headers, params={"since": at, "until": at})
    assert_problem(empty, 422, "invalid_time_range", "since must be earlier than until.")
    for cursor in ("garbage!", "bm90IGEgY3Vyc29y", "MjAyNi0wNi0wMXxub3QtYS11dWlk"):
        forged = await client.get(PATH, headers=admin.headers, params={"cursor": cursor})
        assert_problem(forged, 422, "invalid_cursor", "The cursor is not valid.")
