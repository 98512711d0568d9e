"""`provider check`: a deployment self-test, in the spirit of Django's `check --deploy`.

Every finding has a stable id, a level (error: unsafe or broken; warning: worth a look)
and a fix. It reads the configuration, the key store, the database and Redis; it
changes nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from provider.clock import Clock, SystemClock
from provider.keys.store import SECRET_KEY_FILE, KeyRecord, KeyStoreError, load_secret_key
from provider.settings import Settings

Level = Literal["error", "warning"]

# A key signing longer than this without rotation earns a warning.
KEY_AGE_WITHOUT_ROTATION = timedelta(days=180)
# How much entropy a PROVIDER_SECRET_KEY must at least appear to carry.
SECRET_BITS = 128
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Finding:
    id: str
    level: Level
    message: str
    fix: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def error(id_: str, message: str, fix: str) -> Finding:
    return Finding(id_, "error", message, fix)


def warning(id_: str, message: str, fix: str) -> Finding:
    return Finding(id_, "warning", message, fix)


def estimated_bits(secret: str) -> float:
    """A rough upper bound on a secret's entropy: its length times log2 of the number of
    distinct characters in it (a random hex string: 4 bits a character)."""
    distinct = len(set(secret))
    return len(secret) * math.log2(distinct) if distinct > 1 else 0.0


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


# --- configuration alone ------------------------------------------------------------------


def check_configuration(settings: Settings, *, processes: int) -> list[Finding]:
    findings: list[Finding] = []
    add = findings.append
    if settings.env != "production":
        add(warning("env.not_production",
                    f"PROVIDER_ENV is {settings.env}: production's safety checks at start-up "
                    "are off (https issuer, mailer, /metrics token, argon2id floor, CORS *, "
                    "proxy ranges, throttles).",
                    "Set PROVIDER_ENV=production on a deployment."))
    if not settings.issuer.startswith("https://"):
        add(error("issuer.not_https",
                  f"The issuer {settings.issuer} is not https: tokens, codes and passwords "
                  "would travel in clear, and resource servers would fetch keys unprotected.",
                  "Set PROVIDER_ISSUER to the https URL clients reach the server at."))

    secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
    if not secret:
        add(error("secret_key.missing",
                  "PROVIDER_SECRET_KEY is not set: a secret is generated into the keys "
                  "directory, so hosts that do not share that directory disagree (email codes, "
                  "TOTP secrets, signing keys in the database).",
                  'Set PROVIDER_SECRET_KEY on every host to the same value, e.g. `python -c '
                  '"import secrets; print(secrets.token_urlsafe(48))"`.'))
    elif len(secret) < 32 or estimated_bits(secret) < SECRET_BITS:
        add(error("secret_key.weak",
                  f"PROVIDER_SECRET_KEY looks weak ({len(secret)} characters, at most about "
                  f"{int(estimated_bits(secret))} bits).",
                  "Use at least 32 random characters (e.g. secrets.token_urlsafe(48)); "
                  "changing it makes TOTP secrets, recovery codes and database-stored "
                  "signing keys unreadable: export the keys first."))

    if settings.key_rotation is None:
        add(warning("keys.rotation_off",
                    "Automatic key rotation is off: the signing key changes only by hand.",
                    "Set PROVIDER_KEY_ROTATION_DAYS (e.g. 30), or rotate with `provider keys "
                    "generate`, then `provider keys rotate` once it has been published for "
                    "the JWKS max-age plus the margin."))

    if not settings.redis_url and (processes > 1 or settings.key_store == "database"):
        why = (f"{processes} processes serve" if processes > 1
               else "the database key store is for several hosts")
        add(error("redis.missing",
                  f"No PROVIDER_REDIS_URL while {why}: every rate limit (login, codes, "
                  "client authentication) is per process, so that many times looser.",
                  "Set PROVIDER_REDIS_URL to a Redis every process shares."))

    if not settings.smtp_url or not settings.smtp_url.get_secret_value().strip():
        add(error("mail.console",
                  "No PROVIDER_SMTP_URL: emails (verification and reset codes) are only "
                  "printed to the console.",
                  "Set PROVIDER_SMTP_URL (smtps://user:pass@host:465 or "
                  "smtp+starttls://...:587)."))

    prefix = settings.throttle_ipv6_prefix
    if prefix > 64:
        add(warning("throttles.ipv6_prefix_narrow",
                    f"PROVIDER_THROTTLE_IPV6_PREFIX={prefix}: an IPv6 client with a /64 can "
                    f"spread its guesses over 2^{prefix - 64} rate-limit identities.",
                    "Unset it (default 64, one subscriber's network), or lower it."))
    elif prefix < 48:
        add(warning("throttles.ipv6_prefix_wide",
                    f"PROVIDER_THROTTLE_IPV6_PREFIX={prefix}: every IPv6 client of a /{prefix}, "
                    "often a whole provider's, shares one count, so one of them can keep "
                    "the others throttled.",
                    "Unset it (default 64, one subscriber's network), or raise it to 48-64."))

    if settings.disabled_throttles:
        # Refused at start-up in production; elsewhere possibly on purpose, for a test.
        level = error if settings.env == "production" else warning
        add(level("throttles.disabled",
                  f"{', '.join(settings.disabled_throttles)} set empty: that throttle is "
                  "off, so what it guards (password, client secret or code guesses, mails, "
                  "registrations) is unlimited.",
                  "Unset it for its default, or set a limit (e.g. '5 per minute; 20 per "
                  "hour'), a high one if need be."))

    memory, iterations = settings.argon2_memory_cost, settings.argon2_time_cost
    if settings.is_argon2_weak:
        add(error("passwords.argon2_weak",
                  f"argon2id m={memory} KiB, t={iterations} is below OWASP's minimum "
                  "(m=19456 KiB with t=2, or an equivalent pair).",
                  "Unset PROVIDER_ARGON2_MEMORY_COST and PROVIDER_ARGON2_TIME_COST (defaults "
                  "m=19456, t=2), or raise them; hashes are upgraded at the next login."))

    if settings.metrics_token is None and not settings.metrics_public:
        add(error("metrics.unprotected",
                  "/metrics answers anyone: its figures reveal traffic and failures.",
                  "Set PROVIDER_METRICS_TOKEN (Prometheus sends it as a bearer token), or "
                  "PROVIDER_METRICS_PUBLIC=true if only Prometheus can reach the port."))
    elif settings.metrics_token is None:
        add(warning("metrics.public",
                    "/metrics is public on purpose (PROVIDER_METRICS_PUBLIC=true).",
                    "Make sure only Prometheus can reach it, or set PROVIDER_METRICS_TOKEN."))

    findings += _cors(settings.cors_origins)
    findings += _proxies(settings)
    return findings


def _cors(origins: list[str]) -> list[Finding]:
    findings = []
    for origin in origins:
        if origin == "*":
            findings.append(error(
                "cors.wildcard", "PROVIDER_CORS_ORIGINS contains *: any web page may call "
                "the API from its users' browsers.", "List the exact origins of your web apps."))
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname \
                or parts.path not in ("", "/") or parts.query or parts.fragment \
                or "*" in origin:
            findings.append(error(
                "cors.invalid", f"{origin!r} in PROVIDER_CORS_ORIGINS is not an origin.",
                "Write origins as scheme://host[:port], without a path."))
        elif parts.scheme == "http" and not _is_loopback(parts.hostname):
            findings.append(warning(
                "cors.insecure", f"{origin} in PROVIDER_CORS_ORIGINS is plain http.",
                "Serve that web app over https and list its https origin."))
    return findings


def _proxies(settings: Settings) -> list[Finding]:
    findings = []
    for network in settings.too_wide_proxies:
        findings.append(error(
            "proxies.too_wide",
            f"PROVIDER_TRUSTED_PROXIES includes {network}: anyone in it can choose the "
            "client address the throttles see (X-Forwarded-For).",
            "List only your proxies' addresses or their narrow ranges."))
    # provider serves plain HTTP: an https issuer means a TLS proxy in front of it.
    if settings.issuer.startswith("https://") and not settings.trusted_proxies:
        findings.append(error(
            "proxies.missing",
            "The issuer is https but provider serves plain HTTP, so requests arrive through "
            "a proxy; with no PROVIDER_TRUSTED_PROXIES every client has the proxy's address: "
            "one failing client throttles everyone, and audit records name the proxy.",
            "Set PROVIDER_TRUSTED_PROXIES to the proxy's address or range."))
    return findings


# --- keys ---------------------------------------------------------------------------------


def check_keys(settings: Settings, records: list[KeyRecord], clock: Clock) -> list[Finding]:
    now = clock.now()
    active = next((r for r in records if r.status == "active"), None)
    if active is None:
        return [error("keys.no_active", "No signing key is active: the server will not start.",
                      "Run `provider keys generate`.")]
    findings = []
    started = active.activated_at or active.created_at
    age = now - started
    pending = [r for r in records if r.is_pending]
    rotation = settings.key_rotation
    if rotation is not None:
        # The rotator publishes the next key at period - lead and activates it at period.
        if age > rotation + settings.key_publish_lead + timedelta(minutes=5):
            findings.append(warning(
                "keys.rotation_stalled",
                f"The active key {active.kid} has signed for {age.days} days, longer than "
                f"the rotation period ({settings.key_rotation_days} days): no server process "
                "is rotating.",
                "Check that servers run with PROVIDER_KEY_ROTATION_DAYS and can write the "
                "key store (their log says why not)."))
        elif age >= rotation - settings.key_publish_lead + timedelta(minutes=5) and not pending:
            findings.append(warning(
                "keys.next_not_published",
                "The next key should be published by now and is not.",
                "Check that servers run with PROVIDER_KEY_ROTATION_DAYS and can write the "
                "key store."))
    else:
        if age > KEY_AGE_WITHOUT_ROTATION:
            findings.append(warning(
                "keys.active_old", f"The active key {active.kid} has signed for {age.days} "
                "days.", "Rotate it: `provider keys generate`, wait, `provider keys rotate`; "
                "or set PROVIDER_KEY_ROTATION_DAYS."))
        if not pending:
            findings.append(warning(
                "keys.next_not_published",
                "No key is published ahead of use: a rotation (or an emergency one) must "
                "first wait for resource servers to fetch a new key.",
                "Run `provider keys generate` now; `provider keys rotate` works once it has "
                "been published for the JWKS max-age plus the margin."))
    if active.alg != settings.signing_alg and not any(r.alg == settings.signing_alg
                                                      for r in pending):
        findings.append(warning(
            "keys.algorithm_mismatch",
            f"PROVIDER_SIGNING_ALG is {settings.signing_alg} but the active key signs "
            f"{active.alg}.",
            "Generate a key (it uses PROVIDER_SIGNING_ALG) and rotate to it."))
    return findings


# --- the services -------------------------------------------------------------------------


async def check_services(settings: Settings, clock: Clock) -> list[Finding]:
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from provider.db import create_engine, is_sqlite, single_statement_engine
    from provider.keys.store import DatabaseKeyStore, DirectoryKeyStore, KeyStore

    findings: list[Finding] = []
    if settings.redis_url:
        findings += await _check_redis(settings)
    engine = None
    try:
        sqlite_file = _sqlite_path(settings.database_url)
        if sqlite_file is not None and not sqlite_file.exists():
            # Connecting would create it: a check changes nothing.
            findings.append(error("database.unreachable", f"There is no database file at "
                                  f"{sqlite_file}.", "Check DATABASE_URL, or run `provider "
                                  "migrate` to create it."))
        else:
            engine = create_engine(settings.database_url, pool_size=1,
                                   pgbouncer=settings.db_pgbouncer)
    except (ArgumentError, ImportError, ValueError) as exc:
        # The server would stop at the same step. Only the name of a missing dialect or
        # driver is shown: a parse error may quote a piece of the URL, password included.
        reason = (str(exc) if isinstance(exc, NoSuchModuleError | ImportError)
                  else "it does not parse")
        findings.append(error("database.unreachable",
                              f"DATABASE_URL is not a database URL this server can use "
                              f"({reason}).",
                              "Set DATABASE_URL to postgresql://user:password@host:5432/name "
                              "(or sqlite:///path/to/file.db)."))
    if engine is None:
        if settings.key_store == "directory":
            findings += await _check_key_store(settings, DirectoryKeyStore(settings.keys_dir),
                                               clock, readable=True)
        return findings
    try:
        database_ok = await _check_database(settings, engine, findings)
        if is_sqlite(engine):
            findings.append(warning(
                "database.sqlite", "The database is a SQLite file: one host only.",
                "Use PostgreSQL (DATABASE_URL=postgresql://...) to serve from several "
                "processes or hosts."))
        store: KeyStore
        readable = True
        if settings.key_store == "database":
            configured = settings.secret_key.get_secret_value() if settings.secret_key else None
            # (Without a secret, none is generated here: a check changes nothing.)
            readable = bool(configured) or (settings.keys_dir / SECRET_KEY_FILE).exists()
            secret = b""
            if readable:
                try:
                    secret = load_secret_key(configured, settings.keys_dir)
                except KeyStoreError as exc:  # as the server would stop at start-up
                    findings.append(_unreadable("database", exc))
                    readable = False  # still list the keys: is one active?
            store = DatabaseKeyStore(engine, secret, reader=single_statement_engine(engine))
        else:
            store = DirectoryKeyStore(settings.keys_dir)
        if settings.key_store == "directory" or database_ok:
            findings += await _check_key_store(settings, store, clock, readable=readable)
    finally:
        await engine.dispose()
    return findings


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database \
            or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


async def _check_database(settings: Settings, engine: Any, findings: list[Finding]) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from provider.cli import alembic_config

    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            async with engine.connect() as conn:
                current = await conn.run_sync(
                    lambda sync: MigrationContext.configure(sync).get_current_revision())
                timeout = None
                if engine.dialect.name == "postgresql":
                    timeout = (await conn.execute(text("SHOW statement_timeout"))).scalar()
    except Exception as exc:
        reason = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]
        findings.append(error("database.unreachable",
                              f"The database does not answer: {type(exc).__name__} {reason}",
                              "Check DATABASE_URL, that PostgreSQL runs and accepts this "
                              "host."))
        return False
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    if current != head:
        findings.append(error("database.not_migrated",
                              f"The database is at revision {current}, not at {head}."
                              if current else "The database has no schema yet.",
                              "Run `provider migrate`."))
    if settings.db_pgbouncer and timeout in ("0", None):
        findings.append(warning(
            "database.no_statement_timeout",
            "Behind PgBouncer the statement timeout is not sent at connect, and the database "
            "sets none: a stuck statement holds a server connection for good.",
            f"ALTER ROLE <provider's role> SET statement_timeout = "
            f"'{int(settings.db_statement_timeout.total_seconds())}s';"))
    return bool(current == head)


async def _check_key_store(settings: Settings, store: Any, clock: Clock, *,
                           readable: bool) -> list[Finding]:
    try:
        records = await store.records()
        if readable:
            await store.private_keys([r for r in records if r.status != "retired"])
    except KeyStoreError as exc:
        return [_unreadable(store.description, exc)]
    return check_keys(settings, records, clock)


def _unreadable(description: str, exc: KeyStoreError) -> Finding:
    return error("keys.unreadable", f"The {description} key store cannot be read: {exc}",
                 "Fix what it says (PROVIDER_KEYS_DIR, PROVIDER_SECRET_KEY), or restore the "
                 "keys from `provider keys export`.")


async def _check_redis(settings: Settings) -> list[Finding]:
    from provider.ratelimit import Throttles
    from provider.services import throttle_config

    try:
        throttles = Throttles(settings.redis_url, throttle_config(settings),
                              timeout=settings.redis_timeout)
    except Exception as exc:  # as the server would stop at start-up; the URL may hold a
        # password, so only the kind of failure is named
        return [error("redis.unreachable", f"PROVIDER_REDIS_URL is not a Redis URL this "
                      f"server can use ({type(exc).__name__}).",
                      "Set it to redis://[:password@]host:6379/0 (rediss:// for TLS).")]
    reason = "no answer"
    try:
        async with asyncio.timeout(settings.redis_timeout.total_seconds() + 1):
            answered = await throttles.storage.check()
    except Exception as exc:  # any failure to answer is the finding, named below
        answered, reason = False, type(exc).__name__
    finally:
        await throttles.close()
    if answered:
        return []
    return [error("redis.unreachable", f"PROVIDER_REDIS_URL does not answer ({reason}): "
                  "every throttled endpoint (the token endpoint included) would answer 503.",
                  "Check the URL and that Redis runs and accepts this host.")]


async def run_checks(settings: Settings, *, processes: int = 1,
                     clock: Clock | None = None) -> list[Finding]:
    """Every finding for ``settings``, errors first."""
    findings = check_configuration(settings, processes=processes)
    findings += await check_services(settings, clock or SystemClock())
    order: dict[str, int] = {"error": 0, "warning": 1}
    return sorted(findings, key=lambda f: order[f.level])


def settings_findings(load: Callable[[], Settings]) -> tuple[Settings | None, list[Finding]]:
    """Load the settings; an invalid configuration is itself a finding."""
    from pydantic import ValidationError

    try:
        return load(), []
    except ValidationError as exc:
        return None, [error("settings.invalid",
                            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'settings'}: "
                            f"{e.get('msg')}", "Correct that setting (see README, "
                            "Configuration).") for e in exc.errors()]


