"""Audit events of the command line: key changes, clients and users made or deleted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import PASSWORD, Cli, sqlite_rows


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    instance = Cli(tmp_path, f"sqlite:///{tmp_path}/provider.db", tmp_path / "keys")
    instance("migrate").ok()
    return instance


def cli_events(cli: Cli) -> list[tuple[str, str, str, str | None, str | None, dict[str, str]]]:
    rows = sqlite_rows(cli, "SELECT type, outcome, actor, client_id, subject_user_id, details "
                            "FROM audit_events ORDER BY occurred_at, rowid")
    return [(t, o, a, c, u, json.loads(d)) for t, o, a, c, u, d in rows]


def test_key_changes_and_cli_admin_actions_are_recorded(cli: Cli) -> None:
    first = cli("keys", "generate", "--json").json()
    second = cli("keys", "generate", "--json").json()
    cli("keys", "rotate", "--now", "--json").json()
    cli("keys", "retire", "--", first["kid"]).ok()
    client = cli("clients", "create", "--name", "cli app", "--grant", "client_credentials",
                 "--scope", "api", "--json").json()
    email = "cli-audit@example.com"
    user = cli("users", "create", "--email", email, "--password", PASSWORD, "--verified",
               "--json").json()
    cli("clients", "delete", client["client_id"]).ok()

    user_id = user["id"].replace("-", "")  # SQLite keeps UUIDs as 32 hex digits
    assert cli_events(cli) == [
        ("key.generated", "success", "cli", None, None,
         {"kid": first["kid"], "status": "active"}),
        ("key.generated", "success", "cli", None, None,
         {"kid": second["kid"], "status": "published"}),
        ("key.activated", "success", "cli", None, None,
         {"kid": second["kid"], "status": "active"}),
        ("key.retired", "success", "cli", None, None,
         {"kid": first["kid"], "status": "retired"}),
        ("client.created", "success", "cli", client["client_id"], None, {}),
        ("user.created", "success", "cli", None, user_id,
         {"fields": ["email", "password", "is_verified"]}),
        ("client.deleted", "success", "cli", client["client_id"], None, {}),
    ]
    text = json.dumps(cli_events(cli))
    assert email not in text and PASSWORD not in text and client["client_secret"] not in text


def test_a_key_change_without_a_database_warns_and_still_succeeds(tmp_path: Path) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path}/missing.db", tmp_path / "keys")
    result = cli("keys", "generate", "--json")
    assert result.json()["status"] == "active"
    assert result.stderr.strip() == (
        "warning: no database yet; the key change is not in the audit trail")
    assert not (tmp_path / "missing.db").exists()
