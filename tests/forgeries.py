"""Forged and misused access tokens, made by hand with cryptography so that no JOSE
library's guard rails stand between the attack and the verifier under test.

One catalogue for both verifiers of ours: the server's own (tests/tokens/
test_jwt_forgery.py) and the resource servers' package (tests/resource/): every case
must be refused by both. RFC 8725 (JWT BCP), RFC 9068 §4, RFC 7515 §4.1.11 and the JWT
CVEs of SECURITY.md: `none`, algorithm confusion, unknown or hostile `kid`, embedded
`jwk`, `jku`/`x5u`, `crit`, issuer and audience tricks, token kinds, expiry, claim types.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc.jwk import RSAKey

ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def sign_rs(header: dict[str, Any], claims: dict[str, Any], key: rsa.RSAPrivateKey,
            digest: hashes.HashAlgorithm | None = None, *, pss: bool = False) -> str:
    signing_input = f"{segment(header)}.{segment(claims)}".encode()
    algorithm = digest or hashes.SHA256()
    pad: padding.AsymmetricPadding = (
        padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
        if pss else padding.PKCS1v15()
    )
    signature = key.sign(signing_input, pad, algorithm)
    return f"{signing_input.decode()}.{b64url(signature)}"


def sign_hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{segment(header)}.{segment(claims)}".encode()
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64url(mac)}"


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{segment(header)}.{segment(claims)}."


@dataclass
class Forge:
    """The verifier's real RS256 signing key and the claims of a valid token."""

    kid: str
    key: rsa.RSAPrivateKey
    public_jwk: dict[str, Any]
    claims: dict[str, Any]

    def header(self, **overrides: Any) -> dict[str, Any]:
        header = {"alg": "RS256", "typ": "at+jwt", "kid": self.kid, **overrides}
        return {k: v for k, v in header.items() if v is not None}

    def with_claims(self, **overrides: Any) -> dict[str, Any]:
        claims = {**self.claims, **overrides}
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        return sign_rs(header or self.header(), self.with_claims(**claims), self.key)


def forge_for(key: RSAKey, claims: dict[str, Any]) -> Forge:
    assert key.private_key is not None
    private = key.private_key
    assert isinstance(private, rsa.RSAPrivateKey)
    return Forge(key.thumbprint(), private, key.as_dict(private=False), claims)


# A case makes one or more tokens that must be refused, from the forge, the verifier's
# "now" (seconds) and the leeway it grants on exp/nbf/iat (so that "just expired" is
# expired for it too).
Case = Callable[[Forge, int, int], list[str]]
FORGERIES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(make: Case) -> Case:
        assert name not in FORGERIES, name
        FORGERIES[name] = make
        return make
    return register


# --- alg none and algorithm confusion -------------------------------------------------------

for _alg in ("none", "None", "NONE", "nOnE"):
    @case(f"alg-{_alg}")
    def _none(forge: Forge, now: int, leeway: int, alg: str = _alg) -> list[str]:
        bare = unsigned(forge.header(alg=alg), forge.claims)
        # ...also with a signature attached that was made for the honest header.
        honest = forge.sign().rsplit(".", 1)[1]
        return [bare, bare + honest]


def _public_secrets(forge: Forge) -> dict[str, bytes]:
    public = forge.key.public_key()
    return {
        "pem": public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo),
        "pem-pkcs1": public.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.PKCS1),
        "jwk-json": json.dumps(forge.public_jwk).encode(),
        "modulus": public.public_numbers().n.to_bytes(256, "big"),
    }


for _form in ("pem", "pem-pkcs1", "jwk-json", "modulus"):
    # Algorithm confusion (CVE-2015-9235, CVE-2022-29217): the public key is public.
    @case(f"hs256-public-key-{_form}")
    def _hs256(forge: Forge, now: int, leeway: int, form: str = _form) -> list[str]:
        secret = _public_secrets(forge)[form]
        return [sign_hs256(forge.header(alg="HS256"), forge.claims, secret)]


for _alg, _digest, _pss in (("RS384", hashes.SHA384(), False),
                            ("RS512", hashes.SHA512(), False),
                            ("PS256", hashes.SHA256(), True)):
    # One key, one algorithm (RFC 8725 §3.1): a valid signature under another alg fails.
    @case(f"other-alg-{_alg}")
    def _other(forge: Forge, now: int, leeway: int, alg: str = _alg,
               digest: hashes.HashAlgorithm = _digest, pss: bool = _pss) -> list[str]:
        return [sign_rs(forge.header(alg=alg), forge.claims, forge.key, digest, pss=pss)]


# --- keys ------------------------------------------------------------------------------------

@case("unknown-kid")
def _unknown_kid(forge: Forge, now: int, leeway: int) -> list[str]:
    attacker_kid = RSAKey.import_key(ATTACKER_KEY).thumbprint()
    return [sign_rs(forge.header(kid=attacker_kid), forge.claims, ATTACKER_KEY),
            # A well-formed kid that is simply not ours, on a token our key signed.
            forge.sign(forge.header(kid="A" * 43))]


HOSTILE_KIDS: list[Any] = [
    "../../../../etc/passwd", "../keys/{kid}", "{kid}/../{kid}", "{kid}.pem", "/{kid}",
    "' OR '1'='1", "{kid}' OR 1=1 --", "{kid}\x00", "", None, 42, ["{kid}"], {"kid": "{kid}"},
]


def _fill(value: Any, kid: str) -> Any:
    if isinstance(value, str):
        return value.replace("{kid}", kid)
    if isinstance(value, list):
        return [_fill(v, kid) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, kid) for k, v in value.items()}
    return value


for _index, _kid in enumerate(HOSTILE_KIDS):
    # RFC 8725 §3.10: kid is only a lookup key, and only a thumbprint-shaped one.
    @case(f"hostile-kid-{_index}")
    def _hostile(forge: Forge, now: int, leeway: int, kid: Any = _kid) -> list[str]:
        header = forge.header()
        if kid is None:
            del header["kid"]
        else:
            header["kid"] = _fill(kid, forge.kid)
        return [forge.sign(header)]


@case("embedded-jwk")
def _embedded_jwk(forge: Forge, now: int, leeway: int) -> list[str]:
    # CVE-2018-0114: a token that brings its own key.
    attacker = RSAKey.import_key(ATTACKER_KEY)
    attacker_public = attacker.as_dict(private=False)
    tokens = [sign_rs(forge.header(kid=kid, jwk=attacker_public), forge.claims, ATTACKER_KEY)
              for kid in (attacker.thumbprint(), forge.kid)]
    no_kid = {"alg": "RS256", "typ": "at+jwt", "jwk": attacker_public}
    return [*tokens, sign_rs(no_kid, forge.claims, ATTACKER_KEY)]


for _member in ("jku", "x5u"):
    @case(f"{_member}-not-followed")
    def _remote(forge: Forge, now: int, leeway: int, member: str = _member) -> list[str]:
        attacker_kid = RSAKey.import_key(ATTACKER_KEY).thumbprint()
        return [sign_rs(forge.header(kid=kid, **{member: "https://evil.example/jwks.json"}),
                        forge.claims, ATTACKER_KEY) for kid in (attacker_kid, forge.kid)]


# --- the signature ---------------------------------------------------------------------------

@case("tampered-claims")
def _tampered(forge: Forge, now: int, leeway: int) -> list[str]:
    header, _payload, signature = forge.sign().split(".")
    return [f"{header}.{segment(forge.with_claims(**changes))}.{signature}"
            for changes in ({"scope": "openid admin"}, {"sub": secrets.token_hex(8)},
                            {"exp": forge.claims["exp"] + 86400})]


@case("broken-signature")
def _broken(forge: Forge, now: int, leeway: int) -> list[str]:
    header, payload, signature = forge.sign().split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return [f"{header}.{payload}.{flipped}", f"{header}.{payload}.{signature[:-4]}",
            f"{header}.{payload}."]


# --- time --------------------------------------------------------------------------------------

@case("expired")
def _expired(forge: Forge, now: int, leeway: int) -> list[str]:
    return [forge.sign(exp=now - leeway - 1, iat=now - leeway - 901),
            forge.sign(exp=now - leeway)]  # exp is exclusive


@case("not-yet-valid")
def _not_yet(forge: Forge, now: int, leeway: int) -> list[str]:
    return [forge.sign(iat=now + 3600, exp=now + 4000), forge.sign(nbf=now + 3600)]


# --- issuer, audience, claims ----------------------------------------------------------------

def _wrong_issuers(iss: str) -> list[Any]:
    scheme, rest = iss.split("://", 1)
    other_scheme = "https" if scheme == "http" else "http"
    return [f"{iss}/", f"{iss}.evil.example", iss[:-1], f"{iss}/evil",
            f"{other_scheme}://{rest}", f"{scheme.upper()}://{rest}", f"evil {iss}", [iss],
            "", None]


for _index in range(10):
    # Exact match only: no prefix, substring or list tricks (CVE-2024-53861).
    @case(f"wrong-issuer-{_index}")
    def _issuer(forge: Forge, now: int, leeway: int, index: int = _index) -> list[str]:
        return [forge.sign(iss=_wrong_issuers(forge.claims["iss"])[index])]  # None: no iss


def _wrong_audiences(aud: str) -> list[Any]:
    return ["https://api.other.example", ["https://api.other.example"], f"{aud}/", "", [],
            None, "cl_some_client"]


for _index in range(7):
    @case(f"wrong-audience-{_index}")
    def _audience(forge: Forge, now: int, leeway: int, index: int = _index) -> list[str]:
        return [forge.sign(aud=_wrong_audiences(forge.claims["aud"])[index])]  # None: no aud


for _missing in ("sub", "jti", "client_id", "exp", "iat"):
    @case(f"missing-{_missing}")
    def _without(forge: Forge, now: int, leeway: int, missing: str = _missing) -> list[str]:
        claims = dict(forge.claims)
        del claims[missing]
        return [sign_rs(forge.header(), claims, forge.key)]


WRONG_TYPES: list[dict[str, Any]] = [{"exp": "9999999999"}, {"iat": True}, {"scope": ["a"]},
                                     {"sub": 12}, {"sid": 7}]

for _index, _changes in enumerate(WRONG_TYPES):
    @case(f"claim-of-wrong-type-{_index}")
    def _typed(forge: Forge, now: int, leeway: int,
               changes: dict[str, Any] = _changes) -> list[str]:
        return [forge.sign(**changes)]


# --- token kinds and headers ------------------------------------------------------------------

for _index, _typ in enumerate(["JWT", "jwt", "at+JWT+x", "", None, "id_token"]):
    # `typ` keeps an ID token (or any other JWT of ours) from passing as an access token.
    @case(f"not-an-access-token-typ-{_index}")
    def _typ_case(forge: Forge, now: int, leeway: int, typ: Any = _typ) -> list[str]:
        return [forge.sign(forge.header(typ=typ))]


for _index, _extra in enumerate([{"crit": ["exp"]}, {"crit": ["b64"], "b64": False},
                                 {"crit": []},
                                 {"crit": ["urn:example:unknown"], "urn:example:unknown": 1}]):
    # RFC 7515 §4.1.11: an extension we do not understand makes the token invalid.
    @case(f"crit-{_index}")
    def _crit(forge: Forge, now: int, leeway: int,
              extra: dict[str, Any] = _extra) -> list[str]:
        return [forge.sign(forge.header(**extra))]


# --- not a JWT at all ---------------------------------------------------------------------------

MALFORMED = ["", "abc", "a.b", "a.b.c", "a.b.c.d", "..", "e30.e30.", "x" * 9000,
             "eyJhbGciOiJSUzI1NiJ9.!!!.sig", "é.é.é",
             # A header that is JSON but not an object, naming "alg" (joserfc passes it).
             "WyJhbGciXQ.e30.eA", "ImFsZyI.e30.eA", "WyJhbGciLCJ0eXAiLCJraWQiXQ.e30.eA"]

for _index, _token in enumerate(MALFORMED):
    @case(f"malformed-{_index}")
    def _malformed(forge: Forge, now: int, leeway: int, token: str = _token) -> list[str]:
        return [token]


@case("too-long")
def _too_long(forge: Forge, now: int, leeway: int) -> list[str]:
    return [forge.sign(padding="x" * 9000)]
