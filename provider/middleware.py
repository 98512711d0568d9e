"""The one pure ASGI middleware around the app (outermost; cheap on the token path).

Per request: the request id (``X-Request-ID`` from a trusted proxy, else a new one;
echoed in the response), the security headers, the cap on request bodies, and once the
answer is complete its metrics and one access line. One layer rather than one per
concern: each layer wraps ``send`` again and copies the response's headers again.

``GET /.well-known/jwks.json``, the most requested document, is answered here from the
key ring's pre-serialised bytes: the router, the exception layers and the endpoint's
request/response machinery around it cost a quarter of its CPU per request (bench/
README.md). It gets the same headers, request id, metrics and access line as any other
answer; the route stays for HEAD and for the OpenAPI document.
"""

from __future__ import annotations

import logging
import os
import re
from itertools import count
from time import perf_counter

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provider.deps import client_address, is_trusted_proxy
from provider.docs import DOCS_PAGES, DOCS_PREFIX, inline_script_hashes
from provider.errors import PayloadTooLarge
from provider.logs import (
    ACCESS_LOGGER,
    AccessRecord,
    RequestContext,
    access_writer,
    close_request,
    open_request,
)
from provider.metrics import observe_request
from provider.oauth.router import JWKS_PATH, TOKEN_PATH, jwks, token
from provider.settings import Settings
from provider.web.pages import WEB_PAGES

API_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
# Swagger UI's and ReDoc's own scripts, and the docs pages' inline scripts by hash only
# (provider.docs); their styles need inline style attributes.
DOCS_CSP = (
    b"content-security-policy",
    b"default-src 'self'; script-src 'self' " + " ".join(inline_script_hashes()).encode()
    + b"; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    b"frame-ancestors 'none'",
)
NO_STORE = (b"cache-control", b"no-store")
# Two years, the HSTS preload list's floor; sent only when the issuer is https (RFC 6797
# §7.2: a user agent ignores it over plain HTTP anyway).
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


access_log = logging.getLogger(ACCESS_LOGGER)
# What a proxy's X-Request-ID may look like: anything else is replaced by our own id, so
# a header cannot forge log lines or carry arbitrary text into them.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"


class _RequestIds:
    """Our own request ids: 64 random bits per process and a counter, 32 hex digits like
    a UUID's. Unique, not secret (an id names a request, it grants nothing), and no
    system call per request. A forked child draws a prefix of its own."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids = _RequestIds()


class EdgeMiddleware:
    """Request id, security headers, body cap, timing, metrics and the access line.

    The access line names the route template, never the path or query string, and the
    client and user by id: nothing secret can reach it. Outermost, so it times every
    answer (a 413 included).
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_body_bytes = settings.max_body_bytes
        common = (*API_SECURITY_HEADERS, HSTS) if settings.issuer.startswith("https://") \
            else tuple(API_SECURITY_HEADERS)
        self.api_headers = (*common, API_CSP)
        self.api_headers_no_store = (*common, API_CSP, NO_STORE)
        self.docs_headers = (*common, DOCS_CSP)
        # The login, consent and logout pages send their own CSP and Cache-Control.
        self.page_headers = common
        # Resource servers may cache the JWKS this long (PROVIDER_JWKS_MAX_AGE): a new key
        # is published at least that long before it signs (provider.keys).
        max_age = int(settings.jwks_max_age.total_seconds())
        # Its own caching, so none of no-store; the API's security headers after it.
        self.jwks_headers = ((b"content-type", b"application/json"),
                             (b"cache-control", f"public, max-age={max_age}".encode()),
                             *self.api_headers)
        # CORS lives inside this layer: with it configured, every answer goes through it.
        self.fast_paths = not settings.cors_origins

    def _request_id(self, scope: Scope) -> str:
        proxies = self.settings.trusted_proxies
        if proxies:
            client = scope.get("client")
            if client and is_trusted_proxy(client[0], proxies):
                headers: list[tuple[bytes, bytes]] = scope["headers"]
                for name, value in headers:
                    if name == b"x-request-id":
                        if _REQUEST_ID.fullmatch(value):
                            return value.decode()
                        break
        return _request_ids.next()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        context = RequestContext(self._request_id(scope))
        path: str = scope["path"]
        if path == JWKS_PATH and self.fast_paths and scope["method"] == "GET":
            await self._jwks(scope, send, context, started)
            return
        is_docs = path in DOCS_PAGES or path.startswith(DOCS_PREFIX)
        extra = (self.docs_headers if is_docs else
                 self.page_headers if path in WEB_PAGES else self.api_headers)
        no_store = self.api_headers_no_store
        request_id_header = (b"x-request-id", context.request_id.encode())
        status = 500
        logged = False

        async def send_wrapped(message: Message) -> None:
            nonlocal status, logged
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                own = no_store  # no-store unless the app set its own caching
                if is_docs:
                    own = extra
                else:
                    for name, _ in headers:
                        if name == b"cache-control":
                            own = extra
                            break
                headers.extend(own)
                headers.append(request_id_header)
                await send({**message, "headers": headers})
                return
            await send(message)
            if not logged and not message.get("more_body", False):
                # The answer is complete: log now, not after background work (mail).
                logged = True
                self._finish(scope, context, status, started)

        token = open_request(context)
        try:
            method = scope["method"]
            if path == TOKEN_PATH and method == "POST" and self.fast_paths:
                await self._limited(scope, receive, send_wrapped, _token)
            elif method in ("GET", "HEAD"):  # no body to limit: the cheap path
                await self.app(scope, receive, send_wrapped)
            else:
                await self._limited(scope, receive, send_wrapped)
        except BaseException:
            if not logged:
                self._finish(scope, context, status, started)
            # The context stays set: the outer 500 handler's line carries the request id
            # (each request runs in a task of its own, so it goes no further).
            raise
        if not logged:
            self._finish(scope, context, status, started)
        close_request(token)

    async def _jwks(self, scope: Scope, send: Send, context: RequestContext,
                    started: float) -> None:
        """``GET /.well-known/jwks.json``, the most requested document, pre-serialised:
        answered here, without the router and the endpoint's request/response machinery,
        with the headers send_wrapped would give it, put together once. Nothing logs while
        it is answered, so the request's logging context is opened only if it fails."""
        scope["endpoint"] = jwks
        status = 500
        try:
            body = scope["app"].state.services.keys.jwks_json()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [*self.jwks_headers,
                                    (b"content-length", str(len(body)).encode()),
                                    (b"x-request-id", context.request_id.encode())]})
            status = 200
            await send({"type": "http.response.body", "body": body})
        except BaseException:
            self._finish(scope, context, status, started)
            # As on the other paths: the server's line about this error carries the id.
            open_request(context)
            raise
        self._finish(scope, context, 200, started)

    async def _limited(self, scope: Scope, receive: Receive, send: Send,
                       app: ASGIApp | None = None) -> None:
        """The app, with the request body capped at max_body_bytes (413 otherwise)."""
        app = app or self.app
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = True
                if too_big:
                    await PayloadTooLarge().response()(scope, receive, send)
                    return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        try:
            await app(scope, limited_receive, send)
        except _BodyTooLarge:
            await PayloadTooLarge().response()(scope, receive, send)

    def _finish(self, scope: Scope, context: RequestContext, status: int,
                started: float) -> None:
        duration = perf_counter() - started
        route = _route_template(scope)
        method: str = scope["method"]
        observe_request(route, method, status, duration)
        if access_log.isEnabledFor(logging.INFO):
            record = AccessRecord(
                method, route, status, duration,
                (client_address(Request(scope), self.settings) if self.settings.trusted_proxies
                 else _peer(scope)),
                context.client_id, context.user_id, context.request_id)
            write = access_writer(access_log)
            if write is not None:
                write(record)
            else:
                access_log.handle(record.materialize())


async def _token(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /oauth/token`` without the router, the exception layers and the route's
    request/response wrapping: the endpoint, and on an error the app's own handler for it
    (the same answer, status and log line as through the stack)."""
    scope["endpoint"] = token
    request = Request(scope, receive, send)
    try:
        response = await token(request)
    except _BodyTooLarge:
        raise
    except Exception as exc:
        handlers = scope["app"].exception_handlers
        for kind in type(exc).__mro__:
            if kind in handlers:
                response = await handlers[kind](request, exc)
                break
        else:
            raise
        await response(scope, receive, send)
        if kind is Exception:
            raise  # like Starlette's outermost layer: the server sees what nobody handled
        return
    await response(scope, receive, send)


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"  # as client_address says it


class _BodyTooLarge(HTTPException):
    """Raised from a body's receive past the limit. An HTTPException, so that FastAPI's
    body reading passes it on as it is (any other error there becomes a bare 400 of its
    own) and the app's handler answers 413."""

    def __init__(self) -> None:
        super().__init__(413, PayloadTooLarge.title)


def _route_template(scope: Scope) -> str:
    """``/admin/users/{user_id}``, not the path: bounded, and free of anything sent."""
    template = getattr(scope.get("route"), "path_format", None)
    if isinstance(template, str):
        return template
    # FastAPI names only its own routes in the scope; a plain Starlette route (the JWKS)
    # or a mount (the docs assets) is known by the endpoint it was handed to.
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if endpoint is None or app is None:
        return UNMATCHED_ROUTE
    templates: dict[object, str] | None = getattr(app.state, "route_templates", None)
    if templates is None:
        templates = {}
        for route in app.router.routes:
            target = getattr(route, "endpoint", None) or getattr(route, "app", None)
            path_format = getattr(route, "path_format", None)
            if isinstance(path_format, str) and target is not None:
                templates.setdefault(target, path_format)
        app.state.route_templates = templates
    return templates.get(endpoint, UNMATCHED_ROUTE)
