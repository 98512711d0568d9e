"""OIDC Core §5.3: the userinfo answer, claims by scope (§5.4): ``email`` gives the
address and whether it was verified, ``profile`` the username and the profile's names.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from provider.oauth.errors import InsufficientScope
from provider.oauth.scopes import EMAIL, OPENID, PROFILE
from provider.users.models import User

# The profile's members that are userinfo claims of the same name (when they are strings).
PROFILE_NAMES = ("name", "given_name", "family_name")


def userinfo_claims(scope: Set[str], user: User) -> dict[str, Any]:
    """The claims ``scope`` releases about ``user``; an access token without ``openid``
    is not for this endpoint (403 ``insufficient_scope``, RFC 6750 §3.1)."""
    if OPENID not in scope:
        raise InsufficientScope(OPENID)
    claims: dict[str, Any] = {"sub": str(user.id)}
    if EMAIL in scope:
        claims["email"] = user.email
        claims["email_verified"] = user.is_verified
    if PROFILE in scope:
        if user.username:
            claims["preferred_username"] = user.username
        for name in PROFILE_NAMES:
            if isinstance(user.profile.get(name), str):
                claims[name] = user.profile[name]
    return claims
