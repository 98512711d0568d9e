"""The `provider` command line: serve, migrate, openapi, keys, clients, users, purge, check.

Bad arguments exit 2 with a one-line message on stderr, and write nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import click
import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from provider.audit.service import EventType
from provider.clock import SystemClock
from provider.errors import ProviderError
from provider.keys.algorithms import KeyMaterialError
from provider.keys.store import KeyStoreError
from provider.oauth.grants import CLIENT_GRANT_RULES, GRANT_TYPES

T = TypeVar("T")

app = typer.Typer(
    help="provider: an OAuth2 / OIDC-style token provider.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
keys_app = typer.Typer(
    help="Manage signing keys (PROVIDER_KEY_STORE: the PROVIDER_KEYS_DIR directory, or the "
         "database). New keys use PROVIDER_SIGNING_ALG.",
    no_args_is_help=True)
clients_app = typer.Typer(help="Manage OAuth clients.", no_args_is_help=True)
users_app = typer.Typer(help="Manage users.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(clients_app, name="clients")
app.add_typer(users_app, name="users")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_CLIENT_FILE = "dev-client.json"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # provider.metrics reads it


def fail(message: str) -> NoReturn:
    one_line = " ".join(message.split("\n")).strip()
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(2)


def settings() -> Any:
    from provider.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        fail(f"invalid configuration ({where}): {first.get('msg')}")


@contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except ProviderError as exc:
        detail = exc.detail or exc.title
        fail(detail if isinstance(detail, str) else exc.title)
    except (KeyStoreError, KeyMaterialError) as exc:
        fail(str(exc))


@contextmanager
def database_errors(what: str) -> Iterator[None]:
    """A database that cannot be used (connection refused, an unparsable DATABASE_URL, a
    schema that is not there) fails the command with one line: ``what: reason``."""
    from sqlalchemy.exc import ArgumentError, DBAPIError

    try:
        yield
    except (OSError, DBAPIError, ArgumentError) as exc:
        # The driver's own words (never the statement or its parameters), first line only.
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        fail(f"{what}: {reason}")


def in_session(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction: all of it is written, or none of it."""
    from provider.db import create_engine, session_factory

    current = settings()

    async def runner() -> T:
        engine = create_engine(current.database_url, pgbouncer=current.db_pgbouncer)
        try:
            async with session_factory(engine)() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    with friendly_errors(), database_errors("cannot use the database"):
        return asyncio.run(runner())


def emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    typer.echo(json.dumps(data) if as_json else text)


def audit_in(session: AsyncSession, event: Any, **fields: Any) -> None:
    """An audit event of a CLI change, written in the change's own transaction."""
    from provider.audit.models import AuditEvent
    from provider.audit.service import CLI_ACTOR, event_row

    session.add(AuditEvent(**event_row(event=event, actor=CLI_ACTOR, now=SystemClock().now(),
                                       **fields)))


def audit_key_change(event: Any, record: Any) -> None:
    """Key changes in the keys directory (the database store writes its events with the
    change): the event is written after the change, and a database that cannot take it
    only earns a warning."""
    from sqlalchemy import insert

    from provider.audit.models import AuditEvent
    from provider.audit.service import CLI_ACTOR, event_row
    from provider.db import create_engine

    current = settings()
    url = current.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        typer.echo("warning: no database yet; the key change is not in the audit trail",
                   err=True)
        return

    async def write() -> None:
        engine = create_engine(url, pgbouncer=current.db_pgbouncer)
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(AuditEvent), event_row(
                    event=event, actor=CLI_ACTOR, now=SystemClock().now(),
                    details={"kid": record.kid, "status": record.status}))
        finally:
            await engine.dispose()

    try:
        asyncio.run(write())
    except Exception as exc:
        typer.echo(f"warning: the key change is not in the audit trail: "
                   f"{type(exc).__name__}", err=True)


# --- serve, migrate, openapi ---------------------------------------------------------


WORKER_HEALTHCHECK_S = 60


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="Worker processes. More than one needs PROVIDER_REDIS_URL for "
        "rate limits that hold across them (refused in production without it).")] = 1,
) -> None:
    """Serve the HTTP API with uvicorn."""
    import uvicorn

    from provider import wire
    from provider.logs import logging_config

    current = settings()
    records = run_keys(lambda store: store.records())
    if not any(r.status == "active" for r in records):
        fail("no signing key; run `provider keys generate` first")
    if workers > 1 and not current.redis_url:
        # Memory storage lives in each worker: every limit would be N times looser.
        if current.env == "production":
            fail(f"--workers {workers} without PROVIDER_REDIS_URL: every rate limit would be "
                 f"per process ({workers} times looser); set PROVIDER_REDIS_URL or use "
                 "--workers 1")
        # Through the server's own logging, so that it is a JSON line in JSON mode too.
        logging.config.dictConfig(logging_config(current.effective_log_format))
        logging.getLogger("provider").warning(
            "--workers %d without PROVIDER_REDIS_URL: every rate limit is per process, "
            "so %d times looser", workers, workers)
    share_hash_concurrency(current, workers, os.environ)
    # uvicorn's access log is off: provider.middleware writes ours.
    # One process is its own metrics; workers share theirs through a directory.
    shared = metrics_directory() if workers > 1 else nullcontext()
    with workers_skip_main(), shared:
        uvicorn.run("provider.app:create_app", factory=True, host=host, port=port,
                    workers=workers, access_log=False, proxy_headers=False,
                    server_header=False, http=wire.PROTOCOL,
                    log_config=logging_config(current.effective_log_format),
                    # uvicorn kills a worker that has not answered its supervisor within
                    # this (5 s by default): on a busy host, start-up alone can take
                    # longer, and the worker would be killed and restarted over and over.
                    timeout_worker_healthcheck=WORKER_HEALTHCHECK_S)


def share_hash_concurrency(current: Any, workers: int, environ: MutableMapping[str, str]
                           ) -> None:
    """argon2 is CPU-bound: share the cores out among the workers (they read their
    settings from ``environ``) unless the operator chose PROVIDER_PASSWORD_HASH_CONCURRENCY,
    in the environment or in .env. Asked of the loaded settings, not of ``environ``: a
    value in .env is not in it, and a variable set here would outrank it."""
    if "password_hash_concurrency" in current.model_fields_set:
        return
    environ["PROVIDER_PASSWORD_HASH_CONCURRENCY"] = str(max(1, (os.cpu_count() or 1) // workers))


@contextmanager
def workers_skip_main() -> Iterator[None]:
    """uvicorn starts workers with multiprocessing's "spawn", which first re-imports the
    main script (this CLI and everything it imports) in each worker, before the worker
    can answer uvicorn's health check: on a loaded machine that took longer and
    workers were killed during start-up. Workers need nothing from ``__main__`` (the app
    is imported by name), so hide it from multiprocessing while the server runs."""
    main_module = sys.modules["__main__"]
    saved: dict[str, Any] = {name: main_module.__dict__[name]
                             for name in ("__file__", "__spec__") if name in main_module.__dict__}
    main_module.__dict__.pop("__file__", None)
    main_module.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main_module.__dict__.pop("__spec__", None)
        main_module.__dict__.update(saved)


@contextmanager
def metrics_directory() -> Iterator[Path]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for this server's processes, removed when it
    stops: one scrape of any worker then counts every worker's requests, and counts of an
    earlier run never come back. prometheus_client picks its mode when it is imported:
    the spawned workers import it afresh and see this directory; this process already
    has, in its own mode, so a single in-process worker goes without one (its metrics
    are its own)."""
    path = Path(tempfile.mkdtemp(prefix="provider-metrics-"))
    previous = os.environ.get(MULTIPROC_DIR_ENV)
    os.environ[MULTIPROC_DIR_ENV] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
        else:
            os.environ[MULTIPROC_DIR_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def alembic_config(database_url: str, *, pgbouncer: bool = False) -> Any:
    from alembic.config import Config

    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["pgbouncer"] = pgbouncer
    return config


@app.command()
def migrate() -> None:
    """Upgrade the database (DATABASE_URL) to the newest schema."""
    from alembic import command
    from alembic.util import CommandError

    current = settings()
    with database_errors("cannot migrate the database"):
        try:
            command.upgrade(alembic_config(current.database_url,
                                           pgbouncer=current.db_pgbouncer), "head")
        except CommandError as exc:  # e.g. stamped with a revision this code does not know
            fail(f"cannot migrate the database: {exc}")
    typer.echo("database is at the newest revision")


@app.command()
def openapi(
    write: Annotated[bool, typer.Option("--write", help="Update openapi.yaml.")] = False,
) -> None:
    """Print the OpenAPI document as YAML (or write openapi.yaml)."""
    from provider.openapi import render_openapi

    text = render_openapi()
    if write:
        (REPO_ROOT / "openapi.yaml").write_text(text)
        typer.echo("wrote openapi.yaml")
    else:
        sys.stdout.write(text)


# --- keys -----------------------------------------------------------------------------


class RecordingStore:
    """The configured key store, remembering the changes a command made (for the audit
    trail of the directory store, which cannot write events with its changes)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.description: str = store.description
        self.changes: list[Any] = []

    async def version(self) -> Any:
        return await self.store.version()

    async def records(self) -> Any:
        return await self.store.records()

    async def private_keys(self, records: Any) -> Any:
        return await self.store.private_keys(records)

    async def apply(self, planner: Any, *, actor: str, now: Any = None) -> Any:
        change = await self.store.apply(planner, actor=actor, now=now)
        if change is not None:
            self.changes.append(change)
        return change


def run_keys(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work`` on the configured key store (PROVIDER_KEY_STORE); afterwards, audit
    events of the directory store's changes are written."""
    from provider.db import create_engine
    from provider.keys.store import DatabaseKeyStore, DirectoryKeyStore, load_secret_key

    current = settings()
    recording: list[RecordingStore] = []

    async def runner() -> T:
        engine = None
        if current.key_store == "database":
            secret = load_secret_key(
                current.secret_key.get_secret_value() if current.secret_key else None,
                current.keys_dir)
            engine = create_engine(current.database_url, pgbouncer=current.db_pgbouncer)
            store: Any = DatabaseKeyStore(engine, secret)
        else:
            store = DirectoryKeyStore(current.keys_dir)
        recording.append(RecordingStore(store))
        try:
            return await work(recording[0])
        finally:
            if engine is not None:
                await engine.dispose()

    with friendly_errors(), database_errors(f"cannot reach the key store ({current.key_store})"):
        result = asyncio.run(runner())
    for change in recording[0].changes if recording else []:
        if not change.events_written:
            for event, record in change.events:
                audit_key_change(event, record)
    return result


def key_line(record: Any) -> str:
    when = record.created_at.strftime("%Y-%m-%d %H:%M")
    return f"{record.kid}  {record.status:<9}  {record.alg:<5}  created {when}"


@keys_app.command("generate")
def keys_generate(
    if_missing: Annotated[bool, typer.Option(
        "--if-missing", help="Do nothing when a signing key exists.")] = False,
    activate: Annotated[bool, typer.Option(
        "--activate", help="Sign with the new key at once. While another key signs, this "
        "needs --now too: resource servers that cached the JWKS refuse its tokens until "
        "they fetch it again (prefer `keys rotate` later).")] = False,
    now: Annotated[bool, typer.Option(
        "--now", help="With --activate: switch the signing key at once (after a "
        "compromise).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a key for PROVIDER_SIGNING_ALG (RSA-2048, EC P-256 or Ed25519). The first key
    signs; later ones are published for a later `keys rotate` (so resource servers learn
    them before they are used)."""
    from provider.keys.lifecycle import generate_key

    current = settings()
    if activate and not now:
        refuse_unpublished_switch()

    async def work(store: Any) -> tuple[Any, bool]:
        if if_missing:
            active = next((r for r in await store.records() if r.status == "active"), None)
            if active is not None:
                return active, False
        record = await generate_key(store, current.signing_alg, now=SystemClock().now(),
                                    actor="cli", activate=True if activate else None)
        return record, True

    record, created = run_keys(work)
    if not created:
        emit(as_json, {"kid": record.kid, "status": record.status, "created": False},
             f"signing key present: {record.kid}")
        return
    emit(as_json, {"kid": record.kid, "status": record.status, "created": True},
         f"generated {record.kid} ({record.status}, {record.alg})")


def refuse_unpublished_switch() -> None:
    """--activate while another key signs switches to a key no resource server has seen:
    like `keys rotate` before the publish wait, it needs --now (README, "Signing keys")."""

    async def active_kid(store: Any) -> str | None:
        return next((r.kid for r in await store.records() if r.status == "active"), None)

    active = run_keys(active_kid)
    if active is not None:
        fail(f"{active} signs now: --activate would switch to a key that resource servers "
             "have not fetched yet, and they would refuse its tokens until their JWKS cache "
             "expires. Leave out --activate and run `provider keys rotate` once the key has "
             "been published for PROVIDER_JWKS_MAX_AGE plus PROVIDER_KEY_PUBLISH_MARGIN; "
             "or add --now (after a compromise)")


@keys_app.command("rotate")
def keys_rotate(
    now: Annotated[bool, typer.Option(
        "--now", help="Activate at once, even a key published too recently or a brand-new "
        "one (after a compromise): resource servers refuse its tokens until they fetch "
        "the JWKS again.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Sign with the newest published key. Refused (exit 2, saying why) while it has been
    published for less than PROVIDER_JWKS_MAX_AGE plus PROVIDER_KEY_PUBLISH_MARGIN, or
    when no key is published ahead, unless --now. The previous key stays in the JWKS
    until tokens it signed have expired."""
    from provider.keys.lifecycle import rotate

    current = settings()
    record = run_keys(lambda store: rotate(
        store, alg=current.signing_alg, now=SystemClock().now(),
        lead=current.key_publish_lead, actor="cli", force=now))
    emit(as_json, {"kid": record.kid, "status": record.status},
         f"now signing with {record.kid}")


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
              ) -> None:
    """List keys with their state: active (signs), published (in JWKS), retired."""
    records = run_keys(lambda store: store.records())
    if as_json:
        typer.echo(json.dumps({"keys": [r.to_json() for r in records]}))
    else:
        for record in records:
            typer.echo(key_line(record))
        if not records:
            typer.echo("no keys; run `provider keys generate`")


@keys_app.command("retire")
def keys_retire(kid: Annotated[str, typer.Argument(
                    help="The key id (kid) to retire; put -- before one that begins with -.")],
                ) -> None:
    """Remove a key from the JWKS for good (its private half is deleted): tokens it signed
    stop verifying everywhere."""
    from provider.keys.lifecycle import retire

    record = run_keys(lambda store: retire(store, kid, now=SystemClock().now(),
                                           actor="cli"))
    typer.echo(f"retired {record.kid}")


@keys_app.command("import")
def keys_import(
    path: Annotated[Path, typer.Argument(
        help="A private key (PEM: RSA >= 2048 bits, EC P-256 or Ed25519), or a key set "
             "directory written by `keys export` (or a PROVIDER_KEYS_DIR).")],
    activate: Annotated[bool, typer.Option(
        "--activate", help="Sign with the imported PEM key at once. While another key "
        "signs, this needs --now too (resource servers that cached the JWKS refuse its "
        "tokens until they fetch it again).")] = False,
    now: Annotated[bool, typer.Option(
        "--now", help="With --activate: switch the signing key at once (after a "
        "compromise).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Import an existing private key, or a whole key set with its states into an empty
    key store (moving between the directory and database stores)."""
    from provider.keys.algorithms import algorithm_for, parse_private_pem
    from provider.keys.lifecycle import add_key, import_keys

    current = settings()
    if path.is_dir():
        if activate:
            fail("--activate applies to a single PEM file; a key set keeps its states")
        records = run_keys(lambda store: import_keys(store, path, now=SystemClock().now(),
                                                     actor="cli"))
        emit(as_json, {"imported": len(records)},
             f"imported {len(records)} keys from {path}")
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    with friendly_errors():
        key = parse_private_pem(data)
    if activate and not now:
        refuse_unpublished_switch()
    alg = algorithm_for(key, current.signing_alg)
    record = run_keys(lambda store: add_key(store, key, alg, now=SystemClock().now(),
                                            actor="cli", activate=True if activate else None))
    emit(as_json, {"kid": record.kid, "status": record.status},
         f"imported {record.kid} ({record.status}, {record.alg})")


@keys_app.command("export")
def keys_export(
    directory: Annotated[Path, typer.Argument(
        help="An empty or new directory: it becomes a keys directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write every key with its state as a keys directory (PEM files, keys.json; owner
    only), for `keys import` into another store or as a PROVIDER_KEYS_DIR. It holds
    private keys: keep it as secret as the store."""
    from provider.keys.lifecycle import export_keys

    records = run_keys(lambda store: export_keys(store, directory))
    emit(as_json, {"exported": len(records)},
         f"exported {len(records)} keys to {directory}")


# --- clients --------------------------------------------------------------------------


@clients_app.command("create")
def clients_create(
    name: Annotated[str, typer.Option(help="A name people will recognise.")],
    grant: Annotated[list[str], typer.Option(
        help=f"Allowed grant type (repeat): {', '.join(GRANT_TYPES)}.")],
    scope: Annotated[str, typer.Option(help="Allowed scopes, space-separated.")] = "",
    public: Annotated[bool, typer.Option("--public", help="No secret (native/SPA).")] = False,
    redirect_uri: Annotated[list[str] | None, typer.Option(
        "--redirect-uri", help="Authorization code flow: a redirect URI (repeat), matched "
        "exactly; https, http on 127.0.0.1 or [::1] (any port), or a private-use scheme "
        "(com.example.app:/callback).")] = None,
    post_logout_redirect_uri: Annotated[list[str] | None, typer.Option(
        "--post-logout-redirect-uri",
        help="Where /oauth/logout may return to (repeat), matched exactly.")] = None,
    first_party: Annotated[bool, typer.Option(
        "--first-party", help="A client of ours: the login page asks no consent for it "
        "(except a public one on a loopback or private-use redirect, RFC 8252 §8.6); "
        "required for the password grant (RFC 9700 §2.4)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a client. Its secret is printed once and stored only as a digest."""
    from provider.clients.service import create_client

    async def work(session: AsyncSession) -> tuple[str, str | None]:
        client, secret = await create_client(
            session, name=name, grant_types=grant, scopes=[scope], is_public=public,
            now=SystemClock().now(), grant_rules=CLIENT_GRANT_RULES,
            redirect_uris=redirect_uri or [],
            post_logout_redirect_uris=post_logout_redirect_uri or [],
            is_first_party=first_party,
        )
        audit_in(session, EventType.CLIENT_CREATED, client_id=client.client_id)
        return client.client_id, secret

    client_id, secret = in_session(work)
    text = f"client_id:     {client_id}"
    if secret:
        text += f"\nclient_secret: {secret}\n(the secret is shown only now)"
    emit(as_json, {"client_id": client_id, "client_secret": secret}, text)


@clients_app.command("list")
def clients_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
                 ) -> None:
    """List clients."""
    from provider.clients.service import list_clients

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        clients = await list_clients(session, limit=10_000)
        return [{"client_id": c.client_id, "name": c.name, "is_public": c.is_public,
                 "grant_types": c.grant_types, "scopes": c.scopes, "is_active": c.is_active,
                 "redirect_uris": c.redirect_uris,
                 "post_logout_redirect_uris": c.post_logout_redirect_uris,
                 "is_first_party": c.is_first_party}
                for c in clients]

    items = in_session(work)
    if as_json:
        typer.echo(json.dumps({"items": items}))
        return
    for c in items:
        kind = "public" if c["is_public"] else "confidential"
        if c["is_first_party"]:
            kind += " first-party"
        state = "" if c["is_active"] else "  (disabled)"
        redirects = (f"  redirect_uris={','.join(c['redirect_uris'])}"
                     if c["redirect_uris"] else "")
        typer.echo(f"{c['client_id']}  {c['name']}  {kind}  grants={','.join(c['grant_types'])}"
                   f"  scope={' '.join(c['scopes'])}{redirects}{state}")


@clients_app.command("delete")
def clients_delete(client_id: Annotated[str, typer.Argument(help="The client to delete.")],
                   ) -> None:
    """Delete a client and every refresh token issued to it."""
    from provider.clients.service import delete_client

    async def work(session: AsyncSession) -> None:
        await delete_client(session, client_id)
        audit_in(session, EventType.CLIENT_DELETED, client_id=client_id)

    in_session(work)
    typer.echo(f"deleted {client_id}")


@clients_app.command("ensure-dev")
def clients_ensure_dev() -> None:
    """Create the development client for Swagger UI if it is missing, and print it.

    Its credentials are kept in PROVIDER_KEYS_DIR/dev-client.json (git-ignored) so that
    `make run` can show them again. It may use the password grant and the authorization
    code flow with PKCE, whose redirect URI is Swagger UI's
    PROVIDER_ISSUER/docs/oauth2-redirect.html (registered on an existing dev client
    too), with the scopes openid, profile, email, account and admin (`account` is added
    to an existing dev client too). First-party: no consent screen. Not for production.
    """
    from provider.clients.service import create_client, get_client
    from provider.docs import SWAGGER_REDIRECT_PATH
    from provider.oauth.scopes import ACCOUNT

    current = settings()
    if current.env == "production":
        fail("the dev client is not created when PROVIDER_ENV=production")
    path = current.keys_dir / DEV_CLIENT_FILE
    saved = None
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            saved = None
    redirect_uri = current.issuer + SWAGGER_REDIRECT_PATH
    grants = ["password", "refresh_token", "authorization_code"]

    async def work(session: AsyncSession) -> dict[str, str]:
        if saved:
            try:
                client = await get_client(session, saved["client_id"])
            except ProviderError:
                client = None
            if client is not None:
                # A dev client of an earlier version: give it the code flow too.
                if redirect_uri not in client.redirect_uris:
                    client.redirect_uris = [*client.redirect_uris, redirect_uri]
                missing = [g for g in grants if g not in client.grant_types]
                if missing:
                    client.grant_types = [*client.grant_types, *missing]
                if ACCOUNT not in client.scopes:
                    client.scopes = [*client.scopes, ACCOUNT]
                client.is_first_party = True
                await session.flush()
                return dict(saved)
        client, secret = await create_client(
            session, name="Swagger UI (development)", grant_types=grants,
            scopes=["openid profile email account admin"], is_public=False, now=SystemClock().now(),
            grant_rules=CLIENT_GRANT_RULES, redirect_uris=[redirect_uri],
            is_first_party=True,
        )
        return {"client_id": client.client_id, "client_secret": secret or ""}

    creds = in_session(work)
    if creds != saved:
        current.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Private from its first byte: created 0600 (and made so when it was not).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(creds))
    typer.echo(
        "Development client for Swagger UI (Authorize -> client_id / client_secret):\n"
        f"  client_id:     {creds['client_id']}\n  client_secret: {creds['client_secret']}\n"
        f"  redirect_uri:  {redirect_uri} (authorization code + PKCE)"
    )


# --- users ----------------------------------------------------------------------------


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="Email address (the login name).")],
    password: Annotated[str | None, typer.Option(
        help="Password (checked against the password policy). Asked for when left out "
        "(keeps it out of shell history), which needs stdin to be a terminal.")] = None,
    username: Annotated[str | None, typer.Option(help="Optional unique username.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Give the admin role.")] = False,
    verified: Annotated[bool, typer.Option(
        "--verified", help="Mark the email as verified.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a user."""
    from provider.passwords import PasswordHasher
    from provider.users.service import create_user

    if password is None:
        # Without a terminal the prompt would read a script's stdin (or end of file).
        if not sys.stdin.isatty():
            fail("--password is required when stdin is not a terminal")
        # On stderr: with --json, stdout holds the one JSON object only.
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True,
                                err=True)
    chosen: str = password
    current = settings()

    async def work(session: AsyncSession) -> tuple[str, str]:
        user = await create_user(
            session, PasswordHasher(current), email=email, password=chosen,
            min_password_length=current.password_min_length, now=SystemClock().now(),
            username=username, is_admin=admin, is_verified=verified,
        )
        audit_in(session, EventType.USER_CREATED, subject_user_id=user.id,
                 details={"fields": ["email", "password"] + [
                     name for name, given in (("username", username), ("is_admin", admin),
                                              ("is_verified", verified)) if given]})
        return str(user.id), user.email

    user_id, normalized = in_session(work)
    emit(as_json, {"id": user_id, "email": normalized}, f"created user {user_id} ({normalized})")


@users_app.command("mfa-reset")
def users_mfa_reset(
    email: Annotated[str, typer.Argument(help="The user's email address.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Remove a user's two-step verification (TOTP and recovery codes), e.g. after a lost
    phone: the user is emailed and every session of theirs ends. Refused, with nothing
    changed, when no mail can be sent (PROVIDER_SMTP_URL malformed, or unset in
    production); a mail that fails after the reset only earns a warning."""
    from sqlalchemy import select

    from provider.mail import MailError, MailSender, make_sender
    from provider.mail import templates as mail
    from provider.mfa.service import remove_mfa
    from provider.tokens.revocation import end_user_sessions
    from provider.users.accounts import PRODUCT
    from provider.users.models import User
    from provider.users.service import UserNotFound, normalize_email

    current = settings()
    senders: list[MailSender] = []

    async def work(session: AsyncSession) -> tuple[str, str, bool]:
        user = await session.scalar(select(User).where(User.email == normalize_email(email)))
        if user is None:
            raise UserNotFound(f"no user with the email address {email}")
        conn = await session.connection()
        was_enabled = await remove_mfa(conn, user.id)
        if was_enabled:
            # Before the commit: a sender that cannot be built (production without
            # PROVIDER_SMTP_URL, a malformed one) must undo the reset, or the notice
            # would be lost for good (a second run finds nothing to reset).
            try:
                senders.append(make_sender(current))
            except (RuntimeError, ValueError) as exc:
                fail(f"cannot email the user, nothing changed: {exc}")
            await end_user_sessions(conn, user.id, now=SystemClock().now())
        audit_in(session, EventType.MFA_RESET, subject_user_id=user.id,
                 details={"mfa_enabled": was_enabled})
        return str(user.id), user.email, was_enabled

    user_id, address, was_enabled = in_session(work)
    if was_enabled:
        # After the commit, like every mail: a failed mail does not undo the reset.
        try:
            asyncio.run(senders[0].send(mail.mfa_reset(address, product=PRODUCT)))
        except MailError as exc:
            typer.echo(f"warning: the user could not be emailed: {exc}", err=True)
    emit(as_json, {"id": user_id, "email": address, "mfa_was_enabled": was_enabled},
         f"two-step verification removed for {address}; every session ended" if was_enabled
         else f"{address} had no two-step verification; nothing changed")


# --- purge ------------------------------------------------------------------------------


@app.command()
def purge(
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Delete dead rows: expired sessions and sessions revoked longer ago than an access
    token lives (with their refresh tokens), used or expired email codes, expired
    denylist entries, audit events older than PROVIDER_AUDIT_RETENTION. In batches of
    PROVIDER_PURGE_BATCH_SIZE rows, resting between them so that it works at most
    PROVIDER_PURGE_SHARE of the time (and at least PROVIDER_PURGE_PAUSE); on PostgreSQL
    one purge runs at a time (a second one does nothing and says so)."""
    from provider.db import create_engine, single_statement_engine
    from provider.purge import Purger, PurgeReport

    current = settings()

    async def run() -> PurgeReport:
        engine = create_engine(current.database_url, pool_size=2,
                               pgbouncer=current.db_pgbouncer)
        try:
            purger = Purger(engine, single_statement_engine(engine), current, SystemClock())
            return await purger.run(dry_run=dry_run)
        finally:
            await engine.dispose()

    with database_errors("cannot purge the database"):
        report = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps(report.to_json()))
        return
    if not report.ran:
        typer.echo("another purge is running; nothing done")
        return
    verb = "would delete" if dry_run else "deleted"
    for table, count in report.counts.items():
        typer.echo(f"{verb} {count} {table}")


# --- check ------------------------------------------------------------------------------


@app.command()
def check(
    processes: Annotated[int, typer.Option(
        min=1, help="Server processes that will serve, on all hosts together (more than "
        "one needs a shared Redis).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check this deployment's configuration, keys, database and Redis: each finding has
    an id, a level (error or warning) and a fix. Exit 1 when there is an error."""
    from provider.check import run_checks, settings_findings
    from provider.settings import Settings

    current, findings = settings_findings(Settings)
    if current is not None:
        findings = asyncio.run(run_checks(current, processes=processes))
    errors = sum(f.level == "error" for f in findings)
    warnings = len(findings) - errors
    if as_json:
        typer.echo(json.dumps({"ok": errors == 0, "errors": errors, "warnings": warnings,
                               "findings": [f.to_json() for f in findings]}))
    else:
        for finding in findings:
            typer.echo(f"{finding.level.upper():<7} {finding.id}: {finding.message}")
            typer.echo(f"        fix: {finding.fix}")
        typer.echo(f"{errors} error(s), {warnings} warning(s)" if findings
                   else "no issues found")
    if errors:
        raise typer.Exit(1)


def main() -> None:
    # standalone_mode=False: usage errors reach us as exceptions, so we print them as one
    # `error: ...` line instead of Click's usage block. Typer >= 0.20 vendors its own Click
    # (its exceptions derive from typer.TyperException, not click.ClickException), so
    # both families are caught.
    try:
        code = app(standalone_mode=False)
    except (click.exceptions.Abort, typer.Abort):
        typer.echo("aborted", err=True)
        sys.exit(1)
    except (click.exceptions.ClickException, typer.TyperException) as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `provider keys` alone: show help
            typer.echo(exc.format_message(), err=True)
            sys.exit(2)
        lines = exc.format_message().strip().splitlines()
        typer.echo(f"error: {lines[0] if lines else type(exc).__name__}", err=True)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except (typer.Exit, click.exceptions.Exit) as exc:
        sys.exit(exc.exit_code)
    # Without standalone mode a command's `raise typer.Exit(2)` comes back as a return
    # value: it must still become the process's exit status.
    sys.exit(code if isinstance(code, int) else 0)
