"""Self-service account flows: register, verify email, forgot/reset/change password,
change email, delete. The rules live here; the HTTP shapes live in router.py.

Answers never tell whether an address is registered: flows that mail an address
(register, verification request, forgot password, change of email) do their per-address
work after the response (see ``Mailbox.later``), so status, body and time are the same;
code submissions for an address without an account run the same statement as any other
(provider.codes.service.NO_USER).

Every throttle slot is reserved before the work it guards (provider.ratelimit): a
registration before hashing, a re-entered password before verifying it, a code
submission before comparing it, a mail before sending it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from provider.clock import Clock
from provider.codes.service import NO_USER, EmailCodes, InvalidCode, Purpose
from provider.db import unavailable_reason
from provider.errors import ProviderError, TooManyRequests
from provider.mail import MailError, MailSender, Message
from provider.mail import templates as mail
from provider.metrics import MAIL_FAILURES
from provider.mfa.service import remove_mfa
from provider.passwords import PasswordHasher, check_password_policy
from provider.ratelimit import Throttle, Throttled, Throttles, ThrottleUnavailable
from provider.settings import Settings
from provider.tokens.revocation import end_user_sessions
from provider.users.models import User
from provider.users.service import (
    EmailTaken,
    InvalidEmail,
    UsernameTaken,
    ensure_another_active_admin,
    ensure_available,
    normalize_email,
    normalize_username,
)

log = logging.getLogger("provider.accounts")
PRODUCT = "provider"


class RegistrationClosed(ProviderError):
    status = 403
    code = "registration_closed"
    title = "Self-registration is closed on this server."


class WrongPassword(ProviderError):
    status = 400
    code = "invalid_password"
    title = "The current password is not correct."


@dataclass
class Mailbox:
    """Mail and deferred work of one request, run after its transaction commits."""

    outbox: list[Message] = field(default_factory=list)
    deferred: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def send(self, message: Message) -> None:
        self.outbox.append(message)

    def later(self, work: Callable[[], Awaitable[None]]) -> None:
        self.deferred.append(work)


class Accounts:
    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        hasher: PasswordHasher,
        codes: EmailCodes,
        mailer: MailSender,
        throttles: Throttles,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clock = clock
        self.hasher = hasher
        self.codes = codes
        self.mailer = mailer
        self.throttles = throttles
        # Deliveries under way outside a route's background tasks (deliver_soon).
        self._delivering: set[asyncio.Task[None]] = set()

    @property
    def _ttl_minutes(self) -> int:
        return max(1, int(self.codes.ttl.total_seconds() // 60))

    # --- delivery ---------------------------------------------------------------------

    async def deliver(self, mailbox: Mailbox) -> None:
        """Run deferred work, then send mail. Never raises: failures are logged, counted."""
        for work in mailbox.deferred:
            try:
                await work()
            except Exception as exc:
                # One line, no values and no traceback: the work handles addresses and
                # password hashes, and a database outage is expected, not a bug.
                reason = unavailable_reason(exc)
                log.error("deferred account work failed: %s",
                          f"database unavailable: {reason}" if reason else type(exc).__name__)
        for message in mailbox.outbox:
            await self._send(message)

    def deliver_soon(self, mailbox: Mailbox) -> None:
        """``deliver`` after the answer, where no route's background tasks are at hand
        (the token endpoint's notices): a slow mail server holds up no sign-in. ``close``
        waits for what is under way."""
        task = asyncio.get_running_loop().create_task(self.deliver(mailbox))
        self._delivering.add(task)
        task.add_done_callback(self._delivering.discard)

    async def close(self) -> None:
        """Let deliveries under way finish (each is bounded by the mailer's timeout)."""
        if self._delivering:
            await asyncio.wait(set(self._delivering))

    async def _send(self, message: Message) -> None:
        try:
            await self.mailer.send(message)
        except MailError as exc:
            MAIL_FAILURES.inc()
            log.error("mail not sent (%s): %s", message.subject, exc)

    async def _in_transaction(self, work: Callable[[AsyncSession, Mailbox],
                                                   Awaitable[None]]) -> None:
        """Deferred per-address work: its own transaction, its own mail after commit."""
        mailbox = Mailbox()
        async with self.sessions() as session:
            await work(session, mailbox)
            await session.commit()
        await self.deliver(mailbox)

    async def _may_send_code(self, email: str) -> bool:
        """Take a slot of the address's window for codes (after the response: the caller
        learns nothing). Fails closed when the rate-limit storage is down."""
        return await self._may_send(self.throttles.email_code, email, "email code")

    async def _may_send_notice(self, email: str) -> bool:
        """Take a slot of the address's window for notices, which is not the window for
        codes: notices must never crowd out the owner's codes."""
        return await self._may_send(self.throttles.email_notice, email, "email notice")

    @staticmethod
    async def _may_send(throttle: Throttle, email: str, what: str) -> bool:
        try:
            await throttle.reserve(email)
        except Throttled:
            log.info("%s throttled", what)
            return False
        except ThrottleUnavailable as exc:
            log.error("%s not sent: rate-limit storage unavailable (%s)", what, exc)
            return False
        return True

    async def _reserve_code_attempt(self, account: str, client_address: str) -> None:
        """A code submission's slots, before the code is compared: one per client address
        (spraying across accounts), one per account (wrong codes, growing waits that a
        resend does not reset). A right code clears the account's count."""
        throttles = self.throttles
        try:
            await throttles.reserve((throttles.code_address, throttles.client(client_address)),
                                    (throttles.code_account, account))
        except Throttled as exc:
            raise TooManyRequests(exc.retry_after) from None

    # --- registration -----------------------------------------------------------------

    async def register(
        self,
        session: AsyncSession,
        mailbox: Mailbox,
        *,
        email: str,
        password: str,
        username: str | None,
        profile: dict[str, Any],
        client_address: str,
    ) -> None:
        if not self.settings.registration_open:
            raise RegistrationClosed()
        try:
            await self.throttles.registration.reserve(self.throttles.client(client_address))
        except Throttled as exc:
            raise TooManyRequests(exc.retry_after) from None
        email = normalize_email(email)
        username = normalize_username(username) if username else None
        password = check_password_policy(
            password, min_length=self.settings.password_min_length, email=email
        )
        if username is not None:
            await ensure_available(session, username=username)  # usernames are public
        # Hash now, whatever happens next, so both outcomes cost the same.
        password_hash = await self.hasher.hash(password)
        requested_at = self.clock.now()

        async def notify(mailbox: Mailbox) -> None:
            # Someone else's address: tell its owner, tell the caller nothing. The notice
            # counts in the address's window for notices, or anyone could mail its owner
            # as fast as registrations are allowed.
            if await self._may_send_notice(email):
                mailbox.send(mail.registration_attempt(
                    email, base_url=self.settings.issuer, product=PRODUCT))

        async def create_or_notify(session: AsyncSession, mailbox: Mailbox) -> None:
            now = self.clock.now()
            found = await session.scalar(select(User).where(User.email == email))
            if found is None:
                # Pending only where an unverified account cannot sign in: elsewhere it is
                # in use from the start, and nobody else's registration may replace it.
                user = User(id=uuid.uuid4(), email=email, username=username,
                            password_hash=password_hash, profile=profile, is_active=True,
                            is_verified=False, is_admin=False,
                            is_registration_pending=self.settings.require_verified_email,
                            created_at=now, updated_at=now)
                try:
                    async with session.begin_nested():  # flushes on leaving
                        session.add(user)
                except IntegrityError:
                    # Another registration of the address, at the same moment, inserted
                    # first: carry on as if it had come first. (Only a username taken
                    # meanwhile leaves the address free: that registration fails.)
                    found = await session.scalar(select(User).where(User.email == email))
                    if found is None:
                        raise
                else:
                    code = await self.codes.issue(session, user_id=user.id,
                                                  purpose=Purpose.VERIFY_EMAIL, address=email,
                                                  now=now, requested_at=requested_at)
                    if code is None:
                        return
                    mailbox.send(mail.verification_code(
                        email, code=code, ttl_minutes=self._ttl_minutes, product=PRODUCT))
                    # The new account's first code always goes out; it counts in the window.
                    await self._may_send_code(email)
                    return
            if not self._still_pending(found):
                await notify(mailbox)
            else:
                await self._register_again(session, mailbox, found, password_hash=password_hash,
                                           username=username, profile=profile,
                                           requested_at=requested_at)

        mailbox.later(lambda: self._in_transaction(create_or_notify))

    def _still_pending(self, user: User) -> bool:
        """A registration nobody verified, that no one can have signed in to since."""
        return (user.is_registration_pending and user.is_active and not user.is_verified
                and self.settings.require_verified_email)

    async def _register_again(
        self, session: AsyncSession, mailbox: Mailbox, pending: User, *, password_hash: str,
        username: str | None, profile: dict[str, Any], requested_at: datetime,
    ) -> None:
        """A registration of an address whose earlier registration nobody verified: this
        one replaces it (password, username, profile) and mails its own code, which kills
        the earlier one. Whoever registered first, possibly a stranger with someone else's
        address, does not get the account when its owner verifies it. Only when the code
        goes out (the address's window has room; no later registration's code stands)
        does anything change. The code's row is taken before the account's, as a
        verification takes them, and the account is read again once held: verified
        meanwhile, it is no longer replaced."""
        if not await self._may_send_code(pending.email):
            return
        code = await self.codes.issue(session, user_id=pending.id,
                                      purpose=Purpose.VERIFY_EMAIL, address=pending.email,
                                      now=self.clock.now(), requested_at=requested_at)
        if code is None:
            return  # a later registration's code went out first: it stands
        held = await session.scalar(
            select(User).where(User.id == pending.id, User.email == pending.email)
            .with_for_update(key_share=True).execution_options(populate_existing=True))
        if held is None or not self._still_pending(held):
            return  # verified, moved or disabled meanwhile: this code dies unsent
        held.password_hash = password_hash
        held.username = username
        held.profile = profile
        held.updated_at = self.clock.now()
        await session.flush()
        # Nothing can have signed in to it; should anything have, it ends here.
        await end_user_sessions(await session.connection(), held.id, now=self.clock.now())
        mailbox.send(mail.verification_code(
            held.email, code=code, ttl_minutes=self._ttl_minutes, product=PRODUCT))

    # --- email verification -----------------------------------------------------------

    def request_verification(self, mailbox: Mailbox, *, email: str) -> None:
        requested_at = self.clock.now()

        async def send_code(session: AsyncSession, mailbox: Mailbox) -> None:
            user = await self._user_by_email(session, email)
            if user is None or user.is_verified or not user.is_active:
                return
            if not await self._may_send_code(user.email):
                return
            code = await self.codes.issue(session, user_id=user.id,
                                          purpose=Purpose.VERIFY_EMAIL, address=user.email,
                                          now=self.clock.now(), requested_at=requested_at)
            if code is None:
                return
            mailbox.send(mail.verification_code(
                user.email, code=code, ttl_minutes=self._ttl_minutes, product=PRODUCT))

        mailbox.later(lambda: self._in_transaction(send_code))

    async def verify_email(self, session: AsyncSession, *, email: str, code: str,
                           client_address: str) -> None:
        await self._reserve_code_attempt(_account_key(email), client_address)
        user = await self._consume_emailed_code(session, email, Purpose.VERIFY_EMAIL, code,
                                                now=self.clock.now())
        await self.throttles.code_account.clear(_account_key(email))
        user.is_verified = True
        user.is_registration_pending = False  # its password is now the owner's to keep
        user.updated_at = self.clock.now()
        await session.flush()

    # --- forgotten password -----------------------------------------------------------

    def forgot_password(self, mailbox: Mailbox, *, email: str) -> None:
        requested_at = self.clock.now()

        async def send_code(session: AsyncSession, mailbox: Mailbox) -> None:
            user = await self._user_by_email(session, email)
            if user is None or not user.is_active:
                return
            if not await self._may_send_code(user.email):
                return
            code = await self.codes.issue(session, user_id=user.id,
                                          purpose=Purpose.RESET_PASSWORD, address=user.email,
                                          now=self.clock.now(), requested_at=requested_at)
            if code is None:
                return
            mailbox.send(mail.password_reset_code(
                user.email, code=code, ttl_minutes=self._ttl_minutes, product=PRODUCT))

        mailbox.later(lambda: self._in_transaction(send_code))

    async def reset_password(
        self, session: AsyncSession, mailbox: Mailbox, *, email: str, code: str,
        new_password: str, client_address: str,
    ) -> uuid.UUID:
        """Apply a new password with an emailed code; the user's id."""
        # The policy before the lookup, against the address as submitted: a weak password
        # gets the same 422 whether or not the address is registered (no enumeration).
        try:
            address: str | None = normalize_email(email)
        except InvalidEmail:
            address = None
        password = check_password_policy(
            new_password, min_length=self.settings.password_min_length, email=address
        )
        await self._reserve_code_attempt(_account_key(email), client_address)
        now = self.clock.now()
        user = await self._consume_emailed_code(session, email, Purpose.RESET_PASSWORD, code,
                                                now=now)
        await self.throttles.code_account.clear(_account_key(email))
        user.password_hash = await self.hasher.hash(password)
        # The code proved control of the address, and the password is the owner's own.
        user.is_verified = True
        user.is_registration_pending = False
        user.updated_at = now
        await session.flush()
        await end_user_sessions(await session.connection(), user.id, now=now)
        # The login throttle counts per identifier as typed: free both of the account's.
        await self.throttles.login_account.clear(user.email)
        if user.username:
            await self.throttles.login_account.clear(user.username)
        # The second factor stays (ASVS 6.4.3), and so does its count of wrong codes
        # (NIST SP 800-63B §3.2.2): whoever controls the mailbox but not the
        # authenticator could otherwise reset again and again, a fresh window of
        # guesses each time.
        mailbox.send(mail.password_changed(user.email, product=PRODUCT))
        return user.id

    # --- signed-in changes ------------------------------------------------------------

    async def change_password(
        self, session: AsyncSession, mailbox: Mailbox, user: User, *,
        current_password: str, new_password: str, keep_session: uuid.UUID | None,
    ) -> None:
        await self._check_password(user, current_password)
        password = check_password_policy(
            new_password, min_length=self.settings.password_min_length, email=user.email
        )
        now = self.clock.now()
        user.password_hash = await self.hasher.hash(password)
        user.updated_at = now
        await session.flush()
        # Every other session ends; the caller's own stays (ASVS 7.4.3).
        await end_user_sessions(await session.connection(), user.id, now=now,
                                keep=keep_session)
        await self.throttles.mfa_account.clear(str(user.id))
        mailbox.send(mail.password_changed(user.email, product=PRODUCT))

    async def update_profile(
        self, session: AsyncSession, user: User, *, username: str | None,
        profile: dict[str, Any] | None, set_username: bool,
    ) -> None:
        if set_username:
            new = normalize_username(username) if username else None
            if new is not None and new != user.username:
                await ensure_available(session, username=new, exclude=user.id)
            user.username = new
        if profile is not None:
            user.profile = profile
        user.updated_at = self.clock.now()
        try:
            await session.flush()
        except IntegrityError:
            # Taken between the check and the write, by a concurrent request: the unique
            # index decides. (The unit of work then rolls back the void transaction.)
            raise UsernameTaken() from None

    async def request_email_change(
        self, mailbox: Mailbox, user: User, *, new_email: str, password: str,
    ) -> str:
        """Send a code to the new address; nothing changes until it is confirmed. The
        address's work runs after the response, as for every flow that mails an address:
        a taken address is answered the same way and its owner gets a notice instead of a
        code, and neither window of the address (codes, notices) can tell the caller
        whether it is registered (ASVS 6.3.8); the code of an earlier request dies either
        way. The code is bound to the account's address now, so it dies with a change
        made meanwhile. Requests are limited per account, before anything else, so that
        no account mails any number of addresses; a code's window is the account's and
        the address's together, so that no other account can fill it."""
        try:
            await self.throttles.email_change.reserve(str(user.id))
        except Throttled as exc:
            raise TooManyRequests(exc.retry_after) from None
        await self._check_password(user, password)
        new_email = normalize_email(new_email)
        if new_email == user.email:
            raise InvalidEmail("This is already your email address.")
        user_id, address, requested_at = user.id, user.email, self.clock.now()

        async def send_code(session: AsyncSession, mailbox: Mailbox) -> None:
            # The earlier request's code dies whatever this one finds: were it to live on
            # when the new address is taken (or its window full), confirming it would
            # tell the caller so.
            await self.codes.withdraw(session, user_id=user_id, purpose=Purpose.CHANGE_EMAIL,
                                      requested_at=requested_at, now=self.clock.now())
            try:
                await ensure_available(session, email=new_email, exclude=user_id)
            except EmailTaken:
                if await self._may_send_notice(new_email):
                    mailbox.send(mail.email_change_attempt(new_email, product=PRODUCT))
                return
            if not await self._may_send_code(f"{user_id}\n{new_email}"):
                return
            code = await self.codes.issue(session, user_id=user_id,
                                          purpose=Purpose.CHANGE_EMAIL, address=address,
                                          now=self.clock.now(), target_email=new_email,
                                          requested_at=requested_at)
            if code is None:
                return  # a later request's code went out first: it stands
            mailbox.send(mail.email_change_code(
                new_email, code=code, ttl_minutes=self._ttl_minutes, product=PRODUCT))

        mailbox.later(lambda: self._in_transaction(send_code))
        return new_email

    async def confirm_email_change(
        self, session: AsyncSession, mailbox: Mailbox, user: User, *, code: str,
        client_address: str,
    ) -> None:
        account = _account_key(user.email)
        await self._reserve_code_attempt(account, client_address)
        now = self.clock.now()
        used = await self.codes.consume(session, user_id=user.id,
                                        purpose=Purpose.CHANGE_EMAIL, address=user.email,
                                        code=code, now=now)
        await self.throttles.code_account.clear(account)
        if used.target_email is None:
            raise InvalidCode()
        # Taken since the code was sent: the code is spent all the same (a new change
        # request sends a new one), and the account keeps its address.
        await ensure_available(session, email=used.target_email, exclude=user.id)
        old_email = user.email
        try:
            async with session.begin_nested():  # flushes on leaving
                user.email = used.target_email
                user.is_verified = True
                user.is_registration_pending = False
                user.updated_at = now
        except IntegrityError:
            # Registered or claimed between the check and the write: the unique index
            # decides, and the savepoint keeps the request's transaction (and the code's
            # use) alive, as when the check above found the address taken. The savepoint's
            # rollback expired ``user``: nothing may read it after this.
            raise EmailTaken() from None
        mailbox.send(mail.email_change_notice(
            old_email, new_email_hint=email_hint(used.target_email), product=PRODUCT))

    async def delete_account(
        self, session: AsyncSession, mailbox: Mailbox, user: User, *, password: str
    ) -> None:
        """Disable the account, end its sessions, and free its email and username.

        The row stays (audit, foreign keys) but carries no personal data or credential.
        """
        await self._check_password(user, password)
        if user.is_admin:
            # The admin API refuses the same (409 last_active_admin); so must this door.
            await ensure_another_active_admin(session, user.id)
        now = self.clock.now()
        old_email = user.email
        user.is_active = False
        user.email = f"deleted+{user.id.hex}@deleted.invalid"
        user.username = None
        user.password_hash = None
        user.profile = {}
        user.updated_at = now
        await session.flush()
        # No credential survives the account: its second factor goes too.
        await remove_mfa(await session.connection(), user.id)
        await end_user_sessions(await session.connection(), user.id, now=now)
        mailbox.send(mail.account_deleted(old_email, product=PRODUCT))

    # --- helpers ----------------------------------------------------------------------

    async def check_password(self, user: User, password: str) -> None:
        """Re-authentication for a sensitive change elsewhere (turning MFA off)."""
        await self._check_password(user, password)

    async def _check_password(self, user: User, password: str) -> None:
        """Re-authentication for sensitive changes, throttled like a login: a stolen
        access token must not become an online password-guessing oracle."""
        try:
            await self.throttles.login_account.reserve(user.email)
        except Throttled as exc:
            raise TooManyRequests(exc.retry_after) from None
        valid, new_hash = await self.hasher.verify(password, user.password_hash)
        if not valid:
            raise WrongPassword()  # the reserved slot stays: a failure
        await self.throttles.login_account.clear(user.email)
        if new_hash is not None:
            user.password_hash = new_hash

    async def _consume_emailed_code(self, session: AsyncSession, email: str,
                                    purpose: Purpose, code: str, *, now: datetime) -> User:
        """Use the code mailed to ``email`` for ``purpose``: the active account it belongs
        to, or InvalidCode. An address without an active account runs the same statement
        and gets the same answer as a wrong code (no enumeration, ASVS 6.3.8). Once the
        code matched, and only then (a lock would write, for a registered address alone),
        the account's row is held until the request commits and read again: a deletion,
        disabling or change of address in flight is waited for, and then the account is no
        longer active, or no longer at the address the code was mailed to (DESIGN:
        revocation always wins; a code outlives no change of address)."""
        user = await self._user_by_email(session, email)
        if user is None or not user.is_active:
            await self.codes.consume(session, user_id=NO_USER, purpose=purpose, address="",
                                     code=code, now=now)
            raise InvalidCode()  # not reached: consume() finds no code of NO_USER
        address = user.email
        await self.codes.consume(session, user_id=user.id, purpose=purpose,
                                 address=address, code=code, now=now)
        held: User | None = await session.scalar(
            select(User).where(User.id == user.id, User.is_active.is_(True),
                               User.email == address)
            .with_for_update(key_share=True).execution_options(populate_existing=True))
        if held is None:
            # Deleted, disabled or moved to another address while the code was checked:
            # the code was mailed to an address the account has left.
            raise InvalidCode()
        return held

    async def _user_by_email(self, session: AsyncSession, email: str) -> User | None:
        try:
            address = normalize_email(email)
        except InvalidEmail:
            return None
        user: User | None = await session.scalar(select(User).where(User.email == address))
        return user


def _account_key(email: str) -> str:
    """The account a code submission counts against: the address as the account knows it,
    or as typed when it is not one (the same key whether or not it is registered)."""
    try:
        return normalize_email(email)
    except InvalidEmail:
        return email


def email_hint(email: str) -> str:
    """j***@example.com: enough for the owner to recognise, little for anyone else."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"

