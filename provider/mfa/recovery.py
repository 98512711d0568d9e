"""Recovery codes: look-up secrets for when the authenticator app is lost.

Ten codes of 80 random bits each (≥ 64 asked by NIST SP 800-63B §4.2.1.1 and ASVS
6.2.9's spirit), written as four groups of four base32 characters (``ABCD-EFGH-JKMN-PQRS``,
Crockford's alphabet: no I, L, O or U to misread). Stored only as HMAC-SHA256 digests
under a key derived from the server secret: a stolen database alone does not allow an
offline search, and a submitted code is found (and used) by its digest in one statement.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from provider.mfa.totp import derive_key

COUNT = 10
# 16 characters of a 32-symbol alphabet: 80 bits.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_LENGTH = 16
# Characters people type for others that look alike (Crockford base32).
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})
MAX_INPUT_LENGTH = 64


def new_codes() -> list[str]:
    codes: set[str] = set()
    while len(codes) < COUNT:
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))
        codes.add("-".join(raw[i:i + 4] for i in range(0, _LENGTH, 4)))
    return sorted(codes)


def normalize(code: str) -> str | None:
    """What was typed, as stored: upper case, no spaces or dashes; None if it cannot be
    a recovery code."""
    if len(code) > MAX_INPUT_LENGTH:
        return None
    cleaned = "".join(ch for ch in code.upper() if ch not in " -\t").translate(_READ_AS)
    if len(cleaned) != _LENGTH or any(ch not in _ALPHABET for ch in cleaned):
        return None
    return cleaned


class RecoveryDigests:
    def __init__(self, server_secret: bytes) -> None:
        self._key = derive_key(server_secret, "recovery-code-digest/v1")

    def digest(self, user_id: uuid.UUID, code: str) -> bytes | None:
        """The stored digest of ``code`` for this user, or None when it is not shaped
        like a recovery code. Bound to the user: one user's code is worthless to another."""
        normalized = normalize(code)
        if normalized is None:
            return None
        return hmac.new(self._key, f"{user_id}:{normalized}".encode(),
                        hashlib.sha256).digest()
