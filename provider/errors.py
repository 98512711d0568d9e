"""The ProviderError tree, rendered as RFC 9457 problem details with a stable ``code``.

OAuth protocol errors live in ``provider.oauth.errors``; both derive from ExpectedError,
which the unit of work commits on (see ``provider.db.unit_of_work``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel


class ExpectedError(Exception):
    """An error that is part of the contract, not a fault."""


class ProviderError(ExpectedError):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "The request is not valid."
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra

    def response_headers(self) -> dict[str, str]:
        return dict(self.headers)

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


class ValidationFailed(ProviderError):
    status = 422
    code = "validation_error"
    title = "The request body is not valid."


class NotFound(ProviderError):
    status = 404
    code = "not_found"
    title = "Not found."


class Conflict(ProviderError):
    status = 409
    code = "conflict"
    title = "The resource already exists."


class PayloadTooLarge(ProviderError):
    status = 413
    code = "payload_too_large"
    title = "The request body is too large."




class ServiceUnavailable(ProviderError):
    status = 503
    code = "service_unavailable"
    title = "A service this request needs is unavailable."
    headers = {"Retry-After": "5"}  # noqa: RUF012 (read-only)


class Problem(BaseModel):
    """RFC 9457 problem details as this API renders them."""

    type: str = "about:blank"
    title: str
    status: int
    code: str
    detail: str | None = None
