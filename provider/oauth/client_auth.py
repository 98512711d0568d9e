"""Client authentication at the token, revocation and introspection endpoints.

RFC 6749 §2.3.1: ``client_secret_basic`` (form-urlencoded id and secret in the
Authorization header) or ``client_secret_post``; never both, never in the query
string. Public clients (``none``) identify themselves with ``client_id`` alone.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import unquote_plus

from provider.clients.service import ClientCache, ClientInfo
from provider.oauth.errors import InvalidClient, InvalidRequest

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
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidClient("Malformed Basic credentials.", used_basic=True) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("Malformed Basic credentials.", used_basic=True)
    # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    return unquote_plus(client_id), unquote_plus(secret)


async def authenticate_client(
    clients: ClientCache, form: dict[str, str], authorization: str | None
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
        raise InvalidClient("Client authentication is required.")

    if not client_id or len(client_id) > MAX_CREDENTIAL_LENGTH or (
        secret is not None and len(secret) > MAX_CREDENTIAL_LENGTH
    ):
        raise InvalidClient(used_basic=used_basic)
    client = await clients.get(client_id)
    if client is None or not client.is_active:
        raise InvalidClient(used_basic=used_basic)
    if client.is_public:
        # A public client has no secret; one that sends a secret is misconfigured.
        if secret:
            raise InvalidClient(used_basic=used_basic)
        return Authenticated(client, "none", used_basic)
    if not secret or not client.check_secret(secret):
        raise InvalidClient(used_basic=used_basic)
    return Authenticated(client, method, used_basic)
