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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provider import __version__
from provider.clients.router import router as admin_clients_router
from provider.clients.service import ClientCache
from provider.clock import Clock, SystemClock
from provider.db import create_engine, session_factory, single_statement_engine
from provider.deps import Services
from provider.docs import DOCS_PAGES, DOCS_PREFIX, install_docs
from provider.errors import (
    InternalError,
    PayloadTooLarge,
    ProviderError,
    ServiceUnavailable,
    ValidationFailed,
    from_http_exception,
)
from provider.keys.service import KeyRing, NoSigningKey
from provider.keys.store import KeyStore, load_secret_key
from provider.mail import make_sender
from provider.metrics import OAUTH_ERRORS
from provider.mfa.codes import EmailCodes
from provider.oauth.errors import OAuthError, TemporarilyUnavailable
from provider.oauth.grants.base import Grant, GrantContext
from provider.oauth.grants.client_credentials import ClientCredentialsGrant
from provider.oauth.grants.password import PasswordGrant
from provider.oauth.grants.refresh_token import RefreshTokenGrant
from provider.oauth.router import JWKS_PATH, jwks
from provider.oauth.router import router as oauth_router
from provider.ops import router as ops_router
from provider.passwords import PasswordHasher
from provider.ratelimit import Throttles
from provider.settings import Settings
from provider.tokens.jwt import JwtService
from provider.users.accounts import Accounts
from provider.users.admin_router import router as admin_users_router
from provider.users.router import router as users_router

log = logging.getLogger("provider")

GRANTS = (PasswordGrant, RefreshTokenGrant, ClientCredentialsGrant)


def build_services(settings: Settings, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
    longest_token = max(settings.access_token_ttl, settings.id_token_ttl)
    keys = KeyRing(KeyStore(settings.keys_dir), clock, longest_token)
    jwt = JwtService(keys, issuer=settings.issuer, audience=settings.token_audience)
    hasher = PasswordHasher(settings)
    single = single_statement_engine(engine)
    clients = ClientCache(single)
    throttles = Throttles(
        settings.redis_url,
        login_account=settings.login_throttle_account,
        login_address=settings.login_throttle_address,
        email_code=settings.email_code_throttle,
        registration=settings.registration_throttle,
    )
    ctx = GrantContext(settings=settings, engine=engine, single=single, clock=clock, jwt=jwt,
                       hasher=hasher,
                       clients=clients, throttles=throttles)
    grants: dict[str, Grant] = {g.grant_type: g(ctx) for g in GRANTS}
    sessions = session_factory(engine)
    secret = load_secret_key(
        settings.secret_key.get_secret_value() if settings.secret_key else None,
        settings.keys_dir,
    )
    accounts = Accounts(
        settings=settings, sessions=sessions, clock=clock, hasher=hasher,
        codes=EmailCodes(secret, settings.email_code_ttl), mailer=make_sender(settings),
        throttles=throttles,
    )
    return Services(settings=settings, engine=engine, sessions=sessions,
                    clock=clock, keys=keys, jwt=jwt, hasher=hasher, clients=clients,
                    throttles=throttles, grants=grants, grant_context=ctx,
                    accounts=accounts)


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()

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
    app.add_middleware(HardeningMiddleware, max_body_bytes=settings.max_body_bytes)
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


API_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
DOCS_CSP = (
    b"content-security-policy",
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
)
API_HEADERS = (*API_SECURITY_HEADERS, API_CSP)
API_HEADERS_NO_STORE = (*API_HEADERS, (b"cache-control", b"no-store"))
DOCS_HEADERS = (*API_SECURITY_HEADERS, DOCS_CSP)


class HardeningMiddleware:
    """Security headers on every response and a cap on request bodies (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        is_docs = path in DOCS_PAGES or path.startswith(DOCS_PREFIX)
        extra = DOCS_HEADERS if is_docs else API_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if is_docs or any(name == b"cache-control" for name, _ in headers):
                    headers.extend(extra)
                else:
                    headers.extend(API_HEADERS_NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        if scope["method"] in ("GET", "HEAD"):  # no body to limit: the cheap path
            await self.app(scope, receive, send_with_headers)
            return

        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await PayloadTooLarge().response()(scope, receive, send)
                    return

        received = 0
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge:
            await PayloadTooLarge().response()(scope, receive, send_with_headers)


class _BodyTooLarge(Exception):
    pass
