"""Operations: liveness, readiness, Prometheus metrics and admin statistics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sse_progress.engines import EngineUnavailable, answered_within
from sse_progress.protocol.tokens import Role
from sse_progress.server.metrics import METRICS
from sse_progress.server.routes.sessions import refresh_job_metrics
from sse_progress.server.service import Service


async def healthz(request: Request) -> Response:
    """
    Liveness: the process answers.
    ---
    summary: Liveness
    responses:
      "200":
        description: alive
        content:
          application/json:
            schema:
              type: object
              required: [status]
              properties:
                status:
                  const: ok
    """
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """
    Readiness: the event store answers and accepts writes, and the live feed delivers.
    ---
    summary: Readiness
    responses:
      "200":
        description: ready
        content:
          application/json:
            schema:
              type: object
              required: [status, engine]
              properties:
                status:
                  const: ready
                engine:
                  type: string
      "503":
        description: the event store does not answer (within 2 s), is full, or the live feed is not delivering
        content:
          application/json:
            schema:
              type: object
              required: [status, engine, error]
              properties:
                status:
                  const: unavailable
                engine:
                  type: string
                error:
                  type: string
    """
    service = Service.of(request)
    try:
        await service.engine.ping_within()
    except EngineUnavailable as error:
        return JSONResponse({"status": "unavailable", "engine": service.engine.name, "error": str(error)}, 503)
    # The store may answer while live delivery is down: streams would get heartbeats only.
    problem = service.hub.feed.problem
    if problem is not None:
        error_text = f"live feed not delivering: {problem}"
        return JSONResponse({"status": "unavailable", "engine": service.engine.name, "error": error_text}, 503)
    return JSONResponse({"status": "ready", "engine": service.engine.name})


async def metrics(request: Request) -> Response:
    """
    Prometheus metrics (no session ids or tokens in labels).
    ---
    summary: Prometheus metrics
    responses:
      "200":
        description: the Prometheus text format
        content:
          text/plain:
            schema:
              type: string
    """
    METRICS.active_sessions.set(len(Service.of(request).hub.session_ids))
    await refresh_job_metrics(request)
    return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)


async def stats(request: Request) -> Response:
    """
    Sessions, connections and Redis figures (an admin token).
    ---
    summary: Server statistics
    security: token
    responses:
      "200":
        description: the figures of this process
        content:
          application/json:
            schema:
              type: object
              required: [total_sessions, total_connections, connections_by_transport, engine]
              properties:
                total_sessions:
                  type: integer
                  minimum: 0
                total_connections:
                  type: integer
                  minimum: 0
                connections_by_transport:
                  type: object
                  additionalProperties:
                    type: integer
                sessions:
                  type: object
                  description: connections per session id with open connections
                  additionalProperties:
                    type: integer
                engine:
                  type: object
                  description: the engine's name (memory, redis, redis-cluster) and its figures
                  required: [name]
                  properties:
                    name:
                      type: string
                redis:
                  type: object
                  deprecated: true
                  description: the engine's figures, on the Redis engines only (read engine instead)
      "503": Unavailable
    """
    service = Service.of(request)
    service.authorize(request, "*", Role.ADMIN)
    hub = service.hub
    figures = await answered_within(service.engine.stats())
    stats = {
        "total_sessions": len(hub.session_ids),
        "total_connections": hub.connections(),
        "connections_by_transport": hub.connections_by_transport(),
        "sessions": {session_id: hub.connections(session_id) for session_id in hub.session_ids},
        "engine": {"name": service.engine.name, **figures},
    }
    if service.engine.name.startswith("redis"):
        stats["redis"] = figures  # the key's older name, kept for the dashboards that read it
    return JSONResponse(stats)
