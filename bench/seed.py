"""Seed the benchmark databases (called by bench/run.sh; usable on its own).

  python bench/seed.py setup  --db-url URL --keys-dir DIR --out CONFIG.json
      Drop and re-create the benchmark database (its name must contain "bench"), migrate
      it with `provider migrate`, create a signing key, a confidential client allowed
      password + refresh_token + client_credentials, and a user whose password is hashed
      with the configured (production default) argon2id parameters. Writes what the wrk
      scripts need (client id/secret, Basic credentials, user, password) to CONFIG.json.

  python bench/seed.py keys --db-url URL --keys-dir DIR --alg ALG
      Create a keys directory whose one key is active and signs with ALG (RS256, PS256,
      ES256 or EdDSA; `provider keys generate` under PROVIDER_SIGNING_ALG=ALG), and check
      that `provider keys list` says so. `setup` does this for RS256.

  python bench/seed.py tokens --db-url URL --config CONFIG.json --count N --out FILE
      Issue N refresh tokens (N login sessions, one family each) with provider's own
      provider.tokens.service.issue_refresh_token, one per line in FILE, for
      ../shared/bench/refresh_rotate.lua. Every token can be used exactly once.

  python bench/seed.py yardstick-db --db-url URL
      Create the yardstick's database if it is missing and empty its token table.

  python bench/seed.py peer-db --db-url URL
      Drop and re-create the database of node-oidc-provider, the benchmark's peer (its
      name must contain "bench"); the peer creates its table itself.

The provider CLI runs with the environment given here (DATABASE_URL, PROVIDER_KEYS_DIR)
and with every PROVIDER_ARGON2_* / PROVIDER_REFRESH_REUSE_GRACE variable removed, so the
figures are for the production defaults; PROVIDER_SIGNING_ALG, PROVIDER_KEY_STORE and
PROVIDER_KEY_ROTATION_DAYS are removed too (the keys are in the directory given, and of
the algorithm asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import asyncpg
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
PROVIDER = str(Path(sys.executable).parent / "provider")

BENCH_EMAIL = "bench-user@example.com"
BENCH_PASSWORD = "bench-Quiet-Harbor-Lantern-42"  # not a secret: a throwaway bench user
# No `openid`: the refresh and password grants then sign one JWT, as the yardstick does.
USER_SCOPE = "profile email api"
# `api` is what client_credentials can get (user scopes are refused for a client).
CLIENT_SCOPES = "openid profile email api"
EXPECTED_ARGON2 = "$argon2id$v=19$m=19456,t=2,p=1$"


IGNORED_ENV = ("PROVIDER_REFRESH_REUSE_GRACE", "PROVIDER_SIGNING_ALG", "PROVIDER_KEY_STORE",
               "PROVIDER_KEY_ROTATION_DAYS")


def provider_env(db_url: str, keys_dir: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROVIDER_ARGON2_") and k not in IGNORED_ENV}
    env["DATABASE_URL"] = db_url
    if keys_dir is not None:
        env["PROVIDER_KEYS_DIR"] = keys_dir
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([PROVIDER, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)
    if done.returncode != 0:
        sys.exit(f"provider {' '.join(args[:2])} failed ({done.returncode}):\n"
                 f"{done.stdout}{done.stderr}")
    return done.stdout


def pg_dsn(db_url: str, database: str | None = None) -> tuple[str, str]:
    """(an asyncpg DSN, the database name); with ``database`` the DSN points there."""
    url = make_url(db_url)
    name = url.database or ""
    url = url.set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False), name


async def recreate_database(db_url: str) -> None:
    admin_dsn, name = pg_dsn(db_url, "postgres")
    if "bench" not in name:
        sys.exit(f"refusing to drop database {name!r}: its name must contain 'bench'")
    con = await asyncpg.connect(admin_dsn)
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await con.execute(f'CREATE DATABASE "{name}"')
    finally:
        await con.close()


async def read_hash(db_url: str, email: str) -> str:
    dsn, _ = pg_dsn(db_url)
    con = await asyncpg.connect(dsn)
    try:
        value: str = await con.fetchval("SELECT password_hash FROM users WHERE email = $1", email)
    finally:
        await con.close()
    return value


def make_keys(db_url: str, keys_dir_arg: str, alg: str) -> str:
    """A keys directory whose active key signs with ``alg``; its kid."""
    keys_dir = Path(keys_dir_arg).resolve()
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The CLI runs in the keys directory's parent: no stray ./.env changes its settings.
    cwd = keys_dir.parent
    env = provider_env(db_url, str(keys_dir))
    env["PROVIDER_SIGNING_ALG"] = alg
    run_cli(["keys", "generate", "--if-missing"], env, cwd)
    listed = json.loads(run_cli(["keys", "list", "--json"], env, cwd))["keys"]
    active = [key for key in listed if key["status"] == "active"]
    if len(active) != 1 or active[0]["alg"] != alg:
        sys.exit(f"{keys_dir}: expected one active {alg} key, found {listed}")
    kid: str = active[0]["kid"]
    return kid


def setup(args: argparse.Namespace) -> None:
    keys_dir = Path(args.keys_dir).resolve()
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The CLI runs in the keys directory's parent: no stray ./.env changes its settings.
    cwd = keys_dir.parent
    env = provider_env(args.db_url, str(keys_dir))

    asyncio.run(recreate_database(args.db_url))
    run_cli(["migrate"], env, cwd)
    make_keys(args.db_url, args.keys_dir, "RS256")
    client = json.loads(run_cli(
        ["clients", "create", "--name", "bench", "--grant", "password",
         "--grant", "refresh_token", "--grant", "client_credentials",
         "--scope", CLIENT_SCOPES, "--json"], env, cwd))
    user = json.loads(run_cli(
        ["users", "create", "--email", BENCH_EMAIL, "--password", BENCH_PASSWORD,
         "--verified", "--json"], env, cwd))
    stored = asyncio.run(read_hash(args.db_url, BENCH_EMAIL))
    if not stored.startswith(EXPECTED_ARGON2):
        sys.exit(f"the bench user's hash is not at the production parameters: {stored[:40]}")

    basic = base64.b64encode(
        f"{quote(client['client_id'], safe='')}:{quote(client['client_secret'], safe='')}"
        .encode()).decode()
    config = {
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
        "basic_auth": basic,
        "user_id": user["id"],
        "email": user["email"],
        "password": BENCH_PASSWORD,
        "scope": USER_SCOPE,
        "argon2": stored[: len(EXPECTED_ARGON2)],
        "password_form": (f"grant_type=password&username={quote(BENCH_EMAIL, safe='')}"
                          f"&password={quote(BENCH_PASSWORD, safe='')}"
                          f"&scope={quote(USER_SCOPE, safe='')}"),
        "client_credentials_form": "grant_type=client_credentials&scope=api",
    }
    Path(args.out).write_text(json.dumps(config, indent=2) + "\n")
    print(f"seeded {args.db_url}: client {client['client_id']}, user {user['email']} "
          f"({config['argon2']})")


async def issue_tokens(db_url: str, config: dict[str, str], count: int) -> list[str]:
    from provider.db import create_engine
    from provider.settings import Settings
    from provider.tokens.refresh import issue_refresh_token, start_session

    settings = Settings()  # lifetimes only; the URL is given
    engine = create_engine(db_url)
    now = datetime.now(UTC)
    tokens: list[str] = []
    try:
        for start in range(0, count, 1000):
            async with engine.begin() as conn:
                for _ in range(min(1000, count - start)):
                    session = await start_session(
                        conn, user_id=uuid.UUID(config["user_id"]),
                        client_id=config["client_id"], scope=config["scope"],
                        session_epoch=0, amr=("pwd",), now=now,
                        absolute_ttl=settings.refresh_token_absolute_ttl,
                    )
                    tokens.append(await issue_refresh_token(
                        conn, session=session, now=now, idle_ttl=settings.refresh_token_ttl))
    finally:
        await engine.dispose()
    return tokens


def tokens(args: argparse.Namespace) -> None:
    config = json.loads(Path(args.config).read_text())
    issued = asyncio.run(issue_tokens(args.db_url, config, args.count))
    Path(args.out).write_text("\n".join(issued) + "\n")
    print(f"issued {len(issued)} refresh tokens into {args.out}")


async def yardstick_db(db_url: str) -> None:
    admin_dsn, name = pg_dsn(db_url, "postgres")
    con = await asyncpg.connect(admin_dsn)
    try:
        if not await con.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await con.execute(f'CREATE DATABASE "{name}"')
    finally:
        await con.close()
    dsn, _ = pg_dsn(db_url)
    con = await asyncpg.connect(dsn)
    try:
        await con.execute("DROP TABLE IF EXISTS yardstick_refresh_tokens")
    finally:
        await con.close()
    print(f"yardstick database {name} ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--db-url", required=True)
    p.add_argument("--keys-dir", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("keys")
    p.add_argument("--db-url", required=True)
    p.add_argument("--keys-dir", required=True)
    p.add_argument("--alg", required=True, choices=["RS256", "PS256", "ES256", "EdDSA"])
    p = sub.add_parser("tokens")
    p.add_argument("--db-url", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--out", required=True)
    p = sub.add_parser("yardstick-db")
    p.add_argument("--db-url", required=True)
    p = sub.add_parser("peer-db")
    p.add_argument("--db-url", required=True)
    args = parser.parse_args()
    if args.command == "setup":
        setup(args)
    elif args.command == "keys":
        kid = make_keys(args.db_url, args.keys_dir, args.alg)
        print(f"{args.keys_dir}: active {args.alg} key {kid}")
    elif args.command == "tokens":
        tokens(args)
    elif args.command == "peer-db":
        asyncio.run(recreate_database(args.db_url))
        print(f"peer database {pg_dsn(args.db_url)[1]} re-created")
    else:
        asyncio.run(yardstick_db(args.db_url))


if __name__ == "__main__":
    main()
