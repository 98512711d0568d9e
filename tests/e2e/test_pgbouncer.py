"""Several hosts on one database, behind PgBouncer in transaction mode.

Debian's `pgbouncer` (transaction pooling, 4 server connections) in front of a throwaway
PostgreSQL; two `provider serve` processes on two ports reach it with
PROVIDER_DB_PGBOUNCER=true, the database key store and one shared Redis; 10 client
connections share the 4 server connections, so consecutive transactions of one provider
connection run on different server connections. Driven through both: migrations and
the CLI, logins, refreshes (and the parallel-refresh race split across both, 15 trials),
revocations, a key rotation that both processes follow, and a purge.

Without PROVIDER_DB_PGBOUNCER the first statement through it already fails (asyncpg's
named prepared statements: `prepared statement "__asyncpg_stmt_1__" already exists`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from sqlalchemy import text

from provider.db import create_engine
from tests.conftest import REQUIRE_POSTGRES
from tests.e2e.conftest import KEYS_RECHECK_WAIT_S, LiveServer, OAuthClient, ServerPair, User
from tests.pgbouncer import PgBouncer, pgbouncer_binary
from tests.pgserver import ProvisionError, create_database, run_sync, throwaway_postgres

REDIS_URL = os.environ.get("PROVIDER_TEST_REDIS_URL")
REQUIRE_PGBOUNCER = os.environ.get("PROVIDER_REQUIRE_PGBOUNCER") == "1"
POOL = 4
TRIALS = 15
PARALLEL = 8
INVALID_GRANT = {"error": "invalid_grant",
                 "error_description": "The grant or refresh token is invalid, expired or revoked."}


@pytest.fixture(scope="module")
def bounced_pair(e2e_dir: Path) -> Iterator[tuple[ServerPair, PgBouncer]]:
    if pgbouncer_binary() is None:
        if REQUIRE_PGBOUNCER:
            pytest.fail("pgbouncer is required (PROVIDER_REQUIRE_PGBOUNCER=1) but missing")
        pytest.skip("pgbouncer is not installed (scripts/ensure-pgbouncer.sh)")
    if not REDIS_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("PROVIDER_TEST_REDIS_URL is required in CI")
        pytest.skip("no PROVIDER_TEST_REDIS_URL")
    try:
        postgres = throwaway_postgres()
        cluster = postgres.__enter__()
    except ProvisionError as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"no throwaway PostgreSQL: {exc}")
        pytest.skip(f"no throwaway PostgreSQL: {exc}")
    try:
        create_database(cluster.url, "provider_hosts")
        with PgBouncer(cluster, "provider_hosts", pool_size=POOL) as bouncer:
            env = {
                "PROVIDER_DB_PGBOUNCER": "true",
                "PROVIDER_KEY_STORE": "database",
                "PROVIDER_SECRET_KEY": secrets.token_urlsafe(32),
                "PROVIDER_REDIS_URL": REDIS_URL,
                "PROVIDER_DB_POOL_SIZE": "5",
                "PROVIDER_JWKS_MAX_AGE": "1",
                "PROVIDER_KEY_PUBLISH_MARGIN": "1",
                # Many parallel sign-ins of one account here; throttles are tested elsewhere.
                "PROVIDER_LOGIN_THROTTLE_ACCOUNT": "100000 per minute",
            }
            pair = ServerPair(bouncer.url, e2e_dir / "unused-keys", e2e_dir / "pgbouncer", env)
            # Migrations and the first key go through PgBouncer too.
            assert "newest revision" in pair[0].cli("migrate").stdout
            pair[0].cli("keys", "generate")
            with pair:
                yield pair, bouncer
            logs = pair[0].log() + pair[1].log()
            assert "prepared statement" not in logs
            assert "Traceback" not in logs
    finally:
        postgres.__exit__(None, None, None)


async def token(server: LiveServer, client: OAuthClient, **form: str) -> httpx.Response:
    async with server.http() as http:
        return await http.post("/oauth/token", auth=client.auth, data=form)


async def login(server: LiveServer, client: OAuthClient, user: User) -> dict[str, str]:
    response = await token(server, client, grant_type="password", username=user.email,
                           password=user.password, scope="openid profile account")
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


async def me(server: LiveServer, access: str) -> httpx.Response:
    async with server.http() as http:
        return await http.get("/users/me", headers={"Authorization": f"Bearer {access}"})


async def refresh_when(start: asyncio.Event, server: LiveServer, client: OAuthClient,
                       refresh_token: str) -> httpx.Response:
    """A refresh on a connection of its own, sent when ``start`` is set."""
    async with server.http() as http:
        await start.wait()
        return await http.post("/oauth/token", auth=client.auth, data={
            "grant_type": "refresh_token", "refresh_token": refresh_token})


def server_connections(bouncer: PgBouncer) -> int:
    """Backends PgBouncer holds to the database right now."""
    async def count() -> int:
        engine = create_engine(bouncer.cluster.url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = 'provider_hosts' "
                    "AND backend_type = 'client backend'"))).scalar_one())
        finally:
            await engine.dispose()
    return run_sync(count)


async def test_two_servers_through_pgbouncer_in_transaction_mode(
    bounced_pair: tuple[ServerPair, PgBouncer],
) -> None:
    pair, bouncer = bounced_pair
    user, client = pair[0].create_account(client_name="behind pgbouncer")

    # Logins and refreshes, alternating between the processes, many at once.
    sessions = await asyncio.gather(*(login(pair[i], client, user) for i in range(20)))
    chains = [s["refresh_token"] for s in sessions]
    for step in range(4):
        answers = await asyncio.gather(*(
            token(pair[i + step], client, grant_type="refresh_token", refresh_token=rt)
            for i, rt in enumerate(chains)))
        assert [a.status_code for a in answers] == [200] * len(chains), \
            [a.text for a in answers if a.status_code != 200]
        chains = [a.json()["refresh_token"] for a in answers]
        checks = await asyncio.gather(*(me(pair[i + step + 1], a.json()["access_token"])
                                        for i, a in enumerate(answers)))
        assert {c.status_code for c in checks} == {200}
    # PgBouncer multiplexed it all over its few server connections.
    assert server_connections(bouncer) <= POOL

    # The parallel-refresh race, split across both processes: exactly one winner.
    for trial in range(TRIALS):
        tokens = await login(pair[trial], client, user)
        start = asyncio.Event()
        tasks = [asyncio.ensure_future(refresh_when(start, pair[i], client,
                                                    tokens["refresh_token"]))
                 for i in range(PARALLEL)]
        await asyncio.sleep(0)
        start.set()
        responses = await asyncio.gather(*tasks)
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [400] * (PARALLEL - 1), (trial, [r.text for r in responses])
        assert all(r.json() == INVALID_GRANT for r in responses if r.status_code == 400)
        winner = next(r for r in responses if r.status_code == 200).json()
        # Strict reuse detection revoked the session: at both processes.
        for server in pair.servers:
            again = await token(server, client, grant_type="refresh_token",
                                refresh_token=winner["refresh_token"])
            assert again.json() == INVALID_GRANT
            assert (await me(server, winner["access_token"])).status_code == 401

    # Revocations made at one process hold at the other.
    tokens = await login(pair[0], client, user)
    async with pair[1].http() as http:
        revoked = await http.post("/oauth/revoke", auth=client.auth,
                                  data={"token": tokens["refresh_token"]})
    assert revoked.status_code == 200
    assert (await token(pair[0], client, grant_type="refresh_token",
                        refresh_token=tokens["refresh_token"])).json() == INVALID_GRANT
    assert (await me(pair[0], tokens["access_token"])).status_code == 401
    other = await login(pair[1], client, user)
    async with pair[0].http() as http:
        await http.post("/oauth/revoke", auth=client.auth,
                        data={"token": other["access_token"]})
    assert (await me(pair[1], other["access_token"])).status_code == 401

    # A key rotation through the database key store, followed by both processes.
    old = await login(pair[0], client, user)
    old_kid = jwt.get_unverified_header(old["access_token"])["kid"]
    new_kid = pair[0].cli_json("keys", "generate")["kid"]
    await asyncio.sleep(2.5)  # published for the JWKS max-age plus the margin (1 s + 1 s)
    assert pair[1].cli_json("keys", "rotate") == {"kid": new_kid, "status": "active"}
    await asyncio.sleep(KEYS_RECHECK_WAIT_S)
    for server in pair.servers:
        fresh = await login(server, client, user)
        assert jwt.get_unverified_header(fresh["access_token"])["kid"] == new_kid
        async with server.http() as http:
            kids = {k["kid"] for k in (await http.get("/.well-known/jwks.json")).json()["keys"]}
        assert kids == {old_kid, new_kid}
        assert (await me(server, old["access_token"])).status_code == 200
        assert (await me(pair[0], fresh["access_token"])).status_code == 200
    assert old_kid != new_kid

    # The purge's lock is a transaction's, which holds its server connection: it works.
    purged = pair[0].cli_json("purge")
    assert purged["ran"] is True and purged["counts"]["login_sessions"] == 0
