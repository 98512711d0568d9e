"""Shared fixtures: a fresh migrated database per run, the app, clients, a movable clock.

PostgreSQL comes from tests.pgserver (PROVIDER_TEST_DATABASE_URL, or a throwaway
cluster); without one the suite runs on SQLite and says so loudly, unless
PROVIDER_TEST_REQUIRE_POSTGRES=1, which makes that an error.

Isolation: the token path owns its transactions (Core, ``engine.begin()``), so the
"join the session into an outer transaction" recipe cannot wrap it. Each run gets its
own database and every test makes its own users and clients with unique names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from provider.app import build_services, create_app
from provider.keys.algorithms import Algorithm
from provider.keys.lifecycle import generate_key
from provider.keys.store import DirectoryKeyStore
from provider.services import Services
from provider.settings import Settings
from tests.factories import Factory
from tests.pgserver import (
    LAST_ERROR,
    create_database,
    drop_database,
    provision_postgres,
    run_sync,
)
from tests.smtp_sink import SmtpSink

REQUIRE_POSTGRES = os.environ.get("PROVIDER_TEST_REQUIRE_POSTGRES") == "1"


class TestClock:
    """The real time plus an offset that a test can move; reset after every test."""

    __test__ = False

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self.frozen_at: datetime | None = None

    def now(self) -> datetime:
        base = self.frozen_at or datetime.now(UTC)
        return base + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta

    def freeze(self, at: datetime | None = None) -> None:
        """Stop the clock, now or at ``at``."""
        self.frozen_at = at or datetime.now(UTC)

    def reset(self) -> None:
        self.offset = timedelta(0)
        self.frozen_at = None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str | None]:
    with provision_postgres() as server_url:
        if server_url is None:
            if REQUIRE_POSTGRES:
                pytest.exit(f"PostgreSQL is required but unavailable: {LAST_ERROR}", 3)
            banner = "!" * 78
            print(f"\n{banner}\n!!! NO POSTGRESQL: the suite runs on SQLite only; "
                  f"PostgreSQL tests are SKIPPED.\n!!! reason: {LAST_ERROR}\n{banner}")
        yield server_url


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str | None) -> Iterator[str]:
    if postgres_server is None:
        pytest.skip("no PostgreSQL available")
    name = f"provider_test_{secrets.token_hex(4)}"
    url = create_database(postgres_server, name)
    yield url
    drop_database(postgres_server, name)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="provider-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sqlite_url(workdir: Path) -> str:
    return f"sqlite:///{workdir}/provider.db"


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest, postgres_server: str | None,
                 sqlite_url: str) -> str:
    """The suite's main database: PostgreSQL when there is one, else SQLite."""
    if postgres_server is not None:
        return str(request.getfixturevalue("postgres_url"))
    return sqlite_url


def make_keys_dir(path: Path, alg: Algorithm = "RS256") -> Path:
    """A keys directory with one active key (from sync code, inside a test loop or not)."""
    store = DirectoryKeyStore(path)
    run_sync(lambda: generate_key(store, alg, now=datetime.now(UTC), actor="test"))
    return path


@pytest.fixture(scope="session")
def keys_dir(workdir: Path) -> Path:
    return make_keys_dir(workdir / "keys")


def make_settings(database_url: str, keys_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": database_url,
        "keys_dir": keys_dir,
        "issuer": "http://127.0.0.1:8000",
        # Cheap argon2 for speed; the production parameters are measured in bench/.
        "argon2_memory_cost": 1024,
        "argon2_time_cost": 1,
        # Every in-process request comes from one address; the throttle tests build
        # their own app with tight limits.
        "login_throttle_address": "100000 per minute",
        "client_auth_throttle_address": "100000 per minute",
        "code_throttle_address": "100000 per minute",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def migrate(database_url: str, **options: Any) -> None:
    """Alembic upgrade head (it runs its own event loop: in a thread of its own when this
    thread's loop is running, as in a fixture an async one asked for)."""
    from alembic import command

    from provider.cli import alembic_config

    config = alembic_config(database_url, **options)
    config.attributes["configure_logging"] = False

    async def upgrade() -> None:
        await asyncio.to_thread(command.upgrade, config, "head")

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(config, "head")
        return
    run_sync(upgrade)


@contextlib.contextmanager
def migrated_database(server_url: str, prefix: str) -> Iterator[str]:
    """A PostgreSQL database of the caller's own, migrated to head, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    url = create_database(server_url, name)
    try:
        migrate(url)
        yield url
    finally:
        drop_database(server_url, name)


@contextlib.contextmanager
def own_database(kind: str, postgres_server: str | None, directory: Path,
                 prefix: str) -> Iterator[str]:
    """A migrated database of the caller's own, ``kind`` "sqlite" (a file in
    ``directory``) or "postgresql" (skipped when there is no server; with
    PROVIDER_TEST_REQUIRE_POSTGRES=1 the session has stopped before that)."""
    if kind == "sqlite":
        url = f"sqlite:///{directory / prefix}.db"
        migrate(url)
        yield url
        return
    if postgres_server is None:
        pytest.skip("no PostgreSQL available")
    with migrated_database(postgres_server, prefix) as url:
        yield url


@pytest.fixture(scope="session")
def migrated(database_url: str) -> str:
    migrate(database_url)
    return database_url


@pytest.fixture(scope="session")
def mail_sink() -> Iterator[SmtpSink]:
    """A real SMTP server on loopback that the shared app sends its mail to."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture(scope="session")
def settings(migrated: str, keys_dir: Path, mail_sink: SmtpSink) -> Settings:
    return make_settings(migrated, keys_dir, smtp_url=mail_sink.url)


@pytest.fixture(scope="session")
def settings_keys(settings: Settings) -> tuple[str, Path]:
    """The migrated database and keys of the shared app, for tests that build their own
    app with other settings on the same data."""
    return settings.database_url, settings.keys_dir


@pytest.fixture(scope="session")
def clock() -> TestClock:
    return TestClock()


@pytest.fixture(autouse=True)
def _reset_clock(clock: TestClock) -> Iterator[None]:
    yield
    clock.reset()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def app(settings: Settings, clock: TestClock) -> AsyncIterator[FastAPI]:
    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
def services(app: FastAPI) -> Services:
    result: Services = app.state.services
    return result


@pytest_asyncio.fixture(loop_scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        yield c


@pytest.fixture
def factory(services: Services) -> Factory:
    return Factory(services)


__all__ = ["TestClock", "build_services", "make_keys_dir", "make_settings", "migrate"]
