"""An unreachable database answers 503 with Retry-After, never a 500 or a stack trace."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from provider.app import create_app
from tests.conftest import make_settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_database_down_answers_503(keys_dir: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nothing"
    app = create_app(make_settings(url, keys_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            token = await http.post("/oauth/token", data={
                "grant_type": "client_credentials", "client_id": "cl_x", "client_secret": "s"})
            ready = await http.get("/readyz")
            forgot = await http.post("/auth/verify-email", json={
                "email": "a@example.com", "code": "123456"})

    assert token.status_code == 503
    assert token.json() == {
        "error": "temporarily_unavailable",
        "error_description": "The server cannot handle the request right now. Try again later.",
    }
    assert token.headers["retry-after"] == "5"
    assert token.headers["cache-control"] == "no-store"
    assert ready.status_code == 503
    assert ready.json()["code"] == "service_unavailable"
    assert forgot.status_code == 503
    assert forgot.headers["content-type"] == "application/problem+json"
    assert forgot.json() == {
        "type": "about:blank",
        "title": "A service this request needs is unavailable.",
        "status": 503,
        "code": "service_unavailable",
        "detail": "The database is unavailable. Try again shortly.",
    }
