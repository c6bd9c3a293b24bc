"""The naive baseline: Starlette + sse-starlette with one Redis Pub/Sub per client, as most tutorials show.

It subscribes to the same channel the sse-progress publish script announces on (``rpa:session:{S}``), so the
same publisher drives both. Each stream takes one connection from redis-py's default pool (100 connections
for ``redis.asyncio``), so client 101 gets ``MaxConnectionsError`` inside its stream. No resume support.

Run: ``REDIS_URL=redis://127.0.0.1:6379 uvicorn bench.naive_app:app``
"""

from __future__ import annotations

import json
import os

import redis.asyncio as aioredis
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

redis = aioredis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))


async def events(request: Request) -> Response:
    session_id = request.path_params["session_id"]

    async def stream():  # type: ignore[no-untyped-def]
        pubsub = redis.pubsub()
        await pubsub.subscribe(f"rpa:session:{{{session_id}}}")
        try:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    event = json.loads(message["data"])
                    yield {"id": event["id"], "event": "progress_update", "data": json.dumps(event)}
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()

    return EventSourceResponse(stream())


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/events/{session_id}", events), Route("/healthz", healthz)])
