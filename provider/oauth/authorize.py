"""The authorization request (RFC 6749 §4.1.1 as profiled by OAuth 2.1 §4.1.1, OIDC Core
§3.1.2.1, RFC 7636): parse, validate, and shape the answers sent back to the client.

Validation runs in the order that decides where an error may go (RFC 6749 §4.1.2.1):
first the client and the redirect URI. A missing or unknown client, or a redirect URI
that is not registered, is answered on an error page and never redirected to (else we
would be an open redirector). Everything after that goes back to the client as
``error``, ``error_description``, ``state`` and ``iss`` (RFC 9207).

PKCE with S256 is required of every client, public or confidential (OAuth 2.1 §4.1.1,
RFC 9700 §2.1.1); ``plain`` and a missing challenge are refused.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from provider.clients.redirect_uris import find_match, is_loopback
from provider.clients.service import ClientCache, ClientInfo
from provider.oauth.errors import (
    InvalidRequest,
    InvalidScope,
    OAuthError,
    RequestNotSupported,
    RequestUriNotSupported,
    UnauthorizedClient,
    UnsupportedResponseType,
    quoted,
    the_parameter,
)
from provider.oauth.scopes import parse_scope

RESPONSE_TYPES = ("code",)
RESPONSE_MODES = ("query",)
PROMPTS = ("none", "login", "consent")
CODE_CHALLENGE_METHODS = ("S256",)
# An S256 challenge is the base64url SHA-256 of the verifier: exactly 43 characters.
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
# RFC 7636 §4.1: 43 to 128 unreserved characters.
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
MAX_STATE = 2048
MAX_NONCE = 512
MAX_LOGIN_HINT = 320
MAX_AGE_LIMIT = 10 * 365 * 24 * 3600
MAX_PARAMETERS = 64
# Parameters whose value we echo or keep; the rest of an authorization request is
# ignored (OIDC Core §3.1.2.1: unknown parameters are ignored).
KNOWN = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
         "code_challenge", "code_challenge_method", "prompt", "max_age", "login_hint",
         "response_mode")


class PageError(Exception):
    """The request cannot be answered to the client: an error page, never a redirect."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RedirectError(Exception):
    """An OAuth error to send back to the client's redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, target: AuthorizationTarget, error: OAuthError) -> None:
        super().__init__(f"{error.error}: {error.error_description}")
        self.target = target
        self.error = error


@dataclass(frozen=True)
class AuthorizationTarget:
    """Where answers go: the client and its (validated) redirect URI, and the state."""

    client: ClientInfo
    redirect_uri: str
    state: str | None


@dataclass(frozen=True)
class AuthorizationRequest:
    target: AuthorizationTarget
    redirect_uri_sent: bool
    scope: list[str] | None
    nonce: str | None
    code_challenge: str
    prompt: frozenset[str]
    max_age: int | None
    login_hint: str | None
    # The request's own parameters (known ones only): carried through the login and
    # consent forms, and back to this endpoint after a login.
    params: tuple[tuple[str, str], ...]

    @property
    def client(self) -> ClientInfo:
        return self.target.client

    @property
    def client_unassured(self) -> bool:
        """RFC 8252 §8.6: a public client going back to a loopback address or a private-use
        scheme could be any program on the device (any may listen on a port or claim a
        scheme), so nothing proves the request is the app's own: the user confirms each
        one, whatever was granted before, first-party or not."""
        return self.client.is_public and not self.target.redirect_uri.startswith("https://")

    def query(self, *, drop_login: bool = False) -> str:
        """The request as a query string; ``drop_login`` leaves out what a login just
        satisfied (``prompt=login``, ``max_age``), so the flow goes on after it."""
        pairs = []
        for name, value in self.params:
            if drop_login and name == "max_age":
                continue
            if drop_login and name == "prompt":
                value = " ".join(p for p in value.split() if p != "login")
                if not value:
                    continue
            pairs.append((name, value))
        return urlencode(pairs)


def s256(verifier: str) -> str:
    """The S256 challenge of a code verifier (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def is_valid_verifier(verifier: str) -> bool:
    return _VERIFIER.fullmatch(verifier) is not None


def _single(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], set[str]]:
    """The parameters (empty values count as absent, RFC 6749 §3.1) and the names sent
    more than once (§3.1: they must not be)."""
    values: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in pairs:
        if name in values or (name in repeated):
            repeated.add(name)
            continue
        if value != "":
            values[name] = value
        else:
            values.setdefault(name, "")
    return {k: v for k, v in values.items() if v != ""}, repeated


async def parse_request(pairs: list[tuple[str, str]], clients: ClientCache
                        ) -> AuthorizationRequest:
    """The validated request; PageError or RedirectError saying what is wrong."""
    if len(pairs) > MAX_PARAMETERS:
        raise PageError("The request has too many parameters.")
    params, repeated = _single(pairs)
    if any("\x00" in value for value in params.values()):
        raise PageError("The request is malformed.")
    for name in ("client_id", "redirect_uri"):
        if name in repeated:
            raise PageError(f"The {name} parameter is repeated.")
    client_id = params.get("client_id")
    if client_id is None:
        raise PageError("The request does not name a client (client_id is missing).")
    client = await clients.get(client_id) if len(client_id) <= 128 else None
    if client is None or not client.is_active:
        raise PageError("The application that sent you here is not known to this server.")
    sent = params.get("redirect_uri")
    if not client.redirect_uris:
        raise PageError("This application has no redirect URI registered.")
    if sent is not None:
        registered = find_match(client.redirect_uris, sent)
        if registered is None:
            raise PageError("The redirect_uri is not registered for this application.")
        redirect_uri = sent
    elif len(client.redirect_uris) == 1:
        redirect_uri = client.redirect_uris[0]
    else:
        raise PageError("The request must name its redirect_uri (the application has "
                        "several).")

    state = params.get("state")
    target = AuthorizationTarget(client, redirect_uri,
                                 state if state is not None and len(state) <= MAX_STATE
                                 else None)

    def refuse(error: OAuthError) -> RedirectError:
        return RedirectError(target, error)

    if state is not None and len(state) > MAX_STATE:
        raise refuse(InvalidRequest(f"The state parameter exceeds {MAX_STATE} "
                                    "characters."))
    if repeated:
        raise refuse(InvalidRequest(f"{the_parameter(sorted(repeated)[0])} is repeated."))
    if "request" in params:
        raise refuse(RequestNotSupported())
    if "request_uri" in params:
        raise refuse(RequestUriNotSupported())
    response_type = params.get("response_type")
    if response_type is None:
        raise refuse(InvalidRequest("The response_type parameter is required."))
    if response_type not in RESPONSE_TYPES:
        raise refuse(UnsupportedResponseType())
    if "authorization_code" not in client.grant_types:
        raise refuse(UnauthorizedClient(
            "The client is not allowed to use the authorization code flow."))
    response_mode = params.get("response_mode")
    if response_mode is not None and response_mode not in RESPONSE_MODES:
        raise refuse(InvalidRequest("Only response_mode=query is supported."))
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if challenge is None:
        raise refuse(InvalidRequest("PKCE is required: send code_challenge and "
                                    "code_challenge_method=S256."))
    if method not in CODE_CHALLENGE_METHODS:
        raise refuse(InvalidRequest("code_challenge_method must be S256 (plain is "
                                    "not allowed)."))
    if not _CHALLENGE.fullmatch(challenge):
        raise refuse(InvalidRequest("The code_challenge is not an S256 challenge "
                                    "(43 base64url characters)."))
    scope = parse_scope(params.get("scope"))
    if scope is not None:
        refused = [s for s in scope if s not in client.scopes]
        if refused:
            raise refuse(InvalidScope(f"Scope not allowed{quoted(refused[0])}."))
    prompt = frozenset(params.get("prompt", "").split())
    unknown = sorted(prompt - set(PROMPTS))
    if unknown:
        raise refuse(InvalidRequest(f"Unsupported prompt value{quoted(unknown[0])}."))
    if "none" in prompt and len(prompt) > 1:
        raise refuse(InvalidRequest("prompt=none cannot be combined with other values."))
    max_age = None
    if "max_age" in params:
        raw = params["max_age"]
        if not raw.isdigit() or not raw.isascii() or int(raw) > MAX_AGE_LIMIT:
            raise refuse(InvalidRequest("max_age must be a number of seconds."))
        max_age = int(raw)
    nonce = params.get("nonce")
    if nonce is not None and len(nonce) > MAX_NONCE:
        raise refuse(InvalidRequest(f"The nonce exceeds {MAX_NONCE} characters."))
    login_hint = params.get("login_hint")
    if login_hint is not None and len(login_hint) > MAX_LOGIN_HINT:
        login_hint = None  # a hint only: ignored rather than refused

    return AuthorizationRequest(
        target=target, redirect_uri_sent=sent is not None, scope=scope, nonce=nonce,
        code_challenge=challenge, prompt=prompt, max_age=max_age, login_hint=login_hint,
        params=tuple((name, params[name]) for name in KNOWN if name in params),
    )


def redirect_to(target: AuthorizationTarget, issuer: str, **values: str | None) -> str:
    """The client's redirect URI with the answer's parameters, ``state`` and ``iss``
    (RFC 9207) added to its query (a registered URI may have one; never a fragment)."""
    pairs = [(k, v) for k, v in values.items() if v is not None]
    if target.state is not None:
        pairs.append(("state", target.state))
    pairs.append(("iss", issuer))
    separator = "&" if "?" in target.redirect_uri else "?"
    return target.redirect_uri + separator + urlencode(pairs)


def error_redirect(error: RedirectError, issuer: str) -> str:
    return redirect_to(error.target, issuer, error=error.error.error,
                       error_description=error.error.error_description)


def form_action_source(uri: str) -> str:
    """The CSP source expression of where a form's navigation may end up: a login or
    consent form's answer redirects to the client (CSP form-action covers redirects)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        host = parts.netloc.rsplit("@", 1)[-1]
        if is_loopback(uri):
            host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            return f"{parts.scheme}://{host}:*"
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}:"
