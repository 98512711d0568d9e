"""provider.mail against a real SMTP server (aiosmtpd on loopback): senders, URLs, templates."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from provider.mail import (
    ConsoleSender,
    MailError,
    Message,
    SmtpSender,
    make_sender,
    parse_smtp_url,
    templates,
)
from provider.settings import Settings

try:  # tests/ as a package (tests/__init__.py) or as a rootdir on sys.path
    from tests.smtp_sink import SmtpSink, html_text, plain_text
except ModuleNotFoundError:
    from smtp_sink import SmtpSink, html_text, plain_text  # type: ignore[no-redef]

FROM = "Provider <no-reply@example.com>"
CODE = "493817"
EVIL = '<script>alert("x")</script> & Co'


def _message(**overrides: Any) -> Message:
    fields: dict[str, Any] = {
        "to": "ada@example.com",
        "subject": "Your code",
        "text": f"Your code is:\n\n{CODE}\n",
        "html": f"<p>Your code is <b>{CODE}</b></p>",
    }
    fields.update(overrides)
    return Message(**fields)


def _settings(**overrides: Any) -> Settings:
    # _env_file=None: a developer's .env must not leak into these tests.
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def _error_chain_text(error: BaseException) -> str:
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        parts.append(f"{current!s} {current!r}")
        current = current.__cause__ or current.__context__
    return " ".join(parts)


@pytest.fixture
def closed_port() -> Iterator[int]:
    # Bound but not listening: connecting is refused, and no one else can take the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- SmtpSender against the sink ------------------------------------------------------


async def test_send_delivers_multipart_message_with_headers(smtp_sink: SmtpSink) -> None:
    await SmtpSender(smtp_sink.url, FROM).send(_message())

    [received] = await smtp_sink.wait_for("ada@example.com")
    assert received["From"] == FROM
    assert received["To"] == "ada@example.com"
    assert received["Subject"] == "Your code"
    assert received["Message-ID"].endswith("@example.com>")
    assert received["Date"] is not None
    assert received["Auto-Submitted"] == "auto-generated"
    assert received.get_content_type() == "multipart/alternative"
    assert plain_text(received) == f"Your code is:\n\n{CODE}\n"
    assert html_text(received) == f"<p>Your code is <b>{CODE}</b></p>\n"
    assert smtp_sink.received[0].mail_from == "no-reply@example.com"
    assert smtp_sink.received[0].rcpt_tos == ("ada@example.com",)
    assert smtp_sink.codes_for("ada@example.com") == [CODE]


async def test_send_without_html_delivers_text_only(smtp_sink: SmtpSink) -> None:
    await SmtpSender(smtp_sink.url, FROM).send(_message(html=None))

    [received] = await smtp_sink.wait_for("ada@example.com")
    assert received.get_content_type() == "text/plain"
    assert html_text(received) is None
    assert smtp_sink.messages_to("someone-else@example.com") == []


async def test_send_non_ascii_subject_and_body_arrive_intact(smtp_sink: SmtpSink) -> None:
    message = _message(subject="Vérification ✓", text="Grüße\n\n123456\n", html=None)
    await SmtpSender(smtp_sink.url, FROM).send(message)

    [received] = await smtp_sink.wait_for("ada@example.com")
    assert received["Subject"] == "Vérification ✓"
    assert plain_text(received) == "Grüße\n\n123456\n"


async def test_send_authenticates_with_percent_decoded_credentials(
    auth_smtp_sink: SmtpSink,
) -> None:
    assert "%40" in auth_smtp_sink.url  # the URL really is percent-encoded

    await SmtpSender(auth_smtp_sink.url, FROM).send(_message())

    await auth_smtp_sink.wait_for("ada@example.com")
    assert auth_smtp_sink.logins == [("mailer@example.com", "p@ss:w/rd?#% +x")]


async def test_send_with_wrong_password_raises_mail_error(auth_smtp_sink: SmtpSink) -> None:
    url = f"smtp://mailer%40example.com:wrong-secret@127.0.0.1:{auth_smtp_sink.port}"

    with pytest.raises(MailError, match="535") as caught:
        await SmtpSender(url, FROM).send(_message())

    # aiosmtplib tries each mechanism the server offers (PLAIN, LOGIN) before giving up.
    assert set(auth_smtp_sink.logins) == {("mailer@example.com", "wrong-secret")}
    assert auth_smtp_sink.messages == []
    assert "wrong-secret" not in str(caught.value)
    assert CODE not in str(caught.value)


async def test_send_without_credentials_to_auth_server_raises_mail_error(
    auth_smtp_sink: SmtpSink,
) -> None:
    url = f"smtp://127.0.0.1:{auth_smtp_sink.port}"

    with pytest.raises(MailError, match="530"):
        await SmtpSender(url, FROM).send(_message())

    assert auth_smtp_sink.messages == []


async def test_send_connection_refused_raises_mail_error_without_body(closed_port: int) -> None:
    sender = SmtpSender(f"smtp://127.0.0.1:{closed_port}", FROM)

    with pytest.raises(MailError) as caught:
        await sender.send(_message())

    assert str(caught.value).startswith(f"sending mail via 127.0.0.1:{closed_port} failed: ")
    assert CODE not in _error_chain_text(caught.value)


async def test_send_silent_server_raises_mail_error_after_timeout() -> None:
    async def accept_and_say_nothing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sender = SmtpSender(f"smtp://127.0.0.1:{port}", FROM, timeout=0.2)
        with pytest.raises(MailError, match="Timeout") as caught:
            await sender.send(_message())
    finally:
        server.close()
        await server.wait_closed()
    assert CODE not in _error_chain_text(caught.value)


async def test_send_starttls_delivers_over_verified_tls() -> None:
    with SmtpSink(tls="starttls", credentials=("mailer", "secret")) as sink:
        sender = SmtpSender(sink.url, FROM, tls_context=sink.client_tls_context())
        await sender.send(_message())

        await sink.wait_for("ada@example.com")
        assert sink.logins == [("mailer", "secret")]


async def test_send_smtps_delivers_over_verified_tls() -> None:
    with SmtpSink(tls="implicit") as sink:
        sender = SmtpSender(sink.url, FROM, tls_context=sink.client_tls_context())
        await sender.send(_message())

        assert sink.codes_for("ada@example.com") == [CODE]


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_send_tls_to_untrusted_certificate_raises_mail_error(tls: str) -> None:
    with SmtpSink(tls=tls) as sink:  # type: ignore[arg-type]
        with pytest.raises(MailError, match="CERTIFICATE_VERIFY_FAILED"):
            await SmtpSender(sink.url, FROM).send(_message())

        assert sink.messages == []


async def test_send_plain_url_never_upgrades_to_starttls() -> None:
    # The sink offers and requires STARTTLS; smtp:// must not silently take it.
    with SmtpSink(tls="starttls") as sink:
        sender = SmtpSender(f"smtp://127.0.0.1:{sink.port}", FROM)
        with pytest.raises(MailError, match="STARTTLS"):
            await sender.send(_message())


async def test_sink_wait_for_times_out_with_clear_message(smtp_sink: SmtpSink) -> None:
    with pytest.raises(TimeoutError, match=r"expected 1 mail\(s\) to nobody@example.com"):
        await smtp_sink.wait_for("nobody@example.com", timeout=0.05)


# -- URL parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "port", "use_tls", "start_tls"),
    [
        ("smtp://mail.example.com:2525", 2525, False, False),
        ("smtp+starttls://mail.example.com:587", 587, False, True),
        ("smtps://mail.example.com:465", 465, True, False),
        ("SMTPS://mail.example.com:1465/", 1465, True, False),
        ("smtp://mail.example.com", 25, False, False),
        ("smtp+starttls://mail.example.com", 587, False, True),
        ("smtps://mail.example.com", 465, True, False),
    ],
)
def test_parse_smtp_url_schemes(url: str, port: int, use_tls: bool, start_tls: bool) -> None:
    server = parse_smtp_url(url)

    assert (server.hostname, server.port) == ("mail.example.com", port)
    assert (server.use_tls, server.start_tls) == (use_tls, start_tls)
    assert (server.username, server.password) == (None, None)


def test_parse_smtp_url_percent_decodes_credentials() -> None:
    server = parse_smtp_url("smtp://me%40x.com:p%40ss%3Aw%2Frd%25+x@[::1]:2525")

    assert server.username == "me@x.com"
    assert server.password == "p@ss:w/rd%+x"  # '+' stays '+': this is not a form
    assert (server.hostname, server.port) == ("::1", 2525)
    assert "p@ss" not in repr(server)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://mail.example.com:25",
        "smtp+ssl://mail.example.com:465",
        "mail.example.com:25",
        "smtp://",
        "smtp://:25",
        "smtp://user:pass@:25",
        "smtp://mail.example.com:smtp",
        "smtp://mail.example.com:0",
        "smtp://mail.example.com:70000",
        "smtp://mail.example.com:25/relay",
        "smtp://mail.example.com:25?tls=1",
        "smtp://user@mail.example.com:25",
    ],
)
def test_parse_smtp_url_rejects_bad_url(url: str) -> None:
    with pytest.raises(ValueError, match="PROVIDER_SMTP_URL"):
        parse_smtp_url(url)


def test_parse_smtp_url_error_never_shows_password() -> None:
    # An unencoded '/' in the password splits the URL in the wrong place.
    with pytest.raises(ValueError, match="percent-encode") as caught:
        parse_smtp_url("smtp://user:s3cr/et@mail.example.com:25")

    assert "s3cr" not in str(caught.value)


def test_smtp_sender_is_configured_from_url() -> None:
    starttls = SmtpSender("smtp+starttls://u:p@mail.example.com:587", FROM, timeout=3.0)
    smtps = SmtpSender("smtps://mail.example.com", FROM)

    assert (starttls.server.start_tls, starttls.server.use_tls) == (True, False)
    assert (starttls.server.username, starttls.server.password) == ("u", "p")
    assert starttls.timeout == 3.0
    assert (smtps.server.start_tls, smtps.server.use_tls, smtps.server.port) == (False, True, 465)


def test_smtp_sender_warns_about_plain_password_to_remote_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    SmtpSender("smtp://u:p@127.0.0.1:2525", FROM)
    SmtpSender("smtp+starttls://u:p@mail.example.com:587", FROM)
    assert caplog.records == []

    SmtpSender("smtp://u:p@mail.example.com:25", FROM)

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "password travels unencrypted" in record.getMessage()


def test_smtp_sender_rejects_bad_url_at_construction() -> None:
    with pytest.raises(ValueError, match="PROVIDER_SMTP_URL"):
        SmtpSender("smtp://", FROM)


def test_smtp_sender_rejects_mail_from_without_address() -> None:
    with pytest.raises(ValueError, match="PROVIDER_MAIL_FROM"):
        SmtpSender("smtp://mail.example.com:25", "provider")


# -- Message ------------------------------------------------------------------------------


def test_message_repr_hides_bodies() -> None:
    assert CODE not in repr(_message())


@pytest.mark.parametrize("field", ["to", "subject"])
def test_message_rejects_line_breaks_in_headers(field: str) -> None:
    with pytest.raises(ValueError, match=f"Message.{field} must be a single line"):
        _message(**{field: "ada@example.com\r\nBcc: eve@example.com"})


# -- ConsoleSender and make_sender --------------------------------------------------------


async def test_console_sender_logs_whole_message(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="provider.mail")

    await ConsoleSender(FROM).send(_message())

    [record] = caplog.records
    assert record.name == "provider.mail"
    assert record.levelno == logging.INFO
    text = record.getMessage()
    assert "To: ada@example.com" in text
    assert "Subject: Your code" in text
    assert f"\n{CODE}\n" in text


def test_make_sender_uses_smtp_when_url_set(caplog: pytest.LogCaptureFixture) -> None:
    sender = make_sender(
        _settings(
            env="production",
            issuer="https://auth.example.com",
            metrics_token="a-metrics-token-for-the-scraper",
            smtp_url="smtps://u:p@mail.example.com:465",
            mail_from=FROM,
        )
    )

    assert isinstance(sender, SmtpSender)
    assert (sender.server.hostname, sender.server.use_tls) == ("mail.example.com", True)
    assert sender.mail_from == FROM
    assert caplog.records == []


@pytest.mark.parametrize("smtp_url", [None, ""])
def test_make_sender_falls_back_to_console_with_warning(
    smtp_url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    sender = make_sender(_settings(env="development", smtp_url=smtp_url))

    assert isinstance(sender, ConsoleSender)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            "provider.mail",
            logging.WARNING,
            "no PROVIDER_SMTP_URL: emails are printed to the console (development only)",
        )
    ]


def test_make_sender_refuses_console_in_production() -> None:
    settings = _settings(env="production", issuer="https://auth.example.com", smtp_url=None,
                         metrics_token="a-metrics-token-for-the-scraper")

    with pytest.raises(RuntimeError) as caught:
        make_sender(settings)

    assert str(caught.value) == "PROVIDER_SMTP_URL must be set when PROVIDER_ENV=production"


def test_make_sender_rejects_bad_url() -> None:
    with pytest.raises(ValueError, match="PROVIDER_SMTP_URL"):
        make_sender(_settings(smtp_url="smtp://"))


# -- templates ------------------------------------------------------------------------------

CODE_TEMPLATES: list[Callable[..., Message]] = [
    templates.verification_code,
    templates.password_reset_code,
    templates.email_change_code,
]

ALL_TEMPLATES: list[tuple[Callable[..., Message], dict[str, Any]]] = [
    *[(template, {"code": CODE, "ttl_minutes": 10}) for template in CODE_TEMPLATES],
    (templates.registration_attempt, {"base_url": "https://auth.example.com"}),
    (templates.password_changed, {}),
    (templates.email_change_notice, {"new_email_hint": "a***@example.org"}),
    (templates.account_deleted, {}),
    (templates.mfa_changed, {"enabled": True}),
    (templates.mfa_changed, {"enabled": False}),
    (templates.recovery_codes_regenerated, {}),
    (templates.mfa_reset, {}),
]


def _template_id(case: tuple[Callable[..., Message], dict[str, Any]]) -> str:
    template, kwargs = case
    return template.__name__ + "".join(
        f"-{key}={value}" for key, value in kwargs.items() if key == "enabled"
    )


@pytest.mark.parametrize("template", CODE_TEMPLATES, ids=lambda t: t.__name__)
def test_code_template_puts_code_alone_on_its_line(template: Callable[..., Message]) -> None:
    message = template("ada@example.com", code=CODE, ttl_minutes=10, product="Acme ID")

    assert message.to == "ada@example.com"
    assert "Acme ID" in message.subject
    assert CODE not in message.subject  # subjects show up on lock screens
    assert CODE in message.text.splitlines()
    assert re.findall(r"(?<!\d)\d{6}(?!\d)", message.text) == [CODE]
    assert "expires in 10 minutes" in message.text
    assert "ignore this email" in message.text
    assert message.html is not None
    assert f">{CODE}</p>" in message.html
    assert "expires in 10 minutes" in message.html


def test_code_template_says_one_minute_in_singular() -> None:
    message = templates.verification_code("ada@example.com", code=CODE, ttl_minutes=1)

    assert "expires in 1 minute." in message.text


@pytest.mark.parametrize("code", ["12345", "1234567", "12 456", "abcdef", "١٢٣٤٥٦", "123456\n"])
@pytest.mark.parametrize("template", CODE_TEMPLATES, ids=lambda t: t.__name__)
def test_code_template_rejects_malformed_code(template: Callable[..., Message], code: str) -> None:
    with pytest.raises(ValueError, match="exactly 6 digits"):
        template("ada@example.com", code=code, ttl_minutes=10)


def test_code_template_rejects_non_positive_ttl() -> None:
    with pytest.raises(ValueError, match="ttl_minutes"):
        templates.password_reset_code("ada@example.com", code=CODE, ttl_minutes=0)


@pytest.mark.parametrize("case", ALL_TEMPLATES, ids=_template_id)
def test_template_html_escapes_product_name(
    case: tuple[Callable[..., Message], dict[str, Any]],
) -> None:
    template, kwargs = case
    message = template("ada@example.com", product=EVIL, **kwargs)

    assert message.html is not None
    assert message.html.startswith("<!DOCTYPE html>")
    assert "<script" not in message.html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in message.html
    assert EVIL in message.text  # plain text needs no escaping
    assert "$" not in message.text + message.html  # no placeholder left unfilled


def test_registration_attempt_links_only_to_base_url() -> None:
    message = templates.registration_attempt(
        "ada@example.com", base_url='https://auth.example.com/"><script>', product="Acme"
    )

    assert 'https://auth.example.com/"><script>' in message.text
    assert message.html is not None
    assert '<a href="https://auth.example.com/&quot;&gt;&lt;script&gt;">' in message.html
    assert "Forgot password" in message.text
    assert re.findall(r"(?<!\d)\d{6}(?!\d)", message.text) == []


@pytest.mark.parametrize("base_url", ["javascript:alert(1)", "//evil.example", ""])
def test_registration_attempt_rejects_non_http_base_url(base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        templates.registration_attempt("ada@example.com", base_url=base_url)


def test_email_change_notice_escapes_hint() -> None:
    message = templates.email_change_notice("old@example.com", new_email_hint="<b>n</b>@x.org")

    assert "<b>n</b>@x.org" in message.text
    assert message.html is not None
    assert "&lt;b&gt;n&lt;/b&gt;@x.org" in message.html


def test_mfa_changed_says_on_or_off() -> None:
    on = templates.mfa_changed("ada@example.com", enabled=True, product="Acme")
    off = templates.mfa_changed("ada@example.com", enabled=False, product="Acme")

    assert on.subject == "Two-step verification was turned on for your Acme account"
    assert off.subject == "Two-step verification was turned off for your Acme account"
    assert "turned on" in on.text
    assert "turned off" in off.text


async def test_template_sent_through_smtp_yields_code_to_sink(smtp_sink: SmtpSink) -> None:
    sender = SmtpSender(smtp_sink.url, FROM)
    await sender.send(templates.verification_code("ada@example.com", code=CODE, ttl_minutes=10))
    await sender.send(
        templates.password_reset_code("ada@example.com", code="000417", ttl_minutes=10)
    )

    await smtp_sink.wait_for("ada@example.com", count=2)
    assert smtp_sink.codes_for("ada@example.com") == [CODE, "000417"]
    assert smtp_sink.codes_for("ADA@example.com") == [CODE, "000417"]
