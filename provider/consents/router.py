"""The signed-in user's consents: list them, withdraw one (bearer token of the user)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from provider.audit.service import EventType
from provider.consents import service
from provider.consents.schemas import ConsentList, ConsentRead
from provider.deps import AccountUser, RequestContextDep, ServicesDep, SessionDep
from provider.errors import NotFound, Problem
from provider.responses import BEARER_ERRORS, INVALID

router = APIRouter(tags=["accounts"])


class ConsentNotFound(NotFound):
    code = "consent_not_found"
    title = "No consent or session of yours with this client."


@router.get("/users/me/consents", response_model=ConsentList, responses=BEARER_ERRORS)
async def list_my_consents(user: AccountUser, session: SessionDep) -> ConsentList:
    """The third-party applications you allowed to access your account, and what."""
    items = await service.list_consents(await session.connection(), user.id)
    return ConsentList(items=[ConsentRead(client_id=c.client_id, client_name=c.client_name,
                                          scopes=c.scopes, granted_at=c.granted_at)
                              for c in items])


@router.delete("/users/me/consents/{client_id}", status_code=204, response_class=Response,
               responses={**BEARER_ERRORS, **INVALID,
                          404: {"model": Problem, "description":
                                "consent_not_found: no consent, unredeemed code or session with "
                                "this client"}})
async def withdraw_my_consent(
    client_id: Annotated[str, Path(max_length=128, description="The application's client_id")],
    user: AccountUser, session: SessionDep, services: ServicesDep,
    context: RequestContextDep,
) -> Response:
    """Withdraw the consent: the application's refresh tokens of yours stop working, the
    codes it has not redeemed yet get no tokens, and it must ask again before it gets new
    ones."""
    withdrawn = await service.withdraw(await session.connection(), user_id=user.id,
                                       client_id=client_id, now=services.clock.now())
    if not withdrawn:
        raise ConsentNotFound()
    services.audit.add(session, EventType.CONSENT_WITHDRAWN, actor=str(user.id),
                       subject_user_id=user.id, client_id=client_id, context=context)
    return Response(status_code=204)
