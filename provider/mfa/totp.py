"""TOTP (RFC 6238): secrets, their encryption at rest, otpauth URIs, QR codes, and which
30-second step a code belongs to.

Parameters are the ones every authenticator app understands: SHA-1, 6 digits, 30 s.
A code is accepted for the current step or the one before it (one step of delay, §5.2),
never two steps away; whether that step was already used is the caller's conditional
UPDATE (provider.mfa.service).
"""

from __future__ import annotations

import base64
import hmac
import io
from datetime import datetime

import pyotp
import segno
from cryptography.fernet import Fernet, InvalidToken

# One derivation for every key made from the server secret, each with its own label.
from provider.keys.store import derive_key as derive_key

STEP_SECONDS = 30
DIGITS = 6
# 160 bits: the HMAC-SHA-1 output size (RFC 4226 §4 R6 recommends it; ≥128 required).
SECRET_BYTES = 20


class SecretUndecryptable(RuntimeError):
    """A stored TOTP secret does not decrypt: PROVIDER_SECRET_KEY changed or the row was
    tampered with. An admin must reset the user's MFA (or the old key be restored)."""


class SecretBox:
    """Encrypts TOTP secrets at rest (Fernet: AES-128-CBC with HMAC-SHA256)."""

    def __init__(self, server_secret: bytes) -> None:
        key = derive_key(server_secret, "totp-secret-encryption/v1")
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode("ascii"))

    def open(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(sealed).decode("ascii")
        except (InvalidToken, UnicodeDecodeError):
            raise SecretUndecryptable(
                "a TOTP secret cannot be decrypted (did PROVIDER_SECRET_KEY change?)"
            ) from None


def new_secret() -> str:
    """160 random bits (``secrets``), base32 without padding: 32 characters."""
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    """The ``otpauth://totp/ISSUER:ACCOUNT?secret=...&issuer=...`` URI (Key Uri Format)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """The URI as a QR code in SVG, made here (no third-party service sees the secret).

    Error correction M; black on an explicit white background so that it scans on dark
    pages too; a 4-module quiet zone as ISO/IEC 18004 asks.
    """
    buffer = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(
        buffer, kind="svg", scale=5, border=4, dark="#000", light="#fff", xmldecl=False,
        svgclass=None, lineclass=None, title="TOTP enrolment QR code",
    )
    return buffer.getvalue().decode("utf-8")


def step_of(instant: datetime) -> int:
    return int(instant.timestamp()) // STEP_SECONDS


def is_code_shaped(code: str) -> bool:
    return len(code) == DIGITS and code.isascii() and code.isdigit()


def matching_step(secret: str, code: str, *, now: datetime) -> int | None:
    """The step (current or previous) whose code ``code`` is, or None. Both candidates are
    computed and compared in constant time, so timing tells nothing about which."""
    if not is_code_shaped(code):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = step_of(now)
    found = None
    for step in (current - 1, current):
        # Later wins: a code valid for both steps (a 10^-6 coincidence) counts as current.
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found
