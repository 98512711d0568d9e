"""Audit events of every listed action: the right type, actor, subject, client, address,
user agent, outcome and details, and never a value (password, token, code, email)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI

from provider.services import Services
from tests.admin.helpers import admin_login
from tests.audit.helpers import assert_holds_none_of, events
from tests.factories import Factory, unique_email
from tests.helpers import bearer, login, password_login, refresh
from tests.smtp_sink import SmtpSink
from tests.users.flows import fresh_address, last_code, request_reset_code

AGENT = "audit-test/1.0 (a browser, say)"


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client with an address and a user agent of its own."""
    address = fresh_address()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=address)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000",
                                 headers={"User-Agent": AGENT}) as client:
        client.address = address[0]  # type: ignore[attr-defined]
        yield client


def expected(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    return {"outcome": "success", "subject_user_id": None, "client_id": None,
            "address": http.address, "user_agent": AGENT,  # type: ignore[attr-defined]
            "details": {}, **fields}


async def test_password_grant_login_token_and_failures_are_recorded(
    http: httpx.AsyncClient, factory: Factory, services: Services
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    wrong = "not the password at all"
    refused = await password_login(http, oauth, user, password=wrong)
    assert refused.status_code == 400, refused.text
    tokens = await login(http, oauth, user)

    found = await events(services, client_id=oauth.client_id)
    common = {"actor": oauth.client_id, "client_id": oauth.client_id, "subject_user_id": user.id}
    assert found == [
        expected(http, type="login", outcome="failure", **common,
                 details={"method": "password", "reason": "wrong_password"}),
        expected(http, type="login", **common, details={"method": "password"}),
        expected(http, type="token.issued", **common, details={"grant_type": "password"}),
    ]
    assert_holds_none_of(found, user.email, user.password, wrong, tokens["access_token"],
                         tokens["refresh_token"], oauth.client_secret)


async def test_login_failures_of_unknown_and_unverified_users_name_no_one(
    http: httpx.AsyncClient, factory: Factory, services: Services
) -> None:
    oauth = await factory.client()
    stranger = unique_email("nobody")
    unverified = await factory.user(is_verified=False)
    for who, password in ((stranger, "whatever password"),
                          (unverified.email, unverified.password)):
        response = await http.post("/oauth/token", auth=oauth.auth, data={
            "grant_type": "password", "username": who, "password": password})
        assert response.status_code == 400, response.text

    found = await events(services, client_id=oauth.client_id)
    common = {"type": "login", "outcome": "failure", "actor": oauth.client_id,
              "client_id": oauth.client_id}
    assert found == [
        expected(http, **common, details={"method": "password", "reason": "unknown_user"}),
        expected(http, **common, subject_user_id=unverified.id,
                 details={"method": "password", "reason": "unverified_email"}),
    ]
    assert_holds_none_of(found, stranger, unverified.email, unverified.password)


async def test_refresh_reuse_and_revocations_are_recorded(
    http: httpx.AsyncClient, factory: Factory, services: Services
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    first = await login(http, oauth, user)
    rotated = await refresh(http, oauth, first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    replayed = await refresh(http, oauth, first["refresh_token"])  # reuse: session revoked
    assert replayed.status_code == 400, replayed.text
    session_id = _sid(services, first["access_token"])

    second = await login(http, oauth, user)
    for token, hint in ((second["access_token"], "access_token"),
                        (second["refresh_token"], "refresh_token")):
        revoked = await http.post("/oauth/revoke", auth=oauth.auth,
                                  data={"token": token, "token_type_hint": hint})
        assert revoked.status_code == 200, revoked.text

    found = await events(services, client_id=oauth.client_id)
    common = {"actor": oauth.client_id, "client_id": oauth.client_id, "subject_user_id": user.id}
    jti = services.jwt.verify_access_token(second["access_token"],
                                           now=services.clock.now()).jti
    assert [e for e in found if e["type"] != "login"] == [
        expected(http, type="token.issued", **common, details={"grant_type": "password"}),
        expected(http, type="token.issued", **common, details={"grant_type": "refresh_token"}),
        expected(http, type="refresh_token.reused", outcome="failure", **common,
                 details={"session_id": session_id, "session": "revoked"}),
        expected(http, type="token.issued", **common, details={"grant_type": "password"}),
        expected(http, type="token.revoked", **common,
                 details={"token_type": "access_token", "jti": jti}),
        expected(http, type="token.revoked", **common,
                 details={"token_type": "refresh_token",
                          "session_id": _sid(services, second["access_token"])}),
    ]
    assert_holds_none_of(found, first["refresh_token"], second["refresh_token"],
                         first["access_token"], second["access_token"],
                         rotated.json()["refresh_token"], oauth.client_secret)


async def test_client_credentials_tokens_are_recorded_without_a_user(
    http: httpx.AsyncClient, factory: Factory, services: Services
) -> None:
    oauth = await factory.client(grants=("client_credentials",), scopes="api")
    response = await http.post("/oauth/token", auth=oauth.auth,
                               data={"grant_type": "client_credentials"})
    assert response.status_code == 200, response.text
    assert await events(services, client_id=oauth.client_id) == [
        expected(http, type="token.issued", actor=oauth.client_id, client_id=oauth.client_id,
                 details={"grant_type": "client_credentials"}),
    ]


async def test_password_change_reset_email_change_and_deletion_are_recorded(
    http: httpx.AsyncClient, factory: Factory, services: Services, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    tokens = await login(http, oauth, user)
    headers = bearer(tokens["access_token"])
    new_password, newest_password = "saffron walrus trombone", "glacier mango whistle"
    changed = await http.post("/users/me/password", headers=headers, json={
        "current_password": user.password, "new_password": new_password})
    assert changed.status_code == 204, changed.text

    new_email = unique_email("moved")
    requested = await http.patch("/users/me", headers=headers,
                                 json={"email": new_email, "password": new_password})
    assert requested.status_code == 200, requested.text
    change_code = await last_code(mail_sink, new_email)
    confirmed = await http.post("/users/me/email/confirm", headers=headers,
                                json={"code": change_code})
    assert confirmed.status_code == 200, confirmed.text

    reset_code = await request_reset_code(http, mail_sink, new_email)
    reset = await http.post("/auth/reset-password", json={
        "email": new_email, "code": reset_code, "new_password": newest_password})
    assert reset.status_code == 200, reset.text

    again = await login(http, oauth, user.__class__(user.id, new_email, newest_password, None))
    deleted = await http.request("DELETE", "/users/me", headers=bearer(again["access_token"]),
                                 json={"password": newest_password})
    assert deleted.status_code == 204, deleted.text

    found = [e for e in await events(services, user_id=user.id)
             if e["type"] not in ("login", "token.issued")]
    mine = {"actor": user.id, "subject_user_id": user.id, "client_id": oauth.client_id}
    assert found == [
        expected(http, type="password.changed", **mine),
        expected(http, type="email.change_requested", **mine),
        expected(http, type="email.changed", **mine),
        # Nobody is signed in when resetting with a code: no client.
        expected(http, type="password.reset", actor=user.id, subject_user_id=user.id),
        expected(http, type="account.deleted", **mine),
    ]
    assert_holds_none_of(found, user.email, new_email, user.password, new_password,
                         newest_password, change_code, reset_code, tokens["access_token"])


async def test_admin_changes_to_users_and_clients_are_recorded_with_field_names(
    http: httpx.AsyncClient, factory: Factory, services: Services
) -> None:
    admin = await admin_login(http, factory)
    headers = admin.headers
    email, password = unique_email("made"), "harbor cobalt umbrella"
    created = await http.post("/admin/users", headers=headers,
                              json={"email": email, "password": password, "is_verified": True})
    assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    updated = await http.patch(f"/admin/users/{user_id}", headers=headers,
                               json={"username": f"u{user_id[:8]}", "profile": {"a": "b"}})
    assert updated.status_code == 200, updated.text
    disabled = await http.delete(f"/admin/users/{user_id}", headers=headers)
    assert disabled.status_code == 204, disabled.text

    made = await http.post("/admin/clients", headers=headers, json={
        "name": "audited", "grant_types": ["client_credentials"], "scopes": ["api"]})
    assert made.status_code == 201, made.text
    client_id, first_secret = made.json()["client_id"], made.json()["client_secret"]
    renamed = await http.patch(f"/admin/clients/{client_id}", headers=headers,
                               json={"name": "renamed"})
    assert renamed.status_code == 200, renamed.text
    rotated = await http.post(f"/admin/clients/{client_id}/secret", headers=headers)
    assert rotated.status_code == 200, rotated.text
    gone = await http.delete(f"/admin/clients/{client_id}", headers=headers)
    assert gone.status_code == 204, gone.text

    by_admin = {"actor": admin.user.id}
    assert await events(services, user_id=user_id) == [
        expected(http, type="user.created", **by_admin, subject_user_id=user_id,
                 details={"fields": ["email", "is_verified"]}),
        expected(http, type="user.updated", **by_admin, subject_user_id=user_id,
                 details={"fields": ["profile", "username"]}),
        expected(http, type="user.disabled", **by_admin, subject_user_id=user_id),
    ]
    client_events = await events(services, client_id=client_id)
    assert client_events == [
        expected(http, type="client.created", **by_admin, client_id=client_id),
        expected(http, type="client.updated", **by_admin, client_id=client_id,
                 details={"fields": ["name"]}),
        expected(http, type="client.secret_rotated", **by_admin, client_id=client_id),
        expected(http, type="client.deleted", **by_admin, client_id=client_id),
    ]
    assert_holds_none_of(client_events, first_secret, rotated.json()["client_secret"],
                         "renamed", "audited")
    assert_holds_none_of(await events(services, user_id=user_id), email, password)


async def test_a_failed_admin_change_leaves_no_event(
    http: httpx.AsyncClient, factory: Factory, services: Services
) -> None:
    """Written in the change's transaction: a refused change has no event."""
    admin = await admin_login(http, factory)
    taken = await factory.user()
    other = await factory.user()
    refused = await http.patch(f"/admin/users/{other.id}", headers=admin.headers,
                               json={"email": taken.email})
    assert refused.status_code == 409, refused.text
    assert await events(services, user_id=other.id) == []


def _sid(services: Services, access_token: str) -> str:
    claims = services.jwt.verify_access_token(access_token, now=services.clock.now())
    assert claims.sid is not None
    return claims.sid
