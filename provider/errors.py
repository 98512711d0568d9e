"""The ProviderError tree; each error renders itself as an RFC 9457 problem document.

OAuth protocol errors live in ``provider.oauth.errors``; both derive from ExpectedError,
which the unit of work commits on (see ``provider.db.unit_of_work``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

PROBLEM_JSON = "application/problem+json"


class ExpectedError(Exception):
    """An error that is part of the contract, not a fault."""


class ProviderError(ExpectedError):
    # Not ClassVars: an error Starlette raised keeps its own status and words
    # (see from_http_exception).
    status: int = 400
    code: ClassVar[str] = "bad_request"
    title: str = "The request is not valid."

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra
        self.extra_headers: dict[str, str] = {}

    def headers(self) -> dict[str, str]:
        return dict(self.extra_headers)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "code": self.code,
        }
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return body

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status, media_type=PROBLEM_JSON,
                            headers=self.headers())


class ValidationFailed(ProviderError):
    status = 422
    code = "validation_error"
    title = "The request body is not valid."

    @classmethod
    def from_errors(cls, errors: Iterable[Mapping[str, Any]]) -> ValidationFailed:
        """Request validation's errors: where and what, never the submitted value (it may
        be a password)."""
        return cls(errors=[
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""),
             "type": err.get("type", "")}
            for err in errors
        ])


class NotFound(ProviderError):
    status = 404
    code = "not_found"
    title = "Not found."


class MethodNotAllowed(ProviderError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed."


class Conflict(ProviderError):
    status = 409
    code = "conflict"
    title = "The resource already exists."


class PayloadTooLarge(ProviderError):
    status = 413
    code = "payload_too_large"
    title = "The request body is too large."


class UnsupportedMediaType(ProviderError):
    status = 415
    code = "unsupported_media_type"
    title = "The request body's media type is not supported."


class TooManyRequests(ProviderError):
    status = 429
    code = "rate_limited"
    title = "Too many requests. Try again later."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class InternalError(ProviderError):
    status = 500
    code = "internal_error"
    title = "Internal server error."


class ServiceUnavailable(ProviderError):
    status = 503
    code = "service_unavailable"
    title = "A service this request needs is unavailable."

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class HTTPError(ProviderError):
    """Any other error Starlette raised itself."""

    code = "http_error"


HTTP_ERRORS: dict[int, type[ProviderError]] = {
    404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge, 415: UnsupportedMediaType,
}


FASTAPI_BODY_UNPARSABLE = "There was an error parsing the body"


def from_http_exception(exc: HTTPException) -> ProviderError:
    """An error Starlette raised itself (no route, wrong method, ...) as ours, in its own
    words: its status, its detail as the title, its headers (e.g. ``Allow``)."""
    if exc.status_code == 400 and exc.__cause__ is not None \
            and exc.detail == FASTAPI_BODY_UNPARSABLE:
        # FastAPI's bare 400 for a JSON body its decoder gives up on with something other
        # than a syntax error: not UTF-8 (RFC 8259 §8.1), nested past the recursion limit,
        # an integer of more digits than Python converts. Malformed JSON is a 422: all get
        # the answer the API documents.
        return ValidationFailed.from_errors(
            [{"loc": ("body",), "msg": "JSON decode error", "type": "json_invalid"}])
    error = HTTP_ERRORS.get(exc.status_code, HTTPError)()
    error.status = exc.status_code
    error.title = str(exc.detail)
    error.extra_headers = dict(exc.headers or {})
    return error


class Problem(BaseModel):
    """RFC 9457 problem details as this API renders them."""

    type: str = "about:blank"
    title: str
    status: int
    code: str
    detail: str | None = None
