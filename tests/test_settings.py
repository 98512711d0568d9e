"""Settings read durations from the environment as seconds or ISO 8601."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from provider.settings import THROTTLE_SETTINGS, Settings


@pytest.mark.parametrize(("raw", "expected"), [
    ("900", timedelta(minutes=15)),
    ("1.5", timedelta(seconds=1.5)),
    ("PT15M", timedelta(minutes=15)),
])
def test_durations_from_the_environment_take_seconds_or_iso_8601(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: timedelta
) -> None:
    monkeypatch.setenv("PROVIDER_ACCESS_TOKEN_TTL", raw)
    monkeypatch.setenv("PROVIDER_REFRESH_REUSE_GRACE", raw)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.access_token_ttl == expected
    assert settings.refresh_reuse_grace == expected


def test_a_duration_that_is_neither_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_ACCESS_TOKEN_TTL", "fifteen minutes")
    with pytest.raises(ValueError, match="access_token_ttl"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_key_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"PROVIDER_KEY_STORE": "database", "PROVIDER_SIGNING_ALG": "EdDSA",
                        "PROVIDER_KEY_ROTATION_DAYS": "0.5", "PROVIDER_JWKS_MAX_AGE": "120",
                        "PROVIDER_KEY_PUBLISH_MARGIN": "PT30S",
                        "PROVIDER_DB_PGBOUNCER": "true"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.key_store, settings.signing_alg, settings.db_pgbouncer) == (
        "database", "EdDSA", True)
    assert settings.key_rotation == timedelta(hours=12)
    assert settings.key_publish_lead == timedelta(seconds=150)
    assert settings.longest_token_ttl == timedelta(minutes=15)


@pytest.mark.parametrize("days", ["0", ""])
def test_key_rotation_is_off_at_zero_or_unset(monkeypatch: pytest.MonkeyPatch,
                                             days: str) -> None:
    if days:
        monkeypatch.setenv("PROVIDER_KEY_ROTATION_DAYS", days)
    assert Settings(_env_file=None).key_rotation is None  # type: ignore[call-arg]


@pytest.mark.parametrize(("values", "message"), [
    ({"signing_alg": "HS256"}, "signing_alg"),
    ({"signing_alg": "none"}, "signing_alg"),
    ({"key_store": "vault"}, "key_store"),
    ({"key_rotation_days": -1}, "must not be negative"),
    # A key must be publishable ahead of use within the period.
    ({"key_rotation_days": 0.004}, "must be longer than PROVIDER_JWKS_MAX_AGE plus"),
    ({"env": "production", "issuer": "https://id.example.com", "metrics_public": True,
      "key_store": "database"}, "PROVIDER_SECRET_KEY must be set when PROVIDER_KEY_STORE"),
])
def test_unsafe_key_settings_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("PROVIDER_ACCESS_TOKEN_TTL", "1e15", "longer than any duration can be"),
    ("PROVIDER_ACCESS_TOKEN_TTL", "inf", "must be a finite number of seconds"),
    ("PROVIDER_ACCESS_TOKEN_TTL", "nan", "must be a finite number of seconds"),
    ("PROVIDER_KEY_ROTATION_DAYS", "inf", "must be a finite number of days"),
    ("PROVIDER_KEY_ROTATION_DAYS", "1e15", "longer than any duration can be"),
    ("PROVIDER_SMTP_URL", "smtp:/oops", "PROVIDER_SMTP_URL has no host"),
    ("PROVIDER_SMTP_URL", "smtps://mailer:s3cret@smtp.example.com:x",
     "PROVIDER_SMTP_URL has an invalid port"),
    ("PROVIDER_MAIL_FROM", "nobody", "PROVIDER_MAIL_FROM must contain an email address"),
    ("PROVIDER_LOGIN_THROTTLE_ACCOUNT", "5 per fortnight",
     "PROVIDER_LOGIN_THROTTLE_ACCOUNT is not a list of limits like '5 per minute; 20 per "
     "hour' (no granularity matched for fortnight)"),
    ("PROVIDER_MFA_THROTTLE_ACCOUNT", "5 per minute;", "PROVIDER_MFA_THROTTLE_ACCOUNT is not"),
])
def test_what_the_server_would_refuse_at_start_up_is_refused_by_settings(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, message: str,
) -> None:
    # A duration beyond timedelta (whose OverflowError would escape pydantic), and what
    # the mailer and the throttles parse at start-up, with their own parsers: a mistake
    # is one line naming the setting, not a traceback out of the server's start-up or
    # out of `provider check`.
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    [problem] = caught.value.errors()
    assert problem["loc"] == (name.removeprefix("PROVIDER_").lower(),)
    assert message in problem["msg"]
    assert "s3cret" not in str(caught.value)  # the value is never shown


def test_an_empty_throttle_is_off_and_blanks_are_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_REGISTRATION_THROTTLE", "  ")
    monkeypatch.setenv("PROVIDER_SMTP_URL", " ")
    configured = Settings(_env_file=None)  # type: ignore[call-arg]
    assert configured.registration_throttle == ""


SAFE_PRODUCTION = {"env": "production", "issuer": "https://id.example.com",
                   "metrics_public": True}


@pytest.mark.parametrize(("values", "message"), [
    ({"argon2_memory_cost": 1024, "argon2_time_cost": 1},
     "PROVIDER_ARGON2_MEMORY_COST=1024 with PROVIDER_ARGON2_TIME_COST=1 (parallelism 1) is "
     "below OWASP's minimum"),
    ({"argon2_memory_cost": 19456, "argon2_time_cost": 1}, "below OWASP's minimum"),
    ({"argon2_parallelism": 0}, "below OWASP's minimum"),
    ({"cors_origins": "https://app.example.com, *"},
     "PROVIDER_CORS_ORIGINS must not contain * when PROVIDER_ENV=production"),
    ({"trusted_proxies": "10.0.0.1, 0.0.0.0/0"},
     "PROVIDER_TRUSTED_PROXIES must not include 0.0.0.0/0 when PROVIDER_ENV=production"),
    ({"trusted_proxies": "2000::/16"}, "must not include 2000::/16"),
])
def test_production_refuses_what_check_calls_an_error(
    values: dict[str, object], message: str,
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **{**SAFE_PRODUCTION, **values})  # type: ignore[arg-type]
    [problem] = caught.value.errors()
    assert message in problem["msg"]
    # Elsewhere they load, and `provider check` reports them.
    Settings(_env_file=None, **{**SAFE_PRODUCTION, **values, "env": "development"})  # type: ignore[arg-type]


def test_production_takes_the_owasp_equivalents_and_narrow_proxies() -> None:
    configured = Settings(_env_file=None, **{  # type: ignore[arg-type]
        **SAFE_PRODUCTION, "argon2_memory_cost": 47104, "argon2_time_cost": 1,
        "trusted_proxies": "10.0.0.0/8, fd00::/32", "cors_origins": "https://app.example.com"})
    assert not configured.is_argon2_weak and configured.too_wide_proxies == []


@pytest.mark.parametrize("name", THROTTLE_SETTINGS)
def test_production_refuses_a_throttle_turned_off(
    monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    # Empty, a throttle is off: unlimited password (or secret, or code) guesses.
    variable = f"PROVIDER_{name.upper()}"
    monkeypatch.setenv(variable, " ")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **SAFE_PRODUCTION)  # type: ignore[arg-type]
    [problem] = caught.value.errors()
    assert problem["msg"].startswith(
        f"Value error, {variable} must not be empty when PROVIDER_ENV=production")
    development = Settings(_env_file=None, **{**SAFE_PRODUCTION, "env": "development"})  # type: ignore[arg-type]
    assert development.disabled_throttles == [variable]
