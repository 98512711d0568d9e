"""grant_type=password (RFC 6749 §4.3) and the access token it mints (RFC 9068)."""

from __future__ import annotations

import asyncio
import uuid

import bcrypt
import httpx
import jwt as pyjwt
import pytest
from sqlalchemy import select

from provider.services import Services
from provider.settings import Settings
from provider.tokens import refresh as refresh_module
from provider.tokens.models import LoginSession, RefreshToken
from provider.tokens.refresh import digest
from provider.users.models import User
from tests.factories import Factory
from tests.helpers import (
    TOKEN,
    assert_no_store,
    assert_oauth_error,
    bearer,
    login,
    password_login,
)
from tests.oauth.helpers import rfc7638_thumbprint, unverified
from tests.smtp_sink import SmtpSink
from tests.users.flows import credentials, request_reset_code

BAD_CREDENTIALS = "Invalid username or password."


async def jwks(client) -> dict:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    return response.json()


async def test_password_success_shape(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client()
    response = await password_login(client, oauth, user, scope="openid email")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert_no_store(response)
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope",
                         "refresh_token", "id_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["scope"] == "openid email"
    # RFC 6749 §10.10: at least 128 bits; ours are 256 bits of urlsafe base64.
    assert len(body["refresh_token"]) >= 43


async def test_password_no_refresh_token_without_refresh_grant(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client(grants=("password",))
    body = await login(client, oauth, user, scope="openid")
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "id_token"}
    # No refresh token, but a session all the same: revocations reach the access token.
    uuid.UUID(unverified(body["access_token"])[1]["sid"])


async def test_password_no_id_token_without_openid(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client()
    body = await login(client, oauth, user, scope="profile email")
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "refresh_token"}


async def test_access_token_header_and_claims(
    client, factory: Factory, services: Services, settings: Settings
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    body = await login(client, oauth, user, scope="openid profile")
    token = body["access_token"]

    header = pyjwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "RS256"
    active_kid = services.keys.signing_key().kid
    assert header["kid"] == active_kid
    published = {k["kid"]: k for k in (await jwks(client))["keys"]}
    assert rfc7638_thumbprint(published[header["kid"]]) == header["kid"]

    key = pyjwt.PyJWK(published[header["kid"]])
    claims = pyjwt.decode(
        token, key, algorithms=["RS256"], audience=settings.token_audience,
        issuer=settings.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
    )
    assert claims["iss"] == "http://127.0.0.1:8000"
    assert claims["sub"] == user.id
    assert claims["aud"] == settings.token_audience
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - services.clock.now().timestamp()) < 5
    assert claims["client_id"] == oauth.client_id
    assert claims["scope"] == "openid profile"
    assert len(claims["jti"]) >= 16
    uuid.UUID(claims["sid"])  # the refresh family
    assert claims["auth_time"] == claims["iat"]


async def test_id_token_header_and_claims(
    client, factory: Factory, settings: Settings
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    body = await login(client, oauth, user, scope="openid")
    header = pyjwt.get_unverified_header(body["id_token"])
    assert header["typ"] == "JWT"
    assert header["alg"] == "RS256"
    published = {k["kid"]: k for k in (await jwks(client))["keys"]}
    claims = pyjwt.decode(
        body["id_token"], pyjwt.PyJWK(published[header["kid"]]), algorithms=["RS256"],
        audience=oauth.client_id, issuer=settings.issuer,
    )
    assert claims["sub"] == user.id
    assert claims["azp"] == oauth.client_id
    assert claims["sid"] == unverified(body["access_token"])[1]["sid"]
    assert {"exp", "iat", "auth_time", "jti"} <= set(claims)


async def test_two_logins_get_distinct_tokens(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client()
    first, second = await login(client, oauth, user), await login(client, oauth, user)
    assert first["access_token"] != second["access_token"]
    assert first["refresh_token"] != second["refresh_token"]
    assert unverified(first["access_token"])[1]["jti"] != unverified(
        second["access_token"])[1]["jti"]


async def test_password_login_by_username(client, factory: Factory) -> None:
    name = f"ada-{uuid.uuid4().hex[:8]}"
    user = await factory.user(username=name)
    oauth = await factory.client()
    response = await client.post(TOKEN, auth=oauth.auth, data={
        "grant_type": "password", "username": name.upper(), "password": user.password,
    })
    assert response.status_code == 200, response.text
    assert unverified(response.json()["access_token"])[1]["sub"] == user.id


async def test_password_email_is_case_insensitive(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client()
    response = await client.post(TOKEN, auth=oauth.auth, data={
        "grant_type": "password", "username": f"  {user.email.upper()} ",
        "password": user.password,
    })
    assert response.status_code == 200, response.text


async def test_password_is_case_sensitive(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client()
    response = await client.post(TOKEN, auth=oauth.auth, data={
        "grant_type": "password", "username": user.email, "password": user.password.upper(),
    })
    assert_oauth_error(response, 400, "invalid_grant", BAD_CREDENTIALS)


async def test_wrong_password_unknown_user_and_disabled_user_look_the_same(
    client, factory: Factory
) -> None:
    user = await factory.user()
    disabled = await factory.user()
    await factory.set_user(disabled.id, is_active=False)
    oauth = await factory.client()

    async def attempt(username: str, password: str):
        return await client.post(TOKEN, auth=oauth.auth, data={
            "grant_type": "password", "username": username, "password": password,
        })

    answers = [
        await attempt(user.email, "not the password"),
        await attempt("nobody-" + user.email, "not the password"),
        await attempt("no-such-username", "not the password"),
        # A disabled account says the same even with the right password.
        await attempt(disabled.email, disabled.password),
    ]
    for response in answers:
        assert_oauth_error(response, 400, "invalid_grant", BAD_CREDENTIALS)
    first = answers[0]

    def same_for_everyone(response: httpx.Response) -> dict[str, str]:
        return {k: v for k, v in response.headers.items() if k != "x-request-id"}

    for response in answers[1:]:
        assert response.status_code == first.status_code
        assert response.content == first.content
        assert same_for_everyone(response) == same_for_everyone(first)


async def test_admin_scope_refused_for_non_admin(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client()
    response = await password_login(client, oauth, user, scope="openid admin")
    assert_oauth_error(response, 400, "invalid_scope", "Scope not allowed: admin.")


async def test_admin_scope_granted_to_admin(client, factory: Factory) -> None:
    user = await factory.user(is_admin=True)
    oauth = await factory.client()
    body = await login(client, oauth, user, scope="admin")
    assert body["scope"] == "admin"
    assert unverified(body["access_token"])[1]["scope"] == "admin"


async def test_default_scope_is_the_clients_allowed_scopes(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client(scopes="openid profile email admin")
    body = await login(client, oauth, user)
    assert body["scope"] == "openid profile email"
    assert "id_token" in body


async def test_default_scope_of_admin_never_includes_admin(client, factory: Factory) -> None:
    # Least privilege (ASVS 10.4.11): admin power only when asked for by name.
    user = await factory.user(is_admin=True)
    oauth = await factory.client(scopes="openid profile email admin")
    body = await login(client, oauth, user)
    assert body["scope"] == "openid profile email"


@pytest.mark.parametrize("scope", ["openid offline_access", "email unknown", "profile"])
async def test_scope_outside_the_clients_allowed_is_invalid_scope(
    client, factory: Factory, scope: str
) -> None:
    user = await factory.user()
    oauth = await factory.client(scopes="openid email")
    response = await password_login(client, oauth, user, scope=scope)
    refused = next(s for s in scope.split() if s not in ("openid", "email"))
    assert_oauth_error(response, 400, "invalid_scope", f"Scope not allowed: {refused}.")


async def test_blank_scope_is_invalid_scope(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client()
    response = await password_login(client, oauth, user, scope="   ")
    assert_oauth_error(response, 400, "invalid_scope", "The scope parameter is empty.")


async def test_repeated_scope_values_are_collapsed(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client()
    body = await login(client, oauth, user, scope="email  email openid")
    assert body["scope"] == "email openid"


@pytest.mark.parametrize("missing", ["username", "password"])
async def test_missing_username_or_password_is_invalid_request(
    client, factory: Factory, missing: str
) -> None:
    oauth = await factory.client()
    form = {"grant_type": "password", "username": "someone@example.com",
            "password": "whatever12"}
    del form[missing]
    response = await client.post(TOKEN, data=form, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request", f"The {missing} parameter is required.")


async def test_overlong_password_refused_without_hashing(
    client, factory: Factory, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    calls: list[int] = []
    verify = services.hasher.verify

    async def counting_verify(password: str, password_hash: str | None):
        calls.append(len(password))
        return await verify(password, password_hash)

    monkeypatch.setattr(services.hasher, "verify", counting_verify)
    response = await client.post(TOKEN, auth=oauth.auth, data={
        "grant_type": "password", "username": user.email, "password": "x" * 1025,
    })
    assert_oauth_error(response, 400, "invalid_grant", BAD_CREDENTIALS)
    assert calls == []
    # 1024 characters is still a password we verify (and reject, here).
    at_limit = await client.post(TOKEN, auth=oauth.auth, data={
        "grant_type": "password", "username": user.email, "password": "x" * 1024,
    })
    assert_oauth_error(at_limit, 400, "invalid_grant", BAD_CREDENTIALS)
    assert calls == [1024]


async def test_imported_bcrypt_hash_logs_in_and_is_upgraded_to_argon2id(
    client, factory: Factory, services: Services
) -> None:
    user = await factory.user()
    legacy = bcrypt.hashpw(user.password.encode(), bcrypt.gensalt(rounds=4)).decode()
    await factory.set_user(user.id, password_hash=legacy)
    oauth = await factory.client()

    await login(client, oauth, user)
    async with services.sessions() as session:
        stored = await session.scalar(
            select(User.password_hash).where(User.id == uuid.UUID(user.id))
        )
    assert stored is not None and stored.startswith("$argon2id$")
    # The upgraded hash verifies the same password, and the old one no longer matters.
    await login(client, oauth, user)


async def test_bcrypt_user_with_password_over_72_bytes_fails_cleanly(
    client, factory: Factory
) -> None:
    # pyca/bcrypt >= 5 raises on > 72 bytes: that must be a failed login, not a 500.
    user = await factory.user()
    legacy = bcrypt.hashpw(user.password.encode(), bcrypt.gensalt(rounds=4)).decode()
    await factory.set_user(user.id, password_hash=legacy)
    oauth = await factory.client()
    response = await client.post(TOKEN, auth=oauth.auth, data={
        "grant_type": "password", "username": user.email, "password": "y" * 100,
    })
    assert_oauth_error(response, 400, "invalid_grant", BAD_CREDENTIALS)


async def test_user_without_password_cannot_log_in(client, factory: Factory) -> None:
    user = await factory.user()
    await factory.set_user(user.id, password_hash=None)
    oauth = await factory.client()
    response = await password_login(client, oauth, user)
    assert_oauth_error(response, 400, "invalid_grant", BAD_CREDENTIALS)


async def _rows_of(services: Services, user_id: str) -> tuple[list, list]:
    """The user's sessions and their refresh tokens, as stored."""
    async with services.sessions() as session:
        sessions = (await session.execute(
            select(LoginSession).where(LoginSession.user_id == uuid.UUID(user_id))
        )).scalars().all()
        tokens = (await session.execute(
            select(RefreshToken).where(RefreshToken.session_id.in_([s.id for s in sessions]))
        )).scalars().all()
    return list(sessions), list(tokens)


async def test_sign_in_stores_its_session_and_first_refresh_token(
    client, factory: Factory, services: Services, clock
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    clock.freeze()
    now = clock.now()
    body = await login(client, oauth, user, scope="openid email")
    sessions, tokens = await _rows_of(services, user.id)
    assert len(sessions) == 1 and len(tokens) == 1
    stored, token = sessions[0], tokens[0]
    settings = services.settings
    assert str(stored.id) == unverified(body["access_token"])[1]["sid"]
    assert stored.client_id == oauth.client_id
    assert stored.scope == "openid email"
    assert stored.amr == ["pwd"]
    assert stored.auth_time == now and stored.created_at == now
    assert stored.expires_at == now + settings.refresh_token_absolute_ttl
    assert stored.revoked_at is None
    assert token.token_hash == digest(body["refresh_token"])
    assert token.parent_id is None and token.rotated_at is None
    assert token.issued_at == now
    assert token.expires_at == min(now + settings.refresh_token_ttl, stored.expires_at)


async def test_sign_in_writes_its_session_and_token_together_or_not_at_all(
    client, factory: Factory, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    first = await login(client, oauth, user)
    # A refresh token that is already stored (a collision 256 random bits never make):
    # its insert fails, and the session inserted with it must not stay behind.
    monkeypatch.setattr(refresh_module, "new_refresh_token", lambda: first["refresh_token"])
    response = await password_login(client, oauth, user)
    assert response.status_code == 500
    assert first["refresh_token"] not in response.text
    monkeypatch.undo()
    sessions, tokens = await _rows_of(services, user.id)
    assert len(sessions) == 1 and len(tokens) == 1
    # A constraint violation is an answer, not an outage: the next sign-in works.
    await login(client, oauth, user)
    sessions, _ = await _rows_of(services, user.id)
    assert len(sessions) == 2


@pytest.mark.parametrize("change", ["signed-in change", "reset"])
async def test_a_sign_in_in_flight_never_brings_back_the_old_password(
    client, factory: Factory, services: Services, mail_sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch, change: str,
) -> None:
    """A sign-in whose verify returns a rehash (an imported bcrypt hash) while the
    password is changed or reset stores the rehash only over the hash it verified: the
    change wins (DESIGN: revocation always wins), and the old password stays dead."""
    user = await factory.user()
    oauth = await factory.client()
    tokens = await login(client, oauth, user, scope="account")
    legacy = bcrypt.hashpw(user.password.encode(), bcrypt.gensalt(rounds=4)).decode()
    await factory.set_user(user.id, password_hash=legacy)
    verified, release = asyncio.Event(), asyncio.Event()
    verify = services.hasher.verify

    async def verify_then_wait(password: str, password_hash: str | None
                               ) -> tuple[bool, str | None]:
        result = await verify(password, password_hash)
        if password_hash == legacy and not verified.is_set():  # the sign-in's, once
            verified.set()
            await release.wait()
        return result

    monkeypatch.setattr(services.hasher, "verify", verify_then_wait)
    in_flight = asyncio.create_task(password_login(client, oauth, user))
    await asyncio.wait_for(verified.wait(), 10)
    new = credentials(user.email, "juniper lantern quay", user.id)
    if change == "reset":
        code = await request_reset_code(client, mail_sink, user.email)
        response = await client.post("/auth/reset-password", json={
            "email": user.email, "code": code, "new_password": new.password})
        assert response.status_code == 200, response.text
    else:
        response = await client.post(
            "/users/me/password", headers=bearer(tokens["access_token"]),
            json={"current_password": user.password, "new_password": new.password})
        assert response.status_code == 204, response.text
    release.set()
    finished = await in_flight
    assert finished.status_code == 200, finished.text
    # Its session began before the change: its tokens are dead with the others.
    me = await client.get("/users/me",
                          headers=bearer(finished.json()["access_token"]))
    assert me.status_code == 401
    assert_oauth_error(await password_login(client, oauth, user), 400, "invalid_grant",
                       BAD_CREDENTIALS)
    await login(client, oauth, new)
