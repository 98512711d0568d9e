"""OAuth clients: creation, secrets, and the in-process cache the token path reads.

Client secrets are 256-bit random values, stored as SHA-256 digests and compared in
constant time. They are machine-generated, so a slow hash would buy nothing but latency.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from provider.clients.models import Client
from provider.clients.redirect_uris import check_redirect_uris
from provider.errors import NotFound, ValidationFailed
from provider.pagination import decode_cursor, encode_cursor
from provider.tokens.revocation import end_client_sessions

# Grant type -> whether a public client may be allowed it. The token endpoint's grant
# registry (provider.oauth.grants.CLIENT_GRANT_RULES) is the one source; callers pass it.
GrantRules = Mapping[str, bool]
# RFC 6749 §3.3 scope-token: printable ASCII except space, quote and backslash.
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]{1,64}$")
CLIENT_ID_PREFIX = "cl_"


class ClientNotFound(NotFound):
    code = "client_not_found"
    title = "No such client."


@dataclass(frozen=True)
class ClientInfo:
    """What the token path needs of a client, immutable and cacheable."""

    client_id: str
    secret_hash: bytes | None
    is_public: bool
    grant_types: frozenset[str]
    scopes: tuple[str, ...]
    is_active: bool
    name: str = ""
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    is_first_party: bool = False

    def check_secret(self, secret: str) -> bool:
        if self.secret_hash is None:
            return False
        return hmac.compare_digest(hash_secret(secret), self.secret_hash)

    @classmethod
    def of(cls, client: Client) -> ClientInfo:
        return cls(
            client_id=client.client_id,
            secret_hash=client.secret_hash,
            is_public=client.is_public,
            grant_types=frozenset(client.grant_types),
            scopes=tuple(client.scopes),
            is_active=client.is_active,
            name=client.name,
            redirect_uris=tuple(client.redirect_uris or ()),
            post_logout_redirect_uris=tuple(client.post_logout_redirect_uris or ()),
            is_first_party=client.is_first_party,
        )


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def generate_client_id() -> str:
    # A prefix that no user id (a UUID) can have: client and user `sub`s never collide
    # (RFC 9700 §4.15).
    return CLIENT_ID_PREFIX + secrets.token_urlsafe(16)


def generate_secret() -> str:
    return secrets.token_urlsafe(32)


def validate_grant_types(
    grant_types: Iterable[str], *, is_public: bool, rules: GrantRules
) -> list[str]:
    chosen = list(dict.fromkeys(grant_types))
    if not chosen:
        raise ValidationFailed("at least one grant type is required")
    unknown = [g for g in chosen if g not in rules]
    if unknown:
        raise ValidationFailed(
            f"unknown grant type {unknown[0]!r}; choose from {', '.join(rules)}"
        )
    confidential_only = [g for g in chosen if not rules[g]]
    if is_public and confidential_only:
        # A public client has no secret to prove who it is.
        raise ValidationFailed(f"a public client cannot use {confidential_only[0]}")
    return chosen


def check_first_party(grant_types: Iterable[str], *, is_first_party: bool) -> None:
    """The password grant hands the user's password to the client: ours only (RFC 9700
    §2.4)."""
    if "password" in grant_types and not is_first_party:
        raise ValidationFailed(
            "the password grant is for first-party clients only (RFC 9700 §2.4): "
            "mark the client first-party (is_first_party, or --first-party)")


def validate_scopes(scopes: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(s for scope in scopes for s in scope.split()))
    bad = [s for s in chosen if not SCOPE_TOKEN.fullmatch(s)]
    if bad:
        raise ValidationFailed(f"invalid scope token {bad[0]!r}")
    return chosen


def _checked_name(name: str) -> str:
    """A client's name as people will see it (the consent page, lists, the CLI): 1 to 200
    characters once stripped, none of them a control character (a terminal would obey
    an escape sequence in it)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ValidationFailed("name must be 1 to 200 characters")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ValidationFailed("name must not contain control characters")
    return name


async def create_client(
    session: AsyncSession,
    *,
    name: str,
    grant_types: Sequence[str],
    scopes: Sequence[str],
    is_public: bool,
    now: datetime,
    grant_rules: GrantRules,
    redirect_uris: Sequence[str] = (),
    post_logout_redirect_uris: Sequence[str] = (),
    is_first_party: bool = False,
) -> tuple[Client, str | None]:
    """Create a client; return it with its secret (None for public clients), shown once."""
    name = _checked_name(name)
    chosen_grants = validate_grant_types(grant_types, is_public=is_public, rules=grant_rules)
    check_first_party(chosen_grants, is_first_party=is_first_party)
    secret = None if is_public else generate_secret()
    client = Client(
        client_id=generate_client_id(),
        secret_hash=hash_secret(secret) if secret else None,
        name=name,
        is_public=is_public,
        grant_types=chosen_grants,
        scopes=validate_scopes(scopes),
        is_active=True,
        redirect_uris=check_redirect_uris(redirect_uris),
        post_logout_redirect_uris=check_redirect_uris(
            post_logout_redirect_uris, field="post_logout_redirect_uris"),
        is_first_party=is_first_party,
        created_at=now,
        updated_at=now,
    )
    session.add(client)
    await session.flush()
    return client, secret


async def get_client(session: AsyncSession, client_id: str) -> Client:
    client = await session.get(Client, client_id)
    if client is None:
        raise ClientNotFound()
    return client


async def list_clients(
    session: AsyncSession, *, after: str | None = None, limit: int = 100
) -> list[Client]:
    query = select(Client).order_by(Client.client_id).limit(limit)
    if after is not None:
        query = query.where(Client.client_id > after)
    return list((await session.scalars(query)).all())


async def list_clients_page(
    session: AsyncSession, *, cursor: str | None = None, limit: int = 50
) -> tuple[list[Client], str | None]:
    """One page of clients ordered by client_id, and the cursor of the next page."""
    after = decode_cursor(cursor, 1)[0] if cursor is not None else None
    page = await list_clients(session, after=after, limit=limit + 1)
    if len(page) <= limit:
        return page, None
    page = page[:limit]
    return page, encode_cursor(page[-1].client_id)


CLIENT_EDITABLE_FIELDS = frozenset({"name", "grant_types", "scopes", "is_active",
                                    "redirect_uris", "post_logout_redirect_uris",
                                    "is_first_party"})


async def update_client(
    session: AsyncSession, client_id: str, changes: dict[str, Any], *, now: datetime,
    grant_rules: GrantRules,
) -> Client:
    """Apply a partial update; only CLIENT_EDITABLE_FIELDS may be in ``changes``.

    ``is_public`` and the secret are not editable: a client changes kind by being
    recreated, and its secret only by rotation. Deactivating a client ends all its
    sessions for good: their refresh and access tokens stop working, and reactivating
    the client revives none of them.
    """
    unknown = sorted(set(changes) - CLIENT_EDITABLE_FIELDS)
    if unknown:  # the wire schema forbids these already; this guards other callers
        raise ValidationFailed(f"{unknown[0]!r} cannot be changed")
    client = await get_client(session, client_id)
    values = dict(changes)
    if "name" in values:
        values["name"] = _checked_name(values["name"])
    if "grant_types" in values:
        values["grant_types"] = validate_grant_types(
            values["grant_types"], is_public=client.is_public, rules=grant_rules
        )
    check_first_party(values.get("grant_types", client.grant_types),
                      is_first_party=values.get("is_first_party", client.is_first_party))
    if "scopes" in values:
        values["scopes"] = validate_scopes(values["scopes"])
    if "redirect_uris" in values:
        values["redirect_uris"] = check_redirect_uris(values["redirect_uris"])
    if "post_logout_redirect_uris" in values:
        values["post_logout_redirect_uris"] = check_redirect_uris(
            values["post_logout_redirect_uris"], field="post_logout_redirect_uris")
    changed = {name: value for name, value in values.items() if getattr(client, name) != value}
    if changed:
        for name, value in changed.items():
            setattr(client, name, value)
        if changed.get("is_active") is True:
            # What the deactivation ended stays ended (sessions are revoked below when it
            # happens; the client's own tokens by this instant and the deactivation's).
            client.reactivated_at = now
        elif changed.get("is_active") is False:
            client.deactivated_at = now
        client.updated_at = now
        await session.flush()
    if values.get("is_active") is False:
        # Also when already inactive: nothing issued since may survive.
        await end_client_sessions(await session.connection(), client_id, now=now)
    return client


async def rotate_secret(session: AsyncSession, client_id: str, *, now: datetime) -> str:
    client = await get_client(session, client_id)
    if client.is_public:
        raise ValidationFailed("a public client has no secret")
    secret = generate_secret()
    client.secret_hash = hash_secret(secret)
    client.updated_at = now
    await session.flush()
    return secret


async def delete_client(session: AsyncSession, client_id: str) -> None:
    """Delete a client; its sessions and their refresh tokens go with it (ON DELETE CASCADE)."""
    client = await get_client(session, client_id)
    await session.delete(client)
    await session.flush()


class ClientCache:
    """Clients by id for the token path, kept for a few seconds per process.

    A change made by another process (secret rotation, deactivation) takes effect here
    within ``ttl_seconds``; changes made through this process take effect at once.
    Concurrent misses of one client share a single query: without that, every expiry
    sent all in-flight requests of a worker to the database at once (bench/README.md).
    """

    def __init__(self, engine: AsyncEngine, ttl_seconds: float = 5.0) -> None:
        self._engine = engine
        self._ttl = ttl_seconds
        self._entries: dict[str, tuple[float, ClientInfo | None]] = {}
        self._loading: dict[str, asyncio.Future[ClientInfo | None]] = {}
        # Bumped by invalidate(): a load that began before it must not be cached.
        self._generation = 0

    async def get(self, client_id: str) -> ClientInfo | None:
        hit = self._entries.get(client_id)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        loading = self._loading.get(client_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load(client_id))
            self._loading[client_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(client_id, None))
        # shield: one caller going away must not cancel the others' query.
        return await asyncio.shield(loading)

    async def _load(self, client_id: str) -> ClientInfo | None:
        generation, started = self._generation, time.monotonic()
        table = Client.__table__
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.client_id == client_id))).first()
        info = (
            ClientInfo(
                client_id=row.client_id,
                secret_hash=row.secret_hash,
                is_public=row.is_public,
                grant_types=frozenset(row.grant_types),
                scopes=tuple(row.scopes),
                is_active=row.is_active,
                name=row.name,
                redirect_uris=tuple(row.redirect_uris or ()),
                post_logout_redirect_uris=tuple(row.post_logout_redirect_uris or ()),
                is_first_party=row.is_first_party,
            )
            if row is not None
            else None
        )
        if generation == self._generation:
            if len(self._entries) > 10_000:  # unknown ids must not grow memory without bound
                self._entries.clear()
            self._entries[client_id] = (started, info)
        return info

    def invalidate(self, client_id: str | None = None) -> None:
        self._generation += 1
        if client_id is None:
            self._entries.clear()
        else:
            self._entries.pop(client_id, None)


def invalidate_on_commit(session: AsyncSession, cache: ClientCache, client_id: str) -> None:
    """Drop a changed client from this process's cache now and again after the commit.

    Dropping it only now would let a token request that arrives before the commit cache
    the old row (old secret, still active) for the cache's whole TTL.
    """
    cache.invalidate(client_id)
    event.listen(
        session.sync_session, "after_commit", lambda _session: cache.invalidate(client_id),
        once=True,
    )
