"""Operations: liveness, readiness, Prometheus metrics and admin statistics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..auth import Role
from ..engines import EngineUnavailable
from ..metrics import METRICS
from ..service import Service


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    service = Service.of(request)
    try:
        await service.engine.ping()
    except EngineUnavailable as error:
        return JSONResponse({"status": "unavailable", "engine": service.engine.name, "error": str(error)}, 503)
    return JSONResponse({"status": "ready", "engine": service.engine.name})


async def metrics(request: Request) -> Response:
    METRICS.active_sessions.set(len(Service.of(request).hub.session_ids))
    return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)


async def stats(request: Request) -> Response:
    service = Service.of(request)
    service.authorize(request, "*", Role.ADMIN)
    hub = service.hub
    return JSONResponse(
        {
            "total_sessions": len(hub.session_ids),
            "total_connections": hub.connections(),
            "connections_by_transport": hub.connections_by_transport(),
            "sessions": {session_id: hub.connections(session_id) for session_id in hub.session_ids},
            "redis": await service.engine.stats(),
        }
    )
