"""Verifying provider's access tokens (RFC 9068) in a resource server.

``TokenVerifier`` (sync, httpx.Client) and ``AsyncTokenVerifier`` (async,
httpx.AsyncClient) share everything but their I/O, which lives in ``_Core``:

- the issuer's metadata is discovered once (``jwks_uri``, the advertised algorithms, the
  introspection endpoint) and its ``issuer`` must be exactly the configured one;
- the JWKS is cached for the max-age it is served with; a token whose ``kid`` is not in
  it makes one refetch, at most one per ``refetch_interval`` (garbage kids cannot make us
  hammer the provider); while the provider is unreachable the cached keys stay in use;
- the algorithm is pinned: only asymmetric algorithms the provider advertises (never
  ``none``, never HS*), and only the one its key is published for (RFC 8725 §3.1);
- ``typ`` must be ``at+jwt``, ``crit`` is refused, ``jku``/``x5u``/``jwk`` are never
  followed: keys come only from the provider's JWKS, by ``kid``;
- ``iss`` exactly, ``aud``, ``exp``/``nbf``/``iat`` with a small leeway, the RFC 9068
  claims, and the scopes the caller asks for;
- optionally (``introspect=True``) the provider is asked, after the local checks, whether
  the token is still active (RFC 7662), with a short, bounded cache.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry, extract_compact

from provider_resource.errors import (
    ConfigurationError,
    InsufficientScope,
    InvalidToken,
    VerifierUnavailable,
)

# Signature algorithms a verifier may accept at all: asymmetric only. A symmetric one
# would let anyone holding the public key (everyone) sign (CVE-2015-9235).
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                        "ES256", "ES384", "ES512", "EdDSA"})
KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
MAX_TOKEN_LENGTH = 8192
MAX_DOCUMENT_BYTES = 1 << 20
DEFAULT_MAX_AGE = 300.0
MAX_CACHE_AGE = 86400.0
# A JWKS served with max-age=0 is still not fetched more than once a second.
MIN_CACHE_AGE = 1.0
WELL_KNOWN_OIDC = "/.well-known/openid-configuration"
WELL_KNOWN_OAUTH = "/.well-known/oauth-authorization-server"

Key = RSAKey | ECKey | OKPKey


@dataclass(frozen=True)
class AccessToken:
    """A verified access token."""

    sub: str
    client_id: str
    scopes: frozenset[str]
    jti: str
    exp: int
    iat: int
    claims: Mapping[str, Any]
    """Every claim, as signed (``sid``, ``auth_time``, ``amr``, ...)."""

    def has_scopes(self, scopes: Iterable[str]) -> bool:
        return set(scopes) <= self.scopes


class _Registry(JWSRegistry):
    """joserfc warns on "EdDSA" (RFC 9864 prefers "Ed25519"); it is the name provider
    publishes and resource servers' libraries know, and it is allowed here only when
    the key it is pinned to says so."""

    def get_alg(self, name: str) -> JWSAlgModel:
        if name == "EdDSA" and self.allowed and name in self.allowed:
            return self.algorithms[name]
        return super().get_alg(name)


_REGISTRIES = {alg: _Registry(algorithms=[alg]) for alg in ASYMMETRIC}


def max_age_of(response: httpx.Response, default: float = DEFAULT_MAX_AGE) -> float:
    """How long ``response`` may be cached (Cache-Control max-age), within bounds."""
    header = response.headers.get("cache-control", "").lower()
    if "no-store" in header or "no-cache" in header:
        return MIN_CACHE_AGE
    match = re.search(r"max-age\s*=\s*(\d+)", header)
    age = float(match.group(1)) if match else default
    return min(max(age, MIN_CACHE_AGE), MAX_CACHE_AGE)


@dataclass(frozen=True)
class _Published:
    key: Key
    alg: str | None


@dataclass(frozen=True)
class _Header:
    alg: str
    kid: str


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class _Core:
    """What both verifiers share: configuration, caches and every check; no I/O."""

    def __init__(self, *, issuer: str, audience: str, algorithms: Iterable[str] | None,
                 leeway: float, refetch_interval: float, introspect: bool,
                 client_id: str | None, client_secret: str | None,
                 introspection_cache_ttl: float, introspection_cache_size: int,
                 clock: Callable[[], float]) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        if introspect and not (client_id and client_secret):
            raise ValueError("introspect=True needs the resource server's client_id and "
                             "client_secret (a confidential client)")
        chosen = set(algorithms) if algorithms is not None else set(ASYMMETRIC)
        if not chosen or not chosen <= ASYMMETRIC:
            raise ValueError(f"algorithms must be among {sorted(ASYMMETRIC)}")
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.allowed = frozenset(chosen)
        self.leeway = leeway
        self.refetch_interval = refetch_interval
        self.introspect = introspect
        self.client_id = client_id
        self.client_secret = client_secret
        self.cache_ttl = introspection_cache_ttl
        self.cache_size = introspection_cache_size
        self.clock = clock
        # Discovery.
        self.metadata: dict[str, Any] | None = None
        self.metadata_until = 0.0
        self.jwks_uri = ""
        self.introspection_endpoint = ""
        self.advertised: frozenset[str] = frozenset()
        # The key set.
        self.keys: dict[str, _Published] | None = None
        self.keys_until = 0.0
        self.last_unknown_fetch = float("-inf")
        self.retry_at = float("-inf")
        self.unreachable_until = float("-inf")
        self.fetches = 0
        # Introspection answers: digest -> (until, AccessToken or None for inactive).
        self.answers: OrderedDict[bytes, tuple[float, AccessToken | None]] = OrderedDict()

    # --- discovery ---------------------------------------------------------------------

    def metadata_urls(self) -> list[str]:
        """OIDC discovery first, then RFC 8414 (§3.1: the well-known part goes before
        the issuer's path)."""
        parts = urlsplit(self.issuer)
        path = parts.path.rstrip("/")
        return [self.issuer + WELL_KNOWN_OIDC,
                f"{parts.scheme}://{parts.netloc}{WELL_KNOWN_OAUTH}{path}"]

    def needs_metadata(self, now: float) -> bool:
        if self.metadata is None and now < self.unreachable_until:
            # Discovery failed a moment ago: answer at once instead of asking again (a
            # provider that is down is not asked once per request).
            raise VerifierUnavailable("the provider could not be reached a moment ago")
        return self.metadata is None or now >= self.metadata_until

    def discovery_failed(self, now: float) -> None:
        self.unreachable_until = now + MIN_CACHE_AGE

    def take_metadata(self, response: httpx.Response, now: float) -> None:
        document = self._json(response, "metadata")
        if document.get("issuer") != self.issuer:
            # RFC 8414 §3.3: the issuer must be exactly the one we asked (no mix-ups).
            raise ConfigurationError(
                f"the metadata at {response.url} names another issuer: "
                f"{document.get('issuer')!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not self._same_trust(jwks_uri):
            raise ConfigurationError(f"the metadata has no usable jwks_uri: {jwks_uri!r}")
        if self.introspect and not (isinstance(document.get("introspection_endpoint"), str)
                                    and self._same_trust(document["introspection_endpoint"])):
            raise ConfigurationError("the metadata has no usable introspection_endpoint")
        algs = document.get("id_token_signing_alg_values_supported")
        self.advertised = frozenset(a for a in algs if isinstance(a, str)) \
            if isinstance(algs, list) else frozenset()
        self.metadata = document
        self.jwks_uri = jwks_uri
        self.introspection_endpoint = str(document.get("introspection_endpoint", ""))
        self.metadata_until = now + max_age_of(response, 3600.0)

    def _same_trust(self, url: str) -> bool:
        """An https issuer's endpoints must be https too."""
        scheme = urlsplit(url).scheme
        return scheme == "https" or (scheme == "http" and self.issuer.startswith("http://"))

    # --- the key set -------------------------------------------------------------------

    def needs_keys(self, kid: str, now: float) -> bool:
        """Whether to fetch the JWKS before looking ``kid`` up."""
        if now < self.retry_at:
            return False  # a fetch failed a moment ago: use what we have
        if self.keys is None or now >= self.keys_until:
            return True
        return kid not in self.keys and now - self.last_unknown_fetch >= self.refetch_interval

    def note_fetch(self, kid: str, now: float) -> None:
        if self.keys is not None and now < self.keys_until and kid not in self.keys:
            self.last_unknown_fetch = now
        self.fetches += 1

    def take_keys(self, response: httpx.Response, now: float) -> None:
        document = self._json(response, "JWKS")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise VerifierUnavailable("the JWKS has no keys member")
        keys: dict[str, _Published] = {}
        for entry in entries:
            published = self._published(entry)
            if published is not None:
                keys[entry["kid"]] = published
        self.keys = keys
        self.keys_until = now + max_age_of(response)

    def fetch_failed(self, now: float) -> None:
        # Keep the keys we have; do not ask again for a second (or the refetch interval
        # for unknown kids, which needs_keys enforces).
        self.retry_at = now + MIN_CACHE_AGE

    def _published(self, entry: object) -> _Published | None:
        """A usable verification key of the JWKS, or None (skipped, not fatal)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            return None
        if entry.get("use", "sig") != "sig":
            return None
        if any(member in entry for member in ("d", "p", "q", "k")):
            return None  # a private or symmetric key has no business in a JWKS
        alg = entry.get("alg")
        if alg is not None and (not isinstance(alg, str) or alg not in ASYMMETRIC):
            return None
        kty = entry.get("kty")
        public = {k: v for k, v in entry.items() if k in ("kty", "n", "e", "crv", "x", "y")}
        try:
            if kty == "RSA":
                key: Key = RSAKey.import_key(public)
            elif kty == "EC":
                key = ECKey.import_key(public)
            elif kty == "OKP":
                key = OKPKey.import_key(public)
            else:
                return None
        except (JoseError, ValueError, TypeError, KeyError):
            return None
        return _Published(key, alg)

    def key_for(self, header: _Header) -> _Published:
        if self.keys is None:
            raise VerifierUnavailable("no keys fetched yet")
        published = self.keys.get(header.kid)
        if published is None:
            raise InvalidToken("unknown key")
        if published.alg is not None and published.alg != header.alg:
            raise InvalidToken("the key is published for another algorithm")
        kty = KTY.get(header.alg[:2])
        if kty is None or published.key.key_type != kty:
            raise InvalidToken("the key does not fit the algorithm")
        advertised = self.advertised | {p.alg for p in (self.keys or {}).values() if p.alg}
        if header.alg not in advertised & self.allowed:
            raise InvalidToken("algorithm not advertised")
        return published

    # --- the token ---------------------------------------------------------------------

    def header(self, token: object) -> _Header:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH \
                or token.count(".") != 2:
            raise InvalidToken("malformed")
        try:
            header = extract_compact(token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeError, TypeError):
            raise InvalidToken("malformed") from None
        if not isinstance(header, dict):
            # joserfc returns whatever JSON the segment holds: ["alg"] and "alg" pass its
            # own check for the member.
            raise InvalidToken("malformed")
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if not isinstance(alg, str) or alg not in ASYMMETRIC or alg not in self.allowed:
            raise InvalidToken("algorithm not allowed")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidToken("not an access token (typ)")
        if "crit" in header:
            raise InvalidToken("unsupported critical header")
        if not isinstance(kid, str) or not 0 < len(kid) <= 256 or not kid.isprintable():
            raise InvalidToken("no usable kid")
        return _Header(alg, kid)

    def check(self, token: str, header: _Header, published: _Published,
              now: float) -> AccessToken:
        try:
            claims = jwt.decode(token, published.key, registry=_REGISTRIES[header.alg]).claims
        except (JoseError, ValueError, TypeError):
            raise InvalidToken("bad signature") from None
        return self.claims(claims, now)

    def claims(self, claims: Mapping[str, Any], now: float) -> AccessToken:
        if claims.get("iss") != self.issuer:
            raise InvalidToken("wrong issuer")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.audience not in audiences:
            raise InvalidToken("wrong audience")
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not isinstance(exp, int) or not isinstance(iat, int) or not _is_int(exp) \
                or not _is_int(iat):
            raise InvalidToken("exp and iat are required numbers")
        if exp + self.leeway <= now:
            raise InvalidToken("expired")
        if iat > now + self.leeway:
            raise InvalidToken("issued in the future")
        if nbf is not None and (not _is_int(nbf) or nbf > now + self.leeway):
            raise InvalidToken("not yet valid")
        sub, client_id, jti = claims.get("sub"), claims.get("client_id"), claims.get("jti")
        if not all(isinstance(v, str) and v for v in (sub, client_id, jti)):
            raise InvalidToken("sub, client_id and jti are required")
        scope, sid = claims.get("scope", ""), claims.get("sid")
        if not isinstance(scope, str) or (sid is not None and not isinstance(sid, str)):
            raise InvalidToken("scope and sid must be strings")
        return AccessToken(sub=str(sub), client_id=str(client_id),
                           scopes=frozenset(scope.split()), jti=str(jti), exp=int(exp),
                           iat=int(iat), claims=dict(claims))

    @staticmethod
    def require(token: AccessToken, scopes: Iterable[str]) -> AccessToken:
        needed = tuple(scopes)
        missing = [s for s in needed if s not in token.scopes]
        if missing:
            raise InsufficientScope(needed, f"missing scope {' '.join(missing)}")
        return token

    # --- introspection -----------------------------------------------------------------

    def cached_answer(self, token: str, now: float) -> tuple[bool, AccessToken | None]:
        """(found, answer): answer None means the provider said inactive."""
        digest = _token_digest(token)
        entry = self.answers.get(digest)
        if entry is None:
            return False, None
        until, answer = entry
        if now >= until:
            del self.answers[digest]
            return False, None
        self.answers.move_to_end(digest)
        return True, answer

    def introspection_form(self, token: str) -> tuple[dict[str, str], dict[str, str]]:
        """The request body and headers (client_secret_basic, RFC 6749 §2.3.1)."""
        credentials = f"{quote_plus(self.client_id or '')}:{quote_plus(self.client_secret or '')}"
        basic = base64.b64encode(credentials.encode()).decode()
        return ({"token": token, "token_type_hint": "access_token"},
                {"Authorization": f"Basic {basic}", "Accept": "application/json"})

    def take_answer(self, token: str, local: AccessToken, response: httpx.Response,
                    now: float) -> AccessToken:
        if response.status_code != 200:
            raise VerifierUnavailable(f"introspection answered {response.status_code}")
        body = self._json(response, "introspection answer")
        answer: AccessToken | None = local
        if body.get("active") is not True:
            answer = None
        elif str(body.get("token_type", "Bearer")).lower() not in ("bearer", "access_token"):
            answer = None  # e.g. a refresh token presented as a bearer token
        elif body.get("jti", local.jti) != local.jti or body.get("sub", local.sub) != local.sub:
            answer = None
        elif isinstance(body.get("scope"), str):
            # The provider's current word on the scope wins over the token's.
            answer = dataclasses.replace(local, scopes=frozenset(body["scope"].split()))
        if self.cache_ttl > 0:
            until = min(now + self.cache_ttl, float(local.exp) + self.leeway)
            self.answers[_token_digest(token)] = (until, answer)
            while len(self.answers) > self.cache_size:
                self.answers.popitem(last=False)
        if answer is None:
            raise InvalidToken("not active (introspection)")
        return answer

    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise VerifierUnavailable(f"{what} answered {response.status_code}")
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise VerifierUnavailable(f"{what} is too large")
        try:
            document = json.loads(response.content)
        except ValueError:
            raise VerifierUnavailable(f"{what} is not JSON") from None
        if not isinstance(document, dict):
            raise VerifierUnavailable(f"{what} is not a JSON object")
        return document


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_HTTP_ERRORS = (httpx.HTTPError, OSError)


class TokenVerifier:
    """Verifies access tokens of one issuer for one audience; thread-safe.

    ``verify(token, scopes=[...])`` returns the ``AccessToken`` or raises a
    ``TokenError`` (``InvalidToken``, ``InsufficientScope``, ``VerifierUnavailable``).
    """

    def __init__(self, issuer: str, audience: str, *, algorithms: Iterable[str] | None = None,
                 leeway: float = 10.0, refetch_interval: float = 10.0, introspect: bool = False,
                 client_id: str | None = None, client_secret: str | None = None,
                 introspection_cache_ttl: float = 1.0, introspection_cache_size: int = 1024,
                 http: httpx.Client | None = None, timeout: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._core = _Core(issuer=issuer, audience=audience, algorithms=algorithms,
                           leeway=leeway, refetch_interval=refetch_interval,
                           introspect=introspect, client_id=client_id,
                           client_secret=client_secret,
                           introspection_cache_ttl=introspection_cache_ttl,
                           introspection_cache_size=introspection_cache_size, clock=clock)
        self._http = http or httpx.Client(timeout=timeout, follow_redirects=False)
        self._owns_http = http is None
        # The introspection cache's: held for a dictionary operation, never over I/O.
        self._lock = threading.Lock()
        # The fetches': one discovery or JWKS fetch at a time, and only threads that need
        # one wait for it (a token of a known key never does).
        self._fetch_lock = threading.Lock()

    @property
    def issuer(self) -> str:
        return self._core.issuer

    def verify(self, token: str, scopes: Iterable[str] = ()) -> AccessToken:
        core = self._core
        header = core.header(token)
        now = core.clock()
        if core.needs_metadata(now) or core.needs_keys(header.kid, now):
            with self._fetch_lock:  # one fetch for all who wait; they re-check after it
                now = core.clock()
                if core.needs_metadata(now):
                    self._discover(now)
                if core.needs_keys(header.kid, now):
                    self._fetch_keys(header.kid, now)
        published = core.key_for(header)
        access = core.check(token, header, published, core.clock())
        if core.introspect:
            access = self._introspect(token, access)
        return core.require(access, scopes)

    def _get(self, url: str) -> httpx.Response:
        try:
            return self._http.get(url, headers={"Accept": "application/json"})
        except _HTTP_ERRORS as exc:
            raise VerifierUnavailable(f"GET {url}: {type(exc).__name__}") from None

    def _discover(self, now: float) -> None:
        if self._core.metadata is not None:  # stale: refresh, but keep it if that fails
            try:
                self._discover_now(now)
            except VerifierUnavailable:
                self._core.metadata_until = now + DEFAULT_MAX_AGE
            return
        try:
            self._discover_now(now)
        except VerifierUnavailable:
            self._core.discovery_failed(now)
            raise

    def _discover_now(self, now: float) -> None:
        first, second = self._core.metadata_urls()
        response = self._get(first)
        if response.status_code == 404:
            response = self._get(second)
        self._core.take_metadata(response, now)

    def _fetch_keys(self, kid: str, now: float) -> None:
        core = self._core
        core.note_fetch(kid, now)
        try:
            core.take_keys(self._get(core.jwks_uri), now)
        except VerifierUnavailable:
            core.fetch_failed(now)
            if core.keys is None:
                raise

    def _introspect(self, token: str, local: AccessToken) -> AccessToken:
        core = self._core
        with self._lock:
            found, answer = core.cached_answer(token, core.clock())
        if found:
            if answer is None:
                raise InvalidToken("not active (introspection, cached)")
            return answer
        data, headers = core.introspection_form(token)
        try:
            response = self._http.post(core.introspection_endpoint, data=data,
                                       headers=headers)
        except _HTTP_ERRORS as exc:
            raise VerifierUnavailable(f"introspection: {type(exc).__name__}") from None
        with self._lock:
            return core.take_answer(token, local, response, core.clock())

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> TokenVerifier:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class AsyncTokenVerifier:
    """``TokenVerifier`` for asyncio: ``await verifier.verify(token, scopes=[...])``.

    Concurrent requests with a kid the cache lacks share one JWKS fetch.
    """

    def __init__(self, issuer: str, audience: str, *, algorithms: Iterable[str] | None = None,
                 leeway: float = 10.0, refetch_interval: float = 10.0, introspect: bool = False,
                 client_id: str | None = None, client_secret: str | None = None,
                 introspection_cache_ttl: float = 1.0, introspection_cache_size: int = 1024,
                 http: httpx.AsyncClient | None = None, timeout: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._core = _Core(issuer=issuer, audience=audience, algorithms=algorithms,
                           leeway=leeway, refetch_interval=refetch_interval,
                           introspect=introspect, client_id=client_id,
                           client_secret=client_secret,
                           introspection_cache_ttl=introspection_cache_ttl,
                           introspection_cache_size=introspection_cache_size, clock=clock)
        self._http = http
        self._timeout = timeout
        self._owns_http = http is None
        self._lock: asyncio.Lock | None = None

    @property
    def issuer(self) -> str:
        return self._core.issuer

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        return self._http

    async def verify(self, token: str, scopes: Iterable[str] = ()) -> AccessToken:
        core = self._core
        header = core.header(token)
        if core.needs_metadata(core.clock()) or core.needs_keys(header.kid, core.clock()):
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:  # one fetch for all who wait; they re-check after it
                now = core.clock()
                if core.needs_metadata(now):
                    await self._discover(now)
                if core.needs_keys(header.kid, now):
                    await self._fetch_keys(header.kid, now)
        published = core.key_for(header)
        access = core.check(token, header, published, core.clock())
        if core.introspect:
            access = await self._introspect(token, access)
        return core.require(access, scopes)

    async def _get(self, url: str) -> httpx.Response:
        try:
            return await self._client().get(url, headers={"Accept": "application/json"})
        except _HTTP_ERRORS as exc:
            raise VerifierUnavailable(f"GET {url}: {type(exc).__name__}") from None

    async def _discover(self, now: float) -> None:
        if self._core.metadata is not None:
            try:
                await self._discover_now(now)
            except VerifierUnavailable:
                self._core.metadata_until = now + DEFAULT_MAX_AGE
            return
        try:
            await self._discover_now(now)
        except VerifierUnavailable:
            self._core.discovery_failed(now)
            raise

    async def _discover_now(self, now: float) -> None:
        first, second = self._core.metadata_urls()
        response = await self._get(first)
        if response.status_code == 404:
            response = await self._get(second)
        self._core.take_metadata(response, now)

    async def _fetch_keys(self, kid: str, now: float) -> None:
        core = self._core
        core.note_fetch(kid, now)
        try:
            core.take_keys(await self._get(core.jwks_uri), now)
        except VerifierUnavailable:
            core.fetch_failed(now)
            if core.keys is None:
                raise

    async def _introspect(self, token: str, local: AccessToken) -> AccessToken:
        core = self._core
        found, answer = core.cached_answer(token, core.clock())
        if found:
            if answer is None:
                raise InvalidToken("not active (introspection, cached)")
            return answer
        data, headers = core.introspection_form(token)
        try:
            response = await self._client().post(core.introspection_endpoint, data=data,
                                                  headers=headers)
        except _HTTP_ERRORS as exc:
            raise VerifierUnavailable(f"introspection: {type(exc).__name__}") from None
        return core.take_answer(token, local, response, core.clock())

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None


_shared: dict[tuple[str, str], TokenVerifier] = {}
_shared_lock = threading.Lock()


def verify(token: str, *, issuer: str, audience: str,
           scopes: Iterable[str] = ()) -> AccessToken:
    """Verify ``token`` with a verifier shared per (issuer, audience) in this process (so
    its JWKS cache is shared too). For options, make a ``TokenVerifier`` of your own."""
    with _shared_lock:
        verifier = _shared.get((issuer, audience))
        if verifier is None:
            verifier = _shared[(issuer, audience)] = TokenVerifier(issuer, audience)
    return verifier.verify(token, scopes)
