"""Email one-time codes: verify an address, reset a password, confirm a new address.

Six digits from ``secrets``, stored as an HMAC under the server secret, bound to one
user and one purpose, valid 10 minutes, used once (also under concurrent submissions),
dead after 5 wrong tries. A resend replaces the code in place: the old one dies and the
new one gets its own 5 tries, so wrong codes from strangers never make a fresh code dead
on arrival. The failure count that a resend does not reset (NIST SP 800-63B §3.1.3.2,
§3.2.2) is the account-wide throttle of wrong codes (provider.users.accounts). Email is
never an MFA factor.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from provider.codes.models import EmailCode
from provider.errors import ProviderError

MAX_ATTEMPTS = 5
CODE_DIGITS = 6


class Purpose(enum.StrEnum):
    VERIFY_EMAIL = "verify_email"
    RESET_PASSWORD = "reset_password"  # noqa: S105 (a purpose, not a password)
    CHANGE_EMAIL = "change_email"


class InvalidCode(ProviderError):
    status = 400
    code = "invalid_code"
    title = "The code is wrong, expired or already used."


@dataclass(frozen=True)
class UsedCode:
    user_id: uuid.UUID
    target_email: str | None


class EmailCodes:
    def __init__(self, secret: bytes, ttl: timedelta) -> None:
        self._secret = secret
        self.ttl = ttl

    def _digest(self, user_id: uuid.UUID, purpose: Purpose, code: str) -> bytes:
        # Bound to user and purpose: a code for one flow is worthless in another.
        message = f"{user_id}:{purpose.value}:{code}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    async def issue(
        self,
        session: AsyncSession,
        *,
        user_id: uuid.UUID,
        purpose: Purpose,
        now: datetime,
        target_email: str | None = None,
    ) -> str:
        """A fresh code for (user, purpose); any earlier code of the pair dies."""
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        digest = self._digest(user_id, purpose, code)
        row = await self._locked(session, user_id, purpose)
        if row is None:
            try:
                # A savepoint: losing the race below must not void the caller's transaction.
                async with session.begin_nested():
                    session.add(EmailCode(
                        id=uuid.uuid4(), user_id=user_id, purpose=purpose.value,
                        code_hash=digest, target_email=target_email, failed_attempts=0,
                        created_at=now, expires_at=now + self.ttl, used_at=None,
                    ))
                return code
            except IntegrityError:
                # Two first issues for one (user, purpose) at once both found no row; the
                # unique index let the other insert: this one updates that row instead.
                row = await self._locked(session, user_id, purpose)
                if row is None:
                    raise
        # A new code, its own tries: the account-wide throttle carries the failures that a
        # resend must not reset (NIST SP 800-63B §3.2.2; README "Throttles").
        row.failed_attempts = 0
        row.code_hash = digest
        row.target_email = target_email
        row.created_at = now
        row.expires_at = now + self.ttl
        row.used_at = None
        await session.flush()
        return code

    async def _locked(
        self, session: AsyncSession, user_id: uuid.UUID, purpose: Purpose
    ) -> EmailCode | None:
        row: EmailCode | None = await session.scalar(
            select(EmailCode)
            .where(EmailCode.user_id == user_id, EmailCode.purpose == purpose.value)
            .with_for_update()
        )
        return row

    async def consume(
        self, session: AsyncSession, *, user_id: uuid.UUID, purpose: Purpose, code: str,
        now: datetime,
    ) -> UsedCode:
        """Use the code once, or raise InvalidCode (counting the failure)."""
        if not (len(code) == CODE_DIGITS and code.isascii() and code.isdigit()):
            code = ""  # still counts as an attempt below, compared against nothing valid
        digest = self._digest(user_id, purpose, code)
        live = (
            EmailCode.user_id == user_id,
            EmailCode.purpose == purpose.value,
            EmailCode.used_at.is_(None),
            EmailCode.expires_at > now,
            EmailCode.failed_attempts < MAX_ATTEMPTS,
        )
        row = (await session.execute(
            select(EmailCode.code_hash).where(*live)
        )).first()
        if row is not None and hmac.compare_digest(row.code_hash, digest):
            # The conditional UPDATE is the real check: of two concurrent submissions of
            # one code exactly one sees its row still unused.
            used = (await session.execute(
                update(EmailCode).where(*live, EmailCode.code_hash == digest)
                .values(used_at=now).returning(EmailCode.target_email)
                .execution_options(synchronize_session=False)
            )).first()
            if used is not None:
                return UsedCode(user_id, used.target_email)
            raise InvalidCode()
        if row is not None:
            await session.execute(
                update(EmailCode).where(*live)
                .values(failed_attempts=EmailCode.failed_attempts + 1)
                .execution_options(synchronize_session=False)
            )
        raise InvalidCode()
