"""Helpers for the account-flow suites: clients with their own address, codes from mail.

Each test talks to the app from an address of its own (``http_client``), so the
per-address registration throttle of the shared app never couples two tests.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from provider.app import create_app
from provider.services import Services
from provider.settings import Settings
from provider.users.models import User
from tests.conftest import TestClock, make_settings
from tests.factories import TestUser, unique_email
from tests.smtp_sink import CODE_PATTERN, SmtpSink, plain_text

BASE_URL = "http://127.0.0.1:8000"
GOOD_PASSWORD = "violet tangerine kayak"
OTHER_PASSWORD = "quiet marble lantern"

ACCEPTED = {"status": "accepted",
            "detail": "If the address can receive it, a message is on its way."}
REGISTER_ACCEPTED = {
    "status": "accepted",
    "detail": "If the address can receive it, a message is on its way. "
              "Confirm your address with the code it contains.",
}
BAD_CREDENTIALS = "Invalid username or password."
UNVERIFIED = "The email address has not been verified yet."

SUBJECT_VERIFY = "Your provider verification code"
SUBJECT_RESET = "Reset your provider password"
SUBJECT_CHANGE_EMAIL = "Confirm your new provider email address"
SUBJECT_EXISTS = "Your provider account already exists"
SUBJECT_PASSWORD_CHANGED = "Your provider password was changed"
SUBJECT_EMAIL_NOTICE = "The email address of your provider account was changed"
SUBJECT_DELETED = "Your provider account was deleted"

_hosts = itertools.count(1)


def credentials(email: str, password: str, user_id: str = "") -> TestUser:
    """What a person types into a login form (the shape ``login`` helpers take)."""
    return TestUser(user_id, email, password, None)


def problem(status: int, code: str, title: str, **extra: Any) -> dict[str, Any]:
    """An RFC 9457 body as the API renders it."""
    return {"type": "about:blank", "title": title, "status": status, "code": code, **extra}


INVALID_CODE = problem(400, "invalid_code", "The code is wrong, expired or already used.")
RATE_LIMITED = problem(429, "rate_limited", "Too many requests. Try again later.")
WRONG_PASSWORD = problem(400, "invalid_password", "The current password is not correct.")


def weak_password(detail: str) -> dict[str, Any]:
    return problem(422, "weak_password", "The password does not meet the policy.",
                   detail=detail)


def extra_forbidden(field: str) -> dict[str, Any]:
    return problem(422, "validation_error", "The request body is not valid.", errors=[
        {"loc": ["body", field], "msg": "Extra inputs are not permitted",
         "type": "extra_forbidden"},
    ])


def assert_body(response: httpx.Response, status: int, body: dict[str, Any]) -> None:
    assert response.status_code == status, response.text
    if status >= 400:
        assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == body


def fresh_address() -> tuple[str, int]:
    """A client address no other client of this process uses (10.0.0.0/8)."""
    n = next(_hosts)
    return (f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", 40000)


@asynccontextmanager
async def http_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False,
                                    client=fresh_address())
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


@dataclass
class OwnApp:
    app: FastAPI
    services: Services

    def client(self) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        """A client of this app, from an address of its own."""
        return http_client(self.app)


@asynccontextmanager
async def own_app(settings: Settings, clock: TestClock, mail_sink: SmtpSink,
                  **overrides: Any) -> AsyncIterator[OwnApp]:
    """A second app on the suite's database and mail sink, with some settings changed."""
    changed = make_settings(settings.database_url, settings.keys_dir, smtp_url=mail_sink.url,
                            **overrides)
    application = create_app(changed, clock=clock)
    async with application.router.lifespan_context(application):
        yield OwnApp(application, application.state.services)


# --- flows ------------------------------------------------------------------------------


async def register(http: httpx.AsyncClient, email: str, password: str = GOOD_PASSWORD,
                   **fields: Any) -> httpx.Response:
    return await http.post("/auth/register",
                           json={"email": email, "password": password, **fields})


async def last_code(mail_sink: SmtpSink, address: str, count: int = 1) -> str:
    """Wait for the ``count``-th mail to ``address``; the code in the latest mail."""
    messages = await mail_sink.wait_for(address, count=count)
    codes = CODE_PATTERN.findall(plain_text(messages[-1]))
    assert len(codes) == 1, plain_text(messages[-1])  # one standalone 6-digit code
    return str(codes[0])


def subjects(mail_sink: SmtpSink, address: str) -> list[str]:
    return [str(m["Subject"]) for m in mail_sink.messages_to(address)]


async def register_user(http: httpx.AsyncClient, mail_sink: SmtpSink, *,
                        email: str | None = None, password: str = GOOD_PASSWORD,
                        verify: bool = True, **fields: Any) -> TestUser:
    """Register through the API, and verify the address with the mailed code."""
    email = email or unique_email("reg")
    before = len(mail_sink.messages_to(email))
    response = await register(http, email, password, **fields)
    assert_body(response, 202, REGISTER_ACCEPTED)
    code = await last_code(mail_sink, email, count=before + 1)
    if verify:
        verified = await http.post("/auth/verify-email", json={"email": email, "code": code})
        assert_body(verified, 200, {"status": "verified"})
    return TestUser("", email, password, fields.get("username"))


async def request_reset_code(http: httpx.AsyncClient, mail_sink: SmtpSink, email: str) -> str:
    before = len(mail_sink.messages_to(email))
    response = await http.post("/auth/forgot-password", json={"email": email})
    assert_body(response, 202, ACCEPTED)
    return await last_code(mail_sink, email, count=before + 1)


async def users_with_email(services: Services, email: str) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(
            select(func.count()).select_from(User).where(User.email == email.lower())
        ) or 0)


async def load_user(services: Services, user_id: str | uuid.UUID) -> User:
    async with services.sessions() as session:
        user = await session.get(User, uuid.UUID(str(user_id)))
        assert user is not None
        return user
