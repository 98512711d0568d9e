"""A change to the account holds the user's row as the token found it (provider.deps.
hold_account), so a revocation (password reset or change, disabling) is never undone by
a request that was in flight when it answered (DESIGN: revocation always wins)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select, text

from provider.deps import hold_account
from provider.oauth.errors import InvalidToken
from provider.services import Services
from provider.tokens.revocation import end_user_sessions
from provider.users.models import User
from tests.factories import Factory


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
