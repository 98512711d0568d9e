"""Client authentication at the token, revocation and introspection endpoints.

RFC 6749 §2.3.1: ``client_secret_basic`` (form-urlencoded id and secret in the
Authorization header) or ``client_secret_post``; never both, never in the query
string. Public clients (``none``) identify themselves with ``client_id`` alone.

Brute force (§2.3.1 MUST): failures are throttled per (client_id, address) and per
address (an IPv6 client's being its /64), so a client attacked from one address keeps
working from others. The secret is compared first (a SHA-256 in memory), but its
verdict leaves the process only through one atomic throttle decision: a wrong secret
must win a failure slot (limits' hit) to be told 401, a right one must find no full
window (one read) to be served; otherwise both get 429. N parallel guesses are answered
exactly as N sequential ones, and a success costs one storage round trip, not two
(README, "Throttles").
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import unquote_plus

from provider.clients.service import ClientCache, ClientInfo
from provider.oauth.errors import InvalidClient, InvalidRequest, SlowDown
from provider.ratelimit import Slot, Throttled, Throttles

MAX_CREDENTIAL_LENGTH = 512


@dataclass(frozen=True)
class Authenticated:
    client: ClientInfo
    method: str  # client_secret_basic | client_secret_post | none
    # The Authorization header carried the credentials: a later invalid_client for this
    # caller must challenge with Basic too (RFC 6749 §5.2).
    used_basic: bool = False


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 underneath
        raise InvalidClient("Malformed Basic credentials.", used_basic=True) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("Malformed Basic credentials.", used_basic=True)
    # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    client_id, secret = unquote_plus(client_id), unquote_plus(secret)
    if "\x00" in client_id or "\x00" in secret:
        # Refused as the form's fields are (provider.oauth.form): no client has one.
        raise InvalidClient("Malformed Basic credentials.", used_basic=True)
    return client_id, secret


async def authenticate_client(
    clients: ClientCache, form: dict[str, str], authorization: str | None, *,
    throttles: Throttles, address: str,
) -> Authenticated:
    basic = _basic_credentials(authorization) if authorization else None
    form_id, form_secret = form.get("client_id"), form.get("client_secret")
    secret: str | None

    if basic is not None:
        if form_secret is not None:
            raise InvalidRequest("Use one client authentication method, not two.")
        client_id, secret = basic
        if form_id is not None and form_id != client_id:
            raise InvalidRequest("client_id does not match the Authorization header.")
        method, used_basic = "client_secret_basic", True
    elif form_id is not None:
        client_id, secret = form_id, form_secret
        method, used_basic = ("client_secret_post" if secret is not None else "none"), False
    else:
        # An Authorization header of another scheme is an attempt too: challenge it
        # with the scheme we take (RFC 6749 §5.2).
        raise InvalidClient("Client authentication is required.",
                            used_basic=authorization is not None)

    verdict = await _verdict(clients, client_id, secret)
    if verdict is None:
        await _failed(throttles, client_id, address)
        raise InvalidClient(used_basic=used_basic)
    await _admitted(throttles, client_id, address)
    return Authenticated(verdict, "none" if verdict.is_public else method, used_basic)


async def _verdict(clients: ClientCache, client_id: str, secret: str | None) -> ClientInfo | None:
    """The client these credentials prove, or None. Reveals nothing by itself."""
    if not client_id or len(client_id) > MAX_CREDENTIAL_LENGTH or (
        secret is not None and len(secret) > MAX_CREDENTIAL_LENGTH
    ):
        return None
    client = await clients.get(client_id)
    if client is None or not client.is_active:
        return None
    if client.is_public:
        # A public client has no secret; one that sends a secret is misconfigured.
        return None if secret else client
    if not secret or not client.check_secret(secret):
        return None
    return client


def _slots(throttles: Throttles, client_id: str, address: str) -> tuple[Slot, Slot]:
    client = throttles.client(address)
    return ((throttles.client_auth, f"{client_id[:MAX_CREDENTIAL_LENGTH]}\n{client}"),
            (throttles.client_auth_address, client))


async def _failed(throttles: Throttles, client_id: str, address: str) -> None:
    """Count the failure atomically; when no slot is left the answer is 429 instead."""
    try:
        await throttles.reserve(*_slots(throttles, client_id, address))
    except Throttled as exc:
        raise SlowDown(exc.retry_after) from None


async def _admitted(throttles: Throttles, client_id: str, address: str) -> None:
    """A proven client is served unless its failures (here, or of its address) are
    throttled right now: else a throttled guesser would learn which guess was right."""
    wait = await throttles.wait(*_slots(throttles, client_id, address))
    if wait is not None:
        raise SlowDown(wait)
