"""RequireToken in the package's example app (resource/examples/app.py), in-process and
as a real uvicorn process, against the real provider: RFC 6750 answers for every refusal."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import pytest_asyncio

from tests.e2e.conftest import free_port
from tests.resource.conftest import Provider

RESOURCE = Path(__file__).resolve().parents[2] / "resource"
INVALID = ('Bearer error="invalid_token", error_description="The access token is invalid, '
           'expired or revoked."')


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_app", RESOURCE / "examples/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(provider: Provider) -> AsyncIterator[httpx.AsyncClient]:
    app = load_example().create_app(provider.issuer, provider.issuer, provider.api.client_id,
                                    provider.api.client_secret)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_valid_token_is_served(api: httpx.AsyncClient, provider: Provider) -> None:
    access = provider.login()["access_token"]
    response = await api.get("/hello", headers=bearer(access))
    assert response.status_code == 200, response.text
    assert response.json() == {"hello": provider.user.id,
                               "client_id": provider.client.client_id}
    profile = await api.get("/profile", headers=bearer(access))
    assert profile.json()["scopes"] == ["email", "openid", "profile"]


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNz", "Bearer", "Token x"])
async def test_no_bearer_token_gets_a_bare_challenge(
    api: httpx.AsyncClient, authorization: str | None,
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await api.get("/hello", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": "An access token is required."}


async def test_a_bad_token_gets_invalid_token(api: httpx.AsyncClient,
                                              provider: Provider) -> None:
    forge = provider.forge()
    for token in ("not-a-jwt", forge.sign(aud="https://api.other.example"),
                  provider.login()["id_token"]):
        response = await api.get("/hello", headers=bearer(token))
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == INVALID
        assert response.json() == {"detail": "The access token is invalid, expired or revoked."}


async def test_a_token_without_the_scope_gets_insufficient_scope(
    api: httpx.AsyncClient, provider: Provider,
) -> None:
    access = provider.login(scope="openid")["access_token"]
    assert (await api.get("/hello", headers=bearer(access))).status_code == 200
    response = await api.get("/profile", headers=bearer(access))
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", error_description="The access token does not '
        'grant the scope this request needs.", scope="profile"')


async def test_a_token_in_the_query_string_is_invalid_request(
    api: httpx.AsyncClient, provider: Provider,
) -> None:
    access = provider.login()["access_token"]
    response = await api.get("/hello", params={"access_token": access}, headers=bearer(access))
    assert response.status_code == 400
    assert response.headers["www-authenticate"] == (
        'Bearer error="invalid_request", error_description="Access tokens are not accepted '
        'in the query string."')


async def test_the_introspecting_route_sees_a_revocation(
    api: httpx.AsyncClient, provider: Provider,
) -> None:
    tokens = provider.login()
    assert (await api.get("/account", headers=bearer(tokens["access_token"]))).status_code \
        == 200
    provider.revoke(tokens["refresh_token"])
    deadline = time.monotonic() + 10  # the default cache keeps an answer for 1 s
    while True:
        response = await api.get("/account", headers=bearer(tokens["access_token"]))
        if response.status_code == 401 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == INVALID
    # The offline route does not know: that is what introspection is for.
    assert (await api.get("/hello", headers=bearer(tokens["access_token"]))).status_code \
        == 200


async def test_openapi_declares_the_bearer_scheme(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer"}
    assert document["paths"]["/hello"]["get"]["security"] == [{"HTTPBearer": []}]


def test_the_example_runs_as_its_readme_says(provider: Provider) -> None:
    """`ISSUER=... uvicorn examples.app:app --port 8001` from resource/."""
    port = free_port()
    env = {**os.environ, "ISSUER": provider.issuer}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.app:app", "--host", "127.0.0.1",
         "--port", str(port)], cwd=RESOURCE, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        access = provider.login()["access_token"]
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                          trust_env=False) as http:
            while True:
                try:
                    response = http.get("/hello", headers=bearer(access))
                    break
                except httpx.TransportError:
                    assert process.poll() is None, "the example exited"
                    assert time.monotonic() < deadline, "the example did not start"
                    time.sleep(0.1)
            assert response.status_code == 200, response.text
            assert response.json()["hello"] == provider.user.id
            assert http.get("/hello").status_code == 401
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
