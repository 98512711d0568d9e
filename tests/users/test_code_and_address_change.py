"""An emailed code is bound to the address it was mailed to: a change of address that
commits while the code is being used (an admin's, or the user's own) kills it, also when
the code was already checked against the old address (README: "a change of address, by
the user or an admin, kills the codes mailed before it"; ASVS 15.4.2)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select, text

from provider.services import Services
from provider.users.models import User
from tests.factories import Factory, unique_email
from tests.smtp_sink import SmtpSink
from tests.users.flows import (
    INVALID_CODE,
    http_client,
    last_code,
    register_user,
    request_reset_code,
)
from tests.users.test_account_hold import postgres_only, waits_on_a_lock
from tests.users.test_profile import patch_me, signed_in

NEW_PASSWORD = "saffron glacier tuba"


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


async def move_while(services: Services, user_id: str, new_email: str,
                     request: asyncio.Task[httpx.Response]) -> httpx.Response:
    """Commit a change of the account's address (as an admin's) while ``request`` is in
    flight and waits on the row it holds."""
    async with services.engine.connect() as conn:
        tx = await conn.begin()
        await conn.execute(text("UPDATE users SET email = :e, is_verified = false "
                                "WHERE id = :id"), {"e": new_email, "id": uuid.UUID(user_id)})
        assert await waits_on_a_lock(services, request)
        await tx.commit()
    return await asyncio.wait_for(request, 30)


async def stored(services: Services, user_id: str) -> User:
    async with services.sessions() as session:
        user = await session.scalar(select(User).where(User.id == uuid.UUID(user_id)))
        assert user is not None
        return user


async def test_a_reset_code_of_the_old_address_resets_nothing_once_the_account_moved(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    postgres_only(services)
    user = await factory.user()
    code = await request_reset_code(http, mail_sink, user.email)
    moved = unique_email("moved")
    request = asyncio.create_task(http.post("/auth/reset-password", json={
        "email": user.email, "code": code, "new_password": NEW_PASSWORD}))
    response = await move_while(services, user.id, moved, request)
    assert (response.status_code, response.json()) == (400, INVALID_CODE)
    after = await stored(services, user.id)
    assert (after.email, after.is_verified) == (moved, False)
    # The password was not replaced: the old one still signs in.
    assert (await services.hasher.verify(user.password, after.password_hash))[0]


async def test_a_verification_code_of_the_old_address_does_not_verify_the_new_one(
    http: httpx.AsyncClient, mail_sink: SmtpSink, services: Services
) -> None:
    postgres_only(services)
    registered = await register_user(http, mail_sink, verify=False)
    code = await last_code(mail_sink, registered.email)
    async with services.sessions() as session:
        user_id = str(await session.scalar(
            select(User.id).where(User.email == registered.email)))
    moved = unique_email("admin-moved")
    request = asyncio.create_task(http.post("/auth/verify-email", json={
        "email": registered.email, "code": code}))
    response = await move_while(services, user_id, moved, request)
    assert (response.status_code, response.json()) == (400, INVALID_CODE)
    after = await stored(services, user_id)
    assert (after.email, after.is_verified) == (moved, False)


async def test_an_email_change_confirmed_while_an_admin_moves_the_account_undoes_nothing(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    postgres_only(services)
    user, auth = await signed_in(http, factory)
    wanted = unique_email("wanted")
    assert (await patch_me(http, auth, email=wanted, password=user.password)).status_code == 200
    code = await last_code(mail_sink, wanted)
    by_admin = unique_email("by-admin")
    request = asyncio.create_task(http.post("/users/me/email/confirm", headers=auth,
                                            json={"code": code}))
    response = await move_while(services, user.id, by_admin, request)
    # The code was mailed for the account at its old address: it dies with the move.
    assert (response.status_code, response.json()) == (400, INVALID_CODE)
    assert (await stored(services, user.id)).email == by_admin
