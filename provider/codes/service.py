"""Email one-time codes: verify an address, reset a password, confirm a new address.

Six digits from ``secrets``, stored as an HMAC under the server secret, bound to one
user, one purpose and the account's address when it was mailed (a code outlives no change
of address), valid 10 minutes, used once (also under concurrent submissions), dead after
5 wrong tries. A resend replaces the code in place: the old one dies and the
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

from sqlalchemy import case, literal, select, update
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

    def _digest(self, user_id: uuid.UUID, purpose: Purpose, address: str, code: str) -> bytes:
        # Bound to user and purpose: a code for one flow is worthless in another. Bound to
        # the account's address: a code mailed to an address the account has since left
        # (a change of email, by the user or an admin) proves nothing about the new one.
        message = f"{user_id}:{purpose.value}:{address}:{code}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    async def issue(
        self,
        session: AsyncSession,
        *,
        user_id: uuid.UUID,
        purpose: Purpose,
        address: str,
        now: datetime,
        target_email: str | None = None,
        requested_at: datetime | None = None,
    ) -> str | None:
        """A fresh code for (user, purpose), bound to ``address``, the account's address
        now; any earlier code of the pair dies. Given ``requested_at`` (work done after
        the answer), a code of a later request that was issued first stands, and this
        returns None: the user's last request wins, whatever order the work ran in."""
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        digest = self._digest(user_id, purpose, address, code)
        row = await self._locked(session, user_id, purpose)
        created_at = requested_at or now
        if row is None:
            try:
                # A savepoint: losing the race below must not void the caller's transaction.
                async with session.begin_nested():
                    session.add(EmailCode(
                        id=uuid.uuid4(), user_id=user_id, purpose=purpose.value,
                        code_hash=digest, target_email=target_email, failed_attempts=0,
                        created_at=created_at, expires_at=created_at + self.ttl, used_at=None,
                    ))
                return code
            except IntegrityError:
                # Two first issues for one (user, purpose) at once both found no row; the
                # unique index let the other insert: this one updates that row instead.
                row = await self._locked(session, user_id, purpose)
                if row is None:
                    raise
        if requested_at is not None and row.created_at > requested_at:
            return None  # a later request's code, issued first: it stands
        # A new code, its own tries: the account-wide throttle carries the failures that a
        # resend must not reset (NIST SP 800-63B §3.2.2; README "Throttles").
        row.failed_attempts = 0
        row.code_hash = digest
        row.target_email = target_email
        row.created_at = created_at
        row.expires_at = created_at + self.ttl
        row.used_at = None
        await session.flush()
        return code

    async def withdraw(self, session: AsyncSession, *, user_id: uuid.UUID,
                       purpose: Purpose, requested_at: datetime, now: datetime) -> None:
        """Kill the pair's live code unless a later request's code stands (created after
        ``requested_at``): a request that sends no code of its own (its address is
        taken, its window full) still ends the one before it, as a request that sends
        one does."""
        await session.execute(
            update(EmailCode)
            .where(EmailCode.user_id == user_id, EmailCode.purpose == purpose.value,
                   EmailCode.used_at.is_(None), EmailCode.created_at <= requested_at)
            .values(used_at=now)
            .execution_options(synchronize_session=False))

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
        self, session: AsyncSession, *, user_id: uuid.UUID, purpose: Purpose, address: str,
        code: str, now: datetime,
    ) -> UsedCode:
        """Use the code once, or raise InvalidCode (counting the failure against a live
        code). ``address`` is the account's address now.

        One statement whatever the outcome: the right code is used, a wrong one counts
        against the live code, and a user without one (or no user: callers pass
        ``NO_USER``) costs the same round trip (only the commit of the count's write
        differs: README, "Email codes"). The conditional UPDATE is the real check: of concurrent
        submissions of one code exactly one sees its row still unused, and no more than
        ``MAX_ATTEMPTS`` wrong ones are counted. The digests are compared by the database:
        they are HMACs under the server secret, so how far a comparison gets tells a
        guesser nothing about the code.
        """
        if not (len(code) == CODE_DIGITS and code.isascii() and code.isdigit()):
            code = ""  # still counts as an attempt below, compared against nothing valid
        matched = EmailCode.code_hash == self._digest(user_id, purpose, address, code)
        row = (await session.execute(
            update(EmailCode)
            .where(EmailCode.user_id == user_id,
                   EmailCode.purpose == purpose.value,
                   EmailCode.used_at.is_(None),
                   EmailCode.expires_at > now,
                   EmailCode.failed_attempts < MAX_ATTEMPTS)
            .values(used_at=case((matched, literal(now, EmailCode.used_at.type)),
                                 else_=EmailCode.used_at),
                    failed_attempts=case((matched, EmailCode.failed_attempts),
                                         else_=EmailCode.failed_attempts + 1))
            .returning(matched.label("matched"), EmailCode.target_email)
            .execution_options(synchronize_session=False)
        )).first()
        if row is not None and row.matched:
            return UsedCode(user_id, row.target_email)
        raise InvalidCode()


# The user id of a submission for an address that has no active account: no code row has
# it, so the same statement runs and matches nothing.
NO_USER = uuid.UUID(int=0)
