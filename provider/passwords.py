"""Password policy (NIST SP 800-63B-4 §3.1.1.2) and hashing: argon2id via pwdlib, bcrypt
accepted for imported hashes and upgraded on login. Hashing runs in worker threads
behind a concurrency cap so argon2's CPU and memory never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import threading
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from typing import Any, TypeVar

from pwdlib import PasswordHash
from pwdlib.exceptions import PwdlibError
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from provider.errors import ProviderError
from provider.settings import Settings

# NIST 800-63B-4 asks for at least 64; the cap keeps a request from making us normalise
# and hash megabytes. Longer passwords are rejected, never truncated (ASVS 6.2.8).
MAX_PASSWORD_LENGTH = 1024

T = TypeVar("T")


class WeakPassword(ProviderError):
    status = 422
    code = "weak_password"
    title = "The password does not meet the policy."


def normalize_password(password: str) -> str:
    """NFKC, so that every way of typing the same characters gives the same password."""
    return unicodedata.normalize("NFKC", password)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The bundled blocklist (provider/data/common-passwords.txt), casefolded."""
    text = (files("provider") / "data" / "common-passwords.txt").read_text(encoding="utf-8")
    lines = text.splitlines()
    # Only the leading block of '#' lines is comment: listed passwords may start with '#'.
    start = 0
    while start < len(lines) and lines[start].startswith("#"):
        start += 1
    return frozenset(line.casefold() for line in lines[start:] if line)


def _comparable(text: str) -> str:
    """The form the blocklist and the email rules compare: case folded, without invisible
    format characters (a zero-width space, a soft hyphen: Unicode's Cf) and without
    spaces around it, so that none of them makes a common password new."""
    visible = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return visible.casefold().strip()


def check_password_policy(password: str, *, min_length: int, email: str | None = None) -> str:
    """Return the NFKC-normalised password, or raise WeakPassword saying which rule failed.

    Length is counted in code points (NIST SP 800-63B-4 §3.1.1.2), after normalisation
    and, for the minimum, as typed too: NFKC turns some single characters into many
    (U+FDFA into 18), and one character typed is one character guessed. The blocklist
    and the email rules compare the password without surrounding spaces and invisible
    characters (``_comparable``), so that "password" followed by a no-break space or a
    zero-width space is still "password". No composition rules
    (NIST 800-63B-4 SHALL NOT; ASVS 6.2.5).
    """
    normalized = normalize_password(password)
    if len(normalized) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"The password must be at most {MAX_PASSWORD_LENGTH} characters long.")
    if min(len(normalized), len(password)) < min_length:
        raise WeakPassword(f"The password must be at least {min_length} characters long.")
    try:
        normalized.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (possible through a JSON "\ud800" escape) cannot be hashed.
        raise WeakPassword(
            "The password contains characters that are not valid Unicode text."
        ) from None
    if any(unicodedata.category(ch) == "Cc" for ch in normalized):
        # NUL and the other control characters cannot be typed, and the sign-in forms
        # refuse NUL: a password holding one could be set but never used.
        raise WeakPassword("The password must not contain control characters.")
    folded = _comparable(normalized)
    if folded in common_passwords():
        raise WeakPassword(
            "The password is on a list of commonly used or breached passwords; "
            "choose a different one."
        )
    if email is not None:
        folded_email = _comparable(normalize_password(email))
        local_part, at, _domain = folded_email.rpartition("@")
        if at and folded == local_part:
            raise WeakPassword(
                "The password must not be the same as your email's local part "
                "(the part before the @)."
            )
        if folded == folded_email:
            raise WeakPassword("The password must not be the same as your email address.")
    return normalized


class PasswordHasher:
    """argon2id for new hashes; bcrypt only to verify (and replace) imported ones."""

    def __init__(self, settings: Settings) -> None:
        self._password_hash = PasswordHash(
            (
                Argon2Hasher(
                    memory_cost=settings.argon2_memory_cost,
                    time_cost=settings.argon2_time_cost,
                    parallelism=settings.argon2_parallelism,
                ),
                BcryptHasher(),
            )
        )
        # The cap is the pool's size: its threads take the next hash from its queue as
        # soon as one is done, not when the event loop gets round to handing it over
        # (a limiter in the loop left the cores idle between hashes under load).
        self._executor = ThreadPoolExecutor(max_workers=settings.password_hash_concurrency,
                                            thread_name_prefix="password-hash")
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()

    async def _in_pool(self, function: Callable[..., T], *args: Any) -> T:
        # A request cancelled before its turn is dropped from the queue (asyncio cancels
        # the pool's future); one already hashing finishes, unobserved.
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def close(self) -> None:
        """Stop the pool: hashes not started are dropped (the app's shutdown)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def hash(self, password: str) -> str:
        return await self._in_pool(self.hash_sync, password)

    def hash_sync(self, password: str) -> str:
        normalized = normalize_password(password)
        if len(normalized) > MAX_PASSWORD_LENGTH:
            # The policy rejects these first; this keeps the invariant for every caller.
            raise WeakPassword(
                f"The password must be at most {MAX_PASSWORD_LENGTH} characters long."
            )
        return self._password_hash.hash(normalized)

    async def verify(self, password: str, password_hash: str | None) -> tuple[bool, str | None]:
        """(is the password right, a replacement hash when the stored one is outdated)."""
        return await self._in_pool(self._verify_sync, password, password_hash)

    def _verify_sync(self, password: str, password_hash: str | None) -> tuple[bool, str | None]:
        candidate = normalize_password(password)
        if password_hash is None:
            # Unknown user: verify against a dummy hash anyway, so timing can't enumerate
            # accounts.
            self._burn_dummy(candidate)
            return False, None
        try:
            is_valid, new_hash = self._password_hash.verify_and_update(candidate, password_hash)
            if not is_valid and candidate != password and BcryptHasher.identify(password_hash):
                # Imported bcrypt hashes were made from the password as typed, not
                # normalised; accept that form once and store the normalised one.
                if self._password_hash.verify(password, password_hash):
                    return True, self._password_hash.hash(candidate)
            return is_valid, new_hash
        except (PwdlibError, ValueError):
            # Unrecognised or corrupt hash, or bcrypt refusing a password over 72 bytes
            # (pyca/bcrypt >= 5 raises where older versions truncated): a failed login,
            # never an error, and it costs what a real verification costs.
            self._burn_dummy(candidate)
            return False, None

    def _burn_dummy(self, candidate: str) -> None:
        with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = self._password_hash.hash(secrets.token_urlsafe(32))
            dummy_hash = self._dummy_hash
        # ValueError: a candidate argon2 cannot encode (a lone surrogate).
        with contextlib.suppress(ValueError):
            self._password_hash.verify(candidate, dummy_hash)
