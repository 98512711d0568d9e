"""The Grant protocol and what grants share: the parsed request and the token response."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from provider.audit.service import EventType, RequestContext
from provider.clients.service import ClientInfo
from provider.logs import note_user
from provider.oauth.errors import InvalidRequest
from provider.oauth.scopes import OPENID
from provider.oidc.id_token import at_hash
from provider.tokens.refresh import Session

if TYPE_CHECKING:
    from provider.services import Services

TokenResponse = dict[str, Any]


@dataclass(frozen=True)
class TokenRequest:
    """A parsed token request: its form parameters and where it came from."""

    form: dict[str, str]
    client_address: str
    user_agent: str | None = None

    @property
    def context(self) -> RequestContext:
        return RequestContext(self.client_address, self.user_agent)


class Grant(Protocol):
    """One grant type of the token endpoint (RFC 6749 §4), registered in ``grants``."""

    grant_type: ClassVar[str]
    # Whether a public client (no secret) may be allowed this grant.
    allows_public_clients: ClassVar[bool]

    async def exchange(
        self, services: Services, request: TokenRequest, client: ClientInfo
    ) -> TokenResponse: ...


def require(form: dict[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise InvalidRequest(f"The {name} parameter is required.")
    return value


def token_response(
    services: Services,
    request: TokenRequest,
    *,
    sub: str,
    client_id: str,
    scope: str,
    session: Session | None = None,
    refresh_token: str | None = None,
    nonce: str | None = None,
) -> TokenResponse:
    """Sign the access token (and an ID token for `openid`, with ``at_hash`` and the
    authorization request's ``nonce``), queue the audit event, and shape RFC 6749 §5.1."""
    now = services.clock.now()
    settings = services.settings
    # `sid` ties a user's access token to its session, so ending the session ends it at
    # our own endpoints and at introspection. A client acting for itself has none.
    sid = str(session.id) if session else None
    note_user(sub if session else None)  # a user's tokens (a client's own have no session)
    access_token, _ = services.jwt.issue_access_token(
        sub=sub, client_id=client_id, scope=scope, now=now, ttl=settings.access_token_ttl,
        sid=sid, auth_time=session.auth_time if session else None,
        amr=session.amr if session else None,
    )
    body: TokenResponse = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": int(settings.access_token_ttl.total_seconds()),
        "scope": scope,
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    if session is not None and OPENID in scope.split():
        # The ID token is signed next, by the same key (no await in between): its hash.
        extra = {"at_hash": at_hash(access_token, services.keys.signing_key().alg)}
        if nonce is not None:
            extra["nonce"] = nonce
        body["id_token"] = services.jwt.issue_id_token(
            sub=sub, client_id=client_id, now=now, ttl=settings.id_token_ttl,
            auth_time=session.auth_time, sid=sid, amr=session.amr, extra=extra,
        )
    # Queued, not written here: no round trip on the token path (provider.audit.service).
    services.audit.record(
        EventType.TOKEN_ISSUED, actor=client_id, client_id=client_id,
        subject_user_id=session.user_id if session else None, context=request.context,
        details={"grant_type": request.form.get("grant_type")},
    )
    return body
