"""HardeningMiddleware: security headers on every response and a cap on request bodies."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provider.docs import DOCS_PAGES, DOCS_PREFIX
from provider.errors import PayloadTooLarge

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
