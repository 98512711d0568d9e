"""A FastAPI dependency that admits requests with a valid access token.

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from provider_resource import AccessToken
    from provider_resource.fastapi import RequireToken

    read_items = RequireToken(issuer=ISSUER, audience=AUDIENCE, scopes=["items:read"])

    @app.get("/items")
    async def items(token: Annotated[AccessToken, Depends(read_items)]) -> list[str]:
        ...

Refusals are RFC 6750 answers: 401 with a bare ``WWW-Authenticate: Bearer`` challenge
when no token came, 401 ``invalid_token`` for a bad one, 403 ``insufficient_scope`` (with
the scope needed), 400 ``invalid_request`` for a token in the query string, 503 with
``Retry-After`` while the provider cannot be reached and no keys are cached.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from provider_resource.errors import InvalidRequest, MissingToken, TokenError
from provider_resource.verifier import AccessToken, AsyncTokenVerifier

# Declares the scheme to OpenAPI (Swagger UI's Authorize button); the token is checked
# by RequireToken itself.
bearer_scheme = HTTPBearer(auto_error=False)

_verifiers: dict[tuple[Any, ...], AsyncTokenVerifier] = {}


def shared_verifier(issuer: str, audience: str, **options: Any) -> AsyncTokenVerifier:
    """One verifier (and so one JWKS cache) per configuration in this process, however
    many routes require tokens."""
    key = (issuer, audience, *sorted(options.items()))
    verifier = _verifiers.get(key)
    if verifier is None:
        verifier = _verifiers[key] = AsyncTokenVerifier(issuer, audience, **options)
    return verifier


class RequireToken:
    """``Depends(RequireToken(issuer=..., audience=..., scopes=[...]))``: the verified
    ``AccessToken``, or an RFC 6750 refusal.

    ``introspect=True`` (with the resource server's ``client_id`` and ``client_secret``)
    also asks the provider whether the token is still active: for routes that must see a
    revocation at once. Other keyword options go to ``AsyncTokenVerifier``; or pass a
    ``verifier`` of your own.
    """

    def __init__(self, issuer: str | None = None, audience: str | None = None,
                 scopes: Iterable[str] = (), *, verifier: AsyncTokenVerifier | None = None,
                 realm: str | None = None, **options: Any) -> None:
        if verifier is None:
            if issuer is None or audience is None:
                raise ValueError("RequireToken needs issuer and audience, or a verifier")
            verifier = shared_verifier(issuer, audience, **options)
        self.verifier = verifier
        self.scopes = tuple(scopes)
        self.realm = realm

    async def __call__(
        self, request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None,
                               Security(bearer_scheme)] = None,
    ) -> AccessToken:
        try:
            if "access_token" in request.query_params:
                # RFC 6750 §2.3 / RFC 9700 §4.3.2: tokens do not travel in URLs.
                raise InvalidRequest(
                    "token in the query string",
                    description="Access tokens are not accepted in the query string.")
            if credentials is None or not credentials.credentials.strip():
                raise MissingToken("no bearer token")
            return await self.verifier.verify(credentials.credentials.strip(), self.scopes)
        except TokenError as error:
            raise HTTPException(status_code=error.status_code, detail=error.description,
                                headers=error.headers(self.realm)) from None
