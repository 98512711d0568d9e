"""Pure ASGI middleware (cheap on the token path).

HardeningMiddleware: security headers on every response and a cap on request bodies.
RequestLogMiddleware: the request id, one access log line and the request metrics.
"""

from __future__ import annotations

import logging
import re
import secrets
from time import perf_counter

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provider.deps import client_address, is_trusted_proxy
from provider.docs import DOCS_PAGES, DOCS_PREFIX
from provider.errors import PayloadTooLarge
from provider.logs import (
    ACCESS_LOGGER,
    AccessRecord,
    RequestContext,
    close_request,
    open_request,
)
from provider.metrics import observe_request
from provider.settings import Settings
from provider.web.pages import WEB_PAGES

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
NO_STORE = (b"cache-control", b"no-store")
# Two years, the HSTS preload list's floor; sent only when the issuer is https (RFC 6797
# §7.2: a user agent ignores it over plain HTTP anyway).
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


class HardeningMiddleware:
    """Security headers on every response and a cap on request bodies (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, hsts: bool = False) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        common = (*API_SECURITY_HEADERS, HSTS) if hsts else API_SECURITY_HEADERS
        self.api_headers = (*common, API_CSP)
        self.api_headers_no_store = (*common, API_CSP, NO_STORE)
        self.docs_headers = (*common, DOCS_CSP)
        # The login, consent and logout pages send their own CSP and Cache-Control.
        self.page_headers = common

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        is_docs = path in DOCS_PAGES or path.startswith(DOCS_PREFIX)
        extra = (self.docs_headers if is_docs else
                 self.page_headers if path in WEB_PAGES else self.api_headers)
        no_store = self.api_headers_no_store

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if is_docs or any(name == b"cache-control" for name, _ in headers):
                    headers.extend(extra)
                else:
                    headers.extend(no_store)
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


access_log = logging.getLogger(ACCESS_LOGGER)
# What a proxy's X-Request-ID may look like: anything else is replaced by our own id, so
# a header cannot forge log lines or carry arbitrary text into them.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"


class RequestLogMiddleware:
    """The request id (``X-Request-ID`` from a trusted proxy, else a new one; echoed in
    the response), one access line per request and the request metrics.

    The line names the route template, never the path or query string, and the client
    and user by id: nothing secret can reach it. Outermost, so it times every answer.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def _request_id(self, scope: Scope) -> str:
        client = scope.get("client")
        proxies = self.settings.trusted_proxies
        if proxies and client and is_trusted_proxy(client[0], proxies):
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            for name, value in headers:
                if name == b"x-request-id":
                    if _REQUEST_ID.fullmatch(value):
                        return value.decode()
                    break
        return secrets.token_hex(16)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        context = RequestContext(self._request_id(scope))
        request_id_header = (b"x-request-id", context.request_id.encode())
        status = 500
        logged = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, logged
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message,
                           "headers": [*message.get("headers", ()), request_id_header]}
                await send(message)
                return
            await send(message)
            if not logged and not message.get("more_body", False):
                # The answer is complete: log now, not after background work (mail).
                logged = True
                self._finish(scope, context, status, started)

        token = open_request(context)
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if not logged:
                self._finish(scope, context, status, started)
            # The context stays set: the outer 500 handler's line carries the request id
            # (each request runs in a task of its own, so it goes no further).
            raise
        if not logged:
            self._finish(scope, context, status, started)
        close_request(token)

    def _finish(self, scope: Scope, context: RequestContext, status: int,
                started: float) -> None:
        duration = perf_counter() - started
        route = _route_template(scope)
        method: str = scope["method"]
        observe_request(route, method, status, duration)
        if access_log.isEnabledFor(logging.INFO):
            fields = {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(duration * 1000, 3),
                "client_address": client_address(Request(scope), self.settings),
                "client_id": context.client_id,
                "user_id": context.user_id,
                "request_id": context.request_id,
            }
            access_log.handle(AccessRecord(f"{method} {route} {status}", fields))


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
            if target is not None and isinstance(path_format, str):
                templates.setdefault(target, path_format)
        app.state.route_templates = templates
    return templates.get(endpoint, UNMATCHED_ROUTE)
