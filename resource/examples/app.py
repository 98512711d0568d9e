"""An example resource server that accepts provider's access tokens.

Run it (from this directory, with provider serving on :8000):

    pip install -e '.[fastapi]' uvicorn
    ISSUER=http://127.0.0.1:8000 uvicorn examples.app:app --port 8001

then call it with a token from provider's token endpoint:

    curl -H "Authorization: Bearer $ACCESS_TOKEN" http://127.0.0.1:8001/hello

Set CLIENT_ID and CLIENT_SECRET (a confidential client of provider's, e.g.
`provider clients create --name api --grant client_credentials`) and /account checks
with introspection, so a revoked token stops working there at once.
"""

# No `from __future__ import annotations` here: FastAPI reads the dependencies from the
# annotations, and these name objects local to create_app().
import os
from typing import Annotated

from fastapi import Depends, FastAPI

from provider_resource import AccessToken
from provider_resource.fastapi import RequireToken


def create_app(issuer: str, audience: str, client_id: str | None = None,
               client_secret: str | None = None) -> FastAPI:
    app = FastAPI(title="Example resource server")
    signed_in = RequireToken(issuer=issuer, audience=audience)
    with_profile = RequireToken(issuer=issuer, audience=audience, scopes=["profile"])

    @app.get("/hello")
    async def hello(token: Annotated[AccessToken, Depends(signed_in)]) -> dict[str, str]:
        """Any valid access token of the provider."""
        return {"hello": token.sub, "client_id": token.client_id}

    @app.get("/profile")
    async def profile(token: Annotated[AccessToken, Depends(with_profile)]) -> dict[str, object]:
        """Only with the `profile` scope: 403 insufficient_scope otherwise."""
        return {"sub": token.sub, "scopes": sorted(token.scopes)}

    if client_id and client_secret:
        live = RequireToken(issuer=issuer, audience=audience, introspect=True,
                            client_id=client_id, client_secret=client_secret)

        @app.get("/account")
        async def account(token: Annotated[AccessToken, Depends(live)]) -> dict[str, str]:
            """Asks the provider too: a revoked token is refused here at once."""
            return {"sub": token.sub}

    return app


ISSUER = os.environ.get("ISSUER", "http://127.0.0.1:8000")
# The provider's PROVIDER_AUDIENCE: by default, its issuer URL.
app = create_app(ISSUER, os.environ.get("AUDIENCE", ISSUER),
                 os.environ.get("CLIENT_ID"), os.environ.get("CLIENT_SECRET"))
