"""Settings: the one place that reads the environment (prefix PROVIDER_, plus DATABASE_URL)."""

from __future__ import annotations

import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import (
    AliasChoices,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from provider.keys.algorithms import Algorithm
from provider.ratelimit import parse_tiers

# OWASP Password Storage Cheat Sheet: argon2id configurations of equal strength
# (memory in KiB, iterations); parallelism 1. Below all of them is weak.
ARGON2_FLOORS = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))
# The widest trusted proxy range (prefix length by IP version): anyone inside a wider
# one can choose the client address the throttles and the audit trail see.
WIDEST_PROXY_PREFIX = {4: 8, 6: 32}

# The throttle settings (limits syntax; an empty one turns its throttle off).
THROTTLE_SETTINGS = (
    "login_throttle_account", "login_throttle_address", "email_code_throttle",
    "email_notice_throttle", "registration_throttle", "email_change_throttle",
    "client_auth_throttle", "client_auth_throttle_address", "code_throttle_address",
    "code_throttle_account", "mfa_throttle_account",
)


def _duration(amount: float, unit: Literal["seconds", "days"]) -> timedelta:
    """``amount`` of ``unit`` as a timedelta; ValueError (which pydantic reports as the
    setting's error) when it is not finite or longer than a timedelta holds, where
    timedelta itself raises OverflowError, which pydantic would let escape."""
    if not math.isfinite(amount):
        raise ValueError(f"must be a finite number of {unit}")
    try:
        return timedelta(**{unit: amount})
    except OverflowError:
        raise ValueError(f"{amount:g} {unit} is longer than any duration can be") from None


class Settings(BaseSettings):
    """Every knob of the provider. Durations accept seconds or ISO 8601 (``PT15M``)."""

    model_config = SettingsConfigDict(
        env_prefix="PROVIDER_", env_file=".env", extra="ignore", frozen=True,
        # A refused value may be a secret (the SMTP URL's password): errors name the
        # setting and the fault, never the value.
        hide_input_in_errors=True,
    )

    env: Literal["development", "production", "test"] = "development"
    issuer: str = "http://127.0.0.1:8000"
    # The `aud` of access tokens. Resource servers (and our own protected endpoints)
    # accept only tokens minted for them (RFC 9700 §2.3, RFC 8725 §3.9).
    audience: str | None = None
    database_url: str = Field(
        default="sqlite:///./provider.db",
        validation_alias=AliasChoices("DATABASE_URL", "PROVIDER_DATABASE_URL"),
    )
    keys_dir: Path = Path("./keys")
    # Where signing keys live: files in keys_dir (one host, or a shared secret mount), or
    # the database (encrypted under a key derived from secret_key), which every host
    # already shares.
    key_store: Literal["directory", "database"] = "directory"
    # Automatic key rotation: a new key every this many days (fractions allowed), published
    # ahead of use and its predecessor retired once its tokens have expired. Off: unset/0.
    key_rotation_days: float | None = None
    # The algorithm of new signing keys (RS256, as RFC 9068 requires every verifier to
    # support; ES256 and EdDSA sign many times faster; PS256 is RSA-PSS).
    signing_alg: Algorithm = "RS256"
    # How long resource servers may cache the JWKS (its Cache-Control max-age). A new key
    # is published at least this plus key_publish_margin before it signs.
    jwks_max_age: timedelta = Field(default=timedelta(minutes=5), ge=timedelta(0))
    # Added to the JWKS max-age before a new key signs, and to the token lifetime before an
    # old key is retired: covers the second the processes need to agree, and clock skew.
    key_publish_margin: timedelta = Field(default=timedelta(minutes=1), ge=timedelta(0))
    redis_url: str | None = None
    smtp_url: SecretStr | None = None
    mail_from: str = "provider <no-reply@localhost>"
    secret_key: SecretStr | None = None

    access_token_ttl: timedelta = timedelta(minutes=15)
    id_token_ttl: timedelta = timedelta(minutes=15)
    refresh_token_ttl: timedelta = timedelta(days=30)
    refresh_token_absolute_ttl: timedelta = timedelta(days=90)
    refresh_reuse_grace: timedelta = timedelta(0)
    email_code_ttl: timedelta = timedelta(minutes=10)
    mfa_token_ttl: timedelta = timedelta(minutes=5)
    # Starting a TOTP enrolment needs a sign-in at most this old (the access token's
    # auth_time): RFC 9470's step-up challenge, ASVS 7.5.1's re-authentication.
    reauth_max_age: timedelta = Field(default=timedelta(minutes=5), gt=timedelta(0))
    # The login page's browser session (single sign-on): its absolute lifetime, counted
    # from the login; nothing extends it.
    browser_session_ttl: timedelta = Field(default=timedelta(hours=12), gt=timedelta(0))
    # Where the login page's "Forgot your password?" link points (an app's own reset
    # page); unset: the API's reset flow in our Swagger UI (README, "Login page").
    password_reset_url: str | None = None

    # argon2id: OWASP's recommended floor (m=19 MiB, t=2, p=1).
    argon2_memory_cost: int = 19 * 1024
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    # Concurrent argon2 computations per process: bounds memory and keeps the loop free.
    # Default: the cores shared out among the server's worker processes (`serve` sets it).
    password_hash_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # Database connections per process (PostgreSQL); workers x this must fit
    # max_connections.
    db_pool_size: int = Field(default=20, ge=1, le=500)
    password_min_length: int = 8

    registration_open: bool = True
    # Unverified users get no tokens (the error says so only after a correct password).
    require_verified_email: bool = True

    # Login throttling (limits syntax; tiers separated by ';'). Only failures count.
    login_throttle_account: str = "5 per minute; 20 per hour; 100 per day"
    login_throttle_address: str = "30 per minute; 300 per hour"
    # Email one-time codes sent per target address: a short window only, so that no
    # stranger can keep an address's owner from getting a fresh code for long.
    email_code_throttle: str = "3 per 2 minutes"
    # Notices (not codes) to an address: someone tried to register it, or to move an
    # account to it. A window of their own, so that no one can crowd the owner's codes out
    # with them; they tell the owner nothing new after the first, so few are sent.
    email_notice_throttle: str = "1 per 10 minutes; 10 per day"
    registration_throttle: str = "10 per hour"
    # Email-change requests per account, whatever their password or target: each mails
    # an address of the caller's choosing (a code, or a notice when it is taken).
    email_change_throttle: str = "3 per 10 minutes; 10 per day"

    # Addresses or CIDR ranges (10.0.0.0/8) of the proxies whose X-Forwarded-For counts.
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = []
    cors_origins: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = 64 * 1024

    # --- Database faults (issue 7): bounds on every wait for PostgreSQL, so that a
    # database that is down, restarting or frozen answers 503 within seconds, not hangs.
    # Opening a connection (TCP, start-up, authentication).
    db_connect_timeout: timedelta = Field(default=timedelta(seconds=3), gt=timedelta(0))
    # One statement; the server cancels it, the client gives up a second later. 0: none.
    db_statement_timeout: timedelta = Field(default=timedelta(seconds=5),
                                            ge=timedelta(0))
    # Waiting for a pooled connection when all are in use.
    db_pool_timeout: timedelta = Field(default=timedelta(seconds=3), gt=timedelta(0))
    # PostgreSQL is reached through PgBouncer (or another pooler) in transaction mode: no
    # prepared statement outlives its statement, and no session setting is sent at
    # connect (set statement_timeout on the role instead). See README, several hosts.
    db_pgbouncer: bool = False

    # --- Audit trail and self-cleaning tables (issue 7) -----------------------------------
    # Audit events older than this are deleted by `provider purge` and the purge task.
    audit_retention: timedelta = timedelta(days=90)
    # Run the purge in the server every so often (off by default; `provider purge` from
    # cron does the same). On PostgreSQL one process at a time runs it (advisory lock).
    purge_interval: timedelta | None = None
    # Rows per DELETE statement: short transactions that never hold the token path up.
    purge_batch_size: int = Field(default=1000, ge=1, le=100_000)
    # Rest between two batches: a backlog of millions of dead rows is deleted at this
    # pace instead of at full speed beside the token path (bench/README.md, "Scale").
    purge_pause: timedelta = timedelta(0)
    # The share of the time the purge may spend deleting: after a batch that took t, it
    # rests t * (1 - share) / share (and at least purge_pause). A backlog then costs the
    # token path at most this share of one database connection's time, on any host; a
    # busier machine makes the batches slower and the rests longer with them. 1: no rest.
    purge_share: float = Field(default=0.2, gt=0, le=1)

    # --- throttles that hold under concurrency (issue 7) ------------------------------
    # Client authentication failures per (client_id, client address) and per client
    # address: growing waits; a client attacked from one address works from others.
    client_auth_throttle: str = "10 per minute; 100 per hour"
    client_auth_throttle_address: str = "30 per minute; 300 per hour"
    # Email-code submissions per client address (spraying across accounts), and wrong
    # codes per account: growing waits, bounded by 2 minutes, that a resend does not
    # reset (NIST SP 800-63B §3.2.2).
    code_throttle_address: str = "10 per minute; 50 per hour"
    code_throttle_account: str = "5 per minute; 10 per 2 minutes"
    # Wrong second-factor codes (TOTP or recovery) per user, across mfa_tokens and
    # requests: growing waits (RFC 4226 §7.3, NIST SP 800-63B §3.2.2). A right code gives
    # its own slot back and clears nothing else; a signed-in password change clears it,
    # a reset does not (whoever holds the mailbox could reset for a fresh window).
    mfa_throttle_account: str = "5 per minute; 20 per hour; 50 per day"
    # Wrong second-factor codes in a row at sign-in, after which the second factor takes
    # no code at all until an administrator resets it (NIST SP 800-63B §3.2.2: at most
    # 100); a right code starts the count again. The owner is emailed.
    mfa_lockout_failures: int = Field(default=100, ge=1, le=100)
    # Every limit "per client address" counts an IPv6 client by its network of this many
    # bits: one subscriber's /64 holds 2^64 addresses, each a fresh start if counted
    # alone. 128: one address. IPv4 addresses count one by one.
    throttle_ipv6_prefix: int = Field(default=64, ge=32, le=128)
    # Bound on every call to the rate-limit storage (Redis connect and reads): past it
    # a throttled request answers 503, never hangs.
    redis_timeout: timedelta = timedelta(seconds=2)

    # --- Logs and metrics (issue 7, operations) ---
    # Log lines as JSON objects or as text; unset: json when PROVIDER_ENV=production.
    log_format: Literal["json", "text"] | None = None
    # When set, /metrics answers only `Authorization: Bearer <this token>`.
    metrics_token: SecretStr | None = None
    # PROVIDER_ENV=production refuses a public /metrics unless this says it is on purpose.
    metrics_public: bool = False

    @field_validator("trusted_proxies", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _seconds(cls, value: object, info: ValidationInfo) -> object:
        # pydantic reads "900" from the environment as an ISO 8601 fragment and fails:
        # plain numbers are seconds for every duration, as everyone writes them (1.5 too).
        field = cls.model_fields.get(info.field_name or "")
        is_duration = field is not None and (
            field.annotation is timedelta or timedelta in get_args(field.annotation))
        if is_duration and isinstance(value, str):
            try:
                seconds = float(value)
            except ValueError:
                return value  # not a number: pydantic reads it as ISO 8601
            return _duration(seconds, "seconds")
        return value

    @field_validator("issuer")
    @classmethod
    def _issuer_is_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("PROVIDER_ISSUER must be an http(s) URL")
        return value

    @field_validator("password_reset_url")
    @classmethod
    def _reset_url_is_a_web_address(cls, value: str | None) -> str | None:
        if value and not value.startswith(("https://", "http://", "/")):
            raise ValueError("PROVIDER_PASSWORD_RESET_URL must be an http(s) URL or a path")
        return value or None

    # The server's own parsers, called here so that the server refuses these at start-up
    # with one line naming the setting (and `provider check` with a finding), not with a
    # traceback from the mailer or the throttles.
    @field_validator(*THROTTLE_SETTINGS)
    @classmethod
    def _throttle_parses(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        try:
            parse_tiers(value)
        except ValueError as exc:
            raise ValueError(
                f"PROVIDER_{(info.field_name or '').upper()} is not a list of limits like "
                f"'5 per minute; 20 per hour' ({exc})") from None
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url_parses(cls, value: SecretStr | None) -> SecretStr | None:
        # Imported here: provider.mail imports this module.
        from provider.mail.sender import parse_smtp_url

        if value is not None and value.get_secret_value().strip():
            parse_smtp_url(value.get_secret_value())  # its errors never show the password
        return value

    @field_validator("mail_from")
    @classmethod
    def _mail_from_has_an_address(cls, value: str) -> str:
        from provider.mail.sender import mail_domain

        mail_domain(value)
        return value

    @field_validator("purge_interval")
    @classmethod
    def _purge_interval_sane(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            return None  # 0 means off
        return value

    @field_validator("key_rotation_days")
    @classmethod
    def _rotation_off_at_zero(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError("PROVIDER_KEY_ROTATION_DAYS must not be negative")
        if value is not None:
            _duration(value, "days")
        return value or None  # 0 means off

    @field_validator("password_min_length")
    @classmethod
    def _min_length_floor(cls, value: int) -> int:
        if value < 8:
            raise ValueError("PROVIDER_PASSWORD_MIN_LENGTH may not be below 8 (NIST 800-63B)")
        return value

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.env == "production" and not self.issuer.startswith("https://"):
            raise ValueError("PROVIDER_ISSUER must use https:// when PROVIDER_ENV=production")
        if (self.env == "production" and self.key_store == "database"
                and self.secret_key is None):
            raise ValueError(
                "PROVIDER_SECRET_KEY must be set when PROVIDER_KEY_STORE=database and "
                "PROVIDER_ENV=production: every host decrypts the signing keys with it")
        # What `provider check` calls an error (passwords.argon2_weak, cors.wildcard,
        # proxies.too_wide), by the same definitions.
        if self.env == "production" and self.is_argon2_weak:
            raise ValueError(
                f"PROVIDER_ARGON2_MEMORY_COST={self.argon2_memory_cost} with "
                f"PROVIDER_ARGON2_TIME_COST={self.argon2_time_cost} (parallelism "
                f"{self.argon2_parallelism}) is below OWASP's minimum for argon2id "
                "(m=19456 KiB with t=2, or an equivalent pair) and PROVIDER_ENV=production")
        if self.env == "production" and "*" in self.cors_origins:
            raise ValueError(
                "PROVIDER_CORS_ORIGINS must not contain * when PROVIDER_ENV=production: "
                "list the exact origins of your web apps")
        if self.env == "production" and self.too_wide_proxies:
            raise ValueError(
                f"PROVIDER_TRUSTED_PROXIES must not include {self.too_wide_proxies[0]} when "
                "PROVIDER_ENV=production: anyone in a range wider than /8 (/32 for IPv6) "
                "could choose the client address the throttles see")
        if self.env == "production" and self.disabled_throttles:
            raise ValueError(
                f"{', '.join(self.disabled_throttles)} must not be empty when "
                "PROVIDER_ENV=production: an empty throttle is off, and what it guards "
                "(password, secret and code guesses, mails) unlimited; unset it for the "
                "default, or set a limit, a high one if need be")
        if self.key_rotation is not None and self.key_rotation <= self.key_publish_lead:
            raise ValueError(
                "PROVIDER_KEY_ROTATION_DAYS must be longer than PROVIDER_JWKS_MAX_AGE plus "
                "PROVIDER_KEY_PUBLISH_MARGIN (a new key is published that long before it "
                "signs)")
        if self.refresh_token_absolute_ttl < self.refresh_token_ttl:
            raise ValueError(
                "PROVIDER_REFRESH_TOKEN_ABSOLUTE_TTL must not be shorter than "
                "PROVIDER_REFRESH_TOKEN_TTL"
            )
        return self

    @field_validator("metrics_token", mode="after")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _metrics_not_public_by_accident(self) -> Settings:
        if self.env == "production" and self.metrics_token is None and not self.metrics_public:
            raise ValueError(
                "PROVIDER_METRICS_TOKEN must be set when PROVIDER_ENV=production (or set "
                "PROVIDER_METRICS_PUBLIC=true to serve /metrics to anyone on purpose)"
            )
        return self

    @property
    def is_argon2_weak(self) -> bool:
        """argon2id below every OWASP floor (ARGON2_FLOORS), or without parallelism."""
        memory, iterations = self.argon2_memory_cost, self.argon2_time_cost
        return self.argon2_parallelism < 1 or not any(
            memory >= m and iterations >= t for m, t in ARGON2_FLOORS)

    @property
    def too_wide_proxies(self) -> list[IPvAnyNetwork]:
        """The trusted proxy ranges wider than WIDEST_PROXY_PREFIX."""
        return [network for network in self.trusted_proxies
                if network.prefixlen < WIDEST_PROXY_PREFIX[network.version]]

    @property
    def disabled_throttles(self) -> list[str]:
        """The throttle settings set empty, which turns their throttle off."""
        return [f"PROVIDER_{name.upper()}" for name in THROTTLE_SETTINGS
                if not getattr(self, name)]

    @property
    def effective_log_format(self) -> Literal["json", "text"]:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.env == "production" else "text"

    @property
    def key_rotation(self) -> timedelta | None:
        """The automatic rotation period, or None when rotation is off."""
        if self.key_rotation_days is None:
            return None
        return timedelta(days=self.key_rotation_days)

    @property
    def key_publish_lead(self) -> timedelta:
        """How long a new key is published before it may sign."""
        return self.jwks_max_age + self.key_publish_margin

    @property
    def longest_token_ttl(self) -> timedelta:
        """How long a token signed now may be valid: a key that stopped signing stays
        published this long (plus key_publish_margin)."""
        return max(self.access_token_ttl, self.id_token_ttl)

    @property
    def token_audience(self) -> str:
        return self.audience or self.issuer
