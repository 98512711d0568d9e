"""Key stores of every kind, and keys made once per run (an RSA key costs tens of ms).

``any_store`` is each store in turn: the keys directory, the database store on
PostgreSQL and on SQLite. Each database backend gets a database of its own for this
package (the key set is global state: one version row), emptied before every test.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from joserfc.jwk import ECKey, OKPKey, RSAKey
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from provider.db import create_engine
from provider.keys.store import (
    DatabaseKeyStore,
    DirectoryKeyStore,
    KeyStore,
    key_state,
    signing_keys,
)
from tests.conftest import migrate
from tests.pgserver import create_database, drop_database

SECRET = b"k" * 16 + secrets.token_bytes(16)


@pytest.fixture(scope="session")
def rsa_keys() -> list[RSAKey]:
    return [RSAKey.generate_key(2048, private=True) for _ in range(6)]


@pytest.fixture(scope="session")
def ec_keys() -> list[ECKey]:
    return [ECKey.generate_key("P-256", private=True) for _ in range(3)]


@pytest.fixture(scope="session")
def ed_keys() -> list[OKPKey]:
    return [OKPKey.generate_key("Ed25519", private=True) for _ in range(3)]


@pytest.fixture
def store(tmp_path: Path) -> DirectoryKeyStore:
    return DirectoryKeyStore(tmp_path / "keys")


@pytest.fixture(scope="package")
def keys_pg_url(postgres_server: str | None) -> Iterator[str]:
    if postgres_server is None:
        pytest.skip("no PostgreSQL available")
    name = f"provider_keys_{secrets.token_hex(4)}"
    url = create_database(postgres_server, name)
    migrate(url)
    yield url
    drop_database(postgres_server, name)


@pytest.fixture(scope="package")
def keys_sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('keys-db')}/keys.db"
    migrate(url)
    return url


async def empty_key_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(signing_keys))
        await conn.execute(update(key_state).values(version=0))
        await conn.execute(text("DELETE FROM audit_events WHERE type LIKE 'key.%'"))


def key_db_url(request: pytest.FixtureRequest, backend: str) -> str:
    name = "keys_pg_url" if backend == "postgresql" else "keys_sqlite_url"
    return str(request.getfixturevalue(name))


@pytest_asyncio.fixture(loop_scope="session", params=["postgresql", "sqlite"])
async def key_engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    """An engine on the package's key database (each backend in turn), whose key tables
    start empty."""
    engine = create_engine(key_db_url(request, request.param), pool_size=4)
    await empty_key_tables(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def db_store(key_engine: AsyncEngine) -> DatabaseKeyStore:
    return DatabaseKeyStore(key_engine, SECRET)


@pytest_asyncio.fixture(loop_scope="session", params=["directory", "postgresql", "sqlite"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    """Each store in turn: the directory, the database store on PostgreSQL and SQLite."""
    if request.param == "directory":
        yield DirectoryKeyStore(tmp_path / "keys")
        return
    engine = create_engine(key_db_url(request, request.param), pool_size=4)
    await empty_key_tables(engine)
    yield DatabaseKeyStore(engine, SECRET)
    await engine.dispose()


def now() -> datetime:
    return datetime.now(UTC)
