"""The one registry of grant types. A new grant is one module plus one line here:
discovery metadata, the token form's ``grant_type`` enum and the grant types a client
may be given are all derived from it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from provider.oauth.grants.base import Grant
from provider.oauth.grants.client_credentials import ClientCredentialsGrant
from provider.oauth.grants.password import PasswordGrant
from provider.oauth.grants.refresh_token import RefreshTokenGrant

_REGISTERED: tuple[Grant, ...] = (
    PasswordGrant(),
    RefreshTokenGrant(),
    ClientCredentialsGrant(),
)

GRANTS: Mapping[str, Grant] = MappingProxyType({g.grant_type: g for g in _REGISTERED})
GRANT_TYPES: tuple[str, ...] = tuple(GRANTS)
# Grant type -> whether a public client may be allowed it (provider.clients.service).
CLIENT_GRANT_RULES: Mapping[str, bool] = MappingProxyType(
    {g.grant_type: g.allows_public_clients for g in _REGISTERED})


def check_registry() -> None:
    """Fail at start-up, not at the first request, when the registry is inconsistent."""
    names = [g.grant_type for g in _REGISTERED]
    if len(set(names)) != len(names):
        raise RuntimeError(f"grant types registered twice: {names}")
    for grant in _REGISTERED:
        if not grant.grant_type or not callable(getattr(grant, "exchange", None)):
            raise RuntimeError(f"{type(grant).__name__} is not a Grant")
        if not isinstance(getattr(grant, "allows_public_clients", None), bool):
            raise RuntimeError(f"{type(grant).__name__} lacks allows_public_clients")


__all__ = ["CLIENT_GRANT_RULES", "GRANTS", "GRANT_TYPES", "Grant", "check_registry"]
