"""Admin API for OAuth clients, through HTTP: CRUD, secrets, and the token path's view."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, update

from provider.clients.models import Client
from provider.clients.service import invalidate_on_commit, rotate_secret
from provider.services import Services
from provider.tokens.models import LoginSession
from tests.admin.helpers import (
    INSUFFICIENT_SCOPE,
    INSUFFICIENT_SCOPE_CHALLENGE,
    INVALID_CLIENT,
    MISSING_TOKEN,
    Session,
    assert_no_hashes,
    assert_validation_error,
)
from tests.factories import Factory
from tests.factories import TestClient as Credentials
from tests.helpers import (
    BASIC_CHALLENGE,
    assert_oauth_error,
    assert_problem,
    bearer,
    login,
    password_login,
    refresh,
)

CLIENT_FIELDS = {"client_id", "name", "is_public", "grant_types", "scopes", "is_active",
                 "redirect_uris", "post_logout_redirect_uris", "is_first_party",
                 "created_at", "updated_at"}
ENDPOINTS = [
    ("GET", "/admin/clients"),
    ("POST", "/admin/clients"),
    ("GET", "/admin/clients/cl_x"),
    ("PATCH", "/admin/clients/cl_x"),
    ("DELETE", "/admin/clients/cl_x"),
    ("POST", "/admin/clients/cl_x/secret"),
]
NO_SUCH_CLIENT = ("client_not_found", "No such client.")
INVALID_BODY = ("validation_error", "The request body is not valid.")


async def create(http: httpx.AsyncClient, admin: Session, **body: Any) -> dict[str, Any]:
    payload = {"name": "admin-made", "grant_types": ["password", "refresh_token"],
               "scopes": ["openid profile email"], **body}
    if "password" in payload["grant_types"]:  # for first-party clients only
        payload.setdefault("is_first_party", True)
    response = await http.post("/admin/clients", headers=admin.headers, json=payload)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def read(http: httpx.AsyncClient, admin: Session, client_id: str) -> dict[str, Any]:
    response = await http.get(f"/admin/clients/{client_id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    assert_no_hashes(response)
    body: dict[str, Any] = response.json()
    return body


async def client_credentials(http: httpx.AsyncClient, client_id: str,
                             secret: str) -> httpx.Response:
    return await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                           auth=(client_id, secret))


# --- authorization ----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_admin_clients_without_token_answer_401_challenge(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    body = {} if method in ("POST", "PATCH") else None
    response = await client.request(method, path, json=body)
    assert_oauth_error(response, 401, *MISSING_TOKEN,
                       www_authenticate='Bearer realm="provider"')


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("is_admin", [False, True])
async def test_admin_clients_without_admin_scope_answer_403(
    client: httpx.AsyncClient, factory: Factory, method: str, path: str, is_admin: bool
) -> None:
    user = await factory.user(is_admin=is_admin)
    tokens = await login(client, await factory.client(), user, scope="openid profile")
    body = {} if method in ("POST", "PATCH") else None
    response = await client.request(method, path, json=body,
                                    headers=bearer(tokens["access_token"]))
    assert_oauth_error(response, 403, *INSUFFICIENT_SCOPE,
                       www_authenticate=INSUFFICIENT_SCOPE_CHALLENGE)


# --- create and read --------------------------------------------------------------------


async def test_create_confidential_client_shows_its_secret_once(
    client: httpx.AsyncClient, admin: Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="provider.admin")
    response = await client.post("/admin/clients", headers=admin.headers, json={
        "name": "  Billing service ", "grant_types": ["client_credentials", "client_credentials"],
        "scopes": ["billing:read billing:write", "billing:read"]})
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    assert_no_hashes(response)
    body = response.json()
    assert set(body) == CLIENT_FIELDS | {"client_secret"}
    assert body["client_id"].startswith("cl_")
    assert (body["name"], body["is_public"], body["is_active"]) == ("Billing service", False,
                                                                   True)
    assert body["grant_types"] == ["client_credentials"]
    assert body["scopes"] == ["billing:read", "billing:write"]
    secret = body.pop("client_secret")
    assert len(secret) >= 43
    assert await read(client, admin, body["client_id"]) == body  # never shown again

    token = await client_credentials(client, body["client_id"], secret)
    assert token.status_code == 200, token.text
    assert token.json()["scope"] == "billing:read billing:write"
    assert secret not in caplog.text
    assert (f"admin={admin.user.id} action=client.create target={body['client_id']}"
            in caplog.messages)


async def test_create_public_client_has_no_secret(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    body = await create(client, admin, is_public=True)
    assert (body["is_public"], body["client_secret"]) == (True, None)
    public = Credentials(body["client_id"], None)
    user = await factory.user()
    response = await client.post("/oauth/token", data={
        "grant_type": "password", "username": user.email, "password": user.password,
        "client_id": public.client_id})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("body", "detail"), [
    ({"is_public": True, "grant_types": ["password", "client_credentials"]},
     "a public client cannot use client_credentials"),
    ({"grant_types": ["implicit"]},
     "unknown grant type 'implicit'; choose from password, refresh_token, client_credentials, "
     "authorization_code"),
    ({"name": "   "}, "name must be 1 to 200 characters"),
    # A terminal would obey it in `provider clients list`.
    ({"name": "Friendly \x1b]0;owned\x07App"}, "name must not contain control characters"),
    ({"scopes": ['bad"scope']}, "invalid scope token 'bad\"scope'"),
    ({"redirect_uris": ["https://app.example.com/cb#x"]},
     "redirect_uris: a redirect URI may not have a fragment (RFC 6749 §3.1.2)"),
    ({"redirect_uris": ["http://app.example.com/cb"]},
     "redirect_uris: http is allowed only for the loopback addresses 127.0.0.1 and [::1] "
     "(RFC 8252 §7.3; use https elsewhere)"),
    ({"redirect_uris": ["http://localhost:8080/cb"]},
     "redirect_uris: http is allowed only for the loopback addresses 127.0.0.1 and [::1] "
     "(RFC 8252 §7.3; use https elsewhere)"),
    ({"redirect_uris": ["https://user@app.example.com/cb"]},
     "redirect_uris: an https URI needs a host and no user information"),
    ({"redirect_uris": ["javascript:alert(1)"]},
     "redirect_uris: use https, http on 127.0.0.1 or [::1], or a private-use scheme in "
     "reverse domain form (com.example.app:/callback)"),
    ({"redirect_uris": ["https://app.example.com/a b"]},
     "redirect_uris: the URI holds characters a URI may not (percent-encode them)"),
    ({"post_logout_redirect_uris": ["ftp://app.example.com/"]},
     "post_logout_redirect_uris: use https, http on 127.0.0.1 or [::1], or a private-use "
     "scheme in reverse domain form (com.example.app:/callback)"),
])
async def test_create_client_with_invalid_settings_answers_422(
    client: httpx.AsyncClient, admin: Session, body: dict[str, Any], detail: str
) -> None:
    payload = {"name": "x", "grant_types": ["password"], "is_first_party": True, **body}
    response = await client.post("/admin/clients", headers=admin.headers, json=payload)
    assert_problem(response, 422, *INVALID_BODY, detail=detail)


FIRST_PARTY_ONLY = ("the password grant is for first-party clients only (RFC 9700 §2.4): "
                    "mark the client first-party (is_first_party, or --first-party)")


async def test_the_password_grant_is_for_first_party_clients_only(
    client: httpx.AsyncClient, admin: Session, factory: Factory, services: Services
) -> None:
    """RFC 9700 §2.4: refused at registration, on a change that would break the rule, and
    at the token endpoint for a row that got past both."""
    refused = await client.post("/admin/clients", headers=admin.headers, json={
        "name": "third", "grant_types": ["password", "authorization_code"],
        "redirect_uris": ["https://third.example.com/cb"]})
    assert_problem(refused, 422, *INVALID_BODY, detail=FIRST_PARTY_ONLY)
    body = await create(client, admin)
    for change in ({"is_first_party": False},
                   {"grant_types": ["password"], "is_first_party": False}):
        patched = await client.patch(f"/admin/clients/{body['client_id']}",
                                     headers=admin.headers, json=change)
        assert_problem(patched, 422, *INVALID_BODY, detail=FIRST_PARTY_ONLY)
    assert (await read(client, admin, body["client_id"]))["is_first_party"] is True
    # Dropping the grant and the flag together is fine.
    dropped = await client.patch(f"/admin/clients/{body['client_id']}", headers=admin.headers,
                                 json={"grant_types": ["refresh_token"], "is_first_party": False})
    assert dropped.status_code == 200, dropped.text

    user, oauth = await factory.user(), await factory.client()
    async with services.engine.begin() as conn:  # as a row from before the rule
        await conn.execute(update(Client).where(Client.client_id == oauth.client_id)
                           .values(is_first_party=False))
    services.clients.invalidate(oauth.client_id)
    answer = await client.post("/oauth/token", auth=oauth.auth, data={
        "grant_type": "password", "username": user.email, "password": user.password})
    assert answer.status_code == 400
    assert answer.json() == {"error": "unauthorized_client", "error_description":
                             "The password grant is for first-party clients only."}


async def test_code_flow_fields_on_create_patch_and_list(
    client: httpx.AsyncClient, admin: Session
) -> None:
    body = await create(client, admin, grant_types=["authorization_code", "refresh_token"],
                        redirect_uris=["https://app.example.com/cb", "http://127.0.0.1/cb",
                                       "com.example.app:/oauth"],
                        post_logout_redirect_uris=["https://app.example.com/bye"],
                        is_first_party=True)
    assert (body["redirect_uris"], body["post_logout_redirect_uris"],
            body["is_first_party"]) == (["https://app.example.com/cb", "http://127.0.0.1/cb",
                                         "com.example.app:/oauth"],
                                        ["https://app.example.com/bye"], True)
    defaults = await create(client, admin, grant_types=["refresh_token"])
    assert (defaults["redirect_uris"], defaults["post_logout_redirect_uris"],
            defaults["is_first_party"]) == ([], [], False)
    patched = await client.patch(f"/admin/clients/{body['client_id']}", headers=admin.headers,
                                 json={"redirect_uris": ["https://app.example.com/new"],
                                       "is_first_party": False})
    assert patched.status_code == 200, patched.text
    assert patched.json()["redirect_uris"] == ["https://app.example.com/new"]
    assert patched.json()["is_first_party"] is False
    refused = await client.patch(f"/admin/clients/{body['client_id']}", headers=admin.headers,
                                 json={"redirect_uris": ["https://app.example.com/#x"]})
    assert refused.status_code == 422
    assert (await read(client, admin, body["client_id"]))["redirect_uris"] == [
        "https://app.example.com/new"]  # nothing changed
    items: dict[str, Any] = {}
    cursor: str | None = None
    while body["client_id"] not in items:  # GET /admin/clients lists them too
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/admin/clients", params=params,
                                 headers=admin.headers)).json()
        items.update({item["client_id"]: item for item in page["items"]})
        cursor = page["next_cursor"]
        assert cursor is not None or body["client_id"] in items
    assert items[body["client_id"]]["redirect_uris"] == ["https://app.example.com/new"]
    assert items[body["client_id"]]["is_first_party"] is False


@pytest.mark.parametrize("field", ["client_id", "secret_hash", "client_secret", "created_at"])
async def test_create_client_rejects_fields_it_does_not_take(
    client: httpx.AsyncClient, admin: Session, field: str
) -> None:
    response = await client.post("/admin/clients", headers=admin.headers, json={
        "name": "x", "grant_types": ["refresh_token"], field: "chosen-by-caller"})
    assert_validation_error(response, (["body", field], "extra_forbidden"))


async def test_unknown_client_answers_404(client: httpx.AsyncClient, admin: Session) -> None:
    for method, path, body in (
        ("GET", "/admin/clients/cl_nope", None),
        ("PATCH", "/admin/clients/cl_nope", {"name": "x"}),
        ("DELETE", "/admin/clients/cl_nope", None),
        ("POST", "/admin/clients/cl_nope/secret", None),
    ):
        response = await client.request(method, path, json=body, headers=admin.headers)
        assert_problem(response, 404, *NO_SUCH_CLIENT)


# --- list -------------------------------------------------------------------------------


async def test_list_clients_pages_by_client_id(
    client: httpx.AsyncClient, admin: Session
) -> None:
    made = {(await create(client, admin))["client_id"] for _ in range(3)}
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get("/admin/clients", params=params, headers=admin.headers)
        assert response.status_code == 200, response.text
        assert_no_hashes(response)
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        assert all(set(item) == CLIENT_FIELDS for item in body["items"])
        assert len(body["items"]) == 7 or body["next_cursor"] is None
        seen += [item["client_id"] for item in body["items"]]
        cursor, pages = body["next_cursor"], pages + 1
        if cursor is None:
            break
        assert pages < 1000, "the cursor must make progress"
    assert made <= set(seen)
    assert seen == sorted(set(seen))  # ordered, and no client twice


async def test_list_clients_rejects_a_bad_cursor_and_limit(
    client: httpx.AsyncClient, admin: Session
) -> None:
    response = await client.get("/admin/clients", params={"cursor": "%%%"},
                                headers=admin.headers)
    assert_problem(response, 422, "invalid_cursor", "The cursor is not valid.")
    response = await client.get("/admin/clients", params={"limit": 101}, headers=admin.headers)
    assert_validation_error(response, (["query", "limit"], "less_than_equal"))


# --- update -----------------------------------------------------------------------------


async def test_patch_client_changes_only_the_fields_sent(
    client: httpx.AsyncClient, admin: Session, caplog: pytest.LogCaptureFixture
) -> None:
    before = await create(client, admin)
    before.pop("client_secret")
    caplog.set_level(logging.INFO, logger="provider.admin")
    response = await client.patch(f"/admin/clients/{before['client_id']}",
                                  headers=admin.headers,
                                  json={"name": "Renamed", "scopes": ["openid", "email"]})
    assert response.status_code == 200, response.text
    assert_no_hashes(response)
    after = response.json()
    assert after == {**before, "name": "Renamed", "scopes": ["openid", "email"],
                     "updated_at": after["updated_at"]}
    assert after["updated_at"] > before["updated_at"]
    assert await read(client, admin, before["client_id"]) == after
    assert (f"admin={admin.user.id} action=client.update target={before['client_id']} "
            f"fields=name,scopes") in caplog.messages


async def test_patch_client_scopes_and_grants_apply_to_the_next_token_request(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    oauth = await factory.client(scopes="openid profile email")
    user = await factory.user()
    await login(client, oauth, user, scope="email")  # caches the client in this process
    response = await client.patch(f"/admin/clients/{oauth.client_id}", headers=admin.headers,
                                  json={"scopes": ["openid"]})
    assert response.status_code == 200, response.text
    response = await password_login(client, oauth, user, scope="email")
    assert_oauth_error(response, 400, "invalid_scope", "Scope not allowed: email.")
    await client.patch(f"/admin/clients/{oauth.client_id}", headers=admin.headers,
                       json={"grant_types": ["refresh_token"]})
    response = await password_login(client, oauth, user)
    assert_oauth_error(response, 400, "unauthorized_client",
                       "The client is not allowed to use this grant type.")


async def test_patch_public_client_cannot_get_client_credentials(
    client: httpx.AsyncClient, admin: Session
) -> None:
    public = await create(client, admin, is_public=True)
    response = await client.patch(f"/admin/clients/{public['client_id']}",
                                  headers=admin.headers,
                                  json={"grant_types": ["client_credentials"]})
    assert_problem(response, 422, *INVALID_BODY,
                   detail="a public client cannot use client_credentials")


@pytest.mark.parametrize(("body", "errors"), [
    ({"is_public": True}, [(["body", "is_public"], "extra_forbidden")]),
    ({"secret_hash": "00" * 32}, [(["body", "secret_hash"], "extra_forbidden")]),
    ({"name": "ok", "client_id": "cl_mine"}, [(["body", "client_id"], "extra_forbidden")]),
    ({"grant_types": []}, [(["body", "grant_types"], "too_short")]),
    ({"is_active": None}, [(["body", "is_active"], "bool_type")]),
    ({"scopes": None}, [(["body", "scopes"], "list_type")]),
])
async def test_patch_client_mass_assignment_is_rejected_and_changes_nothing(
    client: httpx.AsyncClient, admin: Session, body: dict[str, Any],
    errors: list[tuple[list[Any], str]],
) -> None:
    created = await create(client, admin)
    secret = created.pop("client_secret")
    response = await client.patch(f"/admin/clients/{created['client_id']}",
                                  headers=admin.headers, json=body)
    assert_validation_error(response, *errors)
    assert await read(client, admin, created["client_id"]) == created
    creds = Credentials(created["client_id"], secret)
    response = await client.post("/oauth/token", data={"grant_type": "refresh_token",
                                                       "refresh_token": "x"}, auth=creds.auth)
    assert response.json()["error"] == "invalid_grant"  # authenticated: the secret still works


async def test_deactivated_client_fails_authentication_and_its_sessions_end_for_good(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    oauth = await factory.client()
    user = await factory.user()
    tokens = await login(client, oauth, user)
    response = await client.patch(f"/admin/clients/{oauth.client_id}", headers=admin.headers,
                                  json={"is_active": False})
    assert response.json()["is_active"] is False
    assert_oauth_error(await refresh(client, oauth, tokens["refresh_token"]), 401,
                       *INVALID_CLIENT, www_authenticate=BASIC_CHALLENGE)
    assert_oauth_error(await password_login(client, oauth, user), 401, *INVALID_CLIENT,
                       www_authenticate=BASIC_CHALLENGE)
    me = await client.get("/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401, me.text

    # Reactivated, the client authenticates again, but what deactivation ended stays dead.
    await client.patch(f"/admin/clients/{oauth.client_id}", headers=admin.headers,
                       json={"is_active": True})
    response = await refresh(client, oauth, tokens["refresh_token"])
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"
    me = await client.get("/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401, me.text
    fresh = await password_login(client, oauth, user)
    assert fresh.status_code == 200, fresh.text


# --- secret rotation --------------------------------------------------------------------


async def test_rotate_secret_replaces_the_old_one_at_once(
    client: httpx.AsyncClient, admin: Session, caplog: pytest.LogCaptureFixture
) -> None:
    created = await create(client, admin, grant_types=["client_credentials"], scopes=[])
    client_id, old = created["client_id"], created["client_secret"]
    assert (await client_credentials(client, client_id, old)).status_code == 200  # cached
    caplog.set_level(logging.INFO, logger="provider.admin")

    response = await client.post(f"/admin/clients/{client_id}/secret", headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert_no_hashes(response)
    body = response.json()
    assert set(body) == {"client_id", "client_secret"}
    assert body["client_id"] == client_id
    new = body["client_secret"]
    assert new != old

    assert_oauth_error(await client_credentials(client, client_id, old), 401, *INVALID_CLIENT,
                       www_authenticate=BASIC_CHALLENGE)
    assert (await client_credentials(client, client_id, new)).status_code == 200
    assert new not in caplog.text
    assert (f"admin={admin.user.id} action=client.rotate_secret target={client_id}"
            in caplog.messages)


async def test_cache_drops_a_client_again_when_the_change_commits(
    services: Services, factory: Factory
) -> None:
    if services.engine.dialect.name == "sqlite":
        # Every SQLite transaction takes the write lock first (BEGIN IMMEDIATE): a token
        # request cannot even read the client while the change is uncommitted.
        pytest.skip("no concurrent reader during a write on SQLite")
    oauth = await factory.client()
    assert oauth.client_secret is not None
    async with services.sessions() as session:
        new = await rotate_secret(session, oauth.client_id, now=services.clock.now())
        invalidate_on_commit(session, services.clients, oauth.client_id)
        # A token request racing the commit re-caches the row as it still is...
        racing = await services.clients.get(oauth.client_id)
        assert racing is not None and racing.check_secret(oauth.client_secret)
        await session.commit()
    # ...and the commit drops it again, so the old secret does not live on for the TTL.
    info = await services.clients.get(oauth.client_id)
    assert info is not None and info.check_secret(new)
    assert not info.check_secret(oauth.client_secret)


async def test_rotate_secret_of_public_client_answers_422(
    client: httpx.AsyncClient, admin: Session
) -> None:
    public = await create(client, admin, is_public=True)
    response = await client.post(f"/admin/clients/{public['client_id']}/secret",
                                 headers=admin.headers)
    assert_problem(response, 422, *INVALID_BODY, detail="a public client has no secret")


# --- delete -----------------------------------------------------------------------------


async def test_a_client_deleted_by_another_process_is_refused_not_a_500(
    client: httpx.AsyncClient, factory: Factory, services: Services
) -> None:
    """This process's cache still has the client (5 s) when the CLI or another worker
    deletes its row: the sign-in's session has no client to name. 401 invalid_client,
    and the cache forgets it at once."""
    oauth, user = await factory.client(), await factory.user()
    await login(client, oauth, user)  # the client is in this process's cache now
    async with services.engine.begin() as conn:  # what `provider clients delete` does
        await conn.execute(delete(Client).where(Client.client_id == oauth.client_id))
    for _ in range(2):  # the refusal, then the cache's own miss
        response = await password_login(client, oauth, user)
        if services.engine.dialect.name != "postgresql":
            assert response.status_code < 500, response.text  # SQLite checks no keys
            return
        assert_oauth_error(response, 401, *INVALID_CLIENT, www_authenticate=BASIC_CHALLENGE)


async def test_delete_client_ends_its_refresh_tokens(
    client: httpx.AsyncClient, factory: Factory, admin: Session, services: Services
) -> None:
    oauth = await factory.client()
    tokens = await login(client, oauth, await factory.user())
    response = await client.delete(f"/admin/clients/{oauth.client_id}", headers=admin.headers)
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_oauth_error(await refresh(client, oauth, tokens["refresh_token"]), 401,
                       *INVALID_CLIENT, www_authenticate=BASIC_CHALLENGE)
    async with services.sessions() as db:
        left = await db.scalar(select(func.count()).select_from(LoginSession)
                               .where(LoginSession.client_id == oauth.client_id))
    assert left == 0  # ON DELETE CASCADE
    response = await client.get(f"/admin/clients/{oauth.client_id}", headers=admin.headers)
    assert_problem(response, 404, *NO_SUCH_CLIENT)
    response = await client.delete(f"/admin/clients/{oauth.client_id}", headers=admin.headers)
    assert_problem(response, 404, *NO_SUCH_CLIENT)
