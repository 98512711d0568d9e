"""Check-then-write races of the account flows, with parallel clients split between two
server processes on one database: each answers its proper 4xx or succeeds, never 500.

The availability checks (``ensure_available``) read before they write; two requests
can both pass them, and then the unique index decides. The loser must get 409
``username_taken`` / ``email_taken``, and a first email code issued twice at once for
one user and purpose must simply be issued (provider.codes.service.EmailCodes.issue),
the code of the user's last request standing.
"""

from __future__ import annotations

import asyncio
import secrets

import httpx

from tests.e2e.conftest import ServerPair
from tests.factories import DEFAULT_PASSWORD, Factory, unique_email
from tests.helpers import bearer, login
from tests.smtp_sink import SmtpSink

TRIALS = 6
PARALLEL = 6
# Email changes of one account at once: one per server, plus the last request, stay
# within the account's limit (PROVIDER_EMAIL_CHANGE_THROTTLE: 3 per 10 minutes).
PARALLEL_EMAIL_CHANGES = 2


async def _tokens(pair: ServerPair, factory: Factory, count: int) -> list[str]:
    """Access tokens of ``count`` fresh users."""
    client = await factory.client(scopes="openid profile email account")
    users = [await factory.user() for _ in range(count)]
    async with pair[0].http() as http:
        return [(await login(http, client, user, scope="profile email account"))["access_token"]
                for user in users]


async def _parallel(pair: ServerPair, method: str, path: str,
                    requests: list[tuple[str, dict[str, str]]]) -> list[httpx.Response]:
    """One request per (token, body), all at once, alternating between the servers,
    each on a connection of its own."""
    start = asyncio.Event()

    async def send(index: int, token: str, body: dict[str, str]) -> httpx.Response:
        async with pair[index].http() as http:
            await start.wait()
            return await http.request(method, path, json=body, headers=bearer(token))

    tasks = [asyncio.create_task(send(i, token, body))
             for i, (token, body) in enumerate(requests)]
    await asyncio.sleep(0.05)
    start.set()
    return list(await asyncio.gather(*tasks))


async def test_parallel_claims_of_one_username_one_wins_others_409(
    pair: ServerPair, pair_factory: Factory
) -> None:
    for _ in range(TRIALS):
        tokens = await _tokens(pair, pair_factory, PARALLEL)
        name = f"racer-{secrets.token_hex(4)}"
        responses = await _parallel(pair, "PATCH", "/users/me",
                                    [(token, {"username": name}) for token in tokens])
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [409] * (PARALLEL - 1), [r.text for r in responses]
        for loser in (r for r in responses if r.status_code == 409):
            assert loser.json() == {"type": "about:blank", "title": "This username is taken.",
                                    "status": 409, "code": "username_taken"}


async def test_parallel_confirmations_of_one_new_email_one_wins_others_409(
    pair: ServerPair, pair_factory: Factory, mail_sink: SmtpSink
) -> None:
    for _ in range(TRIALS):
        # Two users each ask for the same free address; both codes go to it.
        tokens = await _tokens(pair, pair_factory, 2)
        target = unique_email("contested")
        async with pair[0].http() as http:
            for count, token in enumerate(tokens, start=1):
                asked = await http.patch("/users/me", headers=bearer(token), json={
                    "email": target, "password": DEFAULT_PASSWORD})
                assert asked.status_code == 200, asked.text
                # The code is mailed after the answer: wait for it, so that the codes
                # come in the order of the tokens.
                await mail_sink.wait_for(target, count=count)
        codes = mail_sink.codes_for(target)
        assert len(codes) == 2, codes
        responses = await _parallel(pair, "POST", "/users/me/email/confirm", [
            (token, {"code": code}) for token, code in zip(tokens, codes, strict=True)])
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 409], [r.text for r in responses]
        winner = next(r for r in responses if r.status_code == 200)
        assert winner.json()["email"] == target
        loser = next(r for r in responses if r.status_code == 409)
        assert loser.json() == {"type": "about:blank",
                                "title": "A user with this email already exists.",
                                "status": 409, "code": "email_taken"}


async def test_parallel_first_codes_for_one_user_are_issued_and_the_last_request_wins(
    pair: ServerPair, pair_factory: Factory, mail_sink: SmtpSink
) -> None:
    """Parallel email changes of one user, none with a code yet: each request's work
    after the answer issues "the first" code at once, in two processes. None of that work
    fails, and whatever order it ran in, the code of the user's last request is the
    live one."""
    for _ in range(TRIALS):
        [token] = await _tokens(pair, pair_factory, 1)
        targets = [unique_email("wanted") for _ in range(PARALLEL_EMAIL_CHANGES)]
        responses = await _parallel(pair, "PATCH", "/users/me", [
            (token, {"email": target, "password": DEFAULT_PASSWORD})
            for target in targets])
        assert [r.status_code for r in responses] == [200] * PARALLEL_EMAIL_CHANGES, [
            r.text for r in responses]
        # Asked after every one of them was answered: the last request.
        last = unique_email("last")
        async with pair[1].http() as http:
            asked = await http.patch("/users/me", headers=bearer(token), json={
                "email": last, "password": DEFAULT_PASSWORD})
            assert asked.status_code == 200, asked.text
            await mail_sink.wait_for(last)
            [code] = mail_sink.codes_for(last)
            confirmed = await http.post("/users/me/email/confirm", headers=bearer(token),
                                        json={"code": code})
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["email"] == last
    for server in pair.servers:
        assert "deferred account work failed" not in server.log()
