"""N parallel refreshes of one refresh token against the real server (2 workers).

DESIGN.md: "of N parallel refreshes of one token exactly one succeeds and none answers
5xx". With the default strict reuse detection (PROVIDER_REFRESH_REUSE_GRACE=0) each
loser presents a token that the winner has already rotated, which is reuse
(RFC 9700 §4.14.2): the whole family is revoked, including the winner's new refresh
token (provider.tokens.service.rotate_refresh_token). That is the designed trade-off:
a client that races itself loses its session, an attacker racing a victim can't win.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e.conftest import LiveServer, OAuthClient, User

PARALLEL = 16
ROUNDS = 3
INVALID_GRANT = {
    "error": "invalid_grant",
    "error_description": "The grant or refresh token is invalid, expired or revoked.",
}


async def login(live: LiveServer, client: OAuthClient, user: User) -> dict[str, str]:
    async with live.http() as http:
        response = await http.post(
            "/oauth/token", auth=client.auth,
            data={"grant_type": "password", "username": user.email, "password": user.password,
                  "scope": "openid email"},
        )
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


async def refresh_on_fresh_connection(
    live: LiveServer, client: OAuthClient, refresh_token: str, start: asyncio.Event
) -> tuple[httpx.Response, int]:
    """POST the refresh on a connection of its own; also say which worker answered."""
    async with live.http() as http:
        await start.wait()
        response = await http.post(
            "/oauth/token", auth=client.auth,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        )
        return response, live.served_by(response)


async def race(live: LiveServer, client: OAuthClient,
               refresh_token: str) -> tuple[list[httpx.Response], set[int]]:
    start = asyncio.Event()
    tasks = [
        asyncio.create_task(refresh_on_fresh_connection(live, client, refresh_token, start))
        for _ in range(PARALLEL)
    ]
    await asyncio.sleep(0)  # every task is waiting on the event
    start.set()
    results = await asyncio.gather(*tasks)
    return [r for r, _ in results], {pid for _, pid in results}


async def test_parallel_refresh_exactly_one_wins_and_reuse_revokes_family(
    live: LiveServer, live_account: tuple[User, OAuthClient]
) -> None:
    user, client = live_account
    workers: set[int] = set()
    for round_no in range(ROUNDS):
        tokens = await login(live, client, user)
        responses, served_by = await race(live, client, tokens["refresh_token"])
        workers |= served_by

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

        # Strict reuse detection: the losers' reuse revoked the family, so the winner's
        # new refresh token and access token are dead too.
        async with live.http() as http:
            again = await http.post(
                "/oauth/token", auth=client.auth,
                data={"grant_type": "refresh_token", "refresh_token": winner["refresh_token"]},
            )
            assert again.status_code == 400, again.text
            assert again.json() == INVALID_GRANT
            me = await http.get(
                "/users/me", headers={"Authorization": f"Bearer {winner['access_token']}"}
            )
            assert me.status_code == 401, me.text
            assert me.headers["www-authenticate"].startswith("Bearer ")

    # The race crossed processes: both workers answered some of the requests.
    assert workers == set(live.worker_pids())

    # A fresh login still works: reuse revokes a family, never the account.
    tokens = await login(live, client, user)
    async with live.http() as http:
        me = await http.get("/users/me",
                            headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200, me.text
    assert me.json()["email"] == user.email
