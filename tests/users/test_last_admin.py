"""DELETE /users/me by the last active admin answers 409 last_active_admin, as the admin
API does; also when the last two admins delete themselves at once.

Each test gets a database of its own (here the admins are the only ones)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from provider.app import create_app
from tests.conftest import make_settings, migrate, migrated_database
from tests.factories import Factory, TestUser
from tests.helpers import assert_problem, bearer, login

LAST_ADMIN = ("last_active_admin", "The change would leave no active admin.")
TRIALS = 8


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/admins.db"
        migrate(url)
        yield url
        return
    server = request.getfixturevalue("postgres_server")
    if server is None:
        pytest.skip("no PostgreSQL available")
    with migrated_database(server, "provider_admins") as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session")
async def world(fresh_database: str, keys_dir: Path
                ) -> AsyncIterator[tuple[httpx.AsyncClient, Factory]]:
    app = create_app(make_settings(fresh_database, keys_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
            yield http, Factory(app.state.services)


async def delete_me(http: httpx.AsyncClient, token: str, user: TestUser) -> httpx.Response:
    return await http.request("DELETE", "/users/me", headers=bearer(token),
                              json={"password": user.password})


async def test_the_last_active_admin_cannot_delete_their_account(
    world: tuple[httpx.AsyncClient, Factory]
) -> None:
    http, factory = world
    oauth = await factory.client()
    admin = await factory.user(is_admin=True)
    token = (await login(http, oauth, admin))["access_token"]
    # The password is checked first: a wrong one is a wrong password, for anyone.
    wrong = await http.request("DELETE", "/users/me", headers=bearer(token),
                               json={"password": "not the password at all"})
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_password", wrong.text
    assert_problem(await delete_me(http, token, admin), 409, *LAST_ADMIN)
    # Nothing changed: the account and its session work.
    me = await http.get("/users/me", headers=bearer(token))
    assert me.status_code == 200, me.text

    # With another active admin, the same request deletes the account.
    await factory.user(is_admin=True)
    response = await delete_me(http, token, admin)
    assert response.status_code == 204, response.text


async def test_two_last_admins_deleting_themselves_at_once_leave_one(
    world: tuple[httpx.AsyncClient, Factory]
) -> None:
    http, factory = world
    oauth = await factory.client()
    # Several trials: each request holds its own row as well as the admins' (in id
    # order), and the two orders once met in a deadlock now and then.
    for trial in range(TRIALS):
        admins = [await factory.user(is_admin=True) for _ in range(2)]
        tokens = [(await login(http, oauth, admin))["access_token"] for admin in admins]
        responses = await asyncio.gather(*(
            delete_me(http, token, admin) for token, admin in zip(tokens, admins, strict=True)))
        assert sorted(r.status_code for r in responses) == [204, 409], (
            trial, [r.text for r in responses])
        survivor = next(entry for entry in zip(admins, tokens, responses, strict=True)
                        if entry[2].status_code == 409)
        me = await http.get("/users/me", headers=bearer(survivor[1]))
        assert me.status_code == 200
        await factory.set_user(survivor[0].id, is_admin=False)  # two fresh ones next
