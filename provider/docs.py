"""Swagger UI and ReDoc, their assets served by us: no CDN, no third-party script runs
on the auth server's origin, and the docs work offline."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_PREFIX = "/docs-assets"
SWAGGER_UI_PATH = "/docs"
REDOC_PATH = "/redoc"
DOCS_PAGES = (SWAGGER_UI_PATH, REDOC_PATH)


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
            init_oauth={"usePkceWithAuthorizationCodeGrant": False},
            swagger_ui_parameters={"persistAuthorization": False, "tryItOutEnabled": True},
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="provider — ReDoc",
            redoc_js_url=f"{DOCS_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_PREFIX}/favicon.png",
            with_google_fonts=False,
        )
