"""The one signing point: JWTs for access tokens (RFC 9068) and ID tokens, signed with
the active key under its own algorithm (RS256 by default; PROVIDER_SIGNING_ALG).

Verification trusts nothing in the header but ``kid`` as a lookup key into our own
key ring: the algorithm is pinned to the key's (RFC 8725 §3.1), ``typ`` keeps token kinds apart
(§3.11, §3.12), ``jku``/``x5u``/``jwk`` are never followed (§3.10), unknown ``crit``
rejects the token (RFC 7515 §4.1.11), and iss/aud/exp are checked exactly.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jws, jwt
from joserfc.errors import JoseError

from provider.keys.algorithms import ALGORITHMS, REGISTRIES
from provider.keys.service import KeyRing, LoadedKey

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105
ID_TOKEN_TYP = "JWT"  # noqa: S105
# Tolerated clock difference for iat/nbf in the future (our own processes only).
CLOCK_SKEW = timedelta(seconds=30)
MAX_TOKEN_LENGTH = 8192


class TokenRejected(Exception):
    """A presented JWT is not a valid access token of ours. The reason is for logs only."""


@dataclass(frozen=True)
class AccessClaims:
    sub: str
    client_id: str
    scope: frozenset[str]
    jti: str
    exp: int
    iat: int
    sid: str | None
    """The refresh-token family the token was issued with (None for client_credentials)."""
    raw: dict[str, Any]


class JwtService:
    def __init__(self, keys: KeyRing, *, issuer: str, audience: str) -> None:
        self._keys = keys
        self.issuer = issuer
        self.audience = audience

    def _sign(self, claims: dict[str, Any], typ: str) -> str:
        """RFC 7515 §7.1 compact serialisation, byte for byte what ``joserfc.jwt.encode``
        makes (tests compare them): the header segment encoded once per key and kind (it
        is constant), the signature made by the key's one algorithm (RFC 7518 §3)."""
        signer = self._keys.signing_key()
        made = _signers.get((signer.kid, signer.alg, typ))
        if made is None:
            made = _signer(signer, typ)
        prefix, sign = made
        signing_input = prefix + _b64(_CLAIMS_JSON.encode(claims).encode())
        return (signing_input + b"." + _b64(sign(signing_input))).decode("ascii")

    def issue_access_token(
        self,
        *,
        sub: str,
        client_id: str,
        scope: str,
        now: datetime,
        ttl: timedelta,
        sid: str | None = None,
        auth_time: datetime | None = None,
        amr: tuple[str, ...] | None = None,
    ) -> tuple[str, str]:
        """Return (token, jti)."""
        iat = int(now.timestamp())
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.audience,
            "exp": iat + int(ttl.total_seconds()),
            "iat": iat,
            "jti": jti,
            "client_id": client_id,
            "scope": scope,
        }
        if sid is not None:
            claims["sid"] = sid
        if auth_time is not None:
            claims["auth_time"] = int(auth_time.timestamp())
        if amr:
            claims["amr"] = list(amr)  # RFC 8176 (RFC 9068 §2.2.1)
        return self._sign(claims, ACCESS_TOKEN_TYP), jti

    def issue_id_token(
        self,
        *,
        sub: str,
        client_id: str,
        now: datetime,
        ttl: timedelta,
        auth_time: datetime,
        sid: str | None = None,
        amr: tuple[str, ...] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        iat = int(now.timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": client_id,
            "azp": client_id,
            "exp": iat + int(ttl.total_seconds()),
            "iat": iat,
            "auth_time": int(auth_time.timestamp()),
            "jti": secrets.token_urlsafe(16),
        }
        if sid is not None:
            claims["sid"] = sid
        if amr:
            claims["amr"] = list(amr)  # OIDC Core §2, RFC 8176
        claims.update(extra or {})
        return self._sign(claims, ID_TOKEN_TYP)

    def verify_access_token(self, token: str, *, now: datetime) -> AccessClaims:
        def access_token_header(header: dict[str, Any]) -> None:
            typ = header.get("typ")
            if not isinstance(typ, str) or typ.lower() not in ("at+jwt", "application/at+jwt"):
                raise TokenRejected("not an access token")
            if "crit" in header:
                raise TokenRejected("unsupported critical header")

        return self._check_claims(self._signed_claims(token, access_token_header), now)

    def verify_id_token_hint(self, token: str) -> dict[str, Any]:
        """An ID token of ours presented back to us (OIDC RP-Initiated Logout's
        ``id_token_hint``): signature, algorithm, ``typ`` and issuer are checked as for
        any token; its expiry is not (an expired ID token is still a valid hint, §2)."""
        def id_token_header(header: dict[str, Any]) -> None:
            if header.get("typ") != ID_TOKEN_TYP or "crit" in header:
                raise TokenRejected("not an ID token")

        claims = self._signed_claims(token, id_token_header)
        if claims.get("iss") != self.issuer:
            raise TokenRejected("wrong issuer")
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("aud"),
                                                                    str | list):
            raise TokenRejected("missing sub/aud")
        return claims

    def _signed_claims(self, token: str,
                       check_header: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """The claims of a compact JWS signed by one of our keys, under that key's one
        algorithm; ``check_header`` refuses a header of the wrong kind of token."""
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise TokenRejected("malformed")
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeError):
            raise TokenRejected("malformed") from None
        if not isinstance(header, dict):
            # joserfc returns whatever JSON the segment holds: ["alg"] and "alg" pass its
            # own check for the member.
            raise TokenRejected("malformed")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenRejected("algorithm not allowed")
        check_header(header)
        key = self._keys.verification_key(header.get("kid"))
        if key is None:
            raise TokenRejected("unknown key")
        if alg != key.alg:  # one key, one algorithm
            raise TokenRejected("algorithm not allowed for this key")
        try:
            claims: dict[str, Any] = jwt.decode(token, key.key,
                                                registry=REGISTRIES[key.alg]).claims
        except (JoseError, ValueError):
            raise TokenRejected("bad signature") from None
        return claims

    def _check_claims(self, claims: dict[str, Any], now: datetime) -> AccessClaims:
        if claims.get("iss") != self.issuer:
            raise TokenRejected("wrong issuer")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.audience not in audiences:
            raise TokenRejected("wrong audience")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int) or not _is_int(exp) \
                or not _is_int(iat):
            raise TokenRejected("missing exp/iat")
        timestamp = now.timestamp()
        if exp <= timestamp:
            raise TokenRejected("expired")
        skew = CLOCK_SKEW.total_seconds()
        if iat > timestamp + skew:
            raise TokenRejected("issued in the future")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, int) or not _is_int(nbf)
                                or nbf > timestamp + skew):
            raise TokenRejected("not yet valid")
        sub, client_id, jti = claims.get("sub"), claims.get("client_id"), claims.get("jti")
        scope, sid = claims.get("scope", ""), claims.get("sid")
        if not all(isinstance(v, str) and v for v in (sub, client_id, jti)):
            raise TokenRejected("missing sub/client_id/jti")
        if not isinstance(scope, str) or (sid is not None and not isinstance(sid, str)):
            raise TokenRejected("malformed scope/sid")
        return AccessClaims(
            sub=str(sub),
            client_id=str(client_id),
            scope=frozenset(scope.split()),
            jti=str(jti),
            exp=int(exp),
            iat=int(iat),
            sid=sid,
            raw=claims,
        )


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


# As joserfc.jwt.encode writes claims and headers: compact, claims in UTF-8.
_CLAIMS_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_HEADER_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))

# (kid, alg, typ) -> the encoded protected header with its dot, and the key's signature
# function. A handful of entries: one per kind of token for each key that has signed
# since the process started.
_signers: dict[tuple[str, str, str], tuple[bytes, Callable[[bytes], bytes]]] = {}


def _signer(loaded: LoadedKey, typ: str) -> tuple[bytes, Callable[[bytes], bytes]]:
    header = {"typ": typ, "alg": loaded.alg, "kid": loaded.kid}  # joserfc's order
    prefix = _b64(_HEADER_JSON.encode(header).encode()) + b"."
    made = (prefix, _signature_function(loaded))
    if len(_signers) > 64:
        _signers.clear()
    _signers[(loaded.kid, loaded.alg, typ)] = made
    return made


def _signature_function(loaded: LoadedKey) -> Callable[[bytes], bytes]:
    """The JWS signature of RFC 7518 §3.3 (RS256), §3.5 (PS256), §3.4 (ES256: r || s,
    32 bytes each) or RFC 8037 §3.1 (EdDSA), with the key made for that algorithm."""
    private: Any = loaded.key.get_op_key("sign")
    sha256 = hashes.SHA256()
    if loaded.alg == "RS256":
        pkcs1 = padding.PKCS1v15()
        return lambda data: private.sign(data, pkcs1, sha256)
    if loaded.alg == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(sha256), salt_length=32)
        return lambda data: private.sign(data, pss, sha256)
    if loaded.alg == "ES256":
        ecdsa = ec.ECDSA(sha256)

        def es256(data: bytes) -> bytes:
            r, s = decode_dss_signature(private.sign(data, ecdsa))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return es256
    if loaded.alg == "EdDSA":
        return lambda data: private.sign(data)
    raise ValueError(f"no signature function for {loaded.alg}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

