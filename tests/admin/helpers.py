"""Assertions and the admin login shared by the admin API suites."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.factories import Factory, TestClient, TestUser, password_login

MISSING_TOKEN = {"error": "invalid_token", "error_description": "An access token is required."}
INVALID_TOKEN = {"error": "invalid_token",
                 "error_description": "The access token is invalid, expired or revoked."}
INSUFFICIENT_SCOPE = {
    "error": "insufficient_scope",
    "error_description": "The access token lacks the scope this resource requires.",
}
INSUFFICIENT_SCOPE_CHALLENGE = 'Bearer realm="provider", error="insufficient_scope", scope="admin"'
INVALID_TOKEN_CHALLENGE = (
    'Bearer realm="provider", error="invalid_token", '
    'error_description="The access token is invalid, expired or revoked."'
)
INVALID_GRANT = {"error": "invalid_grant",
                 "error_description": "The grant or refresh token is invalid, expired or revoked."}
INVALID_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed."}


@dataclass
class Session:
    """A user logged in through an OAuth client: their tokens and bearer header."""

    user: TestUser
    oauth: TestClient
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def login(http: httpx.AsyncClient, oauth: TestClient, user: TestUser,
                **form: str) -> Session:
    response = await password_login(http, oauth, user, **form)
    assert response.status_code == 200, response.text
    body = response.json()
    return Session(user, oauth, body["access_token"], body["refresh_token"])


async def admin_login(http: httpx.AsyncClient, factory: Factory) -> Session:
    """A fresh admin with a token carrying the admin scope."""
    oauth = await factory.client()
    admin = await factory.user(is_admin=True)
    return await login(http, oauth, admin, scope="admin")


async def refresh(http: httpx.AsyncClient, session: Session) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": session.refresh_token}
    return await http.post("/oauth/token", data=data, auth=session.oauth.auth)


def assert_oauth_error(response: httpx.Response, status: int, body: dict[str, Any],
                       www_authenticate: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == body
    assert response.headers.get("www-authenticate") == www_authenticate


def assert_problem(response: httpx.Response, status: int, code: str, title: str,
                   **extra: Any) -> None:
    """The whole RFC 9457 answer."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": title, "status": status,
                               "code": code, **extra}


def assert_validation_error(response: httpx.Response, *errors: tuple[list[Any], str]) -> None:
    """A 422 from request validation: each (loc, type) pair, in order."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {k: v for k, v in body.items() if k != "errors"} == {
        "type": "about:blank", "title": "The request body is not valid.", "status": 422,
        "code": "validation_error",
    }
    assert [(e["loc"], e["type"]) for e in body["errors"]] == list(errors)


def assert_no_hashes(response: httpx.Response) -> None:
    """The raw JSON never names, let alone carries, a hash."""
    assert "password_hash" not in response.text
    assert "secret_hash" not in response.text
