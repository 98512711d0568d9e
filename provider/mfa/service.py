"""MFA rules: enrolment, the second-factor check, recovery codes, and mfa_tokens.

Every check that could be raced is one conditional statement (STYLE 12b):
- a TOTP code is accepted only by ``UPDATE ... SET last_used_step = :step WHERE
  last_used_step < :step``: of two parallel submissions of one code exactly one wins,
  and no code is accepted twice (RFC 6238 §5.2, ASVS 6.5.1);
- a recovery code is used by ``UPDATE ... SET used_at WHERE used_at IS NULL``;
- an mfa_token's attempt is reserved by ``UPDATE ... SET attempts = attempts + 1 WHERE
  attempts < 5`` before its code is checked, and the token is consumed by ``UPDATE ...
  SET used_at WHERE used_at IS NULL``;
- wrong codes also count per user on the shared throttle storage (``mfa_account``),
  reserved before the check, so N parallel guesses count like N sequential ones, and a
  new mfa_token resets nothing;
- a sign-in's check also takes a place in the authenticator's count of wrong codes in a
  row, by ``UPDATE ... SET failures = failures + 1 WHERE failures < limit`` in a
  statement of its own, so that it stands when the sign-in fails; at the limit no code
  is checked (NIST SP 800-63B §3.2.2), and a right code sets the count back to 0.

Statements run on the connection the caller gives, inside its transaction; nothing here
commits, except the count of wrong codes in a row (``reserve``). Domain errors say
nothing about HTTP; the routers and grants translate them.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import secrets
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete, exists, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Exists

from provider.mfa import recovery
from provider.mfa.models import MfaToken, RecoveryCode, TotpAuthenticator
from provider.mfa.recovery import RecoveryDigests
from provider.mfa.totp import (
    SecretBox,
    is_code_shaped,
    matching_step,
    new_secret,
    provisioning_uri,
    qr_svg,
)
from provider.ratelimit import Throttle, Throttled
from provider.tokens.revocation import client_still_trusts
from provider.users.models import User

totp_table = cast(Table, TotpAuthenticator.__table__)
codes_table = cast(Table, RecoveryCode.__table__)
tokens_table = cast(Table, MfaToken.__table__)
users = cast(Table, User.__table__)

# At most this many submissions per mfa_token (wrong or right): then a new password
# step is needed, and the per-user throttle keeps counting across tokens.
MAX_TOKEN_ATTEMPTS = 5
MFA_TOKEN_BYTES = 32
MAX_MFA_TOKEN_LENGTH = 256


class Factor(enum.StrEnum):
    TOTP = "totp"
    RECOVERY_CODE = "recovery_code"


# RFC 8176 `amr` values of a sign-in, by second factor. A recovery code is a look-up
# secret (NIST SP 800-63B §3.1.2), which RFC 8176 has no name for: it is not `otp`
# (RFC 8176 ties that to HOTP/TOTP) nor `kba` (knowledge-based questions), so only
# `mfa` says that a second factor was shown. README, "Two-step verification".
PASSWORD_AMR: tuple[str, ...] = ("pwd",)
SECOND_FACTOR_AMR = "mfa"
AMR: dict[Factor, tuple[str, ...]] = {
    Factor.TOTP: ("pwd", "otp", SECOND_FACTOR_AMR),
    Factor.RECOVERY_CODE: ("pwd", SECOND_FACTOR_AMR),
}


class MfaAlreadyEnabled(Exception):
    """The account has an active TOTP authenticator."""


class NoPendingEnrolment(Exception):
    """There is no pending TOTP secret to confirm (none, or already active)."""


class MfaNotEnabled(Exception):
    """The account has no active TOTP authenticator."""


class WrongCode(Exception):
    """The code is wrong, of a used step, of a used recovery code, or of another factor
    than the one asked for. One exception: the answers must not tell which."""


class SecondFactorLocked(Exception):
    """Too many wrong codes in a row at sign-in: the second factor takes none until an
    administrator removes it (NIST SP 800-63B §3.2.2)."""


class CheckThrottled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"throttled for {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Enrolment:
    secret: str
    otpauth_uri: str
    qr_svg: str


@dataclass(frozen=True)
class ReservedToken:
    """An mfa_token whose attempt was reserved: what it is bound to."""

    id: uuid.UUID
    user_id: uuid.UUID
    scope: str
    session_epoch: int


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Mfa:
    def __init__(self, *, server_secret: bytes, issuer_name: str, mfa_token_ttl: timedelta,
                 throttle: Throttle, engine: AsyncEngine, lockout_failures: int) -> None:
        self._box = SecretBox(server_secret)
        self._digests = RecoveryDigests(server_secret)
        self.issuer_name = issuer_name
        self.mfa_token_ttl = mfa_token_ttl
        self._throttle = throttle
        # provider.db.single_statement_engine: the count stands whatever the sign-in does.
        self._engine = engine
        self.lockout_failures = lockout_failures

    # --- enrolment ------------------------------------------------------------------------

    async def start_enrolment(self, conn: AsyncConnection, *, user_id: uuid.UUID,
                              email: str, now: datetime) -> Enrolment:
        """A new pending secret, replacing any pending one; MfaAlreadyEnabled when active.

        One upsert whose update applies only to a pending row: two parallel enrolments
        leave one of their secrets, and an active authenticator is never replaced.
        """
        secret = new_secret()
        sealed = self._box.seal(secret)
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        statement = (
            dialect_insert(totp_table)
            .values(user_id=user_id, secret_encrypted=sealed, created_at=now,
                    confirmed_at=None, last_used_step=0)
            .on_conflict_do_update(
                index_elements=[totp_table.c.user_id],
                set_={"secret_encrypted": sealed, "created_at": now, "last_used_step": 0,
                      "failures": 0},
                where=totp_table.c.confirmed_at.is_(None),
            )
            .returning(totp_table.c.user_id)
        )
        if (await conn.execute(statement)).first() is None:
            raise MfaAlreadyEnabled()
        uri = provisioning_uri(secret, account=email, issuer=self.issuer_name)
        return Enrolment(secret=secret, otpauth_uri=uri, qr_svg=qr_svg(uri))

    async def confirm(self, conn: AsyncConnection, *, user_id: uuid.UUID, code: str,
                      now: datetime) -> list[str]:
        """Activate the pending secret with a code of it; the new recovery codes."""
        row = (await conn.execute(
            select(totp_table.c.secret_encrypted, totp_table.c.confirmed_at)
            .where(totp_table.c.user_id == user_id)
        )).first()
        if row is None or row.confirmed_at is not None:
            raise NoPendingEnrolment()
        await self._reserve(user_id)
        step = matching_step(self._box.open(row.secret_encrypted), code, now=now)
        if step is None:
            raise WrongCode()
        # Still the same pending secret (a parallel enrolment may have replaced it, a
        # parallel confirmation activated it): then this code proves nothing.
        activated = (await conn.execute(
            update(totp_table)
            .where(totp_table.c.user_id == user_id, totp_table.c.confirmed_at.is_(None),
                   totp_table.c.secret_encrypted == row.secret_encrypted)
            .values(confirmed_at=now, last_used_step=step)
            .returning(totp_table.c.user_id)
        )).first()
        if activated is None:
            raise WrongCode()
        await self._refund(user_id)
        return await self._replace_recovery_codes(conn, user_id, now)

    async def regenerate_recovery_codes(self, conn: AsyncConnection, *, user_id: uuid.UUID,
                                        code: str, now: datetime) -> list[str]:
        """A new set for a current TOTP code; the old set dies."""
        await self.verify(conn, user_id=user_id, code=code, now=now,
                          accept=(Factor.TOTP,))
        return await self._replace_recovery_codes(conn, user_id, now)

    async def disable(self, conn: AsyncConnection, *, user_id: uuid.UUID, code: str,
                      factor: Factor, now: datetime) -> None:
        """Remove TOTP and recovery codes after a current code of ``factor``."""
        await self.verify(conn, user_id=user_id, code=code, now=now, accept=(factor,))
        await self.remove(conn, user_id=user_id)

    async def remove(self, conn: AsyncConnection, *, user_id: uuid.UUID) -> bool:
        return await remove_mfa(conn, user_id)

    async def is_enabled(self, conn: AsyncConnection, user_id: uuid.UUID) -> bool:
        return bool((await conn.execute(select(_active(user_id)))).scalar())

    async def _replace_recovery_codes(self, conn: AsyncConnection, user_id: uuid.UUID,
                                      now: datetime) -> list[str]:
        await conn.execute(delete(codes_table).where(codes_table.c.user_id == user_id))
        codes = recovery.new_codes()
        await conn.execute(insert(codes_table), [
            {"id": uuid.uuid4(), "user_id": user_id,
             "code_hash": self._digests.digest(user_id, code), "created_at": now,
             "used_at": None}
            for code in codes
        ])
        return codes

    # --- the second factor ---------------------------------------------------------------

    async def verify(self, conn: AsyncConnection, *, user_id: uuid.UUID, code: str,
                     now: datetime,
                     accept: Collection[Factor] = (Factor.TOTP, Factor.RECOVERY_CODE),
                     ) -> Factor:
        """Check (and use) a second factor: a TOTP code or a recovery code.

        The per-user throttle slot is taken before the check: CheckThrottled when none is
        left; a wrong code keeps its slot, a right one gives it back.
        """
        await self._reserve(user_id)
        factor = await self.check(conn, user_id=user_id, code=code, now=now, accept=accept)
        if factor is None:
            raise WrongCode()
        await self._refund(user_id)
        return factor

    async def check(self, conn: AsyncConnection, *, user_id: uuid.UUID, code: str,
                    now: datetime,
                    accept: Collection[Factor] = (Factor.TOTP, Factor.RECOVERY_CODE),
                    ) -> Factor | None:
        """The unthrottled check: the factor a right code used (and used up), or None.
        Callers reserve a throttle slot first (``reserve``)."""
        factor = await self._use(conn, user_id, code.strip(), now, accept)
        if factor is not None:
            # A right code: the count of wrong ones in a row starts again (with the
            # caller's transaction, so only with what the code was used for).
            await conn.execute(update(totp_table).where(totp_table.c.user_id == user_id,
                                                        totp_table.c.failures > 0)
                               .values(failures=0))
        return factor

    async def _use(self, conn: AsyncConnection, user_id: uuid.UUID, code: str,
                   now: datetime, accept: Collection[Factor]) -> Factor | None:
        if is_code_shaped(code):
            if Factor.TOTP not in accept:
                return None
            return Factor.TOTP if await self._use_totp(conn, user_id, code, now) else None
        if Factor.RECOVERY_CODE not in accept:
            return None
        digest = self._digests.digest(user_id, code)
        if digest is None:
            return None
        used = (await conn.execute(
            update(codes_table)
            .where(codes_table.c.user_id == user_id, codes_table.c.code_hash == digest,
                   codes_table.c.used_at.is_(None), _active(user_id))
            .values(used_at=now)
            .returning(codes_table.c.id)
        )).first()
        return Factor.RECOVERY_CODE if used is not None else None

    async def _use_totp(self, conn: AsyncConnection, user_id: uuid.UUID, code: str,
                        now: datetime) -> bool:
        row = (await conn.execute(
            select(totp_table.c.secret_encrypted, totp_table.c.last_used_step)
            .where(totp_table.c.user_id == user_id, totp_table.c.confirmed_at.is_not(None))
        )).first()
        if row is None:
            return False
        step = matching_step(self._box.open(row.secret_encrypted), code, now=now)
        if step is None or step <= row.last_used_step:
            return False
        # The replay guard: only a later step than the last accepted one moves it on. On
        # PostgreSQL a parallel submission waits for this row and then finds the step used.
        won = (await conn.execute(
            update(totp_table)
            .where(totp_table.c.user_id == user_id, totp_table.c.confirmed_at.is_not(None),
                   totp_table.c.last_used_step < step)
            .values(last_used_step=step)
            .returning(totp_table.c.user_id)
        )).first()
        return won is not None

    async def recovery_codes_left(self, user_id: uuid.UUID) -> int:
        """How many of the user's recovery codes are still unused."""
        async with self._engine.connect() as conn:
            return int((await conn.execute(
                select(func.count()).select_from(codes_table)
                .where(codes_table.c.user_id == user_id, codes_table.c.used_at.is_(None))
            )).scalar_one())

    async def reserve(self, user_id: uuid.UUID) -> bool:
        """Before a sign-in checks a code: the user's throttle slot, then a place in the
        count of wrong codes in a row, both taken before the check so that parallel
        guesses count like sequential ones. Whether a wrong code now locks the second
        factor. CheckThrottled; SecondFactorLocked (the slot given back: no check)."""
        await self._reserve(user_id)
        active = (totp_table.c.user_id == user_id, totp_table.c.confirmed_at.is_not(None))
        try:
            async with self._engine.begin() as conn:
                count = (await conn.execute(
                    update(totp_table)
                    .where(*active, totp_table.c.failures < self.lockout_failures)
                    .values(failures=totp_table.c.failures + 1)
                    .returning(totp_table.c.failures)
                )).scalar()
                locked = count is None and (await conn.execute(
                    select(totp_table.c.user_id).where(*active))).first() is not None
        except BaseException:
            await self._refund(user_id)
            raise
        if locked:
            await self._refund(user_id)
            raise SecondFactorLocked()
        return count is not None and count >= self.lockout_failures

    async def refund(self, user_id: uuid.UUID) -> None:
        await self._refund(user_id)

    async def unchecked(self, user_id: uuid.UUID) -> None:
        """A sign-in that took its places (``reserve``) and ended with no verdict on its
        code: its mfa_token used meanwhile (the right code's reset rolled back with it),
        a database fault, a cancelled request. Its throttle slot and its place in the
        count go back, so that only wrong codes lock. Best effort, never raising over the
        error that ended the sign-in: with the storage down, the places stay taken."""
        with contextlib.suppress(Exception):
            await self._refund(user_id)
        with contextlib.suppress(Exception):
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(totp_table)
                    .where(totp_table.c.user_id == user_id, totp_table.c.failures > 0)
                    .values(failures=totp_table.c.failures - 1))

    async def _reserve(self, user_id: uuid.UUID) -> None:
        try:
            await self._throttle.reserve(str(user_id))
        except Throttled as exc:
            raise CheckThrottled(exc.retry_after) from None

    async def _refund(self, user_id: uuid.UUID) -> None:
        await self._throttle.refund(str(user_id))

    # --- mfa_tokens ----------------------------------------------------------------------

    async def issue_token(self, conn: AsyncConnection, *, user_id: uuid.UUID, client_id: str,
                          scope: str, session_epoch: int, now: datetime) -> str:
        token = secrets.token_urlsafe(MFA_TOKEN_BYTES)
        await conn.execute(insert(tokens_table).values(
            id=uuid.uuid4(), token_hash=_digest(token), user_id=user_id, client_id=client_id,
            scope=scope, session_epoch=session_epoch, created_at=now,
            expires_at=now + self.mfa_token_ttl, attempts=0, used_at=None,
        ))
        return token

    async def reserve_token_attempt(self, conn: AsyncConnection, *, token: str,
                                    client_id: str, now: datetime) -> ReservedToken | None:
        """Take one of the token's attempts, before its code is checked: None when the
        token is unknown, another client's, expired, used or out of attempts."""
        if not token or len(token) > MAX_MFA_TOKEN_LENGTH:
            return None
        row = (await conn.execute(
            update(tokens_table)
            .where(tokens_table.c.token_hash == _digest(token),
                   tokens_table.c.client_id == client_id,
                   tokens_table.c.used_at.is_(None), tokens_table.c.expires_at > now,
                   tokens_table.c.attempts < MAX_TOKEN_ATTEMPTS)
            .values(attempts=tokens_table.c.attempts + 1)
            .returning(tokens_table.c.id, tokens_table.c.user_id, tokens_table.c.scope,
                       tokens_table.c.session_epoch)
        )).first()
        if row is None:
            return None
        return ReservedToken(row.id, row.user_id, row.scope, row.session_epoch)

    async def give_back_attempt(self, conn: AsyncConnection, token_id: uuid.UUID) -> None:
        """An attempt that was never checked (throttled per user) does not count."""
        await conn.execute(
            update(tokens_table)
            .where(tokens_table.c.id == token_id, tokens_table.c.attempts > 0)
            .values(attempts=tokens_table.c.attempts - 1)
        )

    async def consume_token(self, conn: AsyncConnection, *, token: ReservedToken,
                            now: datetime) -> bool:
        """Use the token up, if it still can be: unused, unexpired, and its user active in
        the same session epoch as at the password step, and its client neither
        deactivated nor reactivated since (another process's stale client cache may have
        issued it to a deactivated client). Of two parallel finishes of one token exactly
        one gets True."""
        user_unchanged = exists().where(
            users.c.id == tokens_table.c.user_id, users.c.is_active.is_(True),
            users.c.session_epoch == tokens_table.c.session_epoch)
        client_trusts = exists().where(*client_still_trusts(tokens_table))
        used = (await conn.execute(
            update(tokens_table)
            .where(tokens_table.c.id == token.id, tokens_table.c.used_at.is_(None),
                   tokens_table.c.expires_at > now, user_unchanged, client_trusts)
            .values(used_at=now)
            .returning(tokens_table.c.id)
        )).first()
        return used is not None


async def remove_mfa(conn: AsyncConnection, user_id: uuid.UUID) -> bool:
    """Remove the user's TOTP (active or pending) and recovery codes, and any mfa_token
    in flight. Whether TOTP was active."""
    removed = (await conn.execute(
        delete(totp_table).where(totp_table.c.user_id == user_id)
        .returning(totp_table.c.confirmed_at)
    )).first()
    await conn.execute(delete(codes_table).where(codes_table.c.user_id == user_id))
    await conn.execute(delete(tokens_table).where(tokens_table.c.user_id == user_id))
    return removed is not None and removed.confirmed_at is not None


def _active(user_id: uuid.UUID) -> Exists:
    return exists().where(totp_table.c.user_id == user_id,
                          totp_table.c.confirmed_at.is_not(None))
