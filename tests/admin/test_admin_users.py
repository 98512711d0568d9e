"""Admin API for users, through HTTP: authorization, CRUD, pagination, mass assignment."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from provider.services import Services
from provider.users.models import User
from provider.users.service import LastActiveAdmin, UsernameTaken, update_user_admin
from tests.admin.helpers import (
    INSUFFICIENT_SCOPE,
    INSUFFICIENT_SCOPE_CHALLENGE,
    INVALID_GRANT,
    INVALID_TOKEN,
    INVALID_TOKEN_CHALLENGE,
    MISSING_TOKEN,
    Session,
    assert_no_hashes,
    assert_validation_error,
)
from tests.factories import DEFAULT_PASSWORD, Factory
from tests.factories import TestUser as Credentials
from tests.helpers import assert_oauth_error, assert_problem, bearer, login, password_login, refresh
from tests.smtp_sink import SmtpSink, plain_text

USER_FIELDS = {"id", "email", "username", "profile", "is_verified", "is_active", "is_admin",
               "mfa_enabled", "created_at", "updated_at"}
ENDPOINTS = [
    ("GET", "/admin/users"),
    ("POST", "/admin/users"),
    ("GET", "/admin/users/{id}"),
    ("PATCH", "/admin/users/{id}"),
    ("DELETE", "/admin/users/{id}"),
]
NO_SUCH_USER = ("user_not_found", "No such user.")
CANNOT_MODIFY_SELF = ("cannot_modify_self", "Admins cannot disable or demote their own account.")


async def call(http: httpx.AsyncClient, method: str, path: str,
               headers: dict[str, str] | None = None) -> httpx.Response:
    body = {} if method in ("POST", "PATCH") else None
    return await http.request(method, path.format(id=uuid.uuid4()), json=body, headers=headers)


def prefix(label: str) -> str:
    """A unique email prefix: the database is shared by the whole run."""
    return f"{label}-{secrets.token_hex(5)}"


async def read(http: httpx.AsyncClient, admin: Session, user_id: str) -> dict[str, Any]:
    response = await http.get(f"/admin/users/{user_id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- authorization ----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_admin_users_without_token_answer_401_challenge(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await call(client, method, path)
    assert_oauth_error(response, 401, *MISSING_TOKEN,
                       www_authenticate='Bearer realm="provider"')


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_admin_users_with_normal_users_token_answer_403(
    client: httpx.AsyncClient, factory: Factory, method: str, path: str
) -> None:
    user = await factory.user()
    tokens = await login(client, await factory.client(), user)
    response = await call(client, method, path, bearer(tokens["access_token"]))
    assert_oauth_error(response, 403, *INSUFFICIENT_SCOPE,
                       www_authenticate=INSUFFICIENT_SCOPE_CHALLENGE)


async def test_normal_user_cannot_obtain_the_admin_scope(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    response = await password_login(client, await factory.client(), await factory.user(),
                                    scope="admin")
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_scope",
                               "error_description": "Scope not allowed: admin."}


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_admin_users_with_admins_token_without_admin_scope_answer_403(
    client: httpx.AsyncClient, factory: Factory, method: str, path: str
) -> None:
    admin = await factory.user(is_admin=True)
    tokens = await login(client, await factory.client(), admin, scope="openid profile")
    response = await call(client, method, path, bearer(tokens["access_token"]))
    assert_oauth_error(response, 403, *INSUFFICIENT_SCOPE,
                       www_authenticate=INSUFFICIENT_SCOPE_CHALLENGE)


async def test_admin_demoted_after_login_gets_403(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    assert (await client.get("/admin/users?limit=1", headers=admin.headers)).status_code == 200
    await factory.set_user(admin.user.id, is_admin=False)
    response = await client.get("/admin/users?limit=1", headers=admin.headers)
    assert_oauth_error(response, 403, *INSUFFICIENT_SCOPE,
                       www_authenticate=INSUFFICIENT_SCOPE_CHALLENGE)


async def test_admin_disabled_after_login_gets_401(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    await factory.set_user(admin.user.id, is_active=False)
    response = await client.get("/admin/users?limit=1", headers=admin.headers)
    assert_oauth_error(response, 401, *INVALID_TOKEN,
                       www_authenticate=INVALID_TOKEN_CHALLENGE)


async def test_bad_id_without_token_still_answers_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/admin/users/not-a-uuid")
    assert_oauth_error(response, 401, *MISSING_TOKEN,
                       www_authenticate='Bearer realm="provider"')


# --- create and read --------------------------------------------------------------------


async def test_create_user_answers_201_without_hashes(
    client: httpx.AsyncClient, admin: Session, caplog: pytest.LogCaptureFixture
) -> None:
    email = f"{prefix('created')}@Example.COM"
    username = prefix("name")
    caplog.set_level(logging.INFO, logger="provider.admin")
    response = await client.post("/admin/users", headers=admin.headers, json={
        "email": email, "password": DEFAULT_PASSWORD, "username": username,
        "profile": {"name": "Ada"}, "is_admin": True, "is_verified": True,
    })
    assert response.status_code == 201, response.text
    assert_no_hashes(response)
    body = response.json()
    assert set(body) == USER_FIELDS
    assert body["email"] == email.lower()
    assert (body["username"], body["profile"]) == (username, {"name": "Ada"})
    assert (body["is_admin"], body["is_verified"], body["is_active"]) == (True, True, True)
    assert await read(client, admin, body["id"]) == body
    # The new admin can log in and get the admin scope: password and role were stored.
    created = Credentials(body["id"], body["email"], DEFAULT_PASSWORD, username)
    await login(client, admin.oauth, created, scope="admin")
    assert DEFAULT_PASSWORD not in caplog.text
    assert f"admin={admin.user.id} action=user.create target={body['id']}" in caplog.messages


async def test_create_user_defaults_to_unverified_non_admin(
    client: httpx.AsyncClient, admin: Session
) -> None:
    response = await client.post("/admin/users", headers=admin.headers, json={
        "email": f"{prefix('plain')}@example.com", "password": DEFAULT_PASSWORD})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["is_admin"], body["is_verified"], body["username"], body["profile"]) == (
        False, False, None, {})


async def test_create_user_with_taken_email_answers_409(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    existing = await factory.user()
    response = await client.post("/admin/users", headers=admin.headers, json={
        "email": existing.email.upper(), "password": DEFAULT_PASSWORD})
    assert_problem(response, 409, "email_taken", "A user with this email already exists.")


async def test_create_user_with_taken_username_answers_409(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    existing = await factory.user(username=prefix("taken"))
    response = await client.post("/admin/users", headers=admin.headers, json={
        "email": f"{prefix('other')}@example.com", "password": DEFAULT_PASSWORD,
        "username": existing.username})
    assert_problem(response, 409, "username_taken", "This username is taken.")


async def test_create_user_with_weak_password_answers_422(
    client: httpx.AsyncClient, admin: Session
) -> None:
    response = await client.post("/admin/users", headers=admin.headers, json={
        "email": f"{prefix('weak')}@example.com", "password": "short"})
    assert_problem(response, 422, "weak_password", "The password does not meet the policy.",
                   detail="The password must be at least 8 characters long.")


@pytest.mark.parametrize("field", ["id", "password_hash", "is_active", "mfa_enabled", "role"])
async def test_create_user_rejects_fields_it_does_not_take(
    client: httpx.AsyncClient, admin: Session, field: str
) -> None:
    email = f"{prefix('mass')}@example.com"
    response = await client.post("/admin/users", headers=admin.headers, json={
        "email": email, "password": DEFAULT_PASSWORD, field: "x"})
    assert_validation_error(response, (["body", field], "extra_forbidden"))
    listed = await client.get("/admin/users", params={"email": email}, headers=admin.headers)
    assert listed.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("user_id", [str(uuid.uuid4()), "not-a-uuid", "1"],
                         ids=["unknown", "not-a-uuid", "1"])
async def test_unknown_or_malformed_user_id_answers_404(
    client: httpx.AsyncClient, admin: Session, user_id: str
) -> None:
    for method, body in (("GET", None), ("PATCH", {"is_verified": True}), ("DELETE", None)):
        response = await client.request(method, f"/admin/users/{user_id}", json=body,
                                        headers=admin.headers)
        assert_problem(response, 404, *NO_SUCH_USER)


# --- list -------------------------------------------------------------------------------


async def test_list_users_pages_through_a_prefix_oldest_first(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    label = prefix("page")
    made = [await factory.user(email=f"{label}-{i}@example.com") for i in range(5)]
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"email": label, "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get("/admin/users", params=params, headers=admin.headers)
        assert response.status_code == 200, response.text
        assert_no_hashes(response)
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 5, "the cursor must make progress"
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [u["id"] for page in pages for u in page] == [u.id for u in made]
    assert all(set(u) == USER_FIELDS for page in pages for u in page)


async def test_list_users_default_limit_and_bounds(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    label = prefix("few")
    await factory.user(email=f"{label}@example.com")
    response = await client.get("/admin/users", params={"email": label}, headers=admin.headers)
    assert [u["email"] for u in response.json()["items"]] == [f"{label}@example.com"]
    assert response.json()["next_cursor"] is None
    for limit in ("0", "101", "x"):
        response = await client.get("/admin/users", params={"limit": limit},
                                    headers=admin.headers)
        expected = "int_parsing" if limit == "x" else (
            "greater_than_equal" if limit == "0" else "less_than_equal")
        assert_validation_error(response, (["query", "limit"], expected))


async def test_list_users_email_filter_is_a_case_insensitive_prefix(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    label = prefix("filter")
    alice = await factory.user(email=f"{label}-alice@example.com")
    await factory.user(email=f"{label}-bob@example.com")

    async def emails(value: str) -> list[str]:
        response = await client.get("/admin/users", params={"email": value},
                                    headers=admin.headers)
        assert response.status_code == 200, response.text
        return [u["email"] for u in response.json()["items"]]

    assert await emails(label.upper()) == [f"{label}-alice@example.com",
                                           f"{label}-bob@example.com"]
    assert await emails(f"{label}-ALICE") == [alice.email]
    assert await emails(alice.email) == [alice.email]
    assert await emails(f"{label}-carol") == []


async def test_list_users_email_filter_escapes_like_wildcards(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    label = prefix("wild")
    underscore = await factory.user(email=f"{label}_a@example.com")
    await factory.user(email=f"{label}xa@example.com")

    async def emails(value: str) -> list[str]:
        response = await client.get("/admin/users", params={"email": value},
                                    headers=admin.headers)
        return [u["email"] for u in response.json()["items"]]

    assert await emails(f"{label}_") == [underscore.email]
    assert await emails(f"{label}%") == []
    assert await emails("%") == []


@pytest.mark.parametrize("cursor", ["!!!", "bm9wZQ", "MjAyNC0wMS0wMXxub3BlCg", ""])
async def test_list_users_rejects_a_bad_cursor(
    client: httpx.AsyncClient, admin: Session, cursor: str
) -> None:
    response = await client.get("/admin/users", params={"cursor": cursor},
                                headers=admin.headers)
    assert_problem(response, 422, "invalid_cursor", "The cursor is not valid.")


# --- update -----------------------------------------------------------------------------


async def test_patch_changes_only_the_fields_sent(
    client: httpx.AsyncClient, factory: Factory, admin: Session,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = await factory.user(username=prefix("keep"), nickname="old")
    before = await read(client, admin, user.id)
    caplog.set_level(logging.INFO, logger="provider.admin")
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"profile": {"nickname": "new"}, "is_admin": True})
    assert response.status_code == 200, response.text
    assert_no_hashes(response)
    after = response.json()
    assert after == {**before, "profile": {"nickname": "new"}, "is_admin": True,
                     "updated_at": after["updated_at"]}
    assert after["updated_at"] > before["updated_at"]
    assert await read(client, admin, user.id) == after
    assert (f"admin={admin.user.id} action=user.update target={user.id} "
            f"fields=is_admin,profile") in caplog.messages


async def test_patch_email_is_normalised_and_unverified_unless_said(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    user = await factory.user(is_verified=True)
    new_email = f"{prefix('moved')}@example.com"
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"email": f"  {new_email.upper()} "})
    assert response.status_code == 200, response.text
    assert (response.json()["email"], response.json()["is_verified"]) == (new_email, False)

    other = f"{prefix('moved')}@example.com"
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"email": other, "is_verified": True})
    assert (response.json()["email"], response.json()["is_verified"]) == (other, True)
    # The same address again is no change and keeps the verification.
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"email": other.upper()})
    assert (response.json()["email"], response.json()["is_verified"]) == (other, True)


async def test_an_admins_email_change_is_told_to_the_old_address(
    client: httpx.AsyncClient, factory: Factory, admin: Session, mail_sink: SmtpSink
) -> None:
    """OWASP (Authentication): an email change notifies the old address, also when an
    administrator made it; nothing is mailed for any other change."""
    user = await factory.user()
    old = user.email
    await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                       json={"username": prefix("quiet")})
    new_email = f"{prefix('moved')}@example.com"
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"email": new_email})
    assert response.status_code == 200, response.text
    [notice] = await mail_sink.wait_for(old)
    assert notice["Subject"] == "The email address of your provider account was changed"
    text = plain_text(notice)
    assert f"{new_email[0]}***@example.com" in text and new_email not in text
    assert mail_sink.messages_to(new_email) == []


async def test_patch_username_is_normalised_and_can_be_cleared(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    user = await factory.user()
    name = prefix("Name")
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"username": name})
    assert response.json()["username"] == name.lower()
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"username": None})
    assert response.json()["username"] is None


async def test_patch_to_a_taken_email_or_username_answers_409(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    user = await factory.user()
    other = await factory.user(username=prefix("other"))
    before = await read(client, admin, user.id)
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"email": other.email.upper()})
    assert_problem(response, 409, "email_taken", "A user with this email already exists.")
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"username": other.username, "is_verified": False})
    assert_problem(response, 409, "username_taken", "This username is taken.")
    assert await read(client, admin, user.id) == before


async def test_patch_invalid_email_or_username_answers_422(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    user = await factory.user()
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"email": "not an email"})
    assert response.status_code == 422
    assert {k: v for k, v in response.json().items() if k != "detail"} == {
        "type": "about:blank", "title": "The email address is not valid.", "status": 422,
        "code": "invalid_email"}
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"username": "-x"})
    assert_problem(response, 422, "invalid_username", "The username is not valid.",
                   detail="2 to 63 characters: letters, digits, '.', '_' or '-', starting "
                          "with a letter or digit")


@pytest.mark.parametrize(("body", "errors"), [
    ({"password_hash": "$argon2id$forged"}, [(["body", "password_hash"], "extra_forbidden")]),
    ({"id": str(uuid.uuid4())}, [(["body", "id"], "extra_forbidden")]),
    ({"is_admin": True, "mfa_enabled": False}, [(["body", "mfa_enabled"], "extra_forbidden")]),
    ({"is_admin": True, "created_at": "2020-01-01T00:00:00Z"},
     [(["body", "created_at"], "extra_forbidden")]),
    ({"is_admin": None}, [(["body", "is_admin"], "bool_type")]),
    ({"email": None}, [(["body", "email"], "string_type")]),
    ({"profile": None}, [(["body", "profile"], "dict_type")]),
    ({"is_admin": "true"}, [(["body", "is_admin"], "bool_type")]),
    ({"is_active": 0}, [(["body", "is_active"], "bool_type")]),
])
async def test_patch_mass_assignment_is_rejected_and_changes_nothing(
    client: httpx.AsyncClient, factory: Factory, admin: Session, body: dict[str, Any],
    errors: list[tuple[list[Any], str]],
) -> None:
    user = await factory.user()
    before = await read(client, admin, user.id)
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers, json=body)
    assert_validation_error(response, *errors)
    assert await read(client, admin, user.id) == before
    await login(client, admin.oauth, user)  # the password (hash) is untouched


async def test_patch_is_active_false_revokes_the_users_tokens(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    tokens = await login(client, oauth, user)
    response = await client.patch(f"/admin/users/{user.id}", headers=admin.headers,
                                  json={"is_active": False})
    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is False

    assert_oauth_error(await client.get("/users/me", headers=bearer(tokens["access_token"])),
                       401, *INVALID_TOKEN, www_authenticate=INVALID_TOKEN_CHALLENGE)
    assert_oauth_error(await refresh(client, oauth, tokens["refresh_token"]), 400,
                       *INVALID_GRANT)
    # Revoked, not merely blocked while disabled: re-enabling does not bring them back.
    await client.patch(f"/admin/users/{user.id}", headers=admin.headers, json={"is_active": True})
    assert_oauth_error(await refresh(client, oauth, tokens["refresh_token"]), 400,
                       *INVALID_GRANT)
    await login(client, oauth, user)  # the account itself works again


async def test_demoting_another_admin_takes_effect_at_once(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    other_user = await factory.user(is_admin=True)
    other = await login(client, admin.oauth, other_user, scope="admin")
    response = await client.patch(f"/admin/users/{other_user.id}", headers=admin.headers,
                                  json={"is_admin": False})
    assert response.json()["is_admin"] is False
    response = await client.get("/admin/users?limit=1", headers=bearer(other["access_token"]))
    assert_oauth_error(response, 403, *INSUFFICIENT_SCOPE,
                       www_authenticate=INSUFFICIENT_SCOPE_CHALLENGE)


@pytest.mark.parametrize("body", [{"is_admin": False}, {"is_active": False},
                                  {"is_active": False, "is_admin": True}])
async def test_admin_cannot_disable_or_demote_themselves(
    client: httpx.AsyncClient, admin: Session, body: dict[str, Any]
) -> None:
    before = await read(client, admin, admin.user.id)
    response = await client.patch(f"/admin/users/{admin.user.id}", headers=admin.headers,
                                  json=body)
    assert_problem(response, 409, *CANNOT_MODIFY_SELF)
    assert await read(client, admin, admin.user.id) == before


async def test_admin_can_edit_their_own_other_fields(
    client: httpx.AsyncClient, admin: Session
) -> None:
    response = await client.patch(f"/admin/users/{admin.user.id}", headers=admin.headers,
                                  json={"is_admin": True, "is_active": True,
                                        "profile": {"team": "ops"}})
    assert response.status_code == 200, response.text
    assert response.json()["profile"] == {"team": "ops"}


async def test_the_last_active_admin_cannot_be_demoted(
    services: Services, factory: Factory
) -> None:
    # Only reachable through a race over HTTP (the caller is an active admin and cannot
    # demote themselves), so the rule is checked on the service in a rolled-back
    # transaction where every other admin is inactive.
    last = await factory.user(is_admin=True)
    async with services.sessions() as session:
        await session.execute(
            update(User).where(User.is_admin.is_(True), User.id != uuid.UUID(last.id))
            .values(is_active=False)
        )
        for changes in ({"is_admin": False}, {"is_active": False}):
            with pytest.raises(LastActiveAdmin):
                await update_user_admin(session, uuid.UUID(last.id), changes, actor_id=None,
                                        now=services.clock.now())
        await session.rollback()


async def test_update_that_loses_a_uniqueness_race_answers_taken(
    services: Services, factory: Factory
) -> None:
    winner, loser = await factory.user(), await factory.user()
    name = prefix("race")
    async with services.sessions() as first, services.sessions() as second:
        await update_user_admin(first, uuid.UUID(winner.id), {"username": name},
                                actor_id=None, now=services.clock.now())
        # The loser's check runs before the winner commits (PostgreSQL: its UPDATE then
        # waits on the unique index and fails; SQLite: it waits for the write lock).
        late = asyncio.create_task(update_user_admin(
            second, uuid.UUID(loser.id), {"username": name}, actor_id=None,
            now=services.clock.now()))
        await asyncio.sleep(0.3)
        await first.commit()
        with pytest.raises(UsernameTaken):
            await late
        await second.commit()  # the failed statement did not poison the transaction


# --- delete (= disable) -----------------------------------------------------------------


async def test_delete_disables_revokes_and_is_idempotent(
    client: httpx.AsyncClient, factory: Factory, admin: Session,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    tokens = await login(client, oauth, user)
    caplog.set_level(logging.INFO, logger="provider.admin")
    for _ in range(2):
        response = await client.delete(f"/admin/users/{user.id}", headers=admin.headers)
        assert response.status_code == 204, response.text
        assert response.content == b""
    assert (await read(client, admin, user.id))["is_active"] is False
    assert_oauth_error(await client.get("/users/me", headers=bearer(tokens["access_token"])),
                       401, *INVALID_TOKEN, www_authenticate=INVALID_TOKEN_CHALLENGE)
    await client.patch(f"/admin/users/{user.id}", headers=admin.headers, json={"is_active": True})
    assert_oauth_error(await refresh(client, oauth, tokens["refresh_token"]), 400,
                       *INVALID_GRANT)
    assert caplog.messages.count(
        f"admin={admin.user.id} action=user.disable target={user.id}") == 2


async def test_delete_of_disabled_user_keeps_updated_at(
    client: httpx.AsyncClient, factory: Factory, admin: Session
) -> None:
    user = await factory.user()
    await client.delete(f"/admin/users/{user.id}", headers=admin.headers)
    first = await read(client, admin, user.id)
    await client.delete(f"/admin/users/{user.id}", headers=admin.headers)
    assert await read(client, admin, user.id) == first


async def test_admin_cannot_delete_themselves(client: httpx.AsyncClient, admin: Session) -> None:
    response = await client.delete(f"/admin/users/{admin.user.id}", headers=admin.headers)
    assert_problem(response, 409, *CANNOT_MODIFY_SELF)
    assert (await read(client, admin, admin.user.id))["is_active"] is True
