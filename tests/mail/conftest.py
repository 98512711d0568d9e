"""Fixtures for the mail tests: a real SMTP server on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

try:  # tests/ as a package (tests/__init__.py) or as a rootdir on sys.path
    from tests.smtp_sink import SmtpSink
except ModuleNotFoundError:
    from smtp_sink import SmtpSink  # type: ignore[no-redef]


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def auth_smtp_sink() -> Iterator[SmtpSink]:
    # Every URL-special character, to prove the credentials are percent-decoded.
    with SmtpSink(credentials=("mailer@example.com", "p@ss:w/rd?#% +x")) as sink:
        yield sink
