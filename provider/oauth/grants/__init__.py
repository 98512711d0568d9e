"""The one registry of grant types. A new grant is one module plus one line here:
discovery metadata, the token form's ``grant_type`` enum and the grant types a client
may be given are all derived from it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from provider.oauth.grants.authorization_code import AuthorizationCodeGrant
from provider.oauth.grants.base import Grant
from provider.oauth.grants.client_credentials import ClientCredentialsGrant
from provider.oauth.grants.mfa_otp import MfaOtpGrant
from provider.oauth.grants.password import PasswordGrant
from provider.oauth.grants.refresh_token import RefreshTokenGrant

_REGISTERED: tuple[Grant, ...] = (
    PasswordGrant(),
    RefreshTokenGrant(),
    ClientCredentialsGrant(),
    MfaOtpGrant(),
    AuthorizationCodeGrant(),
)

GRANTS: Mapping[str, Grant] = MappingProxyType({g.grant_type: g for g in _REGISTERED})
GRANT_TYPES: tuple[str, ...] = tuple(GRANTS)


def _client_grant_type(grant: Grant) -> str:
    """The grant type a client must be allowed to use ``grant``: its own, unless the
    grant only finishes what another one started (mfa-otp finishes a password sign-in)."""
    return str(getattr(grant, "client_grant_type", grant.grant_type))


# Grant type -> the grant type a client must have been given to use it (router.py).
CLIENT_GRANT_TYPE: Mapping[str, str] = MappingProxyType(
    {g.grant_type: _client_grant_type(g) for g in _REGISTERED})
# Grant type -> whether a public client may be allowed it (provider.clients.service):
# the grant types that can be given to a client.
CLIENT_GRANT_RULES: Mapping[str, bool] = MappingProxyType(
    {g.grant_type: g.allows_public_clients for g in _REGISTERED
     if _client_grant_type(g) == g.grant_type})


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
        if CLIENT_GRANT_TYPE[grant.grant_type] not in CLIENT_GRANT_RULES:
            raise RuntimeError(f"{type(grant).__name__} depends on an unregistered grant")


__all__ = ["CLIENT_GRANT_RULES", "CLIENT_GRANT_TYPE", "GRANTS", "GRANT_TYPES", "Grant",
           "check_registry"]
