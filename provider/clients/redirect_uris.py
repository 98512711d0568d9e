"""Redirect URIs of the authorization code flow: what may be registered, what matches.

Registration (RFC 6749 §3.1.2, OAuth 2.1 §2.3.1, RFC 8252 §7, §8.3): an absolute URI
without a fragment or user information; ``https``, or ``http`` on a loopback IP literal
only (127.0.0.1 or [::1], never ``localhost``), or a private-use scheme in reverse
domain form (``com.example.app:/callback``) for native apps.

Matching is exact string comparison (RFC 9700 §4.1.3), with one exception: a
registered loopback ``http`` URI matches the same URI with any port (RFC 8252 §7.3),
because a native app gets its port from the OS at run time. The loopback rule compares
scheme, host, path and query character for character; only the port may differ.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from provider.errors import ValidationFailed

MAX_REDIRECT_URI_LENGTH = 2000
MAX_REDIRECT_URIS = 20
# http://127.0.0.1[:port][/path][?query] or http://[::1]...: host, port and the rest.
_LOOPBACK = re.compile(r"^http://(127\.0\.0\.1|\[::1\])(?::(\d{1,5}))?([/?][^#]*)?$")
# A private-use scheme in reverse domain form (RFC 8252 §7.1): at least one period.
_PRIVATE_SCHEME = re.compile(r"^[a-z][a-z0-9+-]*(\.[a-z0-9+-]+)+$")
# Characters a URI may hold (RFC 3986 §2): anything else (spaces, quotes, controls,
# backslashes) is refused rather than normalised.
_URI_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%]+$")


def _loopback_parts(uri: str) -> tuple[str, str] | None:
    """(host, path and query) of a loopback http URI, or None."""
    match = _LOOPBACK.fullmatch(uri)
    if match is None:
        return None
    port = match.group(2)
    if port is not None and not 0 < int(port) <= 65535:
        return None
    return match.group(1), match.group(3) or ""


def is_loopback(uri: str) -> bool:
    return _loopback_parts(uri) is not None


def check_redirect_uri(uri: str, *, field: str = "redirect_uris") -> str:
    """The URI if it may be registered; ValidationFailed saying why not."""
    def refuse(reason: str) -> ValidationFailed:
        return ValidationFailed(f"{field}: {reason}")

    if not uri or len(uri) > MAX_REDIRECT_URI_LENGTH:
        raise refuse(f"a URI must be 1 to {MAX_REDIRECT_URI_LENGTH} characters")
    if "#" in uri:
        raise refuse("a redirect URI may not have a fragment (RFC 6749 §3.1.2)")
    if not _URI_CHARS.fullmatch(uri):
        raise refuse("the URI holds characters a URI may not (percent-encode them)")
    try:
        parts = urlsplit(uri)
    except ValueError:  # an unclosed IPv6 bracket: "https://[::1/cb"
        raise refuse("the URI cannot be parsed") from None
    scheme = parts.scheme
    if scheme == "https":
        if not parts.hostname or "@" in parts.netloc:
            raise refuse("an https URI needs a host and no user information")
        try:
            parts.port  # noqa: B018 (raises on a malformed port)
        except ValueError:
            raise refuse("the port is not valid") from None
        return uri
    if scheme == "http":
        if not is_loopback(uri):
            raise refuse("http is allowed only for the loopback addresses 127.0.0.1 and "
                         "[::1] (RFC 8252 §7.3; use https elsewhere)")
        return uri
    if _PRIVATE_SCHEME.fullmatch(scheme or ""):
        if parts.netloc or "@" in uri:
            raise refuse("a private-use scheme URI has a path only "
                         "(com.example.app:/callback, RFC 8252 §7.1)")
        return uri
    raise refuse("use https, http on 127.0.0.1 or [::1], or a private-use scheme in "
                 "reverse domain form (com.example.app:/callback)")


def check_redirect_uris(uris: Iterable[str], *, field: str = "redirect_uris") -> list[str]:
    chosen = list(dict.fromkeys(uris))
    if len(chosen) > MAX_REDIRECT_URIS:
        raise ValidationFailed(f"{field}: at most {MAX_REDIRECT_URIS} URIs")
    return [check_redirect_uri(uri, field=field) for uri in chosen]


def matches(registered: str, requested: str) -> bool:
    """Whether ``requested`` is ``registered``: exactly, or (loopback) but for the port."""
    if requested == registered:
        return True
    mine = _loopback_parts(registered)
    if mine is None:
        return False
    theirs = _loopback_parts(requested)
    return theirs is not None and theirs == mine


def find_match(registered: Iterable[str], requested: str) -> str | None:
    """The registered URI that ``requested`` matches, or None."""
    for uri in registered:
        if matches(uri, requested):
            return uri
    return None
