"""The client_credentials grant in-process (no HTTP server, no wrk): what client
authentication costs on the token path, e.g. with and without its throttle.

    .venv/bin/python bench/client_credentials_inprocess.py [--redis redis://...] [-n 3000]

It migrates a throwaway SQLite file (or uses DATABASE_URL, already migrated), makes one
client_credentials client, and sends requests through the ASGI app with 8 concurrent
callers; prints requests per second, best of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provider.app import create_app
from provider.clients.service import create_client
from provider.keys.lifecycle import generate_key
from provider.keys.store import DirectoryKeyStore
from provider.oauth.grants import CLIENT_GRANT_RULES
from provider.settings import Settings


def prepare() -> Settings:
    """Keys and a migrated database (Alembic runs its own event loop: before ours)."""
    work = Path(tempfile.mkdtemp(prefix="bench-cc-"))
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{work}/bench.db"
    keys = work / "keys"
    asyncio.run(generate_key(DirectoryKeyStore(keys), "RS256", now=datetime.now(UTC),
                             actor="bench"))
    if not os.environ.get("DATABASE_URL"):
        from alembic import command

        from provider.cli import alembic_config

        config = alembic_config(database_url)
        config.attributes["configure_logging"] = False
        command.upgrade(config, "head")
    values: dict[str, object] = {"env": "test", "database_url": database_url,
                                 "keys_dir": keys, "redis_url": ARGS.redis}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def main(settings: Settings) -> None:
    args = ARGS
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services = app.state.services
        async with services.sessions() as session:
            client, secret = await create_client(
                session, name="bench", grant_types=("client_credentials",),
                scopes=["profile"], is_public=False, now=services.clock.now(),
                grant_rules=CLIENT_GRANT_RULES)
            await session.commit()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:8000") as http:
            auth = httpx.BasicAuth(client.client_id, secret)
            form = {"grant_type": "client_credentials"}

            async def caller(count: int) -> None:
                for _ in range(count):
                    response = await http.post("/oauth/token", data=form, auth=auth)
                    assert response.status_code == 200, response.text

            await caller(200)  # warm-up
            best = 0.0
            for _ in range(args.rounds):
                started = time.perf_counter()
                per = args.n // args.concurrency
                await asyncio.gather(*(caller(per) for _ in range(args.concurrency)))
                rate = per * args.concurrency / (time.perf_counter() - started)
                best = max(best, rate)
                print(f"round: {rate:.0f} req/s")
            print(f"best: {best:.0f} req/s (redis={'yes' if args.redis else 'no'})")


parser = argparse.ArgumentParser()
parser.add_argument("--redis", default=None)
parser.add_argument("-n", type=int, default=3000)
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--concurrency", type=int, default=8)
ARGS = parser.parse_args()

if __name__ == "__main__":
    asyncio.run(main(prepare()))
