"""Constants, the admin session and assertions of the admin API suites."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.factories import Factory, TestClient, TestUser
from tests.helpers import INVALID_TOKEN_CHALLENGE, bearer, login  # noqa: F401 (re-exported)

# (error, error_description) pairs, for assert_oauth_error(response, status, *PAIR, ...).
MISSING_TOKEN = ("invalid_token", "An access token is required.")
INVALID_TOKEN = ("invalid_token", "The access token is invalid, expired or revoked.")
INSUFFICIENT_SCOPE = ("insufficient_scope",
                      "The access token lacks the scope this resource requires.")
INSUFFICIENT_SCOPE_CHALLENGE = 'Bearer realm="provider", error="insufficient_scope", scope="admin"'
INVALID_GRANT = ("invalid_grant", "The grant or refresh token is invalid, expired or revoked.")
INVALID_CLIENT = ("invalid_client", "Client authentication failed.")


@dataclass
class Session:
    """An admin logged in through an OAuth client: their tokens and bearer header."""

    user: TestUser
    oauth: TestClient
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access_token)


async def admin_login(http: httpx.AsyncClient, factory: Factory) -> Session:
    """A fresh admin with a token carrying the admin scope."""
    oauth = await factory.client()
    admin = await factory.user(is_admin=True)
    tokens = await login(http, oauth, admin, scope="admin")
    return Session(admin, oauth, tokens["access_token"], tokens["refresh_token"])


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
