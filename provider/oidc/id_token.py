"""ID token claims computed from the response they travel in (OIDC Core §3.1.3.6, §3.3.2.11).

The token itself is signed by provider.tokens.jwt (the one signing point).
"""

from __future__ import annotations

import base64
import hashlib


def at_hash(access_token: str, alg: str = "RS256") -> str:
    """OIDC Core §3.1.3.6: the left half of the hash of the access token, with the hash
    of the ID token's ``alg`` (RS256, ES256 and PS256: SHA-256; EdDSA over Ed25519:
    SHA-512, as OpenID's implementations agree), base64url without padding."""
    hashed = hashlib.sha512 if alg == "EdDSA" else hashlib.sha256
    digest = hashed(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")
