"""`provider check`: a clean production configuration passes; each finding is tripped by
a configuration made for it (in-process, through a clock seam where time matters); the
real command exits 1 on an error, prints --json, and reports an invalid configuration."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from provider.check import (
    Finding,
    check_configuration,
    estimated_bits,
    run_checks,
    settings_findings,
)
from provider.settings import Settings
from tests.conftest import REQUIRE_POSTGRES, TestClock, make_keys_dir, make_settings
from tests.test_cli import Cli

REDIS_URL = os.environ.get("PROVIDER_TEST_REDIS_URL")
STRONG = secrets.token_urlsafe(48)


@pytest.fixture(scope="module")
def check_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys_dir(tmp_path_factory.mktemp("check-keys"))


@pytest.fixture
def production(settings: Settings, check_keys: Path) -> dict[str, Any]:
    """A deployment with nothing to complain about (on the suite's migrated database)."""
    if not REDIS_URL:
        if REQUIRE_POSTGRES:  # CI
            pytest.fail("PROVIDER_TEST_REDIS_URL is required in CI")
        pytest.skip("no PROVIDER_TEST_REDIS_URL")
    return {
        "env": "production", "issuer": "https://auth.example.com", "secret_key": STRONG,
        "smtp_url": "smtps://mailer:pw@smtp.example.com:465", "metrics_token": "m" * 32,
        "trusted_proxies": "10.0.0.0/8", "redis_url": REDIS_URL, "key_rotation_days": 30,
        "argon2_memory_cost": 19456, "argon2_time_cost": 2, "cors_origins": "https://app.example.com",
        "database_url": settings.database_url, "keys_dir": check_keys,
    }


async def findings_for(values: dict[str, Any], *, processes: int = 1,
                       clock: TestClock | None = None) -> dict[str, Finding]:
    configured = make_settings(values.pop("database_url"), values.pop("keys_dir"), **values)
    found = await run_checks(configured, processes=processes, clock=clock)
    return {f.id: f for f in found}


async def test_a_clean_production_configuration_has_no_finding(
    production: dict[str, Any],
) -> None:
    # The key was just made and rotation is on: nothing is due yet.
    assert await findings_for(production) == {}


@pytest.mark.parametrize(("changes", "expected", "level"), [
    ({"env": "development"}, "env.not_production", "warning"),
    ({"env": "development", "issuer": "http://auth.example.com"}, "issuer.not_https", "error"),
    ({"secret_key": None}, "secret_key.missing", "error"),
    ({"secret_key": "ab" * 32}, "secret_key.weak", "error"),
    ({"secret_key": "password" * 4}, "secret_key.weak", "error"),
    ({"key_rotation_days": None}, "keys.rotation_off", "warning"),
    ({"redis_url": None, "key_store": "database"}, "redis.missing", "error"),
    ({"redis_url": "redis://127.0.0.1:1/0"}, "redis.unreachable", "error"),
    ({"smtp_url": None, "env": "development"}, "mail.console", "error"),
    # (Production refuses these three at start-up: settings.invalid.)
    ({"argon2_memory_cost": 1024, "argon2_time_cost": 1, "env": "development"},
     "passwords.argon2_weak", "error"),
    ({"argon2_memory_cost": 19456, "argon2_time_cost": 1, "env": "development"},
     "passwords.argon2_weak", "error"),
    ({"metrics_token": None, "env": "development"}, "metrics.unprotected", "error"),
    ({"metrics_token": None, "metrics_public": True}, "metrics.public", "warning"),
    ({"cors_origins": "*", "env": "development"}, "cors.wildcard", "error"),
    ({"cors_origins": "https://app.example.com/path"}, "cors.invalid", "error"),
    ({"cors_origins": "http://app.example.com"}, "cors.insecure", "warning"),
    ({"trusted_proxies": ""}, "proxies.missing", "error"),
    ({"trusted_proxies": "0.0.0.0/0", "env": "development"}, "proxies.too_wide", "error"),
    ({"signing_alg": "ES256"}, "keys.algorithm_mismatch", "warning"),
    ({"login_throttle_account": "", "env": "development"}, "throttles.disabled", "warning"),
    ({"client_auth_throttle_address": " ", "env": "development"}, "throttles.disabled",
     "warning"),
    ({"throttle_ipv6_prefix": 128}, "throttles.ipv6_prefix_narrow", "warning"),
    ({"throttle_ipv6_prefix": 40}, "throttles.ipv6_prefix_wide", "warning"),
    ({"db_pgbouncer": True}, "database.no_statement_timeout", "warning"),
    ({"database_url": "postgresql://nobody@127.0.0.1:1/none"}, "database.unreachable", "error"),
    # What the server would stop at, not a traceback out of the check.
    ({"database_url": "nonsense"}, "database.unreachable", "error"),
    ({"database_url": "nodialect://x/y"}, "database.unreachable", "error"),
    ({"key_store": "database", "secret_key": "short"}, "secret_key.weak", "error"),
    ({"key_store": "database", "secret_key": "short"}, "keys.unreadable", "error"),
    ({"redis_url": "http://127.0.0.1:6379"}, "redis.unreachable", "error"),
])
async def test_each_finding_is_tripped_by_its_configuration(
    production: dict[str, Any], changes: dict[str, Any], expected: str, level: str,
) -> None:
    found = await findings_for({**production, **changes})
    assert expected in found, found
    finding = found[expected]
    assert finding.level == level and finding.message and finding.fix
    if changes.get("secret_key"):
        assert changes["secret_key"] not in finding.message + finding.fix  # never shown


async def test_redis_is_required_by_several_processes(production: dict[str, Any]) -> None:
    without = {**production, "redis_url": None}
    assert "redis.missing" not in await findings_for(dict(without))
    assert (await findings_for(dict(without), processes=3))["redis.missing"].level == "error"


async def test_key_findings_follow_the_keys_age(production: dict[str, Any]) -> None:
    clock = TestClock()
    # Rotation on: the next key is due 30 days minus the lead after activation.
    clock.advance(timedelta(days=30) - timedelta(minutes=6) + timedelta(minutes=10))
    found = await findings_for(dict(production), clock=clock)
    assert set(found) == {"keys.next_not_published"}
    clock.advance(timedelta(days=10))
    assert set(await findings_for(dict(production), clock=clock)) == {"keys.rotation_stalled"}
    # Rotation off: an old key, and no key published ahead.
    manual = {**production, "key_rotation_days": None}
    found = await findings_for(dict(manual), clock=clock)
    assert set(found) == {"keys.rotation_off", "keys.next_not_published"}
    clock.advance(timedelta(days=200))
    assert "keys.active_old" in await findings_for(dict(manual), clock=clock)


async def test_key_stores_that_cannot_serve_are_errors(
    production: dict[str, Any], tmp_path: Path,
) -> None:
    empty = await findings_for({**production, "keys_dir": tmp_path / "none"})
    assert empty["keys.no_active"].level == "error"
    broken = make_keys_dir(tmp_path / "broken")
    (broken / "keys.json").write_text("{not json")
    assert (await findings_for({**production, "keys_dir": broken}))["keys.unreadable"].level \
        == "error"
    # The database store on a database without its keys: no active key there.
    assert "keys.no_active" in await findings_for({**production, "key_store": "database"})


async def test_an_unmigrated_database_is_an_error_and_a_missing_file_is_not_created(
    production: dict[str, Any], tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.db"
    found = await findings_for({**production, "database_url": f"sqlite:///{missing}"})
    assert found["database.unreachable"].message == f"There is no database file at {missing}."
    assert not missing.exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    found = await findings_for({**production, "database_url": f"sqlite:///{empty}"})
    assert found["database.not_migrated"].message == "The database has no schema yet."
    assert found["database.sqlite"].level == "warning"


def test_an_invalid_configuration_is_a_finding() -> None:
    def load() -> Settings:
        return Settings(_env_file=None, env="production", issuer="http://auth.example.com")  # type: ignore[call-arg]

    configured, found = settings_findings(load)
    assert configured is None
    assert [(f.id, f.level) for f in found] == [("settings.invalid", "error")]
    assert "PROVIDER_ISSUER must use https://" in found[0].message


@pytest.mark.parametrize(("name", "raw"), [
    ("PROVIDER_ACCESS_TOKEN_TTL", "1e15"), ("PROVIDER_KEY_ROTATION_DAYS", "inf"),
])
def test_a_duration_too_long_for_timedelta_is_a_finding(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str,
) -> None:
    monkeypatch.setenv(name, raw)
    configured, found = settings_findings(lambda: Settings(_env_file=None))  # type: ignore[call-arg]
    assert configured is None
    assert [(f.id, f.level) for f in found] == [("settings.invalid", "error")]
    assert found[0].message.startswith(name.removeprefix("PROVIDER_").lower() + ": ")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PROVIDER_SMTP_URL", "smtp:/oops", "smtp_url: Value error, PROVIDER_SMTP_URL has no host"),
    ("PROVIDER_MAIL_FROM", "nobody",
     "mail_from: Value error, PROVIDER_MAIL_FROM must contain an email address"),
    # Off: production refuses it.
    ("PROVIDER_LOGIN_THROTTLE_ADDRESS", "", "settings: Value error, "
     "PROVIDER_LOGIN_THROTTLE_ADDRESS must not be empty when PROVIDER_ENV=production"),
    # Without Redis too: the server parses every throttle at start-up.
    ("PROVIDER_LOGIN_THROTTLE_ACCOUNT", "5 per fortnight", "login_throttle_account: Value "
     "error, PROVIDER_LOGIN_THROTTLE_ACCOUNT is not a list of limits"),
])
def test_a_setting_the_server_would_refuse_at_start_up_is_an_error(
    production: dict[str, Any], tmp_path: Path, check_keys: Path,
    name: str, value: str, message: str,
) -> None:
    cli = Cli(tmp_path, production["database_url"], check_keys)
    env = {f"PROVIDER_{k.upper()}": str(v) for k, v in production.items()
           if k not in ("database_url", "keys_dir", "redis_url")}
    result = cli("check", "--json", **{**env, name: value})
    assert result.returncode == 1, result.stdout + result.stderr
    [finding] = json.loads(result.stdout)["findings"]
    assert (finding["id"], finding["level"]) == ("settings.invalid", "error")
    assert finding["message"].startswith(message)


def test_a_throttle_turned_off_is_an_error_in_production(settings: Settings) -> None:
    off = settings.model_copy(update={"env": "development", "login_throttle_account": "",
                                      "client_auth_throttle": ""})
    # (A copy is not validated: production itself would not load.)
    for env, level in (("development", "warning"), ("production", "error")):
        found = {f.id: f for f in check_configuration(off.model_copy(update={"env": env}),
                                                      processes=1)}
        assert found["throttles.disabled"].level == level
        assert found["throttles.disabled"].message.startswith(
            "PROVIDER_LOGIN_THROTTLE_ACCOUNT, PROVIDER_CLIENT_AUTH_THROTTLE set empty: ")


def test_the_entropy_estimate() -> None:
    assert estimated_bits("a" * 64) == 0
    assert estimated_bits(secrets.token_hex(32)) >= 128
    assert estimated_bits(secrets.token_urlsafe(32)) >= 128
    assert estimated_bits("password" * 4) < 128


def test_the_command_exits_1_on_an_error_and_speaks_json(
    production: dict[str, Any], tmp_path: Path, check_keys: Path,
) -> None:
    cli = Cli(tmp_path, production["database_url"], check_keys)
    env = {f"PROVIDER_{k.upper()}": str(v) for k, v in production.items()
           if k not in ("database_url", "keys_dir")}
    clean = cli("check", "--json", **env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout) == {"ok": True, "errors": 0, "warnings": 0, "findings": []}
    assert cli("check", **env).stdout == "no issues found\n"

    not_an_origin = "https://app.example.com/path"
    tripped = cli("check", "--json", **{**env, "PROVIDER_CORS_ORIGINS": not_an_origin,
                                       "PROVIDER_KEY_ROTATION_DAYS": "0"})
    assert tripped.returncode == 1
    report = json.loads(tripped.stdout)
    assert (report["ok"], report["errors"], report["warnings"]) == (False, 1, 2)
    assert [(f["id"], f["level"]) for f in report["findings"]] == [
        ("cors.invalid", "error"), ("keys.rotation_off", "warning"),
        ("keys.next_not_published", "warning")]
    text = cli("check", **{**env, "PROVIDER_CORS_ORIGINS": not_an_origin})
    assert text.returncode == 1
    assert text.stdout.splitlines()[0].startswith("ERROR   cors.invalid: ")
    assert text.stdout.splitlines()[1].startswith("        fix: ")
    assert text.stdout.splitlines()[-1] == "1 error(s), 0 warning(s)"

    invalid = cli("check", "--json", **{**env, "PROVIDER_ISSUER": "http://auth.example.com"})
    assert invalid.returncode == 1
    [finding] = json.loads(invalid.stdout)["findings"]
    assert finding["id"] == "settings.invalid"


@pytest.mark.parametrize(("env", "expected"), [
    ({"DATABASE_URL": "nonsense"}, {"database.unreachable"}),
    ({"PROVIDER_KEY_STORE": "database", "PROVIDER_SECRET_KEY": "short"},
     {"secret_key.weak", "keys.unreadable"}),
    ({"PROVIDER_REDIS_URL": "http://127.0.0.1:6379"}, {"redis.unreachable"}),
])
def test_what_would_stop_the_server_is_a_finding_not_a_crash(
    production: dict[str, Any], tmp_path: Path, check_keys: Path,
    env: dict[str, str], expected: set[str],
) -> None:
    cli = Cli(tmp_path, env.pop("DATABASE_URL", production["database_url"]), check_keys)
    base = {f"PROVIDER_{k.upper()}": str(v) for k, v in production.items()
            if k not in ("database_url", "keys_dir")}
    result = cli("check", "--json", **{**base, **env})
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert {f["id"] for f in report["findings"] if f["level"] == "error"} >= expected
    assert "Traceback" not in result.stderr


def test_the_command_changes_nothing(tmp_path: Path) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path}/none.db", tmp_path / "keys")
    result = cli("check", "--json", PROVIDER_KEY_STORE="database")
    assert result.returncode == 1
    ids = {f["id"] for f in json.loads(result.stdout)["findings"]}
    assert {"database.unreachable", "secret_key.missing"} <= ids
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no database, no secret file
