"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import hashlib
import hmac
import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from provider.deps import ServicesDep, bearer_token
from provider.errors import Problem, ServiceUnavailable
from provider.metrics import render
from provider.oauth.errors import InvalidToken
from provider.responses import BEARER_ERRORS

log = logging.getLogger("provider")
router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable",
    description="503 within 2 s when the database does not answer (down, frozen, full).",
    responses={503: {"model": Problem, "description": "The database is unreachable"}},
)
async def readyz(services: ServicesDep) -> dict[str, str]:
    reason = await services.readiness.check()
    if reason is not None:
        log.warning("not ready: database unavailable: %s", reason)
        raise ServiceUnavailable("The database is unreachable.")
    return {"status": "ready"}


@router.get(
    "/metrics",
    summary="Prometheus metrics of every worker (bearer PROVIDER_METRICS_TOKEN when set)",
    response_class=Response,
    responses={400: BEARER_ERRORS[400], 401: BEARER_ERRORS[401]},
)
async def metrics(request: Request, services: ServicesDep) -> Response:
    expected = services.settings.metrics_token
    if expected is not None:
        presented = bearer_token(request)
        # Digests compared in constant time: neither the token nor its length leaks.
        if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(),
                                   hashlib.sha256(expected.get_secret_value().encode()).digest()):
            raise InvalidToken("The metrics token is not valid.")
    return Response(render(), media_type=CONTENT_TYPE_LATEST)
