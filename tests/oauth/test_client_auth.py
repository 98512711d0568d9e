"""Client authentication at the token endpoint (RFC 6749 §2.3, §5.2)."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import quote

from provider.clients.service import ClientCache, hash_secret
from provider.services import Services
from tests.factories import Factory
from tests.factories import TestClient as OAuthClient
from tests.helpers import TOKEN, assert_oauth_error
from tests.oauth.helpers import BASIC_CHALLENGE, basic

AUTH_FAILED = "Client authentication failed."
CC = {"grant_type": "client_credentials"}


async def confidential(factory: Factory) -> OAuthClient:
    return await factory.client(grants=("client_credentials",), scopes="reports:read")


async def test_client_secret_basic_succeeds(client, factory: Factory) -> None:
    oauth = await confidential(factory)
    response = await client.post(TOKEN, data=CC, auth=oauth.auth)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "reports:read"


async def test_client_secret_post_succeeds(client, factory: Factory) -> None:
    oauth = await confidential(factory)
    response = await client.post(
        TOKEN, data={**CC, "client_id": oauth.client_id, "client_secret": oauth.client_secret}
    )
    assert response.status_code == 200, response.text


async def test_basic_with_matching_client_id_in_body_succeeds(client, factory: Factory) -> None:
    oauth = await confidential(factory)
    response = await client.post(TOKEN, data={**CC, "client_id": oauth.client_id},
                                 auth=oauth.auth)
    assert response.status_code == 200, response.text


async def test_public_client_authenticates_with_client_id_only(
    client, factory: Factory
) -> None:
    oauth = await factory.client(public=True)
    user = await factory.user()
    response = await client.post(TOKEN, data={
        "grant_type": "password", "client_id": oauth.client_id, "username": user.email,
        "password": user.password,
    })
    assert response.status_code == 200, response.text
    assert "refresh_token" in response.json()


async def test_basic_and_secret_in_body_is_invalid_request(client, factory: Factory) -> None:
    oauth = await confidential(factory)
    response = await client.post(TOKEN, data={**CC, "client_secret": oauth.client_secret},
                                 auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request",
                       "Use one client authentication method, not two.")


async def test_client_id_in_body_differs_from_basic_is_invalid_request(
    client, factory: Factory
) -> None:
    oauth = await confidential(factory)
    other = await confidential(factory)
    response = await client.post(TOKEN, data={**CC, "client_id": other.client_id},
                                 auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request",
                       "client_id does not match the Authorization header.")


async def test_wrong_secret_with_basic_is_401_with_basic_challenge(
    client, factory: Factory
) -> None:
    oauth = await confidential(factory)
    response = await client.post(TOKEN, data=CC, headers=basic(oauth.client_id, "wrong"))
    assert_oauth_error(response, 401, "invalid_client", AUTH_FAILED,
                       www_authenticate=BASIC_CHALLENGE)


async def test_wrong_secret_with_post_is_401_without_challenge(
    client, factory: Factory
) -> None:
    oauth = await confidential(factory)
    response = await client.post(
        TOKEN, data={**CC, "client_id": oauth.client_id, "client_secret": "wrong"}
    )
    assert_oauth_error(response, 401, "invalid_client", AUTH_FAILED)


async def test_unknown_client_same_answer_as_wrong_secret(client, factory: Factory) -> None:
    oauth = await confidential(factory)
    wrong_secret = await client.post(TOKEN, data=CC, headers=basic(oauth.client_id, "wrong"))
    unknown = await client.post(TOKEN, data=CC, headers=basic("cl_nobody", "wrong"))
    assert_oauth_error(unknown, 401, "invalid_client", AUTH_FAILED,
                       www_authenticate=BASIC_CHALLENGE)
    assert unknown.json() == wrong_secret.json()
    unknown_post = await client.post(
        TOKEN, data={**CC, "client_id": "cl_nobody", "client_secret": "x"}
    )
    assert_oauth_error(unknown_post, 401, "invalid_client", AUTH_FAILED)


async def test_no_client_authentication_is_invalid_client(client) -> None:
    response = await client.post(TOKEN, data=CC)
    assert_oauth_error(response, 401, "invalid_client", "Client authentication is required.")


async def test_overlong_credentials_are_invalid_client(client) -> None:
    response = await client.post(TOKEN, data=CC, headers=basic("cl_" + "a" * 600, "secret"))
    assert_oauth_error(response, 401, "invalid_client", AUTH_FAILED,
                       www_authenticate=BASIC_CHALLENGE)


async def test_disabled_client_is_invalid_client(
    client, factory: Factory, services: Services
) -> None:
    oauth = await confidential(factory)
    assert (await client.post(TOKEN, data=CC, auth=oauth.auth)).status_code == 200
    await factory.set_client(oauth.client_id, is_active=False)
    response = await client.post(TOKEN, data=CC, auth=oauth.auth)
    assert_oauth_error(response, 401, "invalid_client", AUTH_FAILED,
                       www_authenticate=BASIC_CHALLENGE)


async def test_client_cache_sees_a_change_from_elsewhere_after_its_ttl(
    factory: Factory, services: Services
) -> None:
    # A change made by another process reaches this one within the cache's TTL.
    oauth = await confidential(factory)
    cache = ClientCache(services.engine, ttl_seconds=0.2)
    cached = await cache.get(oauth.client_id)
    assert cached is not None and cached.is_active
    await factory.set_client(oauth.client_id, is_active=False)
    still = await cache.get(oauth.client_id)
    assert still is not None and still.is_active  # within the TTL: the cached entry
    await asyncio.sleep(0.25)
    fresh = await cache.get(oauth.client_id)
    assert fresh is not None and not fresh.is_active


async def test_public_client_sending_a_secret_is_invalid_client(
    client, factory: Factory
) -> None:
    oauth = await factory.client(public=True)
    user = await factory.user()
    form = {"grant_type": "password", "username": user.email, "password": user.password}
    post = await client.post(
        TOKEN, data={**form, "client_id": oauth.client_id, "client_secret": "anything"}
    )
    assert_oauth_error(post, 401, "invalid_client", AUTH_FAILED)
    with_basic = await client.post(TOKEN, data=form, headers=basic(oauth.client_id, "anything"))
    assert_oauth_error(with_basic, 401, "invalid_client", AUTH_FAILED,
                       www_authenticate=BASIC_CHALLENGE)


async def test_public_client_with_empty_basic_password_authenticates(
    client, factory: Factory
) -> None:
    oauth = await factory.client(public=True)
    user = await factory.user()
    form = {"grant_type": "password", "username": user.email, "password": user.password}
    response = await client.post(TOKEN, data=form, headers=basic(oauth.client_id, ""))
    assert response.status_code == 200, response.text


async def test_confidential_client_without_secret_is_invalid_client(
    client, factory: Factory
) -> None:
    oauth = await confidential(factory)
    post = await client.post(TOKEN, data={**CC, "client_id": oauth.client_id})
    assert_oauth_error(post, 401, "invalid_client", AUTH_FAILED)
    empty_basic = await client.post(TOKEN, data=CC, headers=basic(oauth.client_id, ""))
    assert_oauth_error(empty_basic, 401, "invalid_client", AUTH_FAILED,
                       www_authenticate=BASIC_CHALLENGE)


async def test_malformed_basic_header_is_invalid_client_with_challenge(client) -> None:
    for value in ("Basic !!!not-base64!!!",
                  "Basic " + base64.b64encode(b"no-colon-here").decode(),
                  "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
                  "Basic " + base64.b64encode(b"cl_a\x00b:secret").decode(),
                  "Basic " + base64.b64encode(b"cl_a:se%00cret").decode(),
                  "Basic"):
        response = await client.post(TOKEN, data=CC, headers={"Authorization": value})
        assert_oauth_error(response, 401, "invalid_client", "Malformed Basic credentials.",
                           www_authenticate=BASIC_CHALLENGE)
    # A byte outside ASCII (obs-text, which h11 and httptools pass on), at every endpoint
    # that authenticates clients.
    for path, form in ((TOKEN, CC), ("/oauth/revoke", {"token": "x"}),
                       ("/oauth/introspect", {"token": "x"})):
        response = await client.post(path, data=form,
                                     headers={"Authorization": b"Basic \xe9\xe9\xe9\xe9"})
        assert_oauth_error(response, 401, "invalid_client", "Malformed Basic credentials.",
                           www_authenticate=BASIC_CHALLENGE)


async def test_authorization_header_of_another_scheme_is_challenged_with_basic(
    client, factory: Factory
) -> None:
    # RFC 6749 §5.2: an attempt through the Authorization header gets 401 and a
    # challenge in the scheme we take, whatever scheme it tried.
    for value in ("Bearer abc", "Digest username=x", ""):
        response = await client.post(TOKEN, data=CC, headers={"Authorization": value})
        assert_oauth_error(response, 401, "invalid_client",
                           "Client authentication is required.",
                           www_authenticate=BASIC_CHALLENGE)
    # Beside credentials in the form, such a header is not an attempt: the form's are used.
    oauth = await confidential(factory)
    response = await client.post(TOKEN, data={**CC, "client_id": oauth.client_id,
                                              "client_secret": str(oauth.client_secret)},
                                 headers={"Authorization": "Bearer abc"})
    assert response.status_code == 200, response.text


async def test_basic_scheme_is_case_insensitive(client, factory: Factory) -> None:
    oauth = await confidential(factory)
    header = basic(oauth.client_id, str(oauth.client_secret))["Authorization"]
    response = await client.post(TOKEN, data=CC,
                                 headers={"Authorization": header.replace("Basic", "bAsIc")})
    assert response.status_code == 200, response.text


async def test_basic_credentials_are_form_urldecoded(
    client, factory: Factory, services: Services
) -> None:
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before base64. Give the client
    # a secret with the characters that matter: ':' '+' '%' '/' and non-ASCII.
    oauth = await confidential(factory)
    secret = "s3:cr+t%2F/ü ok"
    await factory.set_client(oauth.client_id, secret_hash=hash_secret(secret))
    ok = await client.post(TOKEN, data=CC, headers=basic(oauth.client_id, secret))
    assert ok.status_code == 200, ok.text
    # Every character of the id percent-encoded, which is the same id.
    spelled_out = "".join(f"%{b:02X}" for b in oauth.client_id.encode())
    encoded = await client.post(
        TOKEN, data=CC, headers=basic(spelled_out, quote(secret, safe=""), encode=False)
    )
    assert encoded.status_code == 200, encoded.text
    # Sent raw, '+' decodes to a space and '%2F' to '/': not the secret any more.
    raw = await client.post(TOKEN, data=CC, headers=basic(oauth.client_id, secret,
                                                          encode=False))
    assert_oauth_error(raw, 401, "invalid_client", AUTH_FAILED,
                       www_authenticate=BASIC_CHALLENGE)


async def test_post_credentials_with_special_characters(
    client, factory: Factory, services: Services
) -> None:
    oauth = await confidential(factory)
    secret = "s3:cr+t%2F/ü ok"
    await factory.set_client(oauth.client_id, secret_hash=hash_secret(secret))
    response = await client.post(
        TOKEN, data={**CC, "client_id": oauth.client_id, "client_secret": secret}
    )
    assert response.status_code == 200, response.text
