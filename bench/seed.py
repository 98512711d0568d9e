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

  python bench/seed.py tokens ... --random-users
      The same, but each session is of a different active, verified user picked at random
      (bench/scale.sh: on a grown database the lookups then land all over the users
      table, not on one hot row).

  python bench/seed.py grow --db-url URL --config CONFIG.json --users N --refresh-rows M
      Grow a seeded database to N users and M refresh-token rows in the shapes of a
      long-running deployment (bench/scale.sh): INSERT ... SELECT generate_series, every
      constraint and foreign key satisfied (checked as they are re-created), then VACUUM
      ANALYZE. Prints what it made and how long each step took.

  python bench/seed.py access --url URL --config CONFIG.json --rt-file FILE --out FILE
      Exchange each refresh token of FILE at a running server (refresh grant) and write
      the access tokens, one per line (bench/get_bearer.lua).

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
from typing import Any
from urllib.parse import quote

import asyncpg
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
PROVIDER = str(Path(sys.executable).parent / "provider")

BENCH_EMAIL = "bench-user@example.com"
BENCH_PASSWORD = "bench-Quiet-Harbor-Lantern-42"  # not a secret: a throwaway bench user
# No `openid`: the refresh and password grants then sign one JWT, as the yardstick does.
USER_SCOPE = "profile email account api"
# `api` is what client_credentials can get (user scopes are refused for a client).
CLIENT_SCOPES = "openid profile email account api"
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
    if "bench" not in name and not name.startswith("scale_"):
        sys.exit(f"refusing to drop database {name!r}: its name must contain 'bench' "
                 "(or start with 'scale_', bench/scale.sh's)")
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
        ["clients", "create", "--name", "bench", "--first-party", "--grant", "password",
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


async def pick_users(db_url: str, count: int) -> list[tuple[uuid.UUID, int]]:
    """``count`` (user id, session epoch) pairs of active, verified users, at random (with
    repeats when there are fewer users)."""
    dsn, _ = pg_dsn(db_url)
    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch(
            "SELECT id, session_epoch FROM users WHERE is_active AND is_verified "
            "ORDER BY random() LIMIT $1", count)
    finally:
        await con.close()
    if not rows:
        sys.exit("no active, verified user to issue tokens to")
    return [(rows[i % len(rows)]["id"], rows[i % len(rows)]["session_epoch"])
            for i in range(count)]


async def issue_tokens(db_url: str, config: dict[str, str], count: int,
                       random_users: bool = False) -> list[str]:
    from provider.db import create_engine
    from provider.settings import Settings
    from provider.tokens.refresh import issue_refresh_token, new_session, start_session

    settings = Settings()  # lifetimes only; the URL is given
    engine = create_engine(db_url)
    now = datetime.now(UTC)
    tokens: list[str] = []
    owners = (await pick_users(db_url, count) if random_users
              else [(uuid.UUID(config["user_id"]), 0)] * count)
    try:
        for start in range(0, count, 1000):
            async with engine.begin() as conn:
                for user_id, epoch in owners[start:start + 1000]:
                    session = new_session(
                        user_id=user_id, client_id=config["client_id"],
                        scope=config["scope"], amr=("pwd",), now=now,
                        absolute_ttl=settings.refresh_token_absolute_ttl)
                    await start_session(conn, session, session_epoch=epoch, now=now)
                    tokens.append(await issue_refresh_token(
                        conn, session=session, now=now, idle_ttl=settings.refresh_token_ttl))
    finally:
        await engine.dispose()
    return tokens


def tokens(args: argparse.Namespace) -> None:
    config = json.loads(Path(args.config).read_text())
    issued = asyncio.run(issue_tokens(args.db_url, config, args.count, args.random_users))
    Path(args.out).write_text("\n".join(issued) + "\n")
    print(f"issued {len(issued)} refresh tokens into {args.out}")


# --- growing a database (bench/scale.sh) -----------------------------------------------------
# Rows in the shapes of a long-running deployment. Per synthetic session s (h: a hash of s):
#   chain length: 1-40 tokens, every 50th session 150-499 (an app that refreshes all day);
#   kind by s % 100: 0-14 live (current token unrotated and unexpired), 15-19 idle (the
#   session has not ended but its last token expired unused), 20-24 of an older session
#   epoch (the user changed the password since), 25-44 revoked a day or more ago, 45-99
#   expired. The revoked and expired ones (75 %: a deployment whose purge has not run for
#   a long while) are what `provider purge` deletes, enough to keep it busy alongside.
# In a chain every token but the last has rotated_at set (when its successor was issued)
# and parent_id pointing to its predecessor; expiry slides 30 days from issue within the
# session's 90 days. Users: 2 % disabled, 10 % unverified, 80 % with a username, all with
# the bench user's argon2id hash, session_epoch 1-3. Ids are md5-derived uuids, token hashes
# SHA-256, as random as the real ones (so that index inserts land all over the index).
GROWN_TABLES = ("users", "login_sessions", "refresh_tokens")

GROW_USERS = """
INSERT INTO users (id, email, username, password_hash, profile, is_active, is_verified,
                   is_admin, created_at, updated_at, session_epoch)
SELECT md5('scale-user-' || g)::uuid, 'user' || g || '@scale.example.com',
       CASE WHEN g % 5 <> 0 THEN 'user_' || g END, $1,
       (CASE WHEN g % 3 = 0 THEN '{"name": "User ' || g || '"}' ELSE '{}' END)::json,
       g % 50 <> 0, g % 10 <> 0, false,
       now() - interval '365 days' - (g % 730) * interval '1 day'
             - (g % 86400) * interval '1 second',
       now() - (g % 300) * interval '1 day', 1 + g % 3
FROM generate_series(1, $2::int) AS g
"""

# The plan of the sessions: kind, chain length (capped so that the chains add up to exactly
# the refresh rows wanted), owner, the first and the last token's issue time.
GROW_PLAN = """
CREATE TEMP TABLE scale_plan AS
WITH raw AS (
  SELECT s, (s::bigint * 2654435761) % 4294967296 AS h,
         ((s::bigint * 2246822519) % 4294967296) % $2::int + 1 AS u,
         CASE WHEN s % 100 < 15 THEN 'live' WHEN s % 100 < 20 THEN 'idle'
              WHEN s % 100 < 25 THEN 'stale' WHEN s % 100 < 45 THEN 'revoked'
              ELSE 'expired' END AS kind
  FROM generate_series(1, $1::int / 10 + 10) AS s
), sized AS (
  SELECT *, CASE WHEN s % 50 = 0 THEN 150 + h % 350 ELSE 1 + h % 40 END AS len FROM raw
), placed AS (
  SELECT *, sum(len) OVER (ORDER BY s) - len AS start FROM sized
), timed AS (
  SELECT s, u, kind, least(len, $1::int - start)::int AS len,
         CASE kind
           WHEN 'live' THEN now() - (1 + h % 60) * interval '1 day'
           WHEN 'stale' THEN now() - (1 + h % 60) * interval '1 day'
           WHEN 'idle' THEN now() - (35 + h % 50) * interval '1 day'
           WHEN 'revoked' THEN now() - (2 + h % 80) * interval '1 day'
           ELSE now() - (91 + h % 270) * interval '1 day' END AS t0,
         h
  FROM placed WHERE start < $1::int
)
SELECT s, u, kind, len, t0,
       CASE kind
         WHEN 'live' THEN now() - ((h / 256) % 86400) * interval '1 second'
         WHEN 'stale' THEN now() - ((h / 256) % 86400) * interval '1 second'
         WHEN 'idle' THEN t0 + ((h / 256) % 4) * interval '1 day'
         WHEN 'revoked' THEN t0 + ((h / 256) % 86400) * interval '1 second'
         ELSE t0 + ((h / 256) % 60) * interval '1 day' END AS t1,
       t0 + interval '90 days' AS ends
FROM timed
"""

GROW_SESSIONS = """
INSERT INTO login_sessions (id, user_id, client_id, scope, amr, auth_time, created_at,
                            expires_at, session_epoch, revoked_at)
SELECT md5('scale-session-' || s)::uuid, md5('scale-user-' || u)::uuid, $1,
       CASE WHEN s % 4 = 0 THEN 'openid profile email' ELSE 'profile email api' END,
       (CASE WHEN s % 10 = 0 THEN '["pwd", "otp"]' ELSE '["pwd"]' END)::json,
       t0, t0, ends, CASE WHEN kind = 'stale' THEN u % 3 ELSE 1 + u % 3 END,
       CASE WHEN kind = 'revoked' THEN t0 + interval '1 day' END
FROM scale_plan
"""

GROW_TOKENS = """
INSERT INTO refresh_tokens (id, token_hash, session_id, parent_id, issued_at, expires_at,
                            rotated_at)
SELECT md5('scale-rt-' || s || '-' || k)::uuid,
       sha256(convert_to('scale-rt-hash-' || s || '-' || k, 'UTF8')),
       md5('scale-session-' || s)::uuid,
       CASE WHEN k > 1 THEN md5('scale-rt-' || s || '-' || (k - 1))::uuid END,
       issued, least(issued + interval '30 days', ends),
       CASE WHEN k < len THEN t0 + (t1 - t0) * k / greatest(len - 1, 1) END
FROM (SELECT p.*, k, t0 + (t1 - t0) * (k - 1) / greatest(len - 1, 1) AS issued
      FROM scale_plan AS p CROSS JOIN LATERAL generate_series(1, p.len) AS k) AS chain
"""

# Indexes and constraints of the grown tables, to drop before the bulk insert and re-create
# after it (PostgreSQL's advice for populating a database: building an index over sorted
# rows is many times faster than inserting 10 million random keys one by one). users' primary
# key stays: other tables' foreign keys need it.
SCHEMA_OBJECTS = """
SELECT 'constraint' AS kind, c.conrelid::regclass::text AS tab, c.conname AS name,
       pg_get_constraintdef(c.oid) AS def, c.contype::text AS type
FROM pg_constraint c
WHERE c.conrelid::regclass::text = ANY($1::text[]) AND c.contype IN ('p', 'u', 'f')
  AND c.conname <> 'pk_users'
UNION ALL
SELECT 'index', i.tablename, i.indexname, i.indexdef, 'i'
FROM pg_indexes i
WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
ORDER BY 1, 2, 3
"""


async def grow(db_url: str, config: dict[str, str], users: int, refresh_rows: int) -> None:
    import time

    dsn, _ = pg_dsn(db_url)
    con = await asyncpg.connect(dsn, command_timeout=None)
    started = time.monotonic()

    async def step(label: str, sql: str, *args: Any) -> None:
        t = time.monotonic()
        await con.execute(sql, *args)
        print(f"grow: {label}: {time.monotonic() - t:.1f} s", flush=True)

    try:
        await con.execute("SET maintenance_work_mem = '512MB'")
        await con.execute("SET statement_timeout = 0")
        password_hash = await con.fetchval("SELECT password_hash FROM users WHERE id = $1",
                                           uuid.UUID(config["user_id"]))
        objects = [tuple(r) for r in await con.fetch(SCHEMA_OBJECTS, list(GROWN_TABLES))]
        async with con.transaction():
            # Foreign keys first (they depend on the keys they point to), then the rest.
            for kind, tab, name, _, _type in sorted(objects, key=lambda o: o[4] != "f"):
                if kind == "constraint":
                    await con.execute(f'ALTER TABLE "{tab}" DROP CONSTRAINT "{name}"')
                else:
                    await con.execute(f'DROP INDEX "{name}"')
            extra_users = max(0, users - await con.fetchval("SELECT count(*) FROM users"))
            await step(f"{extra_users} users", GROW_USERS, password_hash, extra_users)
            await step("session plan", GROW_PLAN, refresh_rows, max(1, extra_users))
            await step("sessions", GROW_SESSIONS, config["client_id"])
            await step(f"{refresh_rows} refresh tokens", GROW_TOKENS)
            # Indexes and unique/primary keys, then foreign keys: each ADD CONSTRAINT
            # checks every row, so a row that broke one would fail the whole growth.
            for kind, tab, name, definition, _type in sorted(objects,
                                                              key=lambda o: o[4] == "f"):
                if kind == "constraint":
                    sql = f'ALTER TABLE "{tab}" ADD CONSTRAINT "{name}" {definition}'
                else:
                    sql = definition
                await step(f"re-create {name}", sql)
            after = [tuple(r) for r in await con.fetch(SCHEMA_OBJECTS, list(GROWN_TABLES))]
            if after != objects:
                raise SystemExit("grow: the re-created schema differs from the migrated one")
        # A deployment's tables have been vacuumed and analysed (autovacuum is off here):
        # visibility map, hint bits and statistics as autovacuum would have left them.
        for table in GROWN_TABLES:
            await step(f"VACUUM ANALYZE {table}", f'VACUUM ANALYZE "{table}"')
        counts = await con.fetch("""
            SELECT 'users' AS what, count(*) AS n FROM users
            UNION ALL SELECT 'login_sessions', count(*) FROM login_sessions
            UNION ALL SELECT 'refresh_tokens', count(*) FROM refresh_tokens
            UNION ALL SELECT 'refresh_tokens rotated', count(*) FROM refresh_tokens
                      WHERE rotated_at IS NOT NULL
            UNION ALL SELECT 'refresh_tokens live', count(*) FROM refresh_tokens t
                      JOIN login_sessions s ON s.id = t.session_id
                      WHERE t.rotated_at IS NULL AND t.expires_at > now()
                        AND s.revoked_at IS NULL AND s.expires_at > now()
            UNION ALL SELECT 'login_sessions dead (purgeable)', count(*) FROM login_sessions
                      WHERE expires_at <= now() OR revoked_at <= now() - interval '1 hour'
            UNION ALL SELECT 'refresh_tokens dead (purgeable)', count(*) FROM refresh_tokens t
                      JOIN login_sessions s ON s.id = t.session_id
                      WHERE s.expires_at <= now() OR s.revoked_at <= now() - interval '1 hour'
        """)
        sizes = await con.fetch("""
            SELECT relname, pg_size_pretty(pg_table_size(oid)) AS heap,
                   pg_size_pretty(pg_indexes_size(oid)) AS indexes
            FROM pg_class WHERE relname = ANY($1::text[]) ORDER BY relname
        """, list(GROWN_TABLES))
    finally:
        await con.close()
    for row in counts:
        print(f"grow: {row['what']}: {row['n']}")
    for row in sizes:
        print(f"grow: {row['relname']}: heap {row['heap']}, indexes {row['indexes']}")
    print(f"grow: grown in {time.monotonic() - started:.0f} s")


def access(args: argparse.Namespace) -> None:
    """Refresh grants at a running server, one per token, sequentially (stdlib only)."""
    from urllib.error import HTTPError
    from urllib.parse import urlencode
    from urllib.request import Request, urlopen

    config = json.loads(Path(args.config).read_text())
    out: list[str] = []
    for token in Path(args.rt_file).read_text().split():
        request = Request(
            args.url.rstrip("/") + "/oauth/token", method="POST",
            data=urlencode({"grant_type": "refresh_token", "refresh_token": token}).encode(),
            headers={"Authorization": f"Basic {config['basic_auth']}",
                     "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urlopen(request, timeout=10) as answer:
                out.append(json.loads(answer.read())["access_token"])
        except HTTPError as exc:
            sys.exit(f"refresh grant answered {exc.code}: {exc.read()[:300]!r}")
    Path(args.out).write_text("\n".join(out) + "\n")
    print(f"exchanged {len(out)} refresh tokens for access tokens into {args.out}")


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
    p.add_argument("--random-users", action="store_true")
    p = sub.add_parser("grow")
    p.add_argument("--db-url", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--refresh-rows", type=int, required=True)
    p = sub.add_parser("access")
    p.add_argument("--url", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--rt-file", required=True)
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
    elif args.command == "grow":
        asyncio.run(grow(args.db_url, json.loads(Path(args.config).read_text()),
                         args.users, args.refresh_rows))
    elif args.command == "access":
        access(args)
    elif args.command == "peer-db":
        asyncio.run(recreate_database(args.db_url))
        print(f"peer database {pg_dsn(args.db_url)[1]} re-created")
    else:
        asyncio.run(yardstick_db(args.db_url))


if __name__ == "__main__":
    main()
