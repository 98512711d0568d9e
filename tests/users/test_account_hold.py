"""A change to the account holds the user's row as the token found it (provider.deps.
hold_account), so a revocation (password reset or change, disabling) is never undone by
a request that was in flight when it answered (DESIGN: revocation always wins)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

import provider.clients.router as clients_router
from provider.deps import hold_account, hold_admin
from provider.oauth.errors import InsufficientScope, InvalidToken
from provider.services import Services
from provider.tokens.revocation import end_user_sessions
from provider.users.models import User
from tests.factories import Factory
from tests.helpers import bearer, login, password_login
from tests.smtp_sink import SmtpSink
from tests.users.flows import request_reset_code


def postgres_only(services: Services) -> None:
    if services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's write lock serialises whole requests; no row lock to test")


async def waits_on_a_lock(services: Services, task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is seen waiting on a row lock (pg_stat_activity) before it ends,
    whatever the scheduling: each run has a database of its own."""
    for _ in range(1000):
        async with services.engine.connect() as watch:  # a fresh statistics snapshot
            waiting = await watch.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"))
        if waiting:
            return not task.done()
        if task.done():
            return False
        await asyncio.sleep(0.005)
    return False


async def revoke(services: Services, user_id: uuid.UUID) -> None:
    """What a password reset or a disabling does to the user's sessions, committed."""
    async with services.engine.begin() as conn:
        await end_user_sessions(conn, user_id, now=services.clock.now())


async def test_a_revocation_that_answered_first_leaves_nothing_to_change(
        services: Services, factory: Factory) -> None:
    postgres_only(services)
    user_id = uuid.UUID((await factory.user()).id)
    async with services.sessions() as session:
        user = await session.get(User, user_id)  # as the bearer check found it
        assert user is not None
        old_hash = user.password_hash
        await revoke(services, user_id)  # answers while this request is in flight
        user.password_hash = "$argon2id$v=19$m=19456,t=2,p=1$not$written"  # the change
        with pytest.raises(InvalidToken):
            await hold_account(session, user)
        await session.commit()  # what an expected error does: nothing of it is written
    async with services.sessions() as fresh:
        stored = await fresh.get(User, user_id)
        assert stored is not None and stored.password_hash == old_hash


async def test_a_later_revocation_waits_for_the_change_and_then_wins(
        services: Services, factory: Factory) -> None:
    postgres_only(services)
    user_id = uuid.UUID((await factory.user()).id)
    async with services.sessions() as session:
        user = await session.get(User, user_id)
        assert user is not None
        epoch = user.session_epoch
        await hold_account(session, user)
        later = asyncio.create_task(revoke(services, user_id))
        # It waits on the held row (seen in pg_stat_activity), whatever the scheduling.
        for _ in range(1000):
            async with services.engine.connect() as watch:  # a fresh statistics snapshot
                waiting = await watch.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() "
                    "AND query LIKE 'UPDATE users SET session_epoch%'"))
            if waiting or later.done():
                break
            await asyncio.sleep(0.005)
        assert waiting == 1
        assert not later.done()
        user.username = f"held-{uuid.uuid4().hex[:8]}"
        await session.commit()
    await asyncio.wait_for(later, 30)
    async with services.sessions() as fresh:
        stored = await fresh.scalar(select(User).where(User.id == user_id))
        assert stored is not None
        assert stored.username == user.username  # the change stayed
        assert stored.session_epoch == epoch + 1  # and the revocation came after it


async def test_an_account_deletion_holds_the_row_while_it_checks_the_password(
        client: httpx.AsyncClient, services: Services, factory: Factory,
        mail_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reset asked while the deletion verifies the password waits for it, and finds the
    account gone; without the hold the reset answered first and the deletion, with the
    replaced password and a revoked token, went through after it."""
    postgres_only(services)
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="account")
    code = await request_reset_code(client, mail_sink, user.email)
    verified, release = asyncio.Event(), asyncio.Event()
    verify = services.hasher.verify

    async def verify_then_wait(password: str, password_hash: str | None
                               ) -> tuple[bool, str | None]:
        result = await verify(password, password_hash)
        if not verified.is_set():
            verified.set()
            await release.wait()
        return result

    monkeypatch.setattr(services.hasher, "verify", verify_then_wait)
    deletion = asyncio.create_task(client.request(
        "DELETE", "/users/me", headers=bearer(tokens["access_token"]),
        json={"password": user.password}))
    await asyncio.wait_for(verified.wait(), 10)
    reset = asyncio.create_task(client.post("/auth/reset-password", json={
        "email": user.email, "code": code, "new_password": "juniper lantern quay"}))
    assert await waits_on_a_lock(services, reset)
    release.set()
    assert (await deletion).status_code == 204
    answer = await reset
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_code", answer.text
    async with services.sessions() as fresh:
        stored = await fresh.get(User, uuid.UUID(user.id))
        assert stored is not None and not stored.is_active


async def test_an_admins_change_in_flight_holds_off_the_admins_disabling(
        client: httpx.AsyncClient, services: Services, factory: Factory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Admin B creates an admin account (the password's hash takes a while) when admin A
    disables B: A's disabling waits for B's change and then wins (B's token is dead
    after it); without the hold, A answered first and B's request, from a disabled
    admin, still made an active admin after it."""
    postgres_only(services)
    oauth = await factory.client()
    first, second = await factory.user(is_admin=True), await factory.user(is_admin=True)
    a = bearer((await login(client, oauth, first, scope="admin"))["access_token"])
    b = bearer((await login(client, oauth, second, scope="admin"))["access_token"])
    hashing, release = asyncio.Event(), asyncio.Event()
    hash_password = services.hasher.hash

    async def hash_then_wait(password: str) -> str:
        result = await hash_password(password)
        hashing.set()
        await release.wait()
        return result

    monkeypatch.setattr(services.hasher, "hash", hash_then_wait)
    made = f"made-{uuid.uuid4().hex[:8]}@example.com"
    creating = asyncio.create_task(client.post("/admin/users", headers=b, json={
        "email": made, "password": "juniper lantern quay", "is_admin": True}))
    await asyncio.wait_for(hashing.wait(), 10)
    disabling = asyncio.create_task(client.delete(f"/admin/users/{second.id}", headers=a))
    assert await waits_on_a_lock(services, disabling)
    release.set()
    assert (await creating).status_code == 201  # it came first
    assert (await disabling).status_code == 204  # and the disabling after it
    assert (await client.get("/admin/users", headers=b)).status_code == 401


@pytest.mark.parametrize(("change", "refused"), [
    ({"is_active": False}, InvalidToken), ({"is_admin": False}, InsufficientScope)])
async def test_an_admins_disabling_or_demotion_that_answered_first_leaves_nothing_to_change(
        services: Services, factory: Factory, change: dict[str, bool],
        refused: type[Exception]) -> None:
    postgres_only(services)
    await factory.user(is_admin=True)  # another admin, so that the change is allowed
    admin_id = uuid.UUID((await factory.user(is_admin=True)).id)
    async with services.sessions() as session:
        admin = await session.get(User, admin_id)  # as the bearer check found it
        assert admin is not None
        await factory.set_user(str(admin_id), **change)  # answers while in flight
        with pytest.raises(refused):
            await hold_admin(session, admin)


async def test_an_admins_change_does_not_hold_off_an_admins_sign_in(
        client: httpx.AsyncClient, services: Services, factory: Factory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The admins' rows are held FOR NO KEY UPDATE: a sign-in's session names its user
    (a foreign-key check, FOR KEY SHARE of the row), which that does not hold off. Held
    FOR UPDATE, an admin deleting the client another admin signed in with deadlocked
    with that sign-in, and the sign-in lost (503)."""
    postgres_only(services)
    oauth = await factory.client()
    first, second = await factory.user(is_admin=True), await factory.user(is_admin=True)
    a = bearer((await login(client, oauth, first, scope="admin"))["access_token"])
    app = await factory.client()
    held, release = asyncio.Event(), asyncio.Event()
    delete_client = clients_router.delete_client

    async def hold_then_delete(session: AsyncSession, client_id: str) -> None:
        held.set()
        await release.wait()
        await delete_client(session, client_id)

    monkeypatch.setattr(clients_router, "delete_client", hold_then_delete)
    deleting = asyncio.create_task(client.delete(f"/admin/clients/{app.client_id}",
                                                 headers=a))
    await asyncio.wait_for(held.wait(), 10)
    signed_in = await asyncio.wait_for(password_login(client, app, second), 10)
    assert signed_in.status_code == 200, signed_in.text  # while the admin change is held
    release.set()
    assert (await deleting).status_code == 204
