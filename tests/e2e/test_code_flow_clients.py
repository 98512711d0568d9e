"""Independent client libraries complete the authorization code flow with PKCE against
the real server: Authlib's OAuth2Client, and node's openid-client (v6, with its RFC 9207
``iss`` check and its own ID token validation). The user's side (login page, consent)
is driven over HTTP like a browser (tests/e2e/test_code_flow_browser.py runs it in
Chromium). openid-client is installed with npm into a cache directory outside the
repository (``PROVIDER_TEST_NODE_DIR``, default ~/.cache/provider-tests/node).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.e2e.conftest import LiveServer, OAuthClient, User
from tests.web.helpers import Browser

with warnings.catch_warnings():
    # Authlib >= 1.7 warns at import when it falls back to httpx (tests/e2e/test_interop).
    from authlib.deprecate import AuthlibDeprecationWarning

    warnings.filterwarnings("ignore", message="The httpx module is deprecated",
                            category=AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

OPENID_CLIENT = "openid-client@6"
NODE_SCRIPT = Path(__file__).with_name("openid_client_flow.mjs")
NPM_TIMEOUT_S = 300
NODE_TIMEOUT_S = 60


def code_client(live: LiveServer, *, first_party: bool = False) -> OAuthClient:
    """A confidential client of the code flow with a loopback redirect URI (any port)."""
    args = ["clients", "create", "--name", "Interop App", "--grant", "authorization_code",
            "--grant", "refresh_token", "--scope", "openid profile email",
            "--redirect-uri", "http://127.0.0.1/callback"]
    made = live.cli_json(*(args + (["--first-party"] if first_party else [])))
    return OAuthClient(made["client_id"], made["client_secret"])


async def browse_to_callback(live: LiveServer, url: str, user: User) -> str:
    """The user's part: log in, consent; the URL the browser is sent back to."""
    async with live.http() as http:
        browser = Browser(http)
        response = await http.get(url)
        if response.status_code == 200:  # the login page
            response = await browser.follow(await browser.login(response, user.email,
                                                                user.password))
        if response.status_code == 200:  # the consent page
            response = await browser.submit(response, decision="allow")
        assert response.status_code in (302, 303), response.text
        location: str = response.headers["location"]
    assert location.startswith("http://127.0.0.1:"), location
    return location


def at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


# --- Authlib ------------------------------------------------------------------------------


async def test_authlib_oauth2_client_code_flow_with_pkce(live: LiveServer) -> None:
    user, _ = live.create_account()
    app = code_client(live)
    async with live.http() as http:
        meta = (await http.get("/.well-known/openid-configuration")).json()
    nonce = secrets.token_urlsafe(12)
    verifier = secrets.token_urlsafe(48)
    async with AsyncOAuth2Client(
        client_id=app.client_id, client_secret=app.client_secret,
        redirect_uri="http://127.0.0.1:40123/callback", scope="openid profile email",
        code_challenge_method="S256", trust_env=False, timeout=30.0,
    ) as oauth:
        url, state = oauth.create_authorization_url(
            meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce)
        assert "code_challenge_method=S256" in url
        callback = await browse_to_callback(live, url, user)
        token = await oauth.fetch_token(meta["token_endpoint"], authorization_response=callback,
                                        code_verifier=verifier)
        assert token["token_type"] == "Bearer"
        assert token["scope"] == "openid profile email"
        jwks = jwt.PyJWKClient(meta["jwks_uri"])
        claims = jwt.decode(token["id_token"], jwks.get_signing_key_from_jwt(token["id_token"]),
                            algorithms=["RS256"], audience=app.client_id, issuer=meta["issuer"])
        assert claims["sub"] == user.id
        assert claims["nonce"] == nonce
        assert claims["at_hash"] == at_hash(token["access_token"])
        assert claims["amr"] == ["pwd"]
        userinfo = await oauth.get(meta["userinfo_endpoint"])
        assert userinfo.json()["email"] == user.email
        refreshed = await oauth.refresh_token(meta["token_endpoint"],
                                              refresh_token=token["refresh_token"])
        assert refreshed["access_token"] != token["access_token"]
    assert f"state={state}" in callback
    assert f"iss={live.issuer.replace(':', '%3A').replace('/', '%2F')}" in callback


# --- node openid-client ------------------------------------------------------------------


@pytest.fixture(scope="session")
def openid_client_dir() -> Path:
    """openid-client installed with npm, outside the repository, once per machine."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "node and npm are needed for the openid-client interop test"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (scripts/ensure-node.sh installs them)", pytrace=False)
        pytest.skip(message)
    default = Path.home() / ".cache" / "provider-tests" / "node"
    target = Path(os.environ.get("PROVIDER_TEST_NODE_DIR", default))
    if not (target / "node_modules" / "openid-client" / "package.json").exists():
        target.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix",
             str(target), OPENID_CLIENT], capture_output=True, text=True,
            timeout=NPM_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
        if result.returncode != 0:
            pytest.fail(f"npm install {OPENID_CLIENT} failed:\n{result.stderr[-2000:]}")
    return target


async def test_node_openid_client_code_flow(live: LiveServer, openid_client_dir: Path
                                            ) -> None:
    user, _ = live.create_account()
    app = code_client(live)
    assert app.client_secret
    # The script runs from the cache directory, where `import 'openid-client'` resolves.
    script = openid_client_dir / NODE_SCRIPT.name
    shutil.copyfile(NODE_SCRIPT, script)
    process = subprocess.Popen(
        ["node", str(script), live.issuer, app.client_id, app.client_secret,
         "http://127.0.0.1:40999/callback"],
        cwd=openid_client_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdin is not None
        first = process.stdout.readline()
        if not first:
            pytest.fail(f"openid-client printed nothing: {process.communicate()[1]}")
        url = json.loads(first)["authorization_url"]
        assert "code_challenge_method=S256" in url
        callback = await browse_to_callback(live, url, user)
        out, err = process.communicate(callback + "\n", timeout=NODE_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    claims = result["claims"]
    assert (claims["iss"], claims["sub"], claims["aud"]) == (live.issuer, user.id,
                                                             app.client_id)
    assert claims["amr"] == ["pwd"] and "auth_time" in claims and "nonce" in claims
    assert result["userinfo"]["email"] == user.email
    assert result["scope"] == "openid profile email"
    assert result["refreshed"] == {"scope": "openid profile email", "has_access_token": True}
    assert result["reused"] == "invalid_grant"  # the code works once
