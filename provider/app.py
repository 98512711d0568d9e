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
from provider.clients.service import ClientCache
from provider.clock import Clock, SystemClock
from provider.codes.service import EmailCodes
from provider.db import create_engine, session_factory, single_statement_engine
from provider.deps import Services
from provider.docs import install_docs
from provider.errors import (
    InternalError,
    ProviderError,
    ServiceUnavailable,
    ValidationFailed,
    from_http_exception,
)
from provider.keys.service import KeyRing, NoSigningKey
from provider.keys.store import KeyStore, load_secret_key
from provider.mail import make_sender
from provider.metrics import OAUTH_ERRORS
from provider.middleware import HardeningMiddleware
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
