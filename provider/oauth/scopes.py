"""Scope names and the rules that combine them (RFC 6749 §3.3, ASVS 10.4.11).

The one place that names scopes: discovery, Swagger UI's Authorize dialog and every
grant read them from here.
"""

from __future__ import annotations

from collections.abc import Iterable

from provider.oauth.errors import InvalidScope, quoted

OPENID = "openid"
PROFILE = "profile"
EMAIL = "email"
ADMIN = "admin"
ACCOUNT = "account"
OFFLINE_ACCESS = "offline_access"

# The scopes we define, with what they grant (shown in Swagger UI's Authorize dialog).
DESCRIPTIONS: dict[str, str] = {
    OPENID: "OpenID Connect: adds an ID token",
    PROFILE: "Your username and profile",
    EMAIL: "Your email address",
    ACCOUNT: "Manage your account (/users/me): profile, email, password, two-step "
             "verification, consents",
    ADMIN: "Administer users and clients (admins only)",
}
STANDARD_SCOPES: tuple[str, ...] = tuple(DESCRIPTIONS)
# Scopes that only mean something for a user, never for a client acting for itself.
USER_ONLY_SCOPES = frozenset({OPENID, PROFILE, EMAIL, ACCOUNT, ADMIN, OFFLINE_ACCESS})


def parse_scope(raw: str | None) -> list[str] | None:
    """The scope parameter as a list without repeats; None when it was not sent."""
    if raw is None:
        return None
    return list(dict.fromkeys(raw.split()))


def permitted(allowed: Iterable[str], *, may_admin: bool) -> list[str]:
    """What may be granted now: the client's allowed scopes, ``admin`` only for an admin."""
    return [s for s in allowed if s != ADMIN or may_admin]


def resolve_scope(
    requested: list[str] | None, allowed: Iterable[str], *, may_admin: bool
) -> str:
    """A new grant's scope: the requested scope, which must be allowed; or the default."""
    choosable = permitted(allowed, may_admin=may_admin)
    if requested is None:
        # Least privilege: admin power is granted only when asked for by name.
        return " ".join(s for s in choosable if s != ADMIN)
    if not requested:
        raise InvalidScope("The scope parameter is empty.")
    refused = [s for s in requested if s not in choosable]
    if refused:
        raise InvalidScope(f"Scope not allowed{quoted(refused[0])}.")
    return " ".join(requested)


def check_narrowing(requested: list[str] | None, session_scope: str) -> None:
    """RFC 6749 §6: a refresh may ask for less than the session's scope, never more."""
    if requested is None:
        return
    granted = session_scope.split()
    if not requested or any(s not in granted for s in requested):
        raise InvalidScope("The requested scope exceeds the original grant.")


def refreshed_scope(
    requested: list[str] | None, session_scope: str, allowed: Iterable[str], *,
    may_admin: bool,
) -> str:
    """A refresh's scope: (requested or the session's) ∩ what the client and the user may
    have now. A scope the client lost, or ``admin`` of a demoted user, is dropped."""
    check_narrowing(requested, session_scope)
    wanted = requested if requested is not None else session_scope.split()
    now_permitted = set(permitted(allowed, may_admin=may_admin))
    return " ".join(s for s in wanted if s in now_permitted)
