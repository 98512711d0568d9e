"""Signing-key lifecycle driven by the CLI while two server processes run.

`provider keys generate` publishes a key without signing with it; `keys rotate` makes
it sign once it has been published for the JWKS max-age plus the margin (1 s + 1 s
here), while the old key stays published, so tokens it signed keep verifying; `keys
retire` withdraws the old key and its tokens stop verifying. Every server process
notices each change by itself (the key store is checked once a second): each request is
sent to both processes of a ServerPair. A resource server verifying with the
provider-resource package sees the whole cycle without a failure until the retirement.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from provider_resource import InvalidToken, TokenVerifier
from tests.e2e.conftest import KEYS_RECHECK_WAIT_S, LiveServer, OAuthClient, ServerPair, User
from tests.helpers import password_login


@pytest.fixture(scope="module")
def rotating(sqlite_e2e_url: str, private_keys_dir: Path,
             e2e_dir: Path) -> Iterator[ServerPair]:
    """Two servers of their own on a copy of the keys directory. (Keys do not care about
    the database: SQLite spares a shared PostgreSQL two more connection pools.)"""
    with ServerPair(sqlite_e2e_url, private_keys_dir, e2e_dir / "rotation",
                    {"PROVIDER_JWKS_MAX_AGE": "1", "PROVIDER_KEY_PUBLISH_MARGIN": "1"}) as pair:
        yield pair


Request = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


async def on_every_process(pair: ServerPair, request: Request) -> list[httpx.Response]:
    """Send ``request`` to each of the two server processes; their answers, in order."""
    async def one(server: LiveServer) -> httpx.Response:
        async with server.http() as http:
            return await request(http)

    return list(await asyncio.gather(*(one(server) for server in pair.servers)))


def login_request(client: OAuthClient, user: User) -> Request:
    return functools.partial(password_login, client=client, user=user)


def get(path: str, token: str | None = None) -> Request:
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def send(http: httpx.AsyncClient) -> httpx.Response:
        return await http.get(path, headers=headers)
    return send


def kid_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    kid: str = jwt.get_unverified_header(response.json()["access_token"])["kid"]
    return kid


def jwks_kids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    keys = response.json()["keys"]
    assert all(k["kty"] == "RSA" and k["alg"] == "RS256" and k["use"] == "sig" for k in keys)
    assert all("d" not in k for k in keys)  # public halves only
    return {k["kid"] for k in keys}


def pyjwt_verify(live: LiveServer, token: str) -> dict[str, object]:
    """What a resource server does: fetch the served JWKS and verify offline."""
    jwks = jwt.PyJWKClient(f"{live.base_url}/.well-known/jwks.json", cache_jwk_set=False)
    claims: dict[str, object] = jwt.decode(
        token, jwks.get_signing_key_from_jwt(token), algorithms=["RS256"],
        audience=live.issuer, issuer=live.issuer)
    return claims


async def test_keys_generate_rotate_retire_seen_by_every_process(rotating: ServerPair) -> None:
    live = rotating[0]  # runs the CLI; every request goes to both processes
    user, client = live.create_account(client_name="rotation")
    before = jwks_kids((await on_every_process(rotating, get("/.well-known/jwks.json")))[0])
    old_token = (await on_every_process(rotating, login_request(client, user)))[0].json()[
        "access_token"]
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    assert old_kid in before

    # 1. generate: the new key is published ahead of use; the old one still signs.
    generated = live.cli_json("keys", "generate")
    new_kid = generated["kid"]
    assert generated == {"kid": new_kid, "status": "published", "created": True}
    await asyncio.sleep(KEYS_RECHECK_WAIT_S)
    for response in await on_every_process(rotating, get("/.well-known/jwks.json")):
        assert jwks_kids(response) == before | {new_kid}
    for response in await on_every_process(rotating, login_request(client, user)):
        assert kid_of(response) == old_kid

    resource = TokenVerifier(live.issuer, live.issuer)
    assert resource.verify(old_token).sub == user.id

    # 2. rotate: the published key signs now (it has waited the max-age plus margin); the
    # old one still verifies.
    await asyncio.sleep(1.0)
    assert live.cli_json("keys", "rotate") == {"kid": new_kid, "status": "active"}
    await asyncio.sleep(KEYS_RECHECK_WAIT_S)
    fresh = await on_every_process(rotating, login_request(client, user))
    assert {kid_of(r) for r in fresh} == {new_kid}
    new_token = fresh[0].json()["access_token"]
    for response in await on_every_process(rotating, get("/.well-known/jwks.json")):
        assert jwks_kids(response) == before | {new_kid}
    for response in await on_every_process(rotating, get("/users/me", old_token)):
        assert response.status_code == 200, response.text
        assert response.json()["email"] == user.email
    assert pyjwt_verify(live, old_token)["sub"] == user.id
    assert pyjwt_verify(live, new_token)["sub"] == user.id
    assert resource.verify(old_token).sub == resource.verify(new_token).sub == user.id

    # 3. retire the old key: it leaves the JWKS and its tokens stop verifying.
    # "--": a kid is base64url and may begin with "-", which would read as an option.
    assert live.cli("keys", "retire", "--", old_kid).stdout == f"retired {old_kid}\n"
    await asyncio.sleep(KEYS_RECHECK_WAIT_S)
    for response in await on_every_process(rotating, get("/.well-known/jwks.json")):
        assert jwks_kids(response) == (before - {old_kid}) | {new_kid}
    for response in await on_every_process(rotating, get("/users/me", old_token)):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer ")
        assert response.json()["error"] == "invalid_token"
    for response in await on_every_process(rotating, get("/users/me", new_token)):
        assert response.status_code == 200, response.text
    with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key"):
        pyjwt_verify(live, old_token)
    assert pyjwt_verify(live, new_token)["sub"] == user.id
    # The resource server learns of the retirement when its cached JWKS expires (1 s).
    await asyncio.sleep(1.0)
    with pytest.raises(InvalidToken):
        resource.verify(old_token)
    assert resource.verify(new_token).sub == user.id
    resource.close()

    states = {k["kid"]: k["status"] for k in live.cli_json("keys", "list")["keys"]}
    assert (states[old_kid], states[new_kid]) == ("retired", "active")
