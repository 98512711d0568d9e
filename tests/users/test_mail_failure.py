"""A mail server that is down loses no work: the API answers as the contract says, the
user exists, and the failure is logged (without the code) and counted."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from provider.app import create_app
from provider.users.models import User
from tests.conftest import make_settings
from tests.factories import unique_email


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _failures() -> float:
    return REGISTRY.get_sample_value("provider_mail_failures_total") or 0.0


async def test_registration_survives_a_dead_mail_server(
    settings_keys: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    database_url, keys_dir = settings_keys
    app = create_app(make_settings(database_url, keys_dir,
                                   smtp_url=f"smtp://127.0.0.1:{_closed_port()}"))
    email = unique_email("nomail")
    before = _failures()
    caplog.set_level(logging.ERROR, logger="provider.accounts")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False,
                                        client=("10.9.8.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.post("/auth/register", json={
                "email": email, "password": "a sturdy enough passphrase"})
        async with app.state.services.sessions() as session:
            user = await session.scalar(select(User).where(User.email == email))

    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    assert user is not None and not user.is_verified  # the work was kept
    assert _failures() == before + 1
    failures = [r for r in caplog.records if r.name == "provider.accounts"]
    assert len(failures) == 1
    text = failures[0].getMessage()
    assert "mail not sent" in text
    assert not re.search(r"(?<!\d)\d{6}(?!\d)", text)  # never the code
