"""The committed openapi.yaml is the app's document, and the document is complete."""

from __future__ import annotations

import base64
import difflib
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from provider.oauth.grants import CLIENT_GRANT_RULES
from provider.openapi import render_openapi

COMMITTED = Path(__file__).resolve().parent.parent / "openapi.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def rendered() -> str:
    return render_openapi()


@pytest.fixture(scope="module")
def spec(rendered: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(rendered)
    return document


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def test_committed_openapi_yaml_is_up_to_date(rendered: str) -> None:
    committed = COMMITTED.read_text() if COMMITTED.exists() else ""
    if committed != rendered:
        diff = "".join(difflib.unified_diff(
            committed.splitlines(keepends=True), rendered.splitlines(keepends=True),
            "openapi.yaml (committed)", "render_openapi()", n=2,
        ))
        pytest.fail(
            "openapi.yaml is out of date with the app: run `provider openapi --write` "
            "(or `make openapi`) and commit the result.\n" + diff[:4000],
            pytrace=False,
        )


def test_openapi_is_deterministic(rendered: str) -> None:
    assert render_openapi() == rendered


def test_openapi_ignores_the_environment(rendered: str, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    """The document is the same on a production host (whose settings would refuse the
    loopback issuer), with or without a .env in the working directory."""
    for name, value in {
        "PROVIDER_ENV": "production", "PROVIDER_ISSUER": "https://id.example.com",
        "PROVIDER_METRICS_PUBLIC": "true", "PROVIDER_SMTP_URL": "smtp://mail.example.com",
        "PROVIDER_CORS_ORIGINS": "https://app.example.com",
        "DATABASE_URL": "postgresql://id@db.example.com/id",
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / ".env").write_text("PROVIDER_ACCESS_TOKEN_TTL=not-a-duration\n")
    monkeypatch.chdir(tmp_path)
    assert render_openapi() == rendered


def test_openapi_version_and_yaml_shape(spec: dict[str, Any]) -> None:
    assert str(spec["openapi"]).startswith("3.")
    assert spec["info"]["title"]
    assert spec["paths"]


def test_every_operation_declares_responses(spec: dict[str, Any]) -> None:
    missing = [f"{method} {path}" for method, path, op in operations(spec)
               if not op.get("responses")]
    assert missing == []


def test_every_operation_has_a_unique_operation_id(spec: dict[str, Any]) -> None:
    ids = [op.get("operationId") for _, _, op in operations(spec)]
    assert None not in ids
    assert len(ids) == len(set(ids))


def test_security_scheme_is_oauth2_password_at_token_endpoint(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    password_flows = [
        scheme["flows"]["password"]
        for scheme in schemes.values()
        if scheme.get("type") == "oauth2" and "password" in scheme.get("flows", {})
    ]
    assert len(password_flows) == 1, schemes
    assert password_flows[0]["tokenUrl"] == "/oauth/token"
    assert {"openid", "profile", "email"} <= set(password_flows[0]["scopes"])


def test_contract_endpoints_are_documented(spec: dict[str, Any]) -> None:
    documented = {(method, path) for method, path, _ in operations(spec)}
    for endpoint in [
        ("POST", "/oauth/token"),
        ("POST", "/oauth/revoke"),
        ("POST", "/oauth/introspect"),
        ("GET", "/oauth/userinfo"),
        ("GET", "/.well-known/openid-configuration"),
        ("GET", "/.well-known/oauth-authorization-server"),
        ("GET", "/.well-known/jwks.json"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    ]:
        assert endpoint in documented, f"{endpoint} is missing from the OpenAPI document"


def test_token_endpoint_takes_a_form_body(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/oauth/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in body


@pytest.mark.parametrize("body", ["ClientCreate", "ClientUpdate"])
def test_client_bodies_document_what_the_service_accepts(spec: dict[str, Any],
                                                         body: str) -> None:
    """The grant types a client may be given come from the grant registry (mfa-otp only
    finishes a password sign-in, so it is not among them); a name needs a non-space."""
    properties = spec["components"]["schemas"][body]["properties"]
    assert properties["grant_types"]["items"] == {"type": "string",
                                                  "enum": list(CLIENT_GRANT_RULES)}
    assert set(CLIENT_GRANT_RULES) == {"password", "refresh_token", "client_credentials",
                                       "authorization_code"}
    name = properties["name"]
    assert (name["minLength"], name["maxLength"], name["pattern"]) == (1, 200, r"\S")


# Served at a documented path but outside the API document: the sign-in and consent
# forms post back to /oauth/authorize (pages, not API); Starlette answers HEAD beside the
# JWKS's GET.
UNDOCUMENTED = {"/oauth/authorize": {"POST"}, "/.well-known/jwks.json": {"HEAD"}}


async def test_a_405_allows_every_method_of_its_path(client: Any, spec: dict[str, Any]) -> None:
    """RFC 9110 §15.5.6: the Allow header of a 405 names every method of the resource,
    not only the first route's (Starlette's own answer)."""
    for path, item in spec["paths"].items():
        documented = {method.upper() for method in item if method in HTTP_METHODS}
        if "PUT" in documented:
            continue
        response = await client.put(re.sub(r"\{[^}]+\}", "x", path))
        assert response.status_code == 405, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        allowed = set(response.headers["allow"].split(", "))
        assert allowed == documented | UNDOCUMENTED.get(path, set()), path
    # The mounted docs assets keep their own answer.
    response = await client.put("/docs-assets/swagger-ui.css")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_problem_bodies_are_documented_under_their_media_type(spec: dict[str, Any]) -> None:
    """Problem bodies are served as application/problem+json (RFC 9457 §3), and the
    document says so; every 422 is one (no FastAPI default HTTPValidationError)."""
    problem = "#/components/schemas/Problem"
    seen = 0
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            for media, body in response.get("content", {}).items():
                if body.get("schema", {}).get("$ref") == problem:
                    assert media == "application/problem+json", (method, path, status)
                    seen += 1
            if status == "422":
                assert set(response["content"]) == {"application/problem+json"}, (method, path)
    assert seen > 50
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_every_bearer_operation_documents_the_query_token_400(spec: dict[str, Any]) -> None:
    """An access token in the query string is refused with 400 invalid_request, an OAuth
    error body (RFC 6750 §3.1), wherever a bearer token is read; beside a problem where
    the operation has a 400 of its own."""
    oauth_body = "#/components/schemas/OAuthErrorBody"
    bearer = 0
    for method, path, operation in operations(spec):
        unauthorized = operation["responses"].get("401", {}).get("content", {})
        if "application/json" not in unauthorized:
            continue
        bearer += 1
        content = operation["responses"]["400"]["content"]
        assert content["application/json"]["schema"]["$ref"] == oauth_body, (method, path)
    assert bearer > 20


@pytest.mark.parametrize(("path", "inline"), [
    ("/docs", 1), ("/docs/oauth2-redirect.html", 1), ("/redoc", 0)])
async def test_the_docs_pages_run_only_their_own_inline_scripts(
    client: Any, path: str, inline: int
) -> None:
    """script-src names each inline script of the docs pages by its hash: any other
    inline script (an injection) would not run. No CDN either: the rest is 'self'."""
    response = await client.get(path)
    assert response.status_code == 200
    policy = dict(part.strip().split(" ", 1)
                  for part in response.headers["content-security-policy"].split(";"))
    sources = policy["script-src"].split()
    assert "'unsafe-inline'" not in sources and "'unsafe-eval'" not in sources
    scripts = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", response.text,
                         re.DOTALL)
    assert len(scripts) == inline
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in sources
    assert "cdn.jsdelivr" not in response.text
