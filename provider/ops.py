"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from provider.deps import ServicesDep
from provider.errors import ServiceUnavailable

router = APIRouter(tags=["operations"])

@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable",
    responses={503: {"description": "The database is unreachable"}},
)
async def readyz(services: ServicesDep) -> dict[str, str]:
    try:
        async with services.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        raise ServiceUnavailable("The database is unreachable.") from None
    return {"status": "ready"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
