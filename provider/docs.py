"""Swagger UI and ReDoc, their assets served by us: no CDN, no third-party script runs
on the auth server's origin, and the docs work offline."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_PREFIX = "/docs-assets"
SWAGGER_UI_PATH = "/docs"
REDOC_PATH = "/redoc"
# Where the authorization code flow of Swagger UI's Authorize dialog returns to: the
# page hands the code to the docs window (Swagger UI's own page, served by us). `make
# run` registers it for the dev client (provider clients ensure-dev).
SWAGGER_REDIRECT_PATH = "/docs/oauth2-redirect.html"
DOCS_PAGES = (SWAGGER_UI_PATH, REDOC_PATH, SWAGGER_REDIRECT_PATH)


# The pages are the same for every request: made once, so that the CSP can name their
# inline scripts by hash (provider.middleware) instead of allowing any inline script.
_PAGES: dict[str, bytes] = {
    SWAGGER_UI_PATH: bytes(get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="provider — Swagger UI",
        swagger_js_url=f"{DOCS_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_PREFIX}/favicon.png",
        oauth2_redirect_url=SWAGGER_REDIRECT_PATH,
        # PKCE (S256) for the authorization code flow: we require it of every client.
        init_oauth={"usePkceWithAuthorizationCodeGrant": True},
        swagger_ui_parameters={"persistAuthorization": False, "tryItOutEnabled": True},
    ).body),
    SWAGGER_REDIRECT_PATH: bytes(get_swagger_ui_oauth2_redirect_html().body),
    REDOC_PATH: bytes(get_redoc_html(
        openapi_url="/openapi.json",
        title="provider — ReDoc",
        redoc_js_url=f"{DOCS_PREFIX}/redoc.standalone.js",
        redoc_favicon_url=f"{DOCS_PREFIX}/favicon.png",
        with_google_fonts=False,
    ).body),
}
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)


def inline_script_hashes() -> list[str]:
    """CSP source expressions ('sha256-...') of the docs pages' inline scripts."""
    return sorted({
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for page in _PAGES.values() for script in _INLINE_SCRIPT.findall(page)})


def install_docs(app: FastAPI) -> None:
    app.mount(DOCS_PREFIX, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    def serve(path: str) -> None:
        page = _PAGES[path]

        async def docs_page() -> HTMLResponse:
            return HTMLResponse(page)

        app.get(path, include_in_schema=False, name=path)(docs_page)

    for path in _PAGES:
        serve(path)
