"""Signing algorithms: the key type each one uses, making and importing keys, and the
joserfc registry every signature of ours goes through.

One key, one algorithm (RFC 8725 §3.1): a key is made for its algorithm, the algorithm is
stored with it and published as the JWK's ``alg``, and a token is verified only under the
algorithm of the key its ``kid`` names. RS256 is the default (RFC 9068 §2.1 requires
every verifier to support it); ES256 and EdDSA sign many times faster.
"""

from __future__ import annotations

from typing import Literal, get_args

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

Algorithm = Literal["RS256", "PS256", "ES256", "EdDSA"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
DEFAULT_ALGORITHM: Algorithm = "RS256"

PrivateKey = RSAKey | ECKey | OKPKey

MIN_RSA_BITS = 2048
EC_CURVE = "P-256"
OKP_CURVE = "Ed25519"


class KeyMaterialError(Exception):
    """Key material that cannot be used; the message is safe to show."""


def is_algorithm(value: object) -> bool:
    return isinstance(value, str) and value in ALGORITHMS


def key_type(alg: Algorithm) -> str:
    """The JWK ``kty`` an algorithm signs with."""
    return {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}[alg]


def generate(alg: Algorithm) -> PrivateKey:
    """A new private key for ``alg``: RSA-2048, EC P-256 or Ed25519."""
    if alg in ("RS256", "PS256"):
        return RSAKey.generate_key(MIN_RSA_BITS, private=True)
    if alg == "ES256":
        return ECKey.generate_key(EC_CURVE, private=True)
    return OKPKey.generate_key("Ed25519", private=True)


def fits(key: PrivateKey, alg: Algorithm) -> bool:
    """Whether ``key`` is of the type ``alg`` signs with (and on its curve)."""
    if alg in ("RS256", "PS256"):
        return isinstance(key, RSAKey)
    if alg == "ES256":
        return isinstance(key, ECKey) and key.curve_name == EC_CURVE
    return isinstance(key, OKPKey) and key.curve_name == OKP_CURVE


def to_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM of the private key (no passphrase: the caller protects it)."""
    return key.as_pem(private=True)


def from_pem(data: bytes, alg: Algorithm) -> PrivateKey:
    """Our own stored key back (already checked when it was stored)."""
    key = parse_private_pem(data)
    if not fits(key, alg):
        raise KeyMaterialError(f"the stored key is not a key for {alg}")
    return key


def parse_private_pem(data: bytes) -> PrivateKey:
    """An RSA (>= 2048 bits), EC P-256 or Ed25519 private key, or KeyMaterialError."""
    # cryptography checks type and size first: joserfc warns (SecurityWarning) on a
    # short RSA key, which would be noise on the CLI's stderr and an error under -W error.
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyMaterialError("not a private key in PEM form") from None
        raise KeyMaterialError(
            "the PEM holds a public key; a private key is needed to sign"
        ) from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise KeyMaterialError(
                f"RSA key is {private.key_size} bits; at least {MIN_RSA_BITS} are required")
        return RSAKey.import_key(private)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        if not isinstance(private.curve, ec.SECP256R1):
            raise KeyMaterialError(
                f"EC key on {private.curve.name}; only P-256 (ES256) is supported")
        return ECKey.import_key(private)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return OKPKey.import_key(private)
    raise KeyMaterialError(
        "not an RSA, EC P-256 or Ed25519 private key; those are the key types we sign with")


def algorithm_for(key: PrivateKey, preferred: Algorithm) -> Algorithm:
    """The algorithm an imported key signs with: ``preferred`` when the key fits it, else
    the key type's own (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA)."""
    if fits(key, preferred):
        return preferred
    if isinstance(key, RSAKey):
        return "RS256"
    if isinstance(key, ECKey):
        return "ES256"
    return "EdDSA"


class _Registry(JWSRegistry):
    """joserfc's registry without its warning on "EdDSA".

    RFC 9864 deprecates the polymorphic "EdDSA" in favour of "Ed25519", and joserfc warns
    on every use. We choose "EdDSA" deliberately: it is what resource servers' libraries
    verify today (PyJWT knows no "Ed25519"). The allowlist passed with every call still
    decides which algorithm a signature may have.
    """

    def get_alg(self, name: str) -> JWSAlgModel:
        if name == "EdDSA" and self.allowed and name in self.allowed:
            return self.algorithms[name]
        return super().get_alg(name)


def registry(alg: Algorithm) -> JWSRegistry:
    """A registry that allows exactly ``alg`` (RFC 8725 §3.1)."""
    return _Registry(algorithms=[alg])


# One per algorithm, built once: the token path passes these with every call.
REGISTRIES: dict[Algorithm, JWSRegistry] = {alg: registry(alg) for alg in ALGORITHMS}
