"""The one container of per-process services, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from provider.audit.service import AuditLog
from provider.clients.service import ClientCache
from provider.clock import Clock, SystemClock
from provider.codes.service import EmailCodes
from provider.db import (
    ReadinessProbe,
    Timeouts,
    create_engine,
    session_factory,
    single_statement_engine,
)
from provider.keys.lifecycle import Schedule
from provider.keys.service import SYSTEM_ACTOR, KeyRing, Rotator
from provider.keys.store import (
    DatabaseKeyStore,
    DirectoryKeyStore,
    KeyChange,
    KeyStore,
    load_secret_key,
)
from provider.mail import make_sender
from provider.mfa.service import Mfa
from provider.passwords import PasswordHasher
from provider.ratelimit import ThrottleConfig, Throttles
from provider.settings import Settings
from provider.tokens.jwt import JwtService
from provider.users.accounts import PRODUCT, Accounts
from provider.web.csrf import Csrf


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    # The same pool in autocommit on PostgreSQL, for statements that stand alone (the
    # token path's reads and single-statement writes): see provider.db.
    single: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    clock: Clock
    keys: KeyRing
    jwt: JwtService
    hasher: PasswordHasher
    clients: ClientCache
    throttles: Throttles
    accounts: Accounts
    readiness: ReadinessProbe
    audit: AuditLog
    mfa: Mfa
    csrf: Csrf
    # The JWKS answer's headers, made once: resource servers may cache it this long.
    jwks_headers: dict[str, str]

    def signing_algorithms(self) -> list[str]:
        """What discovery advertises: the configured algorithm, then those of the other
        published keys (during a change of algorithm both sign or verify)."""
        published = [alg for alg in self.keys.algorithms() if alg != self.settings.signing_alg]
        return [self.settings.signing_alg, *published]


# /readyz answers within this, whatever the database does (DESIGN.md: 503 within 2 s).
READINESS_DEADLINE_S = 1.5


def build_services(settings: Settings, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size,
                           timeouts=Timeouts(
                               connect=settings.db_connect_timeout.total_seconds(),
                               statement=settings.db_statement_timeout.total_seconds(),
                               pool=settings.db_pool_timeout.total_seconds()),
                           pgbouncer=settings.db_pgbouncer)
    single = single_statement_engine(engine)
    secret = load_secret_key(
        settings.secret_key.get_secret_value() if settings.secret_key else None,
        settings.keys_dir,
    )
    audit = AuditLog(single, clock)
    keys = key_ring(settings, clock, key_store(settings, engine, single, secret), audit)
    jwt = JwtService(keys, issuer=settings.issuer, audience=settings.token_audience)
    hasher = PasswordHasher(settings)
    throttles = Throttles(settings.redis_url, throttle_config(settings),
                          timeout=settings.redis_timeout)
    sessions = session_factory(engine)
    accounts = Accounts(
        settings=settings, sessions=sessions, clock=clock, hasher=hasher,
        codes=EmailCodes(secret, settings.email_code_ttl), mailer=make_sender(settings),
        throttles=throttles,
    )
    return Services(settings=settings, engine=engine, single=single, sessions=sessions,
                    clock=clock, keys=keys, jwt=jwt, hasher=hasher,
                    clients=ClientCache(single), throttles=throttles, accounts=accounts,
                    readiness=ReadinessProbe(engine, READINESS_DEADLINE_S),
                    audit=audit,
                    mfa=Mfa(server_secret=secret, issuer_name=PRODUCT,
                            mfa_token_ttl=settings.mfa_token_ttl,
                            throttle=throttles.mfa_account, engine=single,
                            lockout_failures=settings.mfa_lockout_failures),
                    csrf=Csrf(secret),
                    jwks_headers={"Cache-Control": "public, max-age="
                                  f"{int(settings.jwks_max_age.total_seconds())}"})


def key_store(settings: Settings, engine: AsyncEngine, reader: AsyncEngine,
              secret: bytes) -> KeyStore:
    """PROVIDER_KEY_STORE: the keys directory, or the database shared by every host."""
    if settings.key_store == "database":
        return DatabaseKeyStore(engine, secret, reader=reader)
    return DirectoryKeyStore(settings.keys_dir)


def key_ring(settings: Settings, clock: Clock, store: KeyStore,
             audit: AuditLog | None = None) -> KeyRing:
    # A key that stopped signing stays published while its tokens may be valid, plus the
    # margin that covers the second processes need to agree, and clock skew.
    retire_after = settings.longest_token_ttl + settings.key_publish_margin

    def record(change: KeyChange) -> None:
        if audit is not None and not change.events_written:  # the directory store
            for event, key in change.events:
                audit.record(event, actor=SYSTEM_ACTOR,
                             details={"kid": key.kid, "status": key.status})

    # Retirement is automatic whether or not rotation is: a key rotated out by hand is
    # retired (its private half deleted) once it has left the JWKS.
    rotator = Rotator(store, clock, Schedule(period=settings.key_rotation,
                                             lead=settings.key_publish_lead,
                                             lifetime=retire_after),
                      settings.signing_alg, on_change=record)
    return KeyRing(store, clock, retire_after=retire_after, rotator=rotator)


def throttle_config(settings: Settings) -> ThrottleConfig:
    return ThrottleConfig(
        login_account=settings.login_throttle_account,
        login_address=settings.login_throttle_address,
        email_code=settings.email_code_throttle,
        email_notice=settings.email_notice_throttle,
        registration=settings.registration_throttle,
        email_change=settings.email_change_throttle,
        client_auth=settings.client_auth_throttle,
        client_auth_address=settings.client_auth_throttle_address,
        code_account=settings.code_throttle_account,
        code_address=settings.code_throttle_address,
        mfa_account=settings.mfa_throttle_account,
        ipv6_prefix=settings.throttle_ipv6_prefix,
    )
