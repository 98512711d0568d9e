"""The emails the product sends: one function per email, returning a ready Message.

Wording lives in the .txt and .html files next to this module (``string.Template``
syntax); every value is HTML-escaped before it goes into an .html file.
"""

from __future__ import annotations

import html
import re
import string
from functools import cache
from importlib.resources import files

from provider.mail.sender import Message

__all__ = [
    "account_deleted",
    "email_change_code",
    "email_change_notice",
    "mfa_changed",
    "mfa_reset",
    "password_changed",
    "password_reset_code",
    "recovery_codes_regenerated",
    "registration_attempt",
    "verification_code",
]

# [0-9], not \d: \d also matches other scripts' digits, which no one could type back.
_CODE = re.compile(r"[0-9]{6}")


def verification_code(
    to: str, *, code: str, ttl_minutes: int, product: str = "provider"
) -> Message:
    return _render(
        "verification_code",
        to,
        subject=f"Your {product} verification code",
        product=product,
        code=_checked_code(code),
        ttl=_minutes(ttl_minutes),
    )


def password_reset_code(
    to: str, *, code: str, ttl_minutes: int, product: str = "provider"
) -> Message:
    return _render(
        "password_reset_code",
        to,
        subject=f"Reset your {product} password",
        product=product,
        code=_checked_code(code),
        ttl=_minutes(ttl_minutes),
    )


def email_change_code(
    to: str, *, code: str, ttl_minutes: int, product: str = "provider"
) -> Message:
    """Sent to the new address, to prove the user owns it."""
    return _render(
        "email_change_code",
        to,
        subject=f"Confirm your new {product} email address",
        product=product,
        code=_checked_code(code),
        ttl=_minutes(ttl_minutes),
    )


def registration_attempt(to: str, *, base_url: str, product: str = "provider") -> Message:
    """Sent instead of a code when someone registers with a taken address (no enumeration).

    ``base_url`` is the configured issuer, never a request's Host header: a forged
    Host would otherwise put an attacker's link into a genuine mail.
    """
    if not base_url.startswith(("https://", "http://")):
        raise ValueError("base_url must be an http(s) URL (the configured issuer)")
    return _render(
        "registration_attempt",
        to,
        subject=f"Your {product} account already exists",
        product=product,
        base_url=base_url,
    )


def password_changed(to: str, *, product: str = "provider") -> Message:
    return _render(
        "password_changed",
        to,
        subject=f"Your {product} password was changed",
        product=product,
    )


def email_change_notice(to: str, *, new_email_hint: str, product: str = "provider") -> Message:
    """Sent to the old address, so a hijacker cannot move the account away silently."""
    return _render(
        "email_change_notice",
        to,
        subject=f"The email address of your {product} account was changed",
        product=product,
        new_email_hint=new_email_hint,
    )


def email_changed_by_admin(to: str, *, new_email_hint: str,
                           product: str = "provider") -> Message:
    """Sent to the old address when an administrator changed it (API or CLI)."""
    return _render(
        "email_changed_by_admin",
        to,
        subject=f"The email address of your {product} account was changed",
        product=product,
        new_email_hint=new_email_hint,
    )


def email_change_attempt(to: str, *, product: str = "provider") -> Message:
    """Sent instead of a code when an account asks to move to a taken address: the
    caller is answered as for a free one (no enumeration)."""
    return _render(
        "email_change_attempt",
        to,
        subject=f"Someone asked to use your address for another {product} account",
        product=product,
    )


def account_deleted(to: str, *, product: str = "provider") -> Message:
    return _render(
        "account_deleted",
        to,
        subject=f"Your {product} account was deleted",
        product=product,
    )


def mfa_changed(to: str, *, enabled: bool, product: str = "provider") -> Message:
    state = "on" if enabled else "off"
    return _render(
        "mfa_enabled" if enabled else "mfa_disabled",
        to,
        subject=f"Two-step verification was turned {state} for your {product} account",
        product=product,
    )


def recovery_codes_regenerated(to: str, *, product: str = "provider") -> Message:
    return _render(
        "recovery_codes_regenerated",
        to,
        subject=f"New recovery codes for your {product} account",
        product=product,
    )


def mfa_reset(to: str, *, product: str = "provider") -> Message:
    """Sent when an administrator (API or CLI) removed the account's two-step verification."""
    return _render(
        "mfa_reset",
        to,
        subject=f"Your {product} two-step verification was reset by an administrator",
        product=product,
    )


def mfa_locked(to: str, *, failures: int, product: str = "provider") -> Message:
    """Sent when wrong codes in a row at sign-in locked the second factor."""
    return _render(
        "mfa_locked",
        to,
        subject=f"Your {product} sign-in is locked after {failures} wrong codes",
        product=product,
        failures=str(failures),
    )


def recovery_code_used(to: str, *, remaining: int, product: str = "provider") -> Message:
    """Sent when a sign-in used a recovery code (NIST SP 800-63B: the subscriber hears of
    a recovery event)."""
    return _render(
        "recovery_code_used",
        to,
        subject=f"A recovery code was used to sign in to your {product} account",
        product=product,
        remaining=str(remaining),
    )


def _checked_code(code: str) -> str:
    # Users, tests and mail clients all look for a standalone 6-digit number.
    if not _CODE.fullmatch(code):
        raise ValueError("an email code must be exactly 6 digits")
    return code


def _minutes(ttl_minutes: int) -> str:
    if ttl_minutes < 1:
        raise ValueError("ttl_minutes must be at least 1")
    return "1 minute" if ttl_minutes == 1 else f"{ttl_minutes} minutes"


@cache
def _template(name: str) -> string.Template:
    return string.Template(files(__name__).joinpath(name).read_text(encoding="utf-8"))


def _render(name: str, to: str, *, subject: str, product: str, **values: str) -> Message:
    values["product"] = product
    text = _template("layout.txt").substitute(
        body=_template(f"{name}.txt").substitute(values).strip(), product=product
    )
    escaped = {key: html.escape(value) for key, value in values.items()}
    page = _template("layout.html").substitute(
        subject=html.escape(subject),
        body=_template(f"{name}.html").substitute(escaped).strip(),
        product=escaped["product"],
    )
    return Message(to=to, subject=subject, text=text, html=page)
