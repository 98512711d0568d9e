"""create_app(settings): routers, error handlers, middleware, lifespan. No import-time effects."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from provider import __version__
from provider.clients.router import router as admin_clients_router
from provider.clock import Clock
from provider.docs import install_docs
from provider.errors import (
    InternalError,
    ProviderError,
    ServiceUnavailable,
    ValidationFailed,
    from_http_exception,
)
from provider.keys.service import NoSigningKey
from provider.metrics import DATABASE_UNAVAILABLE, OAUTH_ERRORS
from provider.middleware import HardeningMiddleware, RequestLogMiddleware
from provider.oauth.errors import OAuthError, TemporarilyUnavailable
from provider.oauth.grants import check_registry
from provider.oauth.router import JWKS_PATH, jwks
from provider.oauth.router import router as oauth_router
from provider.ops import router as ops_router
from provider.services import build_services
from provider.settings import Settings
from provider.users.admin_router import router as admin_users_router
from provider.users.router import router as users_router

log = logging.getLogger("provider")


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()
    check_registry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, clock)
        try:
            services.keys.signing_key()
        except NoSigningKey as exc:
            await services.engine.dispose()
            raise RuntimeError(f"{exc} (keys directory: {settings.keys_dir})") from None
        app.state.services = services
        yield
        await services.engine.dispose()

    app = FastAPI(
        title="provider",
        version=__version__,
        description=(
            "OAuth 2 / OpenID Connect-style token provider. Use **Authorize** with the "
            "dev client's id and secret and a user's email and password to try the "
            "protected endpoints."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.include_router(oauth_router)
    app.include_router(users_router)
    app.include_router(admin_users_router)
    app.include_router(admin_clients_router)
    app.include_router(ops_router)
    # The JWKS is the most requested document: serve it from a plain Starlette route
    # tried first (no FastAPI dependency solving, no route scan; measured in bench/).
    # The FastAPI route of the same path stays for the OpenAPI document.
    app.router.routes.insert(0, Route(JWKS_PATH, jwks, methods=["GET"]))
    install_docs(app)
    _install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(HardeningMiddleware, max_body_bytes=settings.max_body_bytes,
                       hsts=settings.issuer.startswith("https://"))
    # Added last, so outermost: it times and logs every answer, a 413 included.
    app.add_middleware(RequestLogMiddleware, settings=settings)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OAuthError)
    async def oauth_error(_request: Request, exc: OAuthError) -> Response:
        OAUTH_ERRORS.labels(exc.error).inc()
        return exc.response()

    @app.exception_handler(ProviderError)
    async def provider_error(_request: Request, exc: ProviderError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return ValidationFailed.from_errors(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return from_http_exception(exc).response()

    async def database_unavailable(request: Request, exc: Exception) -> Response:
        # Out of connections, failover, network: a client should retry, not see a 500.
        log.error("database unavailable: %s", type(exc).__name__)
        DATABASE_UNAVAILABLE.inc()
        if request.url.path.startswith("/oauth/"):
            return await oauth_error(request, TemporarilyUnavailable())
        return ServiceUnavailable("The database is unavailable. Try again shortly.").response()

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_request: Request, _exc: ClientDisconnect) -> Response:
        # Nobody is left to answer; not an error of ours.
        return Response(status_code=400)

    for unavailable in (OperationalError, InterfaceError, PoolTimeout, ConnectionError):
        app.add_exception_handler(unavailable, database_unavailable)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return InternalError().response()
