"""Input the admin API cannot use gets a clear 4xx and changes nothing, never a 500:
instants without a UTC equivalent, cursors that decode to them, NUL characters (which
PostgreSQL's text cannot hold) in a path, a query or a body, an unparsable redirect URI.
"""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from provider.clients.models import Client
from provider.services import Services
from tests.admin.helpers import Session

YEAR_1 = "0001-01-01T00:00:00+01:00"  # before datetime's first UTC instant
YEAR_9999 = "9999-12-31T23:59:59-01:00"  # after its last


def cursor_of(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(("path", "params"), [
    ("/admin/audit-events", {"since": YEAR_1}),
    ("/admin/audit-events", {"until": YEAR_9999}),
    ("/admin/audit-events", {"cursor": cursor_of(f"{YEAR_1}|{uuid.uuid4()}")}),
    ("/admin/users", {"cursor": cursor_of(f"{YEAR_1}|{uuid.uuid4()}")}),
    ("/admin/users", {"cursor": cursor_of(f"{YEAR_9999}|{uuid.uuid4()}")}),
    ("/admin/users", {"email": "a\x00b"}),
    ("/admin/clients", {"cursor": cursor_of("a\x00b|cl_x")}),
    ("/admin/clients/a%00b", {}),
])
async def test_a_read_with_unusable_input_is_422(
    client: httpx.AsyncClient, admin: Session, path: str, params: dict[str, str]
) -> None:
    response = await client.get(path, params=params, headers=admin.headers)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("body", [
    {"name": "x\x00y"},
    {"name": "bad uri", "grant_types": ["authorization_code"], "is_public": True,
     "redirect_uris": ["https://[::1/cb"]},
    {"name": "bad logout uri", "grant_types": ["authorization_code"], "is_public": True,
     "redirect_uris": ["https://app.example.com/cb"],
     "post_logout_redirect_uris": ["https://[::1/bye"]},
])
async def test_a_client_with_unusable_input_is_422_and_not_made(
    client: httpx.AsyncClient, admin: Session, services: Services, body: dict[str, object]
) -> None:
    async def clients() -> int:
        async with services.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(Client)) or 0)

    before = await clients()
    payload = {"grant_types": ["client_credentials"], "scopes": [], **body}
    response = await client.post("/admin/clients", json=payload, headers=admin.headers)
    assert response.status_code == 422, response.text
    assert await clients() == before
