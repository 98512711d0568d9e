"""POST /oauth/token: how requests are read and refused before any grant runs (RFC 6749 §3.2)."""

from __future__ import annotations

import httpx
import pytest

from provider.settings import Settings
from tests.factories import Factory
from tests.helpers import TOKEN, assert_oauth_error, assert_problem


async def test_token_json_body_refused_as_invalid_request(client, factory: Factory) -> None:
    oauth = await factory.client()
    response = await client.post(TOKEN, json={"grant_type": "client_credentials"},
                                 auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request",
                       "The request body must be application/x-www-form-urlencoded.")


async def test_token_multipart_body_refused_as_invalid_request(client, factory: Factory) -> None:
    oauth = await factory.client()
    response = await client.post(TOKEN, files={"grant_type": (None, "password")},
                                 auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request",
                       "The request body must be application/x-www-form-urlencoded.")


async def test_token_form_with_charset_parameter_accepted(client, factory: Factory) -> None:
    oauth = await factory.client(grants=("client_credentials",), scopes="reports:read")
    response = await client.post(
        TOKEN, content=b"grant_type=client_credentials", auth=oauth.auth,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
    )
    assert response.status_code == 200, response.text


QUERY_REFUSED = "Parameters must be sent in the request body, not the query."


async def test_token_query_parameters_refused(client, factory: Factory) -> None:
    oauth = await factory.client(grants=("client_credentials",), scopes="reports:read")
    response = await client.post(f"{TOKEN}?scope=reports:read",
                                 data={"grant_type": "client_credentials"}, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request", QUERY_REFUSED)


async def test_token_client_secret_in_query_refused_even_when_correct(
    client, factory: Factory
) -> None:
    oauth = await factory.client(grants=("client_credentials",), scopes="reports:read")
    assert oauth.client_secret is not None
    response = await client.post(
        TOKEN, params={"client_id": oauth.client_id, "client_secret": oauth.client_secret},
        data={"grant_type": "client_credentials"},
    )
    assert_oauth_error(response, 400, "invalid_request", QUERY_REFUSED)


@pytest.mark.parametrize("name", ["grant_type", "scope", "client_id"])
async def test_token_repeated_parameter_refused(client, factory: Factory, name: str) -> None:
    oauth = await factory.client(grants=("client_credentials",), scopes="reports:read")
    pairs = [("grant_type", "client_credentials"), ("scope", "reports:read"),
             ("client_id", oauth.client_id), ("client_secret", str(oauth.client_secret))]
    pairs.append(next(p for p in pairs if p[0] == name))
    response = await client.post(
        TOKEN, content=str(httpx.QueryParams(pairs)).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_oauth_error(response, 400, "invalid_request", f"The {name} parameter is repeated.")


@pytest.mark.parametrize("name", ["\x05\x06 x", "sc\u00f6pe", "a" * 65, "x<script>"])
async def test_an_odd_parameter_name_is_not_echoed(client, name: str) -> None:
    """RFC 6749 §5.2: error_description is printable ASCII; a client's bytes are not
    echoed back in it."""
    response = await client.post(
        TOKEN, content=str(httpx.QueryParams([(name, "1"), (name, "2")])).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_oauth_error(response, 400, "invalid_request", "A parameter is repeated.")


async def test_token_missing_grant_type_is_invalid_request(client, factory: Factory) -> None:
    oauth = await factory.client()
    response = await client.post(TOKEN, data={"scope": "openid"}, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request", "The grant_type parameter is required.")


async def test_token_empty_grant_type_counts_as_missing(client, factory: Factory) -> None:
    oauth = await factory.client()
    response = await client.post(TOKEN, data={"grant_type": ""}, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request", "The grant_type parameter is required.")


@pytest.mark.parametrize("grant_type", ["implicit", "urn:x:unknown", "Authorization_Code"])
async def test_token_unknown_grant_type_after_client_auth(
    client, factory: Factory, grant_type: str
) -> None:
    oauth = await factory.client()
    response = await client.post(TOKEN, data={"grant_type": grant_type}, auth=oauth.auth)
    assert_oauth_error(response, 400, "unsupported_grant_type",
                       "The grant type is not supported.")


async def test_token_unknown_grant_type_without_client_auth_is_invalid_client(client) -> None:
    # The client is authenticated first: an anonymous caller learns nothing about grants.
    response = await client.post(TOKEN, data={"grant_type": "urn:x:unknown"})
    assert_oauth_error(response, 401, "invalid_client", "Client authentication is required.")


@pytest.mark.parametrize(
    ("grants", "grant_type"),
    [(("password",), "refresh_token"), (("password", "refresh_token"), "client_credentials"),
     (("client_credentials",), "password")],
)
async def test_token_grant_not_allowed_for_client_is_unauthorized_client(
    client, factory: Factory, grants: tuple[str, ...], grant_type: str
) -> None:
    oauth = await factory.client(grants=grants)
    response = await client.post(
        TOKEN, auth=oauth.auth,
        data={"grant_type": grant_type, "refresh_token": "x", "username": "u", "password": "p"},
    )
    assert_oauth_error(response, 400, "unauthorized_client",
                       "The client is not allowed to use this grant type.")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_token_other_methods_get_405_problem(client, method: str) -> None:
    response = await client.request(method, TOKEN)
    assert_problem(response, 405, "method_not_allowed", "Method Not Allowed")
    assert response.headers["allow"] == "POST"


async def test_token_body_over_the_app_limit_is_413(client, settings: Settings) -> None:
    body = b"grant_type=password&password=" + b"x" * settings.max_body_bytes
    response = await client.post(
        TOKEN, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_problem(response, 413, "payload_too_large", "The request body is too large.")


async def test_token_chunked_body_over_the_app_limit_is_413(
    client, settings: Settings
) -> None:
    chunk = b"x" * 8192

    async def stream():  # no Content-Length: the limit must hold while reading
        yield b"grant_type=password&password="
        for _ in range(settings.max_body_bytes // len(chunk) + 2):
            yield chunk

    response = await client.post(
        TOKEN, content=stream(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large", "The request body is too large.")


async def test_chunked_json_body_over_the_app_limit_is_413(client, settings: Settings) -> None:
    """Read by FastAPI, whose body reading turns any other error into a bare 400."""
    chunk = b" " * 8192

    async def stream():  # no Content-Length: the limit must hold while reading
        yield b'{"email": "a@example.com", "password": "'
        for _ in range(settings.max_body_bytes // len(chunk) + 2):
            yield chunk

    response = await client.post("/auth/register", content=stream(),
                                 headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large", "The request body is too large.")


async def test_token_form_over_the_form_limit_is_invalid_request(client) -> None:
    # Under the app-wide cap but over what any token request needs.
    body = b"grant_type=password&password=" + b"x" * (20 * 1024)
    response = await client.post(
        TOKEN, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_oauth_error(response, 400, "invalid_request", "The request body is too large.")


async def test_token_nul_in_parameter_is_invalid_request(client, factory: Factory) -> None:
    oauth = await factory.client()
    response = await client.post(
        TOKEN, auth=oauth.auth,
        data={"grant_type": "password", "username": "a\x00b", "password": "whatever1"},
    )
    assert_oauth_error(response, 400, "invalid_request", "The username parameter is malformed.")


async def test_token_body_not_utf8_is_invalid_request(client, factory: Factory) -> None:
    oauth = await factory.client()
    response = await client.post(
        TOKEN, auth=oauth.auth, content=b"grant_type=password&username=\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_oauth_error(response, 400, "invalid_request", "The request body is not a valid form.")
