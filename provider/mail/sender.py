"""Outgoing mail: the MailSender seam, the SMTP sender (aiosmtplib) and the dev console sender.

Codes travel in mail bodies, so nothing here puts a body into an exception or a log line,
except the console sender, whose whole purpose is to show a developer the mail.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Literal, Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

from provider.settings import Settings

log = logging.getLogger("provider.mail")

Security = Literal["plain", "starttls", "tls"]

_SCHEMES: dict[str, tuple[Security, int]] = {
    "smtp": ("plain", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}
_URL_FORMS = "smtp://[user:pass@]host:port, smtp+starttls://... or smtps://..."
_ENCODE_HINT = "percent-encode any of @ : / ? # % in the user and password"


@dataclass(frozen=True)
class Message:
    """One email. The bodies stay out of ``repr`` because they carry one-time codes."""

    to: str
    subject: str
    text: str = field(repr=False)
    html: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Header injection: a line break in a header value would start a new header.
        for name in ("to", "subject"):
            value: str = getattr(self, name)
            if "\r" in value or "\n" in value:
                raise ValueError(f"Message.{name} must be a single line")
        if not self.to.strip():
            raise ValueError("Message.to must not be empty")


class MailError(Exception):
    """A mail could not be handed to the mail server. Its text never holds the mail body."""


class MailSender(Protocol):
    async def send(self, message: Message) -> None:
        """Hand ``message`` over for delivery; raise MailError when that fails."""
        ...


@dataclass(frozen=True)
class SmtpServer:
    """Where and how to reach the SMTP server, parsed from ``PROVIDER_SMTP_URL``."""

    hostname: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def use_tls(self) -> bool:
        """TLS from the first byte (smtps://)."""
        return self.security == "tls"

    @property
    def start_tls(self) -> bool:
        """STARTTLS is required, never merely attempted (smtp+starttls://)."""
        return self.security == "starttls"


def parse_smtp_url(url: str) -> SmtpServer:
    """Parse ``PROVIDER_SMTP_URL``; raise ValueError naming the problem, never the password."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"PROVIDER_SMTP_URL must have the form {_URL_FORMS}")
    security, default_port = _SCHEMES[scheme]
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"PROVIDER_SMTP_URL has an invalid port ({_ENCODE_HINT})") from None
    if port == 0:
        raise ValueError("PROVIDER_SMTP_URL has an invalid port")
    if not parts.hostname:
        raise ValueError(f"PROVIDER_SMTP_URL has no host; use {_URL_FORMS}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"PROVIDER_SMTP_URL must not have a path, query or fragment ({_ENCODE_HINT})"
        )
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if (username is None) != (password is None):
        raise ValueError("PROVIDER_SMTP_URL must give both user and password, or neither")
    return SmtpServer(
        hostname=parts.hostname,
        port=port or default_port,
        security=security,
        username=username,
        password=password,
    )


def build_email(message: Message, *, mail_from: str) -> EmailMessage:
    """The MIME form of ``message``: text/plain, or multipart/alternative with HTML."""
    email = EmailMessage()
    email["From"] = mail_from
    email["To"] = message.to
    email["Subject"] = message.subject
    email["Date"] = format_datetime(datetime.now(UTC))
    # An explicit domain: without one make_msgid() asks DNS for this host's name.
    email["Message-ID"] = make_msgid(domain=mail_domain(mail_from))
    # RFC 3834: tells vacation responders not to answer a machine.
    email["Auto-Submitted"] = "auto-generated"
    email.set_content(message.text)
    if message.html is not None:
        email.add_alternative(message.html, subtype="html")
    return email


def mail_domain(mail_from: str) -> str:
    """The domain of ``PROVIDER_MAIL_FROM``'s address; ValueError when it has none."""
    _, address = parseaddr(mail_from)
    local, at, domain = address.rpartition("@")
    if not (local and at and domain):
        raise ValueError(
            "PROVIDER_MAIL_FROM must contain an email address, like no-reply@example.com"
        )
    return domain


class SmtpSender:
    """Sends through an SMTP server with aiosmtplib, one connection per mail."""

    def __init__(
        self,
        url: str,
        mail_from: str,
        timeout: float = 10.0,
        *,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server = parse_smtp_url(url)
        mail_domain(mail_from)  # fail at start-up, not on the first mail
        if self.server.security == "plain" and self.server.username is not None:
            if not _is_loopback(self.server.hostname):
                log.warning(
                    "PROVIDER_SMTP_URL is smtp:// with a password to a remote host: the "
                    "password travels unencrypted; use smtp+starttls:// or smtps://"
                )
        self.mail_from = mail_from
        self.timeout = timeout
        # None: the system's trust store. Tests pass a context trusting their own sink.
        self._tls_context = tls_context

    async def send(self, message: Message) -> None:
        email = build_email(message, mail_from=self.mail_from)
        server = self.server
        try:
            await aiosmtplib.send(
                email,
                hostname=server.hostname,
                port=server.port,
                username=server.username,
                password=server.password,
                use_tls=server.use_tls,
                # False, not None, for smtp://: None would try STARTTLS whenever offered.
                start_tls=server.start_tls,
                tls_context=self._tls_context,
                timeout=self.timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise MailError(
                f"sending mail via {server.hostname}:{server.port} failed: {_describe(exc)}"
            ) from exc
        log.debug("mail %s handed to %s:%s", email["Message-ID"], server.hostname, server.port)


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _describe(exc: BaseException) -> str:
    # The server's own words help operators; none of aiosmtplib's errors quote the body.
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return "the server refused the recipient"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"the server answered {exc.code} {exc.message}"
    return f"{type(exc).__name__}: {exc}"


class ConsoleSender:
    """Development only: logs each mail, body included, so a developer can read the code."""

    def __init__(self, mail_from: str) -> None:
        self.mail_from = mail_from

    async def send(self, message: Message) -> None:
        # The one place a code is logged, on purpose: make_sender() never picks this
        # sender in production.
        log.info(
            "console mail (not sent)\nFrom: %s\nTo: %s\nSubject: %s\n\n%s%s",
            self.mail_from,
            message.to,
            message.subject,
            message.text,
            "" if message.html is None else "\n[an HTML alternative is attached]",
        )


def make_sender(settings: Settings) -> MailSender:
    """SMTP when ``PROVIDER_SMTP_URL`` is set, else the console (refused in production)."""
    url = settings.smtp_url.get_secret_value().strip() if settings.smtp_url else ""
    if url:
        return SmtpSender(url, settings.mail_from)
    if settings.env == "production":
        raise RuntimeError("PROVIDER_SMTP_URL must be set when PROVIDER_ENV=production")
    log.warning("no PROVIDER_SMTP_URL: emails are printed to the console (development only)")
    return ConsoleSender(settings.mail_from)
