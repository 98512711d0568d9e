"""A change to the account holds the user's row as the token found it (provider.deps.
hold_account), so a revocation (password reset or change, disabling) is never undone by
a request that was in flight when it answered (DESIGN: revocation always wins)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy import select, text

from provider.deps import hold_account
from provider.oauth.errors import InvalidToken
from provider.services import Services
from provider.tokens.revocation import end_user_sessions
from provider.users.models import User
from tests.factories import Factory
from tests.helpers import bearer, login
from tests.smtp_sink import SmtpSink
from tests.users.flows import request_reset_code


def postgres_only(services: Services) -> None:
    if services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's write lock serialises whole requests; no row lock to test")


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
    waiting = 0
    for _ in range(1000):
        async with services.engine.connect() as watch:
            waiting = await watch.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"))
        if waiting or reset.done():
            break
        await asyncio.sleep(0.005)
    assert waiting >= 1 and not reset.done()
    release.set()
    assert (await deletion).status_code == 204
    answer = await reset
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_code", answer.text
    async with services.sessions() as fresh:
        stored = await fresh.get(User, uuid.UUID(user.id))
        assert stored is not None and not stored.is_active
