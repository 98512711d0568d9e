"""OpenAPI documentation of the error answers routes can give, defined once.

Routes combine these in ``responses=``; the bodies are ``Problem`` (RFC 9457) or
``OAuthErrorBody`` (RFC 6749 §5.2, RFC 6750 §3.1).
"""

from __future__ import annotations

from typing import Any

from provider.errors import Problem
from provider.oauth.schemas import OAuthErrorBody, StepUpBody

Responses = dict[int | str, dict[str, Any]]

PROBLEM_REF = "#/components/schemas/Problem"
IN_QUERY = "invalid_request: the access token was sent in the query string (RFC 6750 §2.3)"

# Every bearer-protected route.
BEARER_ERRORS: Responses = {
    400: {"model": OAuthErrorBody, "description": IN_QUERY},
    401: {"model": OAuthErrorBody, "description": "Missing, invalid, expired or revoked token"},
    403: {"model": OAuthErrorBody, "description": "The token lacks a required scope"},
}
# Endpoints that need a recent sign-in (provider.deps.require_recent_sign_in).
RECENT_SIGN_IN_ERRORS: Responses = {
    **BEARER_ERRORS,
    401: {"model": StepUpBody,
          "description": "Missing, invalid, expired or revoked token, or a sign-in older than "
                         "PROVIDER_REAUTH_MAX_AGE: insufficient_user_authentication with "
                         "max_age (RFC 9470)"},
}
ADMIN_BEARER_ERRORS: Responses = {
    **BEARER_ERRORS,
    403: {"model": OAuthErrorBody,
          "description": "The token lacks the admin scope or its user is not an admin"},
}
INVALID: Responses = {422: {"model": Problem, "description": "The request is not valid"}}
# Userinfo's (RFC 6750 §3.1), with FastAPI's default descriptions.
USERINFO_ERRORS: Responses = {400: BEARER_ERRORS[400], 401: {"model": OAuthErrorBody},
                              403: {"model": OAuthErrorBody}}


def oauth_errors(*codes: int) -> Responses:
    """The OAuth endpoints' errors (token, revocation, introspection)."""
    described = {
        400: "Invalid request (RFC 6749 §5.2)",
        401: "Client authentication failed",
        429: "Too many attempts; see Retry-After",
        503: "temporarily_unavailable (e.g. the rate-limit service); see Retry-After",
    }
    return {code: {"model": OAuthErrorBody, "description": described[code]} for code in codes}


PROBLEM_DESCRIPTIONS = {400: "Invalid code or password", 403: "Forbidden", 409: "Conflict",
                        422: "Invalid input or weak password", 429: "Rate limited",
                        503: "A service it needs is unavailable; see Retry-After"}


def problems(*codes: int) -> Responses:
    """The self-service account endpoints' errors."""
    return {code: {"model": Problem, "description": PROBLEM_DESCRIPTIONS[code]}
            for code in codes}


def bearer_problems(*codes: int) -> Responses:
    """BEARER_ERRORS and ``problems(*codes)``; a 400 is either body, by its media type."""
    responses = {**BEARER_ERRORS, **problems(*codes)}
    if 400 in codes:
        responses[400] = {
            "model": OAuthErrorBody,
            "description": f"{PROBLEM_DESCRIPTIONS[400]} (a problem); or {IN_QUERY}",
            "content": {"application/problem+json": {"schema": {"$ref": PROBLEM_REF}}},
        }
    return responses


# The admin API.
USER_NOT_FOUND: Responses = {
    404: {"model": Problem, "description": "No such user (user_not_found)"},
}
USER_TAKEN: Responses = {
    409: {"model": Problem, "description": "email_taken or username_taken"},
}
USER_CONFLICT: Responses = {
    409: {"model": Problem,
          "description": "email_taken, username_taken, cannot_modify_self (an admin disabling "
                         "or demoting themselves) or last_active_admin"},
}
CLIENT_NOT_FOUND: Responses = {
    404: {"model": Problem, "description": "No such client (client_not_found)"},
}
PUBLIC_CLIENT_HAS_NO_SECRET: Responses = {
    422: {"model": Problem, "description": "A public client has no secret"},
}


def problems_as_problem_json(document: dict[str, Any]) -> dict[str, Any]:
    """Document ``Problem`` bodies under the media type they are served with,
    ``application/problem+json`` (RFC 9457 §3): FastAPI files every model under the
    route's media type, ``application/json``. Rewrites ``document`` in place."""
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                body = content.get("application/json")
                if body is not None and body.get("schema", {}).get("$ref") == PROBLEM_REF:
                    content["application/problem+json"] = content.pop("application/json")
    return document
