"""`provider purge` and the purge task on seeded dead and live rows, PostgreSQL and SQLite:
exactly the dead rows go, live sessions keep working, a dry run changes nothing, and on
PostgreSQL two purges never run at once (the advisory lock, across two processes)."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, insert, select, text, update

from provider import purge as purge_module
from provider.app import create_app
from provider.audit.models import AuditEvent
from provider.audit.service import EventType, event_row
from provider.codes.models import EmailCode
from provider.mfa.models import MfaToken
from provider.purge import TABLES, Purger, rest_after
from provider.services import Services, build_services
from provider.tokens.models import (
    AuthorizationCode,
    LoginSession,
    RefreshToken,
    RevokedAccessToken,
)
from provider.web.models import BrowserSession
from tests.conftest import make_settings, own_database
from tests.factories import Factory
from tests.helpers import bearer, login, refresh
from tests.test_cli import COMMAND, Cli

NOTHING = dict.fromkeys(TABLES, 0)
# What seed() makes dead: 2 sessions with 3 refresh tokens, 2 codes, 2 mfa_tokens,
# 1 denial, 1 event, 1 authorization code, 2 browser sessions.
DEAD = {"login_sessions": 2, "refresh_tokens": 3, "email_codes": 2, "mfa_tokens": 2,
        "revoked_access_tokens": 1, "audit_events": 1, "authorization_codes": 1,
        "browser_sessions": 2}
WAIT_S = 30.0
BASE_URL = "http://127.0.0.1:8000"


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_url(request: pytest.FixtureRequest, postgres_server: str | None,
              tmp_path: Path) -> Iterator[str]:
    """A migrated database of the test's own: purge counts are exact only there."""
    with own_database(request.param, postgres_server, tmp_path, "provider_purge") as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session")
async def fresh(fresh_url: str, keys_dir: Path) -> AsyncIterator[Services]:
    services = build_services(make_settings(fresh_url, keys_dir))
    try:
        yield services
    finally:
        await services.engine.dispose()


@dataclass
class World:
    live_ids: dict[str, set[Any]]
    dead_ids: dict[str, set[Any]]


async def seed(services: Services) -> World:
    """Dead and live rows of every purged table, with times relative to now."""
    factory = Factory(services)
    user = await factory.user()
    oauth = await factory.client()
    user_id = uuid.UUID(user.id)
    now = services.clock.now()
    access_ttl = services.settings.access_token_ttl
    minute, day = timedelta(minutes=1), timedelta(days=1)
    sessions = {  # name: (expires_at, revoked_at)
        "live": (now + day, None),
        "recently_revoked": (now + day, now - minute),  # its access tokens may still live
        "recently_expired": (now - minute, None),  # so may the last one it issued
        "expired": (now - access_ttl - minute, None),
        "revoked": (now + day, now - access_ttl - minute),
    }
    session_ids = {name: uuid.uuid4() for name in sessions}
    tokens: dict[str, list[uuid.UUID]] = {name: [] for name in sessions}
    async with services.engine.begin() as conn:
        for name, (expires_at, revoked_at) in sessions.items():
            await conn.execute(insert(LoginSession), {
                "id": session_ids[name], "user_id": user_id, "client_id": oauth.client_id,
                "scope": "openid", "amr": ["pwd"], "auth_time": now - 2 * day,
                "created_at": now - 2 * day, "expires_at": expires_at, "session_epoch": 0,
                "revoked_at": revoked_at,
            })
            count = 2 if name in ("live", "expired") else 1
            for i in range(count):
                token_id = uuid.uuid4()
                tokens[name].append(token_id)
                await conn.execute(insert(RefreshToken), {
                    "id": token_id, "token_hash": secrets.token_bytes(32),
                    "session_id": session_ids[name], "parent_id": None,
                    "issued_at": now - day, "expires_at": min(expires_at, now + day),
                    "rotated_at": now - minute if i == 0 and count == 2 else None,
                })
        code_ids = {purpose: uuid.uuid4() for purpose in ("used", "expired", "live")}
        for purpose, (expires_at, used_at) in {
            "used": (now + minute, now - minute),
            "expired": (now - minute, None),
            "live": (now + minute, None),
        }.items():
            await conn.execute(insert(EmailCode), {
                "id": code_ids[purpose], "user_id": user_id, "purpose": purpose,
                "code_hash": secrets.token_bytes(32), "target_email": None,
                "failed_attempts": 0, "created_at": now - 2 * minute,
                "expires_at": expires_at, "used_at": used_at,
            })
        mfa_ids = {state: uuid.uuid4() for state in ("used", "expired", "live")}
        for state, (expires_at, used_at) in {
            "used": (now + minute, now - minute),
            "expired": (now - minute, None),
            "live": (now + minute, None),
        }.items():
            await conn.execute(insert(MfaToken), {
                "id": mfa_ids[state], "token_hash": secrets.token_bytes(32),
                "user_id": user_id, "client_id": oauth.client_id, "scope": "openid",
                "session_epoch": 0, "created_at": now - 2 * minute, "expires_at": expires_at,
                "attempts": 0, "used_at": used_at,
            })
        denials = {"dead": f"dead-{uuid.uuid4()}", "live": f"live-{uuid.uuid4()}"}
        await conn.execute(insert(RevokedAccessToken), [
            {"jti": denials["dead"], "expires_at": now - minute},
            {"jti": denials["live"], "expires_at": now + minute},
        ])
        events = {
            "old": event_row(event=EventType.LOGIN, actor="seed", now=now - 91 * day),
            "two_days": event_row(event=EventType.LOGIN, actor="seed", now=now - 2 * day),
        }
        await conn.execute(insert(AuditEvent), list(events.values()))
        # Authorization codes: a used one expired an hour ago is still kept (its reuse
        # must still revoke), one expired two days ago goes.
        auth_code_ids = {state: uuid.uuid4() for state in ("old", "recent", "live")}
        for state, (expires_at, used_at) in {
            "old": (now - 2 * day, now - 2 * day),
            "recent": (now - 60 * minute, now - 61 * minute),
            "live": (now + minute, None),
        }.items():
            await conn.execute(insert(AuthorizationCode), {
                "id": auth_code_ids[state], "code_hash": secrets.token_bytes(32),
                "client_id": oauth.client_id, "user_id": user_id,
                "redirect_uri": "https://client.example.com/cb", "redirect_uri_sent": True,
                "code_challenge": "x" * 43, "scope": "openid", "nonce": None,
                "auth_time": now - day, "amr": ["pwd"], "session_epoch": 0,
                "created_at": expires_at - minute, "expires_at": expires_at,
                "used_at": used_at, "session_id": None,
            })
        browser_ids = {state: uuid.uuid4() for state in ("ended", "expired", "live")}
        for state, (expires_at, ended_at) in {
            "ended": (now + day, now - minute),
            "expired": (now - minute, None),
            "live": (now + day, None),
        }.items():
            await conn.execute(insert(BrowserSession), {
                "id": browser_ids[state], "token_hash": secrets.token_bytes(32),
                "user_id": user_id, "session_epoch": 0, "auth_time": now - day,
                "amr": ["pwd"], "created_at": now - day, "expires_at": expires_at,
                "ended_at": ended_at,
            })
    return World(
        live_ids={
            "login_sessions": {session_ids["live"], session_ids["recently_revoked"],
                               session_ids["recently_expired"]},
            "refresh_tokens": {*tokens["live"], *tokens["recently_revoked"],
                               *tokens["recently_expired"]},
            "email_codes": {code_ids["live"]},
            "mfa_tokens": {mfa_ids["live"]},
            "revoked_access_tokens": {denials["live"]},
            "audit_events": {events["two_days"]["id"]},
            "authorization_codes": {auth_code_ids["recent"], auth_code_ids["live"]},
            "browser_sessions": {browser_ids["live"]},
        },
        dead_ids={
            "login_sessions": {session_ids["expired"], session_ids["revoked"]},
            "refresh_tokens": {*tokens["expired"], *tokens["revoked"]},
            "email_codes": {code_ids["used"], code_ids["expired"]},
            "mfa_tokens": {mfa_ids["used"], mfa_ids["expired"]},
            "revoked_access_tokens": {denials["dead"]},
            "audit_events": {events["old"]["id"]},
            "authorization_codes": {auth_code_ids["old"]},
            "browser_sessions": {browser_ids["ended"], browser_ids["expired"]},
        },
    )


KEYS = {"login_sessions": LoginSession.id, "refresh_tokens": RefreshToken.id,
        "email_codes": EmailCode.id, "mfa_tokens": MfaToken.id,
        "revoked_access_tokens": RevokedAccessToken.jti,
        "audit_events": AuditEvent.id, "authorization_codes": AuthorizationCode.id,
        "browser_sessions": BrowserSession.id}


async def present(services: Services) -> dict[str, set[Any]]:
    async with services.engine.connect() as conn:
        return {table: set((await conn.execute(select(key))).scalars())
                for table, key in KEYS.items()}


def cli_for(services: Services, home: Path) -> Cli:
    return Cli(home, services.settings.database_url, services.settings.keys_dir)


async def run_cli(cli: Cli, *args: str, **env: str) -> dict[str, Any]:
    result = await asyncio.to_thread(cli, "purge", "--json", *args, **env)
    body: dict[str, Any] = result.json()
    return body


async def test_purge_deletes_exactly_the_dead_rows_and_live_sessions_keep_working(
    fresh: Services, tmp_path: Path
) -> None:
    app = create_app(fresh.settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
            factory = Factory(fresh)
            user, oauth = await factory.user(), await factory.client()
            tokens = await login(http, oauth, user)
            await app.state.services.audit.flush()  # its events are in before the snapshot
            world = await seed(fresh)
            before = await present(fresh)
            cli = cli_for(fresh, tmp_path)

            dry = await run_cli(cli, "--dry-run")
            assert dry == {"dry_run": True, "ran": True, "counts": DEAD}
            assert await present(fresh) == before  # a dry run changes nothing

            done = await run_cli(cli)
            assert done == {"dry_run": False, "ran": True, "counts": DEAD}
            after = await present(fresh)
            for table in TABLES:
                assert after[table] == before[table] - world.dead_ids[table], table
                assert world.live_ids[table] <= after[table], table

            # The signed-in user's session was live: its tokens keep working.
            me = await http.get("/users/me", headers=bearer(tokens["access_token"]))
            assert me.status_code == 200, me.text
            refreshed = await refresh(http, oauth, tokens["refresh_token"])
            assert refreshed.status_code == 200, refreshed.text

            again = await run_cli(cli)
            assert again == {"dry_run": False, "ran": True, "counts": NOTHING}
            # Retention is a setting: the two-day-old event goes with one day.
            shorter = await run_cli(cli, PROVIDER_AUDIT_RETENTION="P1D")
            assert shorter["counts"] == {**NOTHING, "audit_events": 1}


async def test_purge_in_small_batches_deletes_everything_dead(
    fresh: Services, tmp_path: Path
) -> None:
    world = await seed(fresh)
    extra = await seed(fresh)
    done = await run_cli(cli_for(fresh, tmp_path), PROVIDER_PURGE_BATCH_SIZE="1")
    assert done["counts"] == {table: 2 * n for table, n in DEAD.items()}
    after = await present(fresh)
    for table in TABLES:
        assert not (world.dead_ids[table] | extra.dead_ids[table]) & after[table]
        assert world.live_ids[table] | extra.live_ids[table] <= after[table]


async def test_the_purge_rests_between_batches_when_asked(
    fresh: Services, tmp_path: Path
) -> None:
    await seed(fresh)
    started = time.monotonic()
    done = await run_cli(cli_for(fresh, tmp_path), PROVIDER_PURGE_BATCH_SIZE="1",
                         PROVIDER_PURGE_PAUSE="0.2")
    # Two dead sessions at one per batch: at least one rest between them.
    assert done["counts"]["login_sessions"] == DEAD["login_sessions"] >= 2
    assert time.monotonic() - started >= 0.2


def test_the_rest_after_a_batch_keeps_the_purge_to_its_share() -> None:
    assert rest_after(0.05, share=0.2, pause_s=0.0) == pytest.approx(0.2)
    assert rest_after(0.05, share=0.5, pause_s=0.0) == pytest.approx(0.05)
    assert rest_after(0.05, share=1.0, pause_s=0.0) == 0.0  # full speed
    assert rest_after(0.05, share=1.0, pause_s=0.3) == 0.3  # the least rest
    assert rest_after(0.05, share=0.2, pause_s=0.1) == pytest.approx(0.2)


async def test_the_purge_rests_in_proportion_to_each_batch(
    fresh: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch that is followed by another is followed by a rest of its own duration
    times (1 - share) / share: here each batch "takes" 0.1 s on a stepped clock, so each
    rest is 0.4 s at share 0.2, whatever the machine's speed."""
    world = await seed(fresh)
    ticks = iter(range(10_000))
    monkeypatch.setattr(purge_module, "monotonic", lambda: next(ticks) / 10)
    rests: list[float] = []

    async def sleep(seconds: float) -> None:
        rests.append(seconds)

    monkeypatch.setattr(purge_module, "sleep", sleep)
    settings = fresh.settings.model_copy(update={"purge_batch_size": 1, "purge_share": 0.2})
    report = await Purger(fresh.engine, fresh.single, settings, fresh.clock).run()

    assert report.counts == DEAD
    # Each statement deletes one row at most; one that deleted its full batch (one row)
    # is followed by a rest, one that came back short ends its loop. The dead sessions'
    # refresh tokens too go one per statement (not all of a batch's sessions' at once):
    # one rest per dead row of every table, and one after finding each batch of sessions.
    finds = DEAD["login_sessions"]
    assert rests == [pytest.approx(0.4)] * (sum(DEAD.values()) + finds)
    after = await present(fresh)
    for table in TABLES:
        assert not world.dead_ids[table] & after[table]
        assert world.live_ids[table] <= after[table]


async def test_a_resting_purge_holds_back_no_row_versions(
    fresh: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the purge rests between batches, its lock's transaction (idle, kept open for
    the whole run) holds no snapshot: the database's xmin horizon moves on, so VACUUM
    and page pruning can remove what died meanwhile, such as a rotated token's old row
    version. The lock statement's finished portal held one until a simple-protocol
    statement replaced it."""
    if fresh.engine.dialect.name != "postgresql":
        pytest.skip("snapshots and the xmin horizon are PostgreSQL's")
    await seed(fresh)
    resting = asyncio.Event()
    go_on = asyncio.Event()

    async def sleep(seconds: float) -> None:
        resting.set()
        await go_on.wait()

    monkeypatch.setattr(purge_module, "sleep", sleep)
    settings = fresh.settings.model_copy(update={"purge_batch_size": 1})
    purge = asyncio.create_task(Purger(fresh.engine, fresh.single, settings,
                                       fresh.clock).run())
    try:
        await asyncio.wait_for(resting.wait(), WAIT_S)
        async with fresh.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT state, backend_xmin::text FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"))).all()
    finally:
        go_on.set()
        report = await asyncio.wait_for(purge, WAIT_S)
    assert ("idle in transaction", None) in [tuple(row) for row in rows]  # the lock
    assert [row for row in rows if row.backend_xmin is not None] == []
    assert report.counts == DEAD


async def test_the_purge_task_runs_in_the_server_when_asked(fresh: Services) -> None:
    world = await seed(fresh)
    settings = make_settings(fresh.settings.database_url, fresh.settings.keys_dir,
                             purge_interval=timedelta(seconds=1))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + WAIT_S
        while any(world.dead_ids[table] & rows for table, rows in (await present(fresh)).items()):
            assert time.monotonic() < deadline, "the purge task did not run"
            await asyncio.sleep(0.2)
    after = await present(fresh)
    for table in TABLES:
        assert not world.dead_ids[table] & after[table], table
        assert world.live_ids[table] <= after[table], table


async def test_two_purges_never_run_at_once_on_postgresql(
    fresh: Services, tmp_path: Path
) -> None:
    if fresh.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers itself; there is no lock to test")
    world = await seed(fresh)
    cli = cli_for(fresh, tmp_path)
    expired = next(iter(world.dead_ids["login_sessions"]))
    async with fresh.engine.connect() as blocker:
        # Hold a dead session's row: the first purge takes the advisory lock, then waits
        # on this row in its first batch, so it is surely mid-purge.
        await blocker.execute(select(LoginSession.id).where(LoginSession.id == expired)
                              .with_for_update())
        first = subprocess.Popen(
            [*COMMAND, "purge", "--json"], cwd=tmp_path, env=cli.env(), text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            await _wait_until_blocked(fresh)
            second = await run_cli(cli)
            assert second == {"dry_run": False, "ran": False, "counts": NOTHING}
            assert await _count(fresh, LoginSession) == 5  # nothing was deleted yet
            await blocker.rollback()
            out, err = await asyncio.to_thread(first.communicate, timeout=WAIT_S)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
    assert first.returncode == 0, err
    assert json.loads(out) == {"dry_run": False, "ran": True, "counts": DEAD}
    # The lock went with the first purge: the next one runs.
    assert (await run_cli(cli))["ran"] is True


async def _wait_until_blocked(services: Services) -> None:
    """Until a backend of this database holds the advisory lock and another one waits
    on a row lock (the purge, mid-batch)."""
    deadline = time.monotonic() + WAIT_S
    query = text(
        "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        "        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),"
        "       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        "        AND wait_event_type = 'Lock')")
    while True:
        async with services.engine.connect() as conn:
            locks, waiting = (await conn.execute(query)).one()
        if locks >= 1 and waiting >= 1:
            return
        assert time.monotonic() < deadline, "the first purge never got under way"
        await asyncio.sleep(0.1)


async def _count(services: Services, model: Any) -> int:
    async with services.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(model))).scalar_one())


async def test_a_revoked_session_stays_until_its_access_tokens_are_dead(
    fresh: Services, tmp_path: Path
) -> None:
    """Revoked a minute ago (access tokens live 15): kept; past the lifetime: deleted."""
    world = await seed(fresh)
    cli = cli_for(fresh, tmp_path)
    recent = world.live_ids["login_sessions"] - world.dead_ids["login_sessions"]
    await run_cli(cli)
    assert recent <= (await present(fresh))["login_sessions"]
    async with fresh.engine.begin() as conn:
        await conn.execute(update(LoginSession).where(LoginSession.revoked_at.is_not(None))
                           .values(revoked_at=fresh.clock.now() - timedelta(minutes=16)))
    done = await run_cli(cli)
    assert done["counts"]["login_sessions"] == 1
