"""CSRF tokens of the login, second-factor, consent and logout forms.

A signed double-submit token (OWASP CSRF cheat sheet): the browser holds a random value
in an HttpOnly cookie, and each form carries HMAC-SHA256(key, purpose, that value) under
a key derived from the server secret. Another site can neither read the cookie nor
compute the token, so it cannot post a form that passes, the login form included (login
CSRF). The cookie is replaced at every login, so tokens of before the login die.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from provider.mfa.totp import derive_key

COOKIE_BYTES = 32
MAX_LENGTH = 256


class Csrf:
    def __init__(self, server_secret: bytes) -> None:
        self._key = derive_key(server_secret, "csrf")

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(COOKIE_BYTES)

    def token(self, cookie: str, purpose: str) -> str:
        mac = hmac.new(self._key, f"{purpose}\n{cookie}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def check(self, cookie: str | None, purpose: str, submitted: str | None) -> bool:
        if not cookie or not submitted or len(cookie) > MAX_LENGTH \
                or len(submitted) > MAX_LENGTH:
            return False
        # As bytes: compare_digest raises on str with non-ASCII characters.
        return hmac.compare_digest(self.token(cookie, purpose).encode(),
                                   submitted.encode())
