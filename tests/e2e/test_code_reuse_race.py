"""N parallel redemptions of one authorization code, split between two server processes.

RFC 6749 §4.1.2: a code is used once; when it comes back, what its first use issued is
revoked. The redemption is one conditional UPDATE that records the session it starts
(provider.tokens.authorization_codes), so of N parallel presentations exactly one gets
tokens, none answers 5xx, and every loser's presentation is a reuse that revokes the
winner's session: its refresh token and (at our endpoints) its access token die. Many
trials, each with a fresh code, on PostgreSQL and SQLite. And a consent withdrawn while
the app redeems a code at the other process wins over that redemption.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e.conftest import LiveServer, OAuthClient, ServerPair
from tests.factories import Factory, TestUser
from tests.web.helpers import CALLBACK, Authorization, Browser, query_of

TRIALS = 15
PARALLEL = 6
INVALID_CODE = {
    "error": "invalid_grant",
    "error_description": "The authorization code is invalid, expired, already used, or was "
                         "issued to another client or for another redirect_uri or "
                         "code_verifier.",
}


async def redeem(server: LiveServer, client: OAuthClient, request: Authorization, code: str,
                 start: asyncio.Event) -> httpx.Response:
    async with server.http() as http:
        await start.wait()
        return await http.post("/oauth/token", auth=client.auth, data={
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": request.redirect_uri, "code_verifier": request.verifier})


async def fresh_code(browser: Browser, client: OAuthClient, user: TestUser
                     ) -> tuple[Authorization, str]:
    request = Authorization(client.client_id, scope="openid profile email account")
    page = await browser.authorize(request)
    if page.status_code == 200:  # the first trial signs in; later ones use the session
        page = await browser.follow(await browser.login(page, user.email, user.password))
    assert page.status_code == 302, page.text
    return request, query_of(page.headers["location"])["code"]


async def test_parallel_redemptions_one_wins_and_reuse_revokes_it(
    pair: ServerPair, pair_factory: Factory
) -> None:
    user = await pair_factory.user()
    client = await pair_factory.code_client(first_party=True, redirect_uris=(CALLBACK,))
    async with pair[0].http() as http:
        browser = Browser(http)
        for trial in range(TRIALS):
            request, code = await fresh_code(browser, client, user)
            start = asyncio.Event()
            tasks = [asyncio.create_task(redeem(pair[trial + i], client, request, code, start))
                     for i in range(PARALLEL)]
            await asyncio.sleep(0)
            start.set()
            responses = await asyncio.gather(*tasks)
            statuses = sorted(r.status_code for r in responses)
            assert statuses == [200] + [400] * (PARALLEL - 1), (
                trial, statuses, [r.text for r in responses])
            assert all(r.json() == INVALID_CODE for r in responses if r.status_code == 400)
            tokens = next(r for r in responses if r.status_code == 200).json()
            for server in pair.servers:
                async with server.http() as check:
                    me = await check.get("/users/me", headers={
                        "Authorization": f"Bearer {tokens['access_token']}"})
                    assert me.status_code == 401, (trial, me.text)
            async with pair[trial + 1].http() as check:
                refreshed = await check.post("/oauth/token", auth=client.auth, data={
                    "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
            assert refreshed.status_code == 400, (trial, refreshed.text)


async def test_one_redemption_keeps_its_tokens(pair: ServerPair, pair_factory: Factory
                                               ) -> None:
    """The control: a code used once (on either server) is not revoked by anything."""
    user = await pair_factory.user()
    client = await pair_factory.code_client(first_party=True, redirect_uris=(CALLBACK,))
    async with pair[1].http() as http:
        browser = Browser(http)
        for trial in range(2):
            request, code = await fresh_code(browser, client, user)
            start = asyncio.Event()
            task = asyncio.create_task(redeem(pair[trial], client, request, code, start))
            start.set()
            response = await task
            assert response.status_code == 200, response.text
            tokens = response.json()
            async with pair[trial + 1].http() as check:
                me = await check.get("/users/me", headers={
                    "Authorization": f"Bearer {tokens['access_token']}"})
            assert me.status_code == 200, me.text


WITHDRAW_TRIALS = 15


async def withdraw(server: LiveServer, app: OAuthClient, account: dict[str, str],
                   start: asyncio.Event) -> httpx.Response:
    async with server.http() as http:
        await start.wait()
        return await http.delete(f"/users/me/consents/{app.client_id}", headers=account)


async def test_a_withdrawal_wins_over_a_redemption_in_flight(
    pair: ServerPair, pair_factory: Factory
) -> None:
    """A third-party app redeems a code at one process while the user withdraws its
    consent at the other. Whichever commits first, the withdrawal wins: the redemption
    gets no tokens, or the tokens it got are dead at both processes."""
    user = await pair_factory.user()
    app = await pair_factory.code_client(scopes="openid email", redirect_uris=(CALLBACK,))
    first_party = await pair_factory.client()
    redeemed = 0
    async with pair[0].http() as http:
        me = await http.post("/oauth/token", auth=first_party.auth, data={
            "grant_type": "password", "username": user.email, "password": user.password,
            "scope": "account"})
        assert me.status_code == 200, me.text
        account = {"Authorization": f"Bearer {me.json()['access_token']}"}
        browser = Browser(http)
        for trial in range(WITHDRAW_TRIALS):
            request = Authorization(app.client_id, scope="openid email")
            code = (await browser.sign_in(request, user.email, user.password))["code"]
            start = asyncio.Event()
            redemption = asyncio.create_task(redeem(pair[trial], app, request, code, start))
            withdrawal = asyncio.create_task(withdraw(pair[trial + 1], app, account, start))
            await asyncio.sleep(0)
            start.set()
            answer, withdrawn = await asyncio.gather(redemption, withdrawal)
            assert withdrawn.status_code == 204, (trial, withdrawn.text)
            if answer.status_code != 200:
                assert answer.status_code == 400 and answer.json() == INVALID_CODE, (
                    trial, answer.text)
                continue
            redeemed += 1
            tokens = answer.json()
            for server in pair.servers:
                async with server.http() as check:
                    info = await check.get("/oauth/userinfo", headers={
                        "Authorization": f"Bearer {tokens['access_token']}"})
                    assert info.status_code == 401, (trial, info.text)
                    refreshed = await check.post("/oauth/token", auth=app.auth, data={
                        "grant_type": "refresh_token",
                        "refresh_token": tokens["refresh_token"]})
                    assert refreshed.status_code == 400, (trial, refreshed.text)
    # Which side came first is the machine's to decide; both outcomes are checked above.
    print(f"withdrawal race: {redeemed} of {WITHDRAW_TRIALS} redemptions answered first")
