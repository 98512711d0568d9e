"""N parallel refreshes of one refresh token, split between two server processes.

DESIGN.md: "of N parallel refreshes of one token exactly one succeeds and none answers
5xx". With the default strict reuse detection (PROVIDER_REFRESH_REUSE_GRACE=0) each
loser presents a token that the winner has already rotated, which is reuse
(RFC 9700 §4.14.2): the whole session is revoked, including the winner's new refresh
token (provider.tokens.refresh.rotate). That is the designed trade-off: a client that
races itself loses its session, an attacker racing a victim can't win. Half of the
requests go to each of two `provider serve` processes on one database, so the race
crosses processes whatever the OS does with connections.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e.conftest import LiveServer, OAuthClient, ServerPair, User
from tests.factories import Factory

PARALLEL = 16
ROUNDS = 3
INVALID_GRANT = {
    "error": "invalid_grant",
    "error_description": "The grant or refresh token is invalid, expired or revoked.",
}


async def login(server: LiveServer, client: OAuthClient, user: User) -> dict[str, str]:
    async with server.http() as http:
        response = await http.post(
            "/oauth/token", auth=client.auth,
            data={"grant_type": "password", "username": user.email, "password": user.password,
                  "scope": "openid email account"},
        )
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


async def refresh_on_fresh_connection(
    server: LiveServer, client: OAuthClient, refresh_token: str, start: asyncio.Event
) -> httpx.Response:
    async with server.http() as http:
        await start.wait()
        return await http.post(
            "/oauth/token", auth=client.auth,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        )


async def race(pair: ServerPair, client: OAuthClient, refresh_token: str) -> list[httpx.Response]:
    start = asyncio.Event()
    tasks = [
        asyncio.create_task(refresh_on_fresh_connection(pair[i], client, refresh_token, start))
        for i in range(PARALLEL)
    ]
    await asyncio.sleep(0)  # every task is waiting on the event
    start.set()
    return list(await asyncio.gather(*tasks))


async def test_parallel_refresh_exactly_one_wins_and_reuse_revokes_session(
    pair: ServerPair, pair_factory: Factory
) -> None:
    user = await pair_factory.user()
    client = await pair_factory.client(scopes="openid profile email account")
    for round_no in range(ROUNDS):
        tokens = await login(pair[round_no], client, user)
        responses = await race(pair, client, tokens["refresh_token"])

        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [400] * (PARALLEL - 1), (round_no, statuses,
                                                            [r.text for r in responses])
        winner = next(r for r in responses if r.status_code == 200).json()
        assert set(winner) == {"access_token", "token_type", "expires_in", "scope",
                               "refresh_token", "id_token"}
        assert winner["refresh_token"] != tokens["refresh_token"]
        for loser in (r for r in responses if r.status_code != 200):
            assert loser.json() == INVALID_GRANT
            assert loser.headers["cache-control"] == "no-store"

        # Strict reuse detection: the losers' reuse revoked the session, so the winner's
        # new refresh token and access token are dead too, at both processes.
        for server in pair.servers:
            async with server.http() as http:
                again = await http.post(
                    "/oauth/token", auth=client.auth,
                    data={"grant_type": "refresh_token",
                          "refresh_token": winner["refresh_token"]},
                )
                assert again.status_code == 400, again.text
                assert again.json() == INVALID_GRANT
                me = await http.get(
                    "/users/me", headers={"Authorization": f"Bearer {winner['access_token']}"}
                )
                assert me.status_code == 401, me.text
                assert me.headers["www-authenticate"].startswith("Bearer ")

    # A fresh login still works: reuse revokes a session, never the account.
    tokens = await login(pair[1], client, user)
    async with pair[0].http() as http:
        me = await http.get("/users/me",
                            headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200, me.text
    assert me.json()["email"] == user.email
