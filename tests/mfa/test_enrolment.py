"""TOTP enrolment: start, confirm, the QR code, the secret at rest, recovery codes."""

from __future__ import annotations

import base64
import io
import re
import uuid
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree

import httpx
import pyotp
import resvg_py
import zxingcpp
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from PIL import Image
from sqlalchemy import select

from provider.keys.store import load_secret_key
from provider.mfa.models import RecoveryCode, TotpAuthenticator
from provider.services import Services
from tests.conftest import TestClock
from tests.factories import Factory
from tests.helpers import assert_problem, bearer, login
from tests.mfa.helpers import STEP, code_at, enrol, freeze_in_a_step, next_code

INVALID_CODE = "The code is wrong, expired or already used."
RECOVERY_CODE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$")


async def start(http: httpx.AsyncClient, access_token: str) -> dict[str, str]:
    response = await http.post("/users/me/mfa/totp", headers=bearer(access_token))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, str] = response.json()
    return body


def decode_qr(svg: str) -> list[str]:
    """Render the SVG (resvg) and read every QR code in the picture (ZXing)."""
    png = resvg_py.svg_to_bytes(svg_string=svg)
    image = Image.open(io.BytesIO(bytes(png)))
    return [result.text for result in zxingcpp.read_barcodes(image)
            if result.format == zxingcpp.BarcodeFormat.QRCode]


async def test_enrolment_round_trip_with_pyotp(client: httpx.AsyncClient, factory: Factory,
                                               clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    at = freeze_in_a_step(clock)
    tokens = await login(client, oauth, user, scope="openid account")
    body = await start(client, tokens["access_token"])

    assert set(body) == {"secret", "otpauth_uri", "qr_svg"}
    secret = body["secret"]
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)  # base32: 32 x 5 = 160 bits
    assert len(base64.b32decode(secret)) == 20
    uri = urlsplit(body["otpauth_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert unquote(uri.path) == f"/provider:{user.email}"
    assert parse_qs(uri.query) == {"secret": [secret], "issuer": ["provider"]}
    # pyotp reads the URI back as an authenticator app would.
    app = pyotp.parse_uri(body["otpauth_uri"])
    assert isinstance(app, pyotp.TOTP)
    assert (app.secret, app.digits, app.interval, app.issuer, app.name) == (
        secret, 6, 30, "provider", user.email)

    me = await client.get("/users/me", headers=bearer(tokens["access_token"]))
    assert me.json()["mfa_enabled"] is False  # pending: nothing changed yet

    confirmed = await client.post("/users/me/mfa/totp/confirm",
                                  headers=bearer(tokens["access_token"]),
                                  json={"code": app.at(at)})
    assert confirmed.status_code == 200, confirmed.text
    assert set(confirmed.json()) == {"recovery_codes"}
    codes = confirmed.json()["recovery_codes"]
    assert len(codes) == len(set(codes)) == 10
    for code in codes:  # 16 symbols of a 32-symbol alphabet: 80 bits each
        assert RECOVERY_CODE.fullmatch(code), code
    me = await client.get("/users/me", headers=bearer(tokens["access_token"]))
    assert me.json()["mfa_enabled"] is True


async def test_enrolment_qr_code_decodes_to_the_otpauth_uri(
        client: httpx.AsyncClient, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    body = await start(client, tokens["access_token"])

    root = ElementTree.fromstring(body["qr_svg"])  # noqa: S314 (well-formed XML; ours)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert decode_qr(body["qr_svg"]) == [body["otpauth_uri"]]


async def test_secret_is_encrypted_in_the_database(client: httpx.AsyncClient, factory: Factory,
                                                   services: Services) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    secret = (await start(client, tokens["access_token"]))["secret"]

    async with services.engine.connect() as conn:
        stored = (await conn.execute(select(TotpAuthenticator.secret_encrypted).where(
            TotpAuthenticator.user_id == uuid.UUID(user.id)))).scalar_one()
    raw = base64.b32decode(secret)
    for form in (secret.encode(), secret.lower().encode(), raw, raw.hex().encode(),
                 base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        assert form not in stored
    # A Fernet token under a key derived (HKDF-SHA256) from the server secret, and only
    # that key opens it.
    server_secret = load_secret_key(None, services.settings.keys_dir)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"provider/totp-secret-encryption/v1").derive(server_secret)
    assert Fernet(base64.urlsafe_b64encode(key)).decrypt(stored) == secret.encode()
    assert stored.startswith(b"gAAAAA")  # Fernet version byte 0x80, base64url


async def test_recovery_codes_are_stored_only_as_digests(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock,
        services: Services) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)

    async with services.engine.connect() as conn:
        stored = list((await conn.execute(select(RecoveryCode.code_hash).where(
            RecoveryCode.user_id == uuid.UUID(user.id)))).scalars())
    assert len(stored) == 10
    assert all(len(digest) == 32 for digest in stored)
    for code in enrolled.recovery_codes:
        plain = code.replace("-", "").encode()
        assert all(plain not in digest and code.encode() not in digest for digest in stored)


async def test_enrolment_again_replaces_a_pending_secret(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    at = freeze_in_a_step(clock)
    tokens = await login(client, oauth, user)
    first = (await start(client, tokens["access_token"]))["secret"]
    second = (await start(client, tokens["access_token"]))["secret"]
    assert first != second

    stale = await client.post("/users/me/mfa/totp/confirm",
                              headers=bearer(tokens["access_token"]),
                              json={"code": code_at(first, at)})
    assert_problem(stale, 400, "invalid_code", INVALID_CODE)
    fresh = await client.post("/users/me/mfa/totp/confirm",
                              headers=bearer(tokens["access_token"]),
                              json={"code": code_at(second, at)})
    assert fresh.status_code == 200, fresh.text


async def test_enrolment_of_an_active_account_is_409(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)

    again = await client.post("/users/me/mfa/totp",
                              headers=bearer(enrolled.tokens["access_token"]))
    assert_problem(again, 409, "mfa_already_enabled",
                   "Two-step verification is already on; turn it off before enrolling again.")
    confirm = await client.post("/users/me/mfa/totp/confirm",
                                headers=bearer(enrolled.tokens["access_token"]),
                                json={"code": next_code(clock, enrolled.secret)})
    assert_problem(confirm, 409, "mfa_not_pending",
                   "There is no pending TOTP enrolment to confirm; start one first.")


async def test_confirm_refuses_wrong_and_far_codes(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    at = freeze_in_a_step(clock)
    tokens = await login(client, oauth, user)
    headers = bearer(tokens["access_token"])
    secret = (await start(client, tokens["access_token"]))["secret"]

    # Two steps back and one step ahead are refused, as are malformed codes.
    for code in (code_at(secret, at - 2 * STEP), code_at(secret, at + STEP), "12345",
                 "abcdef"):
        answer = await client.post("/users/me/mfa/totp/confirm", headers=headers,
                                   json={"code": code})
        assert_problem(answer, 400, "invalid_code", INVALID_CODE)
    me = await client.get("/users/me", headers=headers)
    assert me.json()["mfa_enabled"] is False
    # The previous step's code is still accepted (one step of delay, RFC 6238 §5.2).
    ok = await client.post("/users/me/mfa/totp/confirm", headers=headers,
                           json={"code": code_at(secret, at - STEP)})
    assert ok.status_code == 200, ok.text


async def test_mfa_endpoints_need_a_bearer_token(client: httpx.AsyncClient) -> None:
    for method, path in (("POST", "/users/me/mfa/totp"),
                         ("POST", "/users/me/mfa/totp/confirm"),
                         ("POST", "/users/me/mfa/recovery-codes"),
                         ("DELETE", "/users/me/mfa/totp")):
        response = await client.request(method, path, json={"code": "123456"})
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == 'Bearer realm="provider"'
