"""Admin API for OAuth clients (scope `admin` of an admin user).

Never returns a secret hash; a secret only once, when it is created or rotated. Every
change drops the client from this process's cache, so the token path sees it at once
(other processes within the cache's TTL). Changes are logged on ``provider.admin`` and
written to the audit trail in the change's own transaction.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from provider.audit.service import EventType
from provider.clients.schemas import (
    ClientCreate,
    ClientCreated,
    ClientPage,
    ClientRead,
    ClientSecret,
    ClientUpdate,
)
from provider.clients.service import (
    create_client,
    delete_client,
    get_client,
    invalidate_on_commit,
    list_clients_page,
    rotate_secret,
    update_client,
)
from provider.deps import (
    AdminUser,
    AdminWriter,
    ClockDep,
    RequestContextDep,
    ServicesDep,
    SessionDep,
)
from provider.oauth.grants import CLIENT_GRANT_RULES
from provider.responses import (
    ADMIN_BEARER_ERRORS,
    CLIENT_NOT_FOUND,
    INVALID,
    PUBLIC_CLIENT_HAS_NO_SECRET,
)

router = APIRouter(prefix="/admin", tags=["admin"])
audit = logging.getLogger("provider.admin")

ClientId = Annotated[str, Path(description="The client's client_id")]
CLIENT_BODIES = ("ClientCreate", "ClientUpdate")


def document_grant_types(document: dict[str, Any]) -> dict[str, Any]:
    """Give the client bodies' ``grant_types`` items the enum of the grant registry, which
    the schemas module may not import (domains sit below provider.oauth). Validation
    stays with the service, whose message names the choices. Rewrites ``document`` in
    place."""
    schemas = document.get("components", {}).get("schemas", {})
    for name in CLIENT_BODIES:
        items = schemas.get(name, {}).get("properties", {}).get("grant_types", {}).get("items")
        if items is not None:
            items["enum"] = list(CLIENT_GRANT_RULES)
    return document


@router.get("/clients", response_model=ClientPage, responses={**ADMIN_BEARER_ERRORS, **INVALID})
async def admin_list_clients(
    admin: AdminUser,
    session: SessionDep,
    cursor: Annotated[str | None, Query(
        max_length=512, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> ClientPage:
    """Clients ordered by client_id, a page at a time."""
    clients, next_cursor = await list_clients_page(session, cursor=cursor, limit=limit)
    return ClientPage(items=[ClientRead.model_validate(c) for c in clients],
                      next_cursor=next_cursor)


@router.post("/clients", status_code=201, response_model=ClientCreated,
             responses={**ADMIN_BEARER_ERRORS, **INVALID})
async def admin_create_client(
    admin: AdminWriter, body: ClientCreate, session: SessionDep, clock: ClockDep,
    services: ServicesDep, context: RequestContextDep,
) -> ClientCreated:
    """Create a client. Its secret (none for a public client) is shown only here."""
    client, secret = await create_client(
        session, name=body.name, grant_types=body.grant_types, scopes=body.scopes,
        is_public=body.is_public, now=clock.now(), grant_rules=CLIENT_GRANT_RULES,
        redirect_uris=body.redirect_uris,
        post_logout_redirect_uris=body.post_logout_redirect_uris,
        is_first_party=body.is_first_party,
    )
    audit.info("admin=%s action=client.create target=%s", admin.id, client.client_id)
    services.audit.add(session, EventType.CLIENT_CREATED, actor=str(admin.id),
                       client_id=client.client_id, context=context)
    return ClientCreated(**ClientRead.model_validate(client).model_dump(), client_secret=secret)


@router.get("/clients/{client_id}", response_model=ClientRead,
            responses={**ADMIN_BEARER_ERRORS, **CLIENT_NOT_FOUND, **INVALID})
async def admin_read_client(admin: AdminUser, client_id: ClientId, session: SessionDep,
                            ) -> ClientRead:
    return ClientRead.model_validate(await get_client(session, client_id))


@router.patch("/clients/{client_id}", response_model=ClientRead,
              responses={**ADMIN_BEARER_ERRORS, **CLIENT_NOT_FOUND, **INVALID})
async def admin_update_client(
    admin: AdminWriter, client_id: ClientId, body: ClientUpdate, session: SessionDep,
    services: ServicesDep, clock: ClockDep, context: RequestContextDep,
) -> ClientRead:
    """Change only the fields sent; grants and scopes are validated as at creation.
    ``is_active: false`` ends every session of the client for good."""
    changes = body.model_dump(exclude_unset=True)
    client = await update_client(session, client_id, changes, now=clock.now(),
                                 grant_rules=CLIENT_GRANT_RULES)
    invalidate_on_commit(session, services.clients, client_id)
    audit.info("admin=%s action=client.update target=%s fields=%s", admin.id, client_id,
               ",".join(sorted(changes)))
    services.audit.add(session, EventType.CLIENT_UPDATED, actor=str(admin.id),
                       client_id=client_id, context=context,
                       details={"fields": sorted(changes)})
    return ClientRead.model_validate(client)


@router.delete("/clients/{client_id}", status_code=204, response_model=None,
               responses={**ADMIN_BEARER_ERRORS, **CLIENT_NOT_FOUND, **INVALID})
async def admin_delete_client(
    admin: AdminWriter, client_id: ClientId, session: SessionDep, services: ServicesDep,
    context: RequestContextDep,
) -> Response:
    """Delete the client and, with it, every refresh token issued to it."""
    await delete_client(session, client_id)
    invalidate_on_commit(session, services.clients, client_id)
    audit.info("admin=%s action=client.delete target=%s", admin.id, client_id)
    services.audit.add(session, EventType.CLIENT_DELETED, actor=str(admin.id),
                       client_id=client_id, context=context)
    return Response(status_code=204)


@router.post("/clients/{client_id}/secret", response_model=ClientSecret,
             responses={**ADMIN_BEARER_ERRORS, **CLIENT_NOT_FOUND,
                        **PUBLIC_CLIENT_HAS_NO_SECRET})
async def admin_rotate_client_secret(
    admin: AdminWriter, client_id: ClientId, session: SessionDep, services: ServicesDep,
    clock: ClockDep, context: RequestContextDep,
) -> ClientSecret:
    """Replace the secret; the old one stops working at once in this process and within 5
    seconds in the others. The new one is shown only here."""
    secret = await rotate_secret(session, client_id, now=clock.now())
    invalidate_on_commit(session, services.clients, client_id)
    audit.info("admin=%s action=client.rotate_secret target=%s", admin.id, client_id)
    services.audit.add(session, EventType.CLIENT_SECRET_ROTATED, actor=str(admin.id),
                       client_id=client_id, context=context)
    return ClientSecret(client_id=client_id, client_secret=secret)
