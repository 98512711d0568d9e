"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from provider.deps import ServicesDep
from provider.errors import ServiceUnavailable

log = logging.getLogger("provider")
router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable",
    description="503 within 2 s when the database does not answer (down, frozen, full).",
    responses={503: {"description": "The database is unreachable"}},
)
async def readyz(services: ServicesDep) -> dict[str, str]:
    reason = await services.readiness.check()
    if reason is not None:
        log.warning("not ready: database unavailable: %s", reason)
        raise ServiceUnavailable("The database is unreachable.")
    return {"status": "ready"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
