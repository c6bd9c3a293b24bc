"""Latency the bridge adds: from a producer's write to the frame an SSE follower reads.

Three producers of the same jobs (``--sessions`` at once, ``--steps`` steps and success, ``--pause`` s apart):
``ProgressTracker`` straight to Redis; the older bot's tracker (a plain ``SET`` of its JSON, then a ``PUBLISH``)
through ``sse-progress bridge``; the older bot without the ``PUBLISH`` (keyspace notifications, the settle delay).
Each write is timed in the producer's thread and each frame on arrival, in one process (one clock).

    .venv/bin/python -m bench.legacy_bridge          # about 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import datetime

import httpx
import redis
from httpx_sse import aconnect_sse

from bench import procs
from sse_progress import ProgressTracker
from sse_progress.protocol.tokens import Role, TokenAuthority

PRODUCERS = ("tracker", "bridge-publish", "bridge-set-only")


def old_update(client: redis.Redis, sid: str, etapa: int, total: int, status: str, publish: bool) -> None:
    """The older bot's tracker: SET of its JSON (TTL 24 h), then the update published, each with its own now()."""
    data = {"etapa_atual": etapa, "total_etapas": total, "percentual": round(100 * etapa / total, 1),
            "status": status, "mensagem": f"Tela {etapa}", "dados_extra": None,
            "timestamp": datetime.now().isoformat()}  # fmt: skip
    client.set(f"rpa:progress:{sid}", json.dumps(data), ex=86400)
    if publish:
        data = {**data, "type": "progress_update", "session_id": sid, "timestamp": datetime.now().isoformat()}
        client.publish(f"rpa:session:{sid}", json.dumps(data))


def produce(kind: str, redis_url: str, sid: str, steps: int, pause: float, sent: list[float]) -> None:
    tracker = ProgressTracker(steps, sid, "redis", redis_url, outbox_dir="/tmp") if kind == "tracker" else None
    client = redis.Redis.from_url(redis_url)
    for index in range(steps + 1):
        etapa, status = (index + 1, "running") if index < steps else (steps, "success")
        sent.append(time.perf_counter())
        if tracker is not None:
            tracker.update_progress(etapa, f"Tela {etapa}", status=status)
        else:
            old_update(client, sid, etapa, steps, status, publish=kind == "bridge-publish")
        time.sleep(pause)
    if tracker is not None:
        tracker.close()
    client.close()


async def one_job(kind: str, base: str, token: str, redis_url: str, sid: str, args: argparse.Namespace) -> list[float]:
    received: list[float] = []
    sent: list[float] = []
    connected = asyncio.Event()

    async def follow() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
            url = f"{base}/sessions/{sid}/events"
            async with aconnect_sse(client, "GET", url, params={"token": token}) as source:
                connected.set()
                async for event in source.aiter_sse():
                    if event.data:
                        received.append(time.perf_counter())
                        if json.loads(event.data)["status"] == "success":
                            return

    follower = asyncio.create_task(follow())
    await connected.wait()
    await asyncio.to_thread(produce, kind, redis_url, sid, args.steps, args.pause, sent)
    await asyncio.wait_for(follower, 30)
    if len(received) != len(sent):
        print(f"  {kind} {sid}: {len(sent)} written, {len(received)} received", file=sys.stderr)
        return []
    return [(got - put) * 1000 for put, got in zip(sent, received, strict=True)]


async def measure(args: argparse.Namespace) -> None:
    store = procs.start_redis()
    server = procs.start_sse_progress(store.url)
    log = server.log.with_name(server.log.stem + "-bridge.log")
    with log.open("ab") as handle:
        bridge = subprocess.Popen(
            [sys.executable, "-m", "sse_progress.cli", "bridge", "--redis-url", store.url],
            stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        while "bridge ready" not in log.read_text():
            await asyncio.sleep(0.1)
        base = f"http://127.0.0.1:{server.port}"
        authority = TokenAuthority((procs.SECRET,))
        print(f"{args.sessions} jobs at once, {args.steps} steps + success, {args.pause * 1000:.0f} ms apart\n")
        print("| producer | events | p50 ms | p95 ms | p99 ms | max ms |\n|---|---|---|---|---|---|")
        for kind in PRODUCERS:
            sids = ["b" + uuid.uuid4().hex[:12] for _ in range(args.sessions)]
            runs = await asyncio.gather(
                *(one_job(kind, base, authority.issue(s, Role.SUBSCRIBE, 600), store.url, s, args) for s in sids)
            )
            latencies = sorted(value for run in runs for value in run)
            cells = [f"{latencies[min(len(latencies) - 1, int(q * len(latencies)))]:.1f}" for q in (0.5, 0.95, 0.99)]
            cells.append(f"{latencies[-1]:.1f}")
            print(f"| {kind} | {len(latencies)} | " + " | ".join(cells) + " |")
    finally:
        bridge.terminate()
        bridge.wait(10)
        server.stop()
        store.stop()
    print("\n" + log.read_text().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.1)
    args = parser.parse_args()
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
