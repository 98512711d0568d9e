"""Our compact JWS serialisation (provider.tokens.jwt: the header segment encoded once per
key, the signature made straight by the key) is joserfc's, byte for byte, for every
algorithm we sign with; and what it signs verifies under joserfc and PyJWT."""

from __future__ import annotations

import jwt as pyjwt
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError

from provider.keys.algorithms import ALGORITHMS, REGISTRIES, Algorithm, generate
from provider.keys.service import LoadedKey
from provider.tokens.jwt import JwtService

CLAIMS = {"iss": "https://issuer.example", "sub": "s", "aud": "https://issuer.example",
          "exp": 4102444800, "iat": 1700000000, "jti": "j", "scope": "a b",
          "amr": ["pwd", "otp"], "name": "Zoë Ångström ✓"}
DETERMINISTIC = {"RS256", "EdDSA"}  # PS256 and ES256 signatures are randomised


class _Ring:
    def __init__(self, key: LoadedKey) -> None:
        self.key = key

    def signing_key(self) -> LoadedKey:
        return self.key


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("typ", ["at+jwt", "JWT"])
def test_compact_serialisation_is_joserfcs(alg: Algorithm, typ: str) -> None:
    loaded = LoadedKey(f"kid-{alg}", alg, generate(alg))
    service = JwtService(_Ring(loaded), issuer="i", audience="a")  # type: ignore[arg-type]
    ours = service._sign(dict(CLAIMS), typ)
    theirs = jwt.encode({"alg": alg, "typ": typ, "kid": loaded.kid}, dict(CLAIMS),
                        loaded.key, registry=REGISTRIES[alg])
    header, payload, signature = ours.split(".")
    assert [header, payload] == theirs.split(".")[:2]
    if alg in DETERMINISTIC:
        assert signature == theirs.split(".")[2]
    assert jwt.decode(ours, loaded.key, registry=REGISTRIES[alg]).claims == CLAIMS
    public = loaded.key.as_pem(private=False)
    decoded = pyjwt.decode(ours, public, algorithms=[alg], audience="https://issuer.example")
    assert decoded == CLAIMS
    assert pyjwt.get_unverified_header(ours) == {"typ": typ, "alg": alg, "kid": loaded.kid}


def test_a_tampered_payload_does_not_verify() -> None:
    loaded = LoadedKey("kid-es", "ES256", generate("ES256"))
    service = JwtService(_Ring(loaded), issuer="i", audience="a")  # type: ignore[arg-type]
    header, _, signature = service._sign(dict(CLAIMS), "at+jwt").split(".")
    other = service._sign({**CLAIMS, "sub": "admin"}, "at+jwt").split(".")[1]
    with pytest.raises(BadSignatureError):
        jwt.decode(f"{header}.{other}.{signature}", loaded.key, registry=REGISTRIES["ES256"])
