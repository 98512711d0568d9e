"""Swagger UI and ReDoc, their assets served by us: no CDN, no third-party script runs
on the auth server's origin, and the docs work offline."""

from __future__ import annotations

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


def install_docs(app: FastAPI) -> None:
    app.mount(DOCS_PREFIX, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get(SWAGGER_UI_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="provider — Swagger UI",
            swagger_js_url=f"{DOCS_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_PREFIX}/favicon.png",
            oauth2_redirect_url=SWAGGER_REDIRECT_PATH,
            # PKCE (S256) for the authorization code flow: we require it of every client.
            init_oauth={"usePkceWithAuthorizationCodeGrant": True},
            swagger_ui_parameters={"persistAuthorization": False, "tryItOutEnabled": True},
        )

    @app.get(SWAGGER_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="provider — ReDoc",
            redoc_js_url=f"{DOCS_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_PREFIX}/favicon.png",
            with_google_fonts=False,
        )
