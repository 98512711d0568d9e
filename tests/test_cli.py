"""The `provider` command line, run as the real program in subprocesses.

Each run starts a Python process (~0.5 s), so scenarios are chained and independent
calls run in parallel. The environment is built from scratch: DATABASE_URL and
PROVIDER_KEYS_DIR point into a temporary directory, and the working directory is that
directory, so neither the developer's shell nor the repository's `.env` leaks in.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import secrets
import select
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from provider.cli import app
from tests.pgserver import create_database, drop_database

BIN = Path(sys.executable).parent / "provider"
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "provider"]
PASSWORD = "correct horse battery staple"


@dataclass
class Result:
    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> Result:
        assert self.returncode == 0, f"provider {' '.join(self.args)}: {self}"
        return self

    def json(self) -> Any:
        self.ok()
        lines = self.stdout.strip().splitlines()
        assert len(lines) == 1, f"--json must print one JSON object, got {self.stdout!r}"
        return json.loads(lines[0])

    def usage_error(self) -> str:
        """Exit 2, nothing on stdout, one `error: ...` line on stderr; returns the line."""
        assert self.returncode == 2, f"provider {' '.join(self.args)}: {self}"
        assert self.stdout == ""
        lines = self.stderr.splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got {self.stderr!r}"
        assert lines[0].startswith("error: ")
        return lines[0]


@dataclass
class Cli:
    home: Path
    database_url: str
    keys_dir: Path

    def env(self, **overrides: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("PROVIDER_") and k != "DATABASE_URL"}
        return {
            **base,
            "DATABASE_URL": self.database_url,
            "PROVIDER_KEYS_DIR": str(self.keys_dir),
            "PROVIDER_ENV": "test",
            # Cheap argon2: these tests are about the CLI, not the hash parameters.
            "PROVIDER_ARGON2_MEMORY_COST": "1024",
            "PROVIDER_ARGON2_TIME_COST": "1",
            **overrides,
        }

    def __call__(self, *args: str, **env: str) -> Result:
        proc = subprocess.run(
            [*COMMAND, *args], cwd=self.home, env=self.env(**env), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120, check=False,
        )
        return Result(args, proc.returncode, proc.stdout, proc.stderr)

    def many(self, *commands: Sequence[str]) -> list[Result]:
        """Independent commands, run in parallel; results in the order given."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: self(*args), commands))

    def with_keys_dir(self, keys_dir: Path) -> Cli:
        return Cli(self.home, self.database_url, keys_dir)


def sqlite_rows(cli: Cli, query: str, *params: Any) -> list[tuple[Any, ...]]:
    path = cli.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(query, params).fetchall()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    home = tmp_path_factory.mktemp("cli")
    instance = Cli(home, f"sqlite:///{home}/provider.db", home / "keys")
    instance("migrate").ok()
    return instance


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pems")
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    private = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
               serialization.NoEncryption())
    files = {
        "good": good.private_bytes(*private),
        "short": short.private_bytes(*private),
        "public": good.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "garbage": b"this is not a key\n",
    }
    for name, data in files.items():
        (folder / f"{name}.pem").write_bytes(data)
    return {name: folder / f"{name}.pem" for name in files}


# --- help, usage errors, migrate, openapi ---------------------------------------------


def all_command_paths() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(command: click.Command | Any, path: list[str]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_every_command_has_help() -> None:
    # In-process (a subprocess per command would cost seconds); the real program's
    # --help is checked below.
    paths = all_command_paths()
    assert ["keys", "import"] in paths and ["clients", "ensure-dev"] in paths
    assert ["users", "mfa-reset"] in paths
    assert ["keys", "export"] in paths and ["check"] in paths
    assert len(paths) == 21
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output and "--help" in result.output, path


def test_help_of_the_real_program(cli: Cli) -> None:
    top = cli("--help").ok()
    assert all(word in top.stdout for word in ("keys", "clients", "users", "migrate"))


def test_usage_errors_exit_2_with_one_line(cli: Cli, tmp_path: Path) -> None:
    cli = cli.with_keys_dir(tmp_path / "no-keys")
    bad_option, missing_option, bad_value, bad_command, no_subcommand, no_key = cli.many(
        ["clients", "create", "--name", "x", "--grant", "password", "--bogus"],
        ["clients", "create", "--name", "x"],
        ["serve", "--port", "0"],
        ["no-such-command"],
        ["keys"],
        ["serve"],
    )
    assert bad_option.usage_error() == "error: No such option: --bogus"
    assert missing_option.usage_error() == "error: Missing option '--grant'."
    assert "--port" in bad_value.usage_error()
    assert "no-such-command" in bad_command.usage_error()
    # A group without its subcommand shows the group's help (on stderr, exit 2).
    assert no_subcommand.returncode == 2
    assert "Usage:" in no_subcommand.stderr and "rotate" in no_subcommand.stderr
    assert no_key.usage_error() == "error: no signing key; run `provider keys generate` first"


def test_migrate_twice_is_idempotent(cli: Cli) -> None:
    # The fixture migrated once already.
    again = cli("migrate").ok()
    assert "newest revision" in again.stdout
    tables = {row[0] for row in sqlite_rows(cli, "SELECT name FROM sqlite_master "
                                                 "WHERE type = 'table'")}
    assert {"users", "clients", "refresh_tokens", "alembic_version"} <= tables
    assert len(sqlite_rows(cli, "SELECT version_num FROM alembic_version")) == 1


def test_a_database_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    """Connection refused, an unparsable DATABASE_URL, an unmigrated database: exit 2 and
    one `error: ...` line, never a traceback."""
    refused = "postgresql://postgres@127.0.0.1:1/x"
    unmigrated = f"sqlite:///{tmp_path}/empty.db"
    database_store = {"PROVIDER_KEY_STORE": "database",
                      "PROVIDER_SECRET_KEY": secrets.token_urlsafe(32)}
    runs: list[tuple[list[str], str, dict[str, str]]] = [
        (["clients", "list", "--json"], refused, {}),
        (["clients", "list"], "nonsense", {}),
        (["purge"], "nonsense", {}),
        (["keys", "list"], "nonsense", database_store),
        (["users", "create", "--email", "c@example.com", "--password", PASSWORD], "nonsense", {}),
        (["clients", "list"], unmigrated, {}),
        (["purge"], unmigrated, {}),
        (["migrate"], "nonsense", {}),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(
            lambda run: Cli(tmp_path, run[1], tmp_path / "keys")(*run[0], **run[2]), runs))
    unparsable = "Could not parse SQLAlchemy URL from given URL string"
    assert [r.usage_error() for r in results] == [
        "error: cannot use the database: [Errno 111] Connect call failed ('127.0.0.1', 1)",
        f"error: cannot use the database: {unparsable}",
        f"error: cannot purge the database: {unparsable}",
        f"error: cannot reach the key store (database): {unparsable}",
        f"error: cannot use the database: {unparsable}",
        "error: cannot use the database: no such table: clients",
        "error: cannot purge the database: no such table: login_sessions",
        f"error: cannot migrate the database: {unparsable}",
    ]


def test_migrate_a_database_of_an_unknown_revision_is_refused(tmp_path: Path) -> None:
    """A database stamped with a revision this code does not know (a newer release's)."""
    with sqlite3.connect(tmp_path / "newer.db") as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('0123456789ab')")
    cli = Cli(tmp_path, f"sqlite:///{tmp_path}/newer.db", tmp_path / "keys")
    result = cli("migrate")
    assert (result.returncode, result.stdout) == (2, "")
    # Alembic logs its INFO lines first; no traceback, and the last line says why.
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "error: cannot migrate the database: Can't locate revision identified by "
        "'0123456789ab'")


def test_openapi_prints_the_yaml_document(cli: Cli) -> None:
    result = cli("openapi").ok()
    assert result.stdout.startswith("openapi:")
    document = yaml.safe_load(result.stdout)
    assert "/oauth/token" in document["paths"]


# --- keys -----------------------------------------------------------------------------


def test_keys_life_cycle(cli: Cli, tmp_path: Path) -> None:
    keys = cli.with_keys_dir(tmp_path / "keys")

    first = keys("keys", "generate", "--json").json()
    assert first == {"kid": first["kid"], "status": "active", "created": True}
    second = keys("keys", "generate", "--json").json()
    assert second == {"kid": second["kid"], "status": "published", "created": True}
    assert second["kid"] != first["kid"]
    present = keys("keys", "generate", "--if-missing", "--json").json()
    assert present == {"kid": first["kid"], "status": "active", "created": False}
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 2

    # Published a moment ago: resource servers may not have it yet, so no rotation...
    early = keys("keys", "rotate", "--json").usage_error()
    assert re.fullmatch(
        rf"error: key {re.escape(second['kid'])} has been published for \d+ s; resource "
        r"servers may cache the JWKS for 360 s \(max-age plus margin\), so its tokens could "
        r"be refused: rotate again in \d+ s, or pass --now after a compromise", early), early
    # ...unless it is waited for (a JWKS max-age of 1 s here, plus the margin), or --now.
    waited = keys("keys", "rotate", "--json", PROVIDER_JWKS_MAX_AGE="0",
                  PROVIDER_KEY_PUBLISH_MARGIN="0").json()
    assert waited == {"kid": second["kid"], "status": "active"}

    refused = keys("keys", "retire", "--", second["kid"]).usage_error()
    assert refused == (f"error: key {second['kid']} is the active signing key; "
                       "rotate to another key first")
    retired = keys("keys", "retire", "--", first["kid"]).ok().stdout.strip()
    assert retired == f"retired {first['kid']}"

    listed = keys("keys", "list", "--json").json()
    statuses = {k["kid"]: k["status"] for k in listed["keys"]}
    assert statuses == {first["kid"]: "retired", second["kid"]: "active"}
    assert set(listed["keys"][0]) == {"kid", "status", "created_at", "activated_at",
                                      "deactivated_at", "alg"}
    assert {k["alg"] for k in listed["keys"]} == {"RS256"}
    # A retired key keeps its record, not its private key.
    assert sorted(p.name for p in (tmp_path / "keys").glob("*.pem")) == [f"{second['kid']}.pem"]

    # Nothing waits any more: rotate says what to do, and --now makes and signs a key.
    nothing = keys("keys", "rotate").usage_error()
    assert nothing == (
        "error: no key is published ahead of use: run `provider keys generate`, wait 360 s "
        "(resource servers cache the JWKS; the max-age plus a margin), then rotate; or "
        "rotate --now after a compromise")
    forced = keys("keys", "rotate", "--now", "--json").json()
    assert forced["status"] == "active" and forced["kid"] not in (first["kid"], second["kid"])

    # generate --activate is a switch to an unpublished key too: refused unless --now.
    switch = keys("keys", "generate", "--activate").usage_error()
    assert switch.startswith(f"error: {forced['kid']} signs now: --activate would switch")
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 2  # nothing was written
    switched = keys("keys", "generate", "--activate", "--now", "--json").json()
    assert switched["status"] == "active" and switched["kid"] != forced["kid"]


def test_keys_import(cli: Cli, tmp_path: Path, pems: dict[str, Path]) -> None:
    keys = cli.with_keys_dir(tmp_path / "keys")
    existing = keys("keys", "generate", "--json").json()
    short, public, garbage, missing, traversal, unknown = keys.many(
        ["keys", "import", str(pems["short"]), "--activate"],
        ["keys", "import", str(pems["public"]), "--activate"],
        ["keys", "import", str(pems["garbage"]), "--activate"],
        ["keys", "import", str(tmp_path / "nope.pem")],
        ["keys", "retire", "../../etc/passwd"],
        ["keys", "retire", "A" * 43],
    )
    assert short.usage_error() == "error: RSA key is 1024 bits; at least 2048 are required"
    assert public.usage_error() == (
        "error: the PEM holds a public key; a private key is needed to sign")
    assert garbage.usage_error() == "error: not a private key in PEM form"
    assert missing.usage_error().startswith("error: cannot read ")
    assert traversal.usage_error() == "error: not a key id: '../../etc/passwd'"
    assert unknown.usage_error() == f"error: no key {'A' * 43}"
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 1  # nothing was written

    # Another key signs: switching at once to a key nobody has fetched needs --now.
    refused = keys("keys", "import", str(pems["good"]), "--activate").usage_error()
    assert refused.startswith(f"error: {existing['kid']} signs now: --activate would switch")
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 1  # nothing was written
    imported = keys("keys", "import", str(pems["good"]), "--activate", "--now",
                    "--json").json()
    assert imported["status"] == "active"
    again = keys("keys", "import", str(pems["good"])).usage_error()
    assert again == f"error: key {imported['kid']} is already in the key store"
    listed = keys("keys", "list").ok().stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [
        [existing["kid"], "published"], [imported["kid"], "active"]]


def test_keys_in_the_database_store_move_to_a_directory_and_back(
    cli: Cli, tmp_path: Path,
) -> None:
    secret = secrets.token_urlsafe(32)
    db = cli.with_keys_dir(tmp_path / "keys-unused")
    env = {"PROVIDER_KEY_STORE": "database", "PROVIDER_SECRET_KEY": secret,
           "PROVIDER_SIGNING_ALG": "EdDSA"}

    first = db("keys", "generate", "--json", **env).json()
    second = db("keys", "generate", "--json", **env).json()
    assert (first["status"], second["status"]) == ("active", "published")
    listed = db("keys", "list", **env).ok().stdout.splitlines()
    assert [line.split()[:3] for line in listed] == [
        [first["kid"], "active", "EdDSA"], [second["kid"], "published", "EdDSA"]]
    assert not (tmp_path / "keys-unused").exists() or not list(
        (tmp_path / "keys-unused").glob("*.pem"))  # nothing on disk
    [(sealed,)] = sqlite_rows(cli, "SELECT private_key_encrypted FROM signing_keys "
                                   "WHERE kid = ?", first["kid"])
    assert b"PRIVATE KEY" not in sealed
    events = sqlite_rows(cli, "SELECT type, actor FROM audit_events WHERE details LIKE ?",
                         f"%{second['kid']}%")
    assert events == [("key.generated", "cli")]

    exported = tmp_path / "exported"
    assert db("keys", "export", str(exported), "--json", **env).json() == {"exported": 2}
    assert {p.name for p in exported.iterdir()} == {
        "keys.json", f"{first['kid']}.pem", f"{second['kid']}.pem", ".lock"}
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in exported.glob("*.pem"))
    stranger = db("keys", "export", str(tmp_path / "stranger"),
                  **{**env, "PROVIDER_SECRET_KEY": secrets.token_urlsafe(32)})
    refused = db("keys", "export", str(exported), **env)
    activate_set = db("keys", "import", str(exported), "--activate", **env)
    assert stranger.usage_error() == (
        f"error: signing key {first['kid']} cannot be decrypted: PROVIDER_SECRET_KEY is not "
        "the secret it was stored with")
    assert not (tmp_path / "stranger").exists()
    assert refused.usage_error() == f"error: {exported} is not an empty directory"
    assert activate_set.usage_error() == (
        "error: --activate applies to a single PEM file; a key set keeps its states")

    # Into a directory store, with the states as they were.
    directory = cli.with_keys_dir(tmp_path / "keys-moved")
    assert directory("keys", "import", str(exported), "--json").json() == {"imported": 2}
    assert directory("keys", "list", "--json").json() == db("keys", "list", "--json",
                                                             **env).json()
    # Once more changes nothing; a store with other keys refuses the set.
    assert directory("keys", "import", str(exported), "--json").json() == {"imported": 2}
    other = cli.with_keys_dir(tmp_path / "keys-other")
    other("keys", "generate").ok()
    assert other("keys", "import", str(exported)).usage_error() == (
        "error: the key store already holds other keys; import a key set into an empty "
        "store only (single keys: `provider keys import PEM_FILE`)")


# --- clients --------------------------------------------------------------------------


def test_clients_create_list_delete(cli: Cli) -> None:
    name = unique("app")
    confidential, public, unknown_grant = cli.many(
        ["clients", "create", "--name", name, "--first-party", "--grant", "password", "--grant",
         "refresh_token", "--scope", "openid profile", "--json"],
        ["clients", "create", "--name", unique("spa"), "--first-party", "--grant", "password",
         "--public", "--json"],
        ["clients", "create", "--name", unique("bad"), "--grant", "password", "--grant",
         "magic", "--json"],
    )
    created = confidential.json()
    assert set(created) == {"client_id", "client_secret"}
    assert created["client_id"].startswith("cl_") and len(created["client_secret"]) >= 43
    spa = public.json()
    assert spa == {"client_id": spa["client_id"], "client_secret": None}
    assert unknown_grant.usage_error() == (
        "error: unknown grant type 'magic'; choose from password, refresh_token, "
        "client_credentials, authorization_code")

    # The secret is stored only as its SHA-256 digest.
    [(digest,)] = sqlite_rows(cli, "SELECT secret_hash FROM clients WHERE client_id = ?",
                              created["client_id"])
    assert digest == hashlib.sha256(created["client_secret"].encode()).digest()

    items = {c["client_id"]: c for c in cli("clients", "list", "--json").json()["items"]}
    assert items[created["client_id"]] == {
        "client_id": created["client_id"], "name": name, "is_public": False,
        "grant_types": ["password", "refresh_token"], "scopes": ["openid", "profile"],
        "is_active": True, "redirect_uris": [], "post_logout_redirect_uris": [],
        "is_first_party": True,
    }
    assert items[spa["client_id"]]["is_public"] is True
    assert not [c for c in items.values() if c["name"].startswith("bad-")]

    deleted = cli("clients", "delete", created["client_id"])
    assert deleted.ok().stdout.strip() == f"deleted {created['client_id']}"
    again = cli("clients", "delete", created["client_id"])
    assert again.usage_error() == "error: No such client."


def test_clients_create_for_the_authorization_code_flow(cli: Cli) -> None:
    name = unique("web")
    web, native, bad_http, fragment, bracket = cli.many(
        ["clients", "create", "--name", name, "--grant", "authorization_code", "--grant",
         "refresh_token", "--scope", "openid profile", "--redirect-uri",
         "https://app.example.com/cb", "--redirect-uri", "https://app.example.com/cb2",
         "--post-logout-redirect-uri", "https://app.example.com/bye", "--first-party",
         "--json"],
        ["clients", "create", "--name", unique("native"), "--grant", "authorization_code",
         "--public", "--redirect-uri", "http://127.0.0.1/callback", "--redirect-uri",
         "com.example.app:/oauth", "--json"],
        ["clients", "create", "--name", unique("bad"), "--grant", "authorization_code",
         "--redirect-uri", "http://app.example.com/cb", "--json"],
        ["clients", "create", "--name", unique("bad"), "--grant", "authorization_code",
         "--redirect-uri", "https://app.example.com/cb#frag", "--json"],
        ["clients", "create", "--name", unique("bad"), "--grant", "authorization_code",
         "--public", "--redirect-uri", "https://[::1/cb", "--json"],
    )
    made, app = web.json(), native.json()
    assert bad_http.usage_error() == (
        "error: redirect_uris: http is allowed only for the loopback addresses 127.0.0.1 "
        "and [::1] (RFC 8252 §7.3; use https elsewhere)")
    assert fragment.usage_error() == (
        "error: redirect_uris: a redirect URI may not have a fragment (RFC 6749 §3.1.2)")
    assert bracket.usage_error() == "error: redirect_uris: the URI cannot be parsed"
    items = {c["client_id"]: c for c in cli("clients", "list", "--json").json()["items"]}
    assert items[made["client_id"]]["redirect_uris"] == [
        "https://app.example.com/cb", "https://app.example.com/cb2"]
    assert items[made["client_id"]]["post_logout_redirect_uris"] == [
        "https://app.example.com/bye"]
    assert items[made["client_id"]]["is_first_party"] is True
    assert items[app["client_id"]]["redirect_uris"] == [
        "http://127.0.0.1/callback", "com.example.app:/oauth"]
    assert items[app["client_id"]]["is_first_party"] is False
    assert not [c for c in items.values() if c["name"].startswith("bad-")]
    text = cli("clients", "list").ok().stdout
    assert (f"{made['client_id']}  {name}  confidential first-party  "
            "grants=authorization_code,refresh_token  scope=openid profile  "
            "redirect_uris=https://app.example.com/cb,https://app.example.com/cb2") in text


def test_clients_ensure_dev_twice_prints_the_same_credentials(cli: Cli, tmp_path: Path) -> None:
    dev = cli.with_keys_dir(tmp_path / "keys")
    pattern = re.compile(r"client_id:\s+(\S+)\n\s+client_secret:\s+(\S+)")
    first = pattern.search(dev("clients", "ensure-dev").ok().stdout)
    second = pattern.search(dev("clients", "ensure-dev").ok().stdout)
    assert first is not None and second is not None
    assert first.groups() == second.groups()
    # Swagger UI's Authorize dialog: the password flow and the code flow with PKCE,
    # whose redirect URI is registered (first-party: no consent screen).
    [(grants, redirect_uris, first_party)] = sqlite_rows(
        dev, "SELECT grant_types, redirect_uris, is_first_party FROM clients "
        "WHERE client_id = ?", first.group(1))
    assert json.loads(grants) == ["password", "refresh_token", "authorization_code"]
    assert json.loads(redirect_uris) == ["http://127.0.0.1:8000/docs/oauth2-redirect.html"]
    assert first_party == 1
    saved = tmp_path / "keys" / "dev-client.json"
    assert json.loads(saved.read_text()) == dict(zip(("client_id", "client_secret"),
                                                     first.groups(), strict=True))
    assert os.stat(saved).st_mode & 0o077 == 0


# --- users ----------------------------------------------------------------------------


def count_users(cli: Cli) -> int:
    return int(sqlite_rows(cli, "SELECT count(*) FROM users")[0][0])


def test_users_create_and_its_refusals(cli: Cli) -> None:
    email = f"{unique('Ada')}@Example.com"
    before = count_users(cli)
    created, weak, invalid = cli.many(
        ["users", "create", "--email", email, "--password", PASSWORD, "--json"],
        ["users", "create", "--email", f"{unique('weak')}@example.com", "--password",
         "password", "--json"],
        ["users", "create", "--email", "not-an-email", "--password", PASSWORD],
    )
    user = created.json()
    assert user == {"id": user["id"], "email": email.lower()}
    assert weak.usage_error() == (
        "error: The password is on a list of commonly used or breached passwords; "
        "choose a different one.")
    assert invalid.usage_error().startswith("error: ")
    assert "@" in invalid.stderr
    assert count_users(cli) == before + 1

    duplicate = cli("users", "create", "--email", email.upper(), "--password", PASSWORD)
    assert duplicate.usage_error() == "error: A user with this email already exists."
    assert count_users(cli) == before + 1

    [row] = sqlite_rows(cli, "SELECT is_admin, is_verified, username, password_hash "
                             "FROM users WHERE email = ?", email.lower())
    assert row[:3] == (0, 0, None)
    assert row[3].startswith("$argon2id$")


def test_users_create_without_password_or_terminal_is_refused(cli: Cli) -> None:
    before = count_users(cli)
    refused = cli("users", "create", "--email", f"{unique('c')}@example.com")  # stdin: null
    assert refused.usage_error() == "error: --password is required when stdin is not a terminal"
    assert count_users(cli) == before


def test_users_create_asks_for_the_password_on_a_terminal(cli: Cli) -> None:
    email = f"{unique('typed')}@example.com"
    primary, secondary = pty.openpty()
    # A new session: no controlling terminal, so getpass reads the pseudo-terminal on
    # stdin and prompts on stderr.
    proc = subprocess.Popen(
        [*COMMAND, "users", "create", "--email", email, "--json"], cwd=cli.home,
        env=cli.env(), stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    os.close(secondary)
    assert proc.stderr is not None
    try:
        prompts = b""
        for prompt in (b"Password: ", b"Repeat for confirmation: "):
            # getpass flushes what was typed before its prompt: answer each in turn.
            while not prompts.endswith(prompt):
                ready, _, _ = select.select([proc.stderr], [], [], 60)
                chunk = os.read(proc.stderr.fileno(), 1024) if ready else b""
                assert chunk, f"no prompt {prompt!r}; stderr so far: {prompts!r}"
                prompts += chunk
            os.write(primary, f"{PASSWORD}\n".encode())
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
        os.close(primary)
    assert proc.returncode == 0, stderr
    # The prompts are on stderr: stdout is the one JSON object.
    created = json.loads(stdout)
    assert created == {"id": created["id"], "email": email}


def test_users_create_admin_verified_with_username(cli: Cli) -> None:
    email = f"{unique('root')}@example.com"
    username = unique("root")
    created = cli("users", "create", "--email", email, "--password", PASSWORD,
                  "--username", username, "--admin", "--verified").ok()
    assert created.stdout.startswith("created user ") and email in created.stdout
    [row] = sqlite_rows(cli, "SELECT is_admin, is_verified, username FROM users "
                             "WHERE email = ?", email)
    assert row == (1, 1, username)


# --- PostgreSQL -----------------------------------------------------------------------


@pytest.fixture
def postgres_cli(postgres_server: str | None, tmp_path: Path) -> Iterator[Cli]:
    if postgres_server is None:
        pytest.skip("no PostgreSQL available")
    name = f"provider_cli_{secrets.token_hex(4)}"
    url = create_database(postgres_server, name)
    try:
        yield Cli(tmp_path, url, tmp_path / "keys")
    finally:
        drop_database(postgres_server, name)


def test_create_flow_on_postgresql(postgres_cli: Cli) -> None:
    cli = postgres_cli
    cli("migrate").ok()
    client, user, key = cli.many(
        ["clients", "create", "--name", "pg app", "--first-party", "--grant", "password",
         "--grant", "refresh_token", "--scope", "openid profile", "--json"],
        ["users", "create", "--email", "pg@example.com", "--password", PASSWORD,
         "--verified", "--json"],
        ["keys", "generate", "--json"],
    )
    created = client.json()
    assert set(created) == {"client_id", "client_secret"} and created["client_secret"]
    assert user.json()["email"] == "pg@example.com"
    assert key.json()["status"] == "active"
    duplicate, listed = cli.many(
        ["users", "create", "--email", "pg@example.com", "--password", PASSWORD],
        ["clients", "list", "--json"],
    )
    assert duplicate.usage_error() == "error: A user with this email already exists."
    [item] = listed.json()["items"]
    assert item["client_id"] == created["client_id"]
    assert item["scopes"] == ["openid", "profile"]


def test_serve_with_workers_and_no_redis_is_refused_in_production(
    cli: Cli, tmp_path: Path
) -> None:
    keyed = cli.with_keys_dir(tmp_path / "keys")
    keyed("keys", "generate").ok()
    refused = keyed("serve", "--workers", "2", PROVIDER_ENV="production",
                    PROVIDER_ISSUER="https://id.example.com", PROVIDER_METRICS_PUBLIC="true",
                    PROVIDER_ARGON2_MEMORY_COST="19456", PROVIDER_ARGON2_TIME_COST="2")
    assert refused.usage_error() == (
        "error: --workers 2 without PROVIDER_REDIS_URL: every rate limit would be per "
        "process (2 times looser); set PROVIDER_REDIS_URL or use --workers 1")


@pytest.mark.parametrize(("source", "expected"), [
    ("default", {"PROVIDER_PASSWORD_HASH_CONCURRENCY": "4"}),
    ("environment", {}),
    (".env", {}),
])
def test_serve_shares_the_cores_unless_the_hash_concurrency_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str, expected: dict[str, str],
) -> None:
    """`provider serve --workers 2` on 8 cores: 4 argon2 threads per worker, unless the
    operator set PROVIDER_PASSWORD_HASH_CONCURRENCY, in the environment or in .env (a
    variable set by serve would outrank the .env in every worker)."""
    from provider.cli import share_hash_concurrency
    from provider.settings import Settings

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("PROVIDER_PASSWORD_HASH_CONCURRENCY", raising=False)
    dotenv = tmp_path / ".env"
    dotenv.write_text("PROVIDER_PASSWORD_HASH_CONCURRENCY=3\n" if source == ".env" else "")
    if source == "environment":
        monkeypatch.setenv("PROVIDER_PASSWORD_HASH_CONCURRENCY", "3")
    loaded = Settings(_env_file=dotenv)  # type: ignore[call-arg]
    environ: dict[str, str] = {}
    share_hash_concurrency(loaded, 2, environ)
    assert environ == expected


def test_clients_create_keeps_the_password_grant_for_first_party_clients(cli: Cli) -> None:
    name = unique("third")
    refused = cli("clients", "create", "--name", name, "--grant", "password", "--json")
    assert refused.usage_error() == (
        "error: the password grant is for first-party clients only (RFC 9700 §2.4): "
        "mark the client first-party (is_first_party, or --first-party)")
    names = [c["name"] for c in cli("clients", "list", "--json").json()["items"]]
    assert name not in names
