"""ID token claims computed from the response they travel in (OIDC Core §3.1.3.6, §3.3.2.11).

The token itself is signed by provider.tokens.jwt (the one signing point).
"""

from __future__ import annotations

import base64
import hashlib


def at_hash(access_token: str) -> str:
    """OIDC Core §3.1.3.6: the left half of the SHA-256 of the access token (RS256,
    ES256 and PS256 all hash with SHA-256), base64url without padding."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")
