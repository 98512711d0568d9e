"""OpenID Connect RP-Initiated Logout 1.0: the logout request and where it may return.

``id_token_hint`` must be an ID token we signed (expired is fine, §2); it names the
client (its ``aud``) unless ``client_id`` does, and the two must agree.
``post_logout_redirect_uri`` must be registered for that client, exactly; anything else
is answered on a page, never followed (no open redirect). A logout with a valid hint of
the signed-in user ends the browser session at once; without one, the user confirms on
a page first (§2: the OP should ask when it cannot tell the logout was wanted), so that
another site cannot sign a user out by linking here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from provider.clients.service import ClientCache, ClientInfo
from provider.tokens.jwt import JwtService, TokenRejected

MAX_STATE = 2048
PARAMETERS = ("id_token_hint", "post_logout_redirect_uri", "state", "client_id")


class LogoutError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class LogoutRequest:
    client: ClientInfo | None
    post_logout_redirect_uri: str | None
    state: str | None
    # The verified claims of id_token_hint, when one was sent.
    hint: dict[str, Any] | None
    params: tuple[tuple[str, str], ...]

    @property
    def hinted_user(self) -> str | None:
        return str(self.hint["sub"]) if self.hint else None

    @property
    def hinted_session(self) -> uuid.UUID | None:
        sid = self.hint.get("sid") if self.hint else None
        try:
            return uuid.UUID(sid) if isinstance(sid, str) else None
        except ValueError:
            return None

    def return_url(self) -> str | None:
        uri = self.post_logout_redirect_uri
        if uri is None:
            return None
        if self.state is None:
            return uri
        return uri + ("&" if "?" in uri else "?") + urlencode([("state", self.state)])


async def parse_logout(params: dict[str, str], *, jwt: JwtService,
                       clients: ClientCache) -> LogoutRequest:
    hint_token = params.get("id_token_hint")
    client_id = params.get("client_id")
    hint = None
    if hint_token is not None:
        try:
            hint = jwt.verify_id_token_hint(hint_token)
        except TokenRejected:
            raise LogoutError("The id_token_hint is not an ID token of this server.") from None
        audiences = hint["aud"] if isinstance(hint["aud"], list) else [hint["aud"]]
        if client_id is not None and client_id not in audiences:
            raise LogoutError("The client_id is not the audience of the id_token_hint.")
        if client_id is None and len(audiences) == 1 and isinstance(audiences[0], str):
            client_id = audiences[0]
    client = None
    if client_id is not None:
        client = await clients.get(client_id) if len(client_id) <= 128 else None
        if client is None or not client.is_active:
            raise LogoutError("The application that sent you here is not known to this "
                              "server.")
    uri = params.get("post_logout_redirect_uri")
    if uri is not None:
        if client is None:
            raise LogoutError("post_logout_redirect_uri needs id_token_hint or client_id.")
        if uri not in client.post_logout_redirect_uris:
            raise LogoutError("The post_logout_redirect_uri is not registered for this "
                              "application.")
    state = params.get("state")
    if state is not None and len(state) > MAX_STATE:
        raise LogoutError("The state parameter is too long.")
    return LogoutRequest(client=client, post_logout_redirect_uri=uri, state=state,
                         hint=hint,
                         params=tuple((n, params[n]) for n in PARAMETERS if n in params))
