"""create_app(settings): routers, error handlers, middleware, lifespan. No import-time effects."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Mount, Route
from starlette.types import Receive, Scope, Send

from provider import __version__
from provider.audit.router import router as admin_audit_router
from provider.clients.router import document_grant_types
from provider.clients.router import router as admin_clients_router
from provider.clock import Clock
from provider.consents.router import router as consents_router
from provider.db import Unavailable, is_nul_in_text, unavailable_reason
from provider.docs import install_docs
from provider.errors import (
    InternalError,
    ProviderError,
    ServiceUnavailable,
    ValidationFailed,
    from_http_exception,
)
from provider.keys.service import NoSigningKey
from provider.keys.store import KeyStoreError
from provider.logs import flush_access_lines
from provider.metrics import (
    DATABASE_UNAVAILABLE,
    OAUTH_ERRORS,
    RATE_LIMIT_UNAVAILABLE,
    sync_periodically,
)
from provider.metrics import sync as sync_metrics
from provider.mfa.router import admin_router as admin_mfa_router
from provider.mfa.router import router as mfa_router
from provider.middleware import EdgeMiddleware
from provider.oauth.errors import OAuthError, TemporarilyUnavailable
from provider.oauth.grants import check_registry
from provider.oauth.router import JWKS_PATH, TOKEN_PATH, jwks, token
from provider.oauth.router import router as oauth_router
from provider.ops import router as ops_router
from provider.purge import Purger, purge_periodically
from provider.ratelimit import ThrottleUnavailable
from provider.responses import problems_as_problem_json
from provider.services import build_services
from provider.settings import Settings
from provider.users.admin_router import router as admin_users_router
from provider.users.router import router as users_router
from provider.web import pages
from provider.web.router import router as web_router

log = logging.getLogger("provider")


class ProviderApp(FastAPI):
    """FastAPI with the edge layer (provider.middleware) outside everything else, FastAPI's
    own outer layers included: the JWKS and the token endpoint are answered there, and
    every other answer, a 500 of the server-error layer included, passes through it."""

    edge: EdgeMiddleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = self
            await self.edge(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        # Both rewrite in place, and a repeat changes nothing.
        return document_grant_types(problems_as_problem_json(super().openapi()))


_startup_frozen = False


def freeze_startup_objects() -> None:
    """Once per process, when the first app has started: collect, then move every object
    alive so far (modules, the app, its routes, models and services: about 140,000) out
    of the cyclic garbage collector's sight, as gc.freeze() does. Without it, each full
    collection walked them all: 70-95 ms with the event loop stopped, every 5-10 s per
    worker under load, which was most of the refresh grant's p99 (bench/README.md)."""
    global _startup_frozen
    if _startup_frozen:
        return
    _startup_frozen = True
    gc.collect()
    gc.freeze()


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(app: FastAPI, scope: Scope) -> str:
    """Every method some route serves at the path of ``scope`` (the ``Allow`` header),
    found by asking the routes as the router does: a 405 is rare, so no table is kept."""
    return ", ".join(method for method in HTTP_METHODS
                     if any(route.matches({**scope, "method": method})[0] is Match.FULL
                            for route in app.router.routes if not isinstance(route, Mount)))


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> ProviderApp:
    settings = settings or Settings()
    check_registry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, clock)
        try:
            await services.keys.refresh()
            services.keys.signing_key()
        except Exception as exc:
            await services.engine.dispose()
            reason = unavailable_reason(exc)
            if reason is not None:  # the database key store, with the database down
                raise RuntimeError(f"signing keys cannot be loaded: the database is "
                                   f"unavailable ({reason})") from None
            if isinstance(exc, NoSigningKey | KeyStoreError):
                raise RuntimeError(f"{exc} (key store: {services.keys.store.description})"
                                   ) from None
            raise
        app.state.services = services
        services.audit.start()
        # Keeps the keys current (once a second) and, when configured, rotates them.
        services.keys.start()
        loop = asyncio.get_running_loop()
        metrics_sync = loop.create_task(sync_periodically(), name="metrics-sync")
        purging = None
        if settings.purge_interval is not None:
            purger = Purger(services.engine, services.single, settings, services.clock)
            purging = loop.create_task(
                purge_periodically(purger, settings.purge_interval), name="purge")
        freeze_startup_objects()
        yield
        for task in (purging, metrics_sync):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await services.keys.close()
        sync_metrics()
        flush_access_lines()
        await services.accounts.close()
        await services.audit.close()
        await services.throttles.close()
        services.hasher.close()
        await services.engine.dispose()

    app = ProviderApp(
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
    app.include_router(web_router)
    app.include_router(users_router)
    app.include_router(mfa_router)
    app.include_router(consents_router)
    app.include_router(admin_users_router)
    app.include_router(admin_mfa_router)
    app.include_router(admin_clients_router)
    app.include_router(admin_audit_router)
    app.include_router(ops_router)
    # The JWKS and the token endpoint are the most requested: serve them from plain
    # Starlette routes tried first (no FastAPI dependency solving or parameter parsing,
    # no route scan; measured in bench/). The FastAPI routes of the same paths stay for
    # the OpenAPI document; both hand their errors to the same exception handlers.
    app.router.routes[:0] = [Route(JWKS_PATH, jwks, methods=["GET"]),
                             Route(TOKEN_PATH, token, methods=["POST"])]
    install_docs(app)
    _install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    # Outermost: it times and logs every answer, a 413 and a 500 included.
    app.edge = EdgeMiddleware(super(ProviderApp, app).__call__, settings=settings)
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
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error = from_http_exception(exc)
        if exc.status_code == 405 and (allowed := allowed_methods(app, request.scope)):
            # Starlette names the methods of the path's first route only (each route
            # here has one method); RFC 9110 §15.5.6 wants all the resource supports.
            # A mounted app's own answer (the docs assets) stands.
            error.extra_headers["Allow"] = allowed
        return error.response()

    async def unavailable(request: Request, service: str) -> Response:
        """A 503 with Retry-After in the caller's terms: a page for the browser's pages,
        temporarily_unavailable (RFC 6749 §5.2) for the rest of /oauth/, else a problem."""
        if pages.is_page(request.url.path):
            return pages.unavailable()
        if request.url.path.startswith("/oauth/"):
            return await oauth_error(request, TemporarilyUnavailable())
        return ServiceUnavailable(f"The {service} is unavailable. Try again shortly."
                                  ).response()

    async def database_unavailable(request: Request, reason: Unavailable) -> Response:
        # Down, restarting, frozen, out of connections: a client should retry, not see a
        # 500. An outage is expected: one line per failed request, no traceback.
        log.error("database unavailable (%s %s): %s", request.method, request.url.path,
                  reason)
        DATABASE_UNAVAILABLE.inc()
        return await unavailable(request, "database")

    async def database_error(request: Request, exc: Exception) -> Response:
        reason = unavailable_reason(exc)
        if reason is None:
            if is_nul_in_text(exc):  # a path, query or body value; nothing was written
                return ValidationFailed("Text may not contain NUL characters.").response()
            return await unexpected(request, exc)
        return await database_unavailable(request, reason)

    @app.exception_handler(ThrottleUnavailable)
    async def throttle_unavailable(request: Request, exc: ThrottleUnavailable) -> Response:
        # Fail closed: without its throttle a request could guess without limit (README).
        log.error("rate-limit storage unavailable: %s", exc)
        RATE_LIMIT_UNAVAILABLE.inc()
        return await unavailable(request, "rate-limit service")

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_request: Request, _exc: ClientDisconnect) -> Response:
        # Nobody is left to answer; not an error of ours.
        return Response(status_code=400)

    # Database and network errors are told apart here, by what they are and what they
    # wrap (provider.db.unavailable_reason), not by their class alone: asyncpg's
    # "starting up" arrives as a plain DBAPIError, a refused connect as an OSError.
    # (Handlers of these classes answer in place; only the catch-all below re-raises to
    # the server, which would log a traceback.)
    for kind in (SQLAlchemyError, OSError):
        app.add_exception_handler(kind, database_error)

    async def unexpected(request: Request, exc: Exception) -> Response:
        reason = unavailable_reason(exc)
        if reason is not None:  # wrapped in something else: still an outage
            return await database_unavailable(request, reason)
        # With hide_parameters on every engine, a database error logged here carries its
        # statement but none of its values.
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        if pages.is_page(request.url.path):
            return pages.internal_error()
        return InternalError().response()

    app.add_exception_handler(Exception, unexpected)
