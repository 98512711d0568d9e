"""Email: the MailSender seam, its SMTP and console implementations, and the templates."""

from provider.mail.sender import (
    ConsoleSender,
    MailError,
    MailSender,
    Message,
    SmtpSender,
    SmtpServer,
    make_sender,
    parse_smtp_url,
)

__all__ = [
    "ConsoleSender",
    "MailError",
    "MailSender",
    "Message",
    "SmtpSender",
    "SmtpServer",
    "make_sender",
    "parse_smtp_url",
]
