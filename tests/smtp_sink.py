"""A real SMTP server on loopback for tests (aiosmtpd), keeping every mail it receives.

    with SmtpSink() as sink:                      # smtp://127.0.0.1:<free port>
        settings = Settings(smtp_url=sink.url, ...)
        ...
        [code] = sink.codes_for("ada@example.com")

``SmtpSink(credentials=("user", "pass"))`` requires AUTH (its ``url`` carries the
percent-encoded credentials); ``SmtpSink(tls="starttls" | "implicit")`` serves TLS with
a throwaway self-signed certificate that ``client_tls_context()`` trusts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import ipaddress
import re
import ssl
import sys
import tempfile
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

CODE_PATTERN = re.compile(r"(?<!\d)\d{6}(?!\d)")


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage


class SmtpSink:
    """Start with ``with SmtpSink() as sink`` (or start()/stop()); read what arrived."""

    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        tls: Literal["starttls", "implicit"] | None = None,
        hostname: str = "127.0.0.1",
    ) -> None:
        self.hostname = hostname
        self.credentials = credentials
        self.tls = tls
        self.port = 0
        self.received: list[ReceivedMail] = []
        #: every (login, password) an SMTP client offered, right or wrong
        self.logins: list[tuple[str, str]] = []
        self.cert_pem: bytes | None = None
        self._lock = threading.Lock()
        self._controller: _EphemeralPortController | None = None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> SmtpSink:
        kwargs: dict[str, Any] = {
            # A fixed name: otherwise aiosmtpd asks DNS for this host's name.
            "server_hostname": "smtp-sink.test",
            # Plain AUTH is what a local relay offers; TLS sinks keep the safe default.
            "auth_require_tls": self.tls is not None,
        }
        if self.credentials is not None:
            # auth_required=True would warn about plain-text AUTH (an error under
            # filterwarnings=error); handle_MAIL enforces it instead.
            kwargs["authenticator"] = self._authenticate
        if self.tls is not None:
            server_context = self._make_server_tls_context()
            if self.tls == "starttls":
                kwargs["tls_context"] = server_context
                kwargs["require_starttls"] = True
            else:
                kwargs["ssl_context"] = server_context
        controller = _EphemeralPortController(
            _Handler(self), hostname=self.hostname, port=0, **kwargs
        )
        controller.start()
        self._controller = controller
        self.port = controller.port
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
            if self.tls is not None:
                _collect_the_stopped_loops_leftovers()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addressing --------------------------------------------------------------

    @property
    def url(self) -> str:
        """A ``PROVIDER_SMTP_URL`` for this sink, credentials included and percent-encoded."""
        scheme = {None: "smtp", "starttls": "smtp+starttls", "implicit": "smtps"}[self.tls]
        userinfo = ""
        if self.credentials is not None:
            user, password = self.credentials
            userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        return f"{scheme}://{userinfo}{self.hostname}:{self.port}"

    def client_tls_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this sink's certificate."""
        if self.cert_pem is None:
            raise RuntimeError("this sink does not serve TLS")
        return ssl.create_default_context(cadata=self.cert_pem.decode("ascii"))

    # -- reading -----------------------------------------------------------------

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return [mail.message for mail in self.received]

    def messages_to(self, address: str) -> list[EmailMessage]:
        """Messages whose envelope recipients include ``address`` (case-insensitive)."""
        wanted = address.casefold()
        with self._lock:
            return [
                mail.message
                for mail in self.received
                if any(rcpt.casefold() == wanted for rcpt in mail.rcpt_tos)
            ]

    def codes_for(self, address: str) -> list[str]:
        """Standalone 6-digit numbers in the text/plain parts of mail to ``address``, in order."""
        codes: list[str] = []
        for message in self.messages_to(address):
            codes.extend(CODE_PATTERN.findall(plain_text(message)))
        return codes

    async def wait_for(
        self, address: str, count: int = 1, timeout: float = 5.0
    ) -> list[EmailMessage]:
        """Wait until at least ``count`` mails to ``address`` arrived; return them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            messages = self.messages_to(address)
            if len(messages) >= count:
                return messages
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"expected {count} mail(s) to {address} within {timeout}s, got {len(messages)}"
                )
            await asyncio.sleep(0.01)

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            self.logins.clear()

    # -- server side (runs in the controller's thread) ---------------------------

    def _record(self, mail: ReceivedMail) -> None:
        with self._lock:
            self.received.append(mail)

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.credentials is None:
            return AuthResult(success=False, handled=False)
        offered = (auth_data.login.decode(), auth_data.password.decode())
        with self._lock:
            self.logins.append(offered)
        return AuthResult(success=offered == self.credentials, handled=False)

    def _make_server_tls_context(self) -> ssl.SSLContext:
        cert_pem, key_pem = _self_signed_certificate(self.hostname)
        self.cert_pem = cert_pem
        # ssl can load a certificate chain only from files.
        self._tempdir = tempfile.TemporaryDirectory(prefix="smtp-sink-")
        cert_file = Path(self._tempdir.name, "cert.pem")
        key_file = Path(self._tempdir.name, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


def plain_text(message: EmailMessage) -> str:
    """The text/plain body of ``message`` with LF line ends ('' when it has none)."""
    return _body(message, "plain") or ""


def html_text(message: EmailMessage) -> str | None:
    """The text/html body of ``message`` with LF line ends, or None."""
    return _body(message, "html")


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    content = part.get_content()
    if not isinstance(content, str):
        return None
    # SMTP carries CRLF line ends; what was sent had \n.
    return content.replace("\r\n", "\n")


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self._sink.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        message = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        self._sink._record(
            ReceivedMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                message=message,
            )
        )
        return "250 Message accepted for delivery"


def _collect_the_stopped_loops_leftovers() -> None:
    """Collect now what the sink's stopped loop left behind, and drop what that raises.

    A client that gave up mid-STARTTLS (an untrusted certificate) leaves aiosmtpd's
    server a transport half closed when the controller stops its loop, and leaves its
    own socket to the garbage collector too (CPython 3.11's ``loop.start_tls`` does not
    close it when the handshake fails; aiosmtplib's connect() closes what it knows of).
    Collected later, in whatever test runs then, their ``__del__`` raised into pytest's
    unraisable hook (an error under filterwarnings=error: a flaky failure in an
    unrelated test). Collected here, at once, with their complaints swallowed; the tests
    of the failure itself check what the sender answers (MailError), not the runtime's
    teardown.
    """
    previous = sys.unraisablehook
    sys.unraisablehook = lambda _unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous


class _EphemeralPortController(Controller):
    """Binds port 0 and learns the port the OS chose: no race for a "free" port.

    aiosmtpd's Controller connects to ``self.port`` after binding, so the real port
    must be known before start() returns.
    """

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self._create_server_and_learn_port()

    async def _create_server_and_learn_port(self) -> asyncio.AbstractServer:
        server = await super()._create_server()
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        return server


def _self_signed_certificate(hostname: str) -> tuple[bytes, bytes]:
    """A fresh P-256 certificate for ``hostname`` (IP or name) and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    except ValueError:
        names.append(x509.DNSName(hostname))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp-sink.test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # What Python 3.13's VERIFY_X509_STRICT demands of a self-signed certificate.
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem
