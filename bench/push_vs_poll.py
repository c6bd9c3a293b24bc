"""Push vs poll: the same workload served by SSE and by polling ``GET /sessions/{sid}`` (with and without ETag).

Workload (default): 1,000 browsers, each watching its own 15-step job that runs for 60 s (a step every 4 s,
the jobs' starts spread over the first step interval; the last step is ``success``). Each mode gets a fresh
sse-progress server (Redis engine, one uvicorn process) and the same publisher schedule (Lua publish straight
to Redis from a separate process, like a worker would).

* ``sse``: one ``GET /sessions/{sid}/events`` per browser; the stream ends after the terminal event.
* ``poll``: ``GET /sessions/{sid}`` every 2 s on a keep-alive connection (random phase per browser), until the
  browser sees the terminal status.
* ``poll+etag``: the same with ``If-None-Match`` (``304`` when nothing changed).

Staleness of a step = the time from its publish until the browser first shows that step or a later one (a
poll can skip intermediate steps; they count as seen when a later one is). Bytes are HTTP bytes both ways
(TCP/IP overhead not counted). Server CPU = utime+stime of the server over the run; Redis CPU separately.

    .venv/bin/python -m bench.push_vs_poll            # 1,000 browsers x 15 steps x 60 s (about 4 minutes)
    .venv/bin/python -m bench.push_vs_poll --quick    # 200 browsers x 5 steps x 10 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/push_vs_poll.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.clients import Client, Stats, close_all, connect, session_path
from bench.loadgen import percentile
from sse_progress.protocol.tokens import Role, TokenAuthority
from tests.support.processes import RedisServer

RESULTS = procs.BENCH / "results"


# --------------------------------------------------------------------------------------------------- jobs


def job_publisher(cfg: dict[str, Any], pipe: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    pipe.send(asyncio.run(_run_jobs(cfg, pipe)))
    pipe.close()


async def _run_jobs(cfg: dict[str, Any], pipe: Any) -> dict[str, Any]:
    from sse_progress.engines.redis.engine import RedisEngine
    from sse_progress.protocol.events import EventDraft

    engine = RedisEngine(cfg["redis_url"], pool_size=8)
    await engine.ping()
    steps, seconds, sessions = cfg["steps"], cfg["seconds"], cfg["sessions"]
    interval = seconds / steps
    rng = random.Random(7)
    schedule = []
    for index in range(len(sessions)):
        offset = rng.uniform(0, interval)
        for step in range(1, steps + 1):
            jitter = rng.uniform(-0.1, 0.1) * interval if step < steps else 0.0
            schedule.append((offset + (step - 1) * interval + jitter, index, step))
    schedule.sort()
    published: list[list[int]] = [[0] * (steps + 1) for _ in sessions]
    errors = 0
    pipe.send("ready")
    start = pipe.recv()
    queue: asyncio.Queue[tuple[float, int, int] | None] = asyncio.Queue()

    async def worker() -> None:
        nonlocal errors
        while (item := await queue.get()) is not None:
            _, index, step = item
            t = time.time_ns()
            status = "success" if step == steps else "running"
            try:
                await engine.publish(
                    EventDraft(
                        session_id=sessions[index],
                        etapa_atual=step,
                        total_etapas=steps,
                        status=status,
                        mensagem=f"step {step} of {steps}",
                        dados_extra={"t": t, "n": step},
                    )
                )
                published[index][step] = t
            except Exception:
                errors += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(8)]
    for due, index, step in schedule:
        delay = start + due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, index, step))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    await engine.close()
    return {"published": published, "errors": errors}


# --------------------------------------------------------------------------------------------------- browsers


class Wire:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.statuses: dict[int, int] = {}


async def poll_browser(
    port: int,
    session: str,
    token: str,
    period: float,
    use_etag: bool,
    start: float,
    deadline: float,
    wire: Wire,
    seen: dict[int, int],
) -> None:
    """Poll the snapshot until the terminal status; ``seen[step]`` = first time_ns a step (or later) showed."""
    await asyncio.sleep(max(0.0, start + random.uniform(0, period) - time.monotonic()))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    etag = b""
    best = 0
    try:
        while time.monotonic() < deadline:
            request = b"GET /sessions/%s?token=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n" % (
                session.encode(),
                token.encode(),
            )
            if use_etag and etag:
                request += b"If-None-Match: " + etag + b"\r\n"
            request += b"\r\n"
            writer.write(request)
            wire.requests += 1
            wire.bytes_out += len(request)
            head = await reader.readuntil(b"\r\n\r\n")
            now = time.time_ns()
            status = int(head[9:12])
            wire.statuses[status] = wire.statuses.get(status, 0) + 1
            length = 0
            for line in head.split(b"\r\n"):
                low = line.lower()
                if low.startswith(b"content-length:"):
                    length = int(line[15:])
                elif low.startswith(b"etag:"):
                    etag = line[5:].strip()
            body = await reader.readexactly(length) if length else b""
            wire.bytes_in += len(head) + len(body)
            if status == 200:
                i = body.find(b'"n":')
                step = int(body[i + 4 : body.find(b"}", i)])
                for k in range(best + 1, step + 1):
                    seen[k] = now
                best = max(best, step)
                if b'"status":"success"' in body:
                    return
            await asyncio.sleep(period)
    finally:
        writer.close()


# --------------------------------------------------------------------------------------------------- modes


async def run_mode(mode: str, args: argparse.Namespace, redis: RedisServer) -> dict[str, Any]:
    redis_pid = redis.process.pid if redis.process else 0
    loop = asyncio.get_running_loop()
    server = procs.start_sse_progress(redis.url, workers=1)
    try:
        run_id = uuid.uuid4().hex[:6]
        sessions = [f"pv{run_id}-{i}" for i in range(args.browsers)]
        authority = TokenAuthority((procs.SECRET,))
        tokens = [authority.issue(s, Role.SUBSCRIBE, ttl=3600) for s in sessions]
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        cfg = {"redis_url": redis.url, "steps": args.steps, "seconds": args.seconds, "sessions": sessions}
        publisher = ctx.Process(target=job_publisher, args=(cfg, child), daemon=True)
        publisher.start()
        if not await loop.run_in_executor(None, parent.poll, 30):
            raise RuntimeError("publisher did not start")
        parent.recv()

        stats = Stats()
        wire = Wire()
        clients: list[Client] = []
        if mode == "sse":
            clients = [Client(i, i, session_path("sse", s, tokens[i])) for i, s in enumerate(sessions)]
            gate = asyncio.Semaphore(200)

            async def open_one(client: Client) -> None:
                async with gate:
                    await connect(loop, "sse", server.port, client, stats, False)

            await asyncio.gather(*(open_one(c) for c in clients))
            wire.requests = len(clients)
        cpu0, rcpu0 = procs.cpu_seconds(server.pids), procs.cpu_seconds([redis_pid])
        start = time.monotonic() + 0.5
        parent.send(start)
        deadline = start + args.seconds + args.period + 5
        seen: list[dict[int, int]] = [{} for _ in sessions]
        if mode == "sse":
            while time.monotonic() < deadline:
                if all(c.ended is not None and c.ended.done() for c in clients):
                    break
                await asyncio.sleep(0.2)
        else:
            await asyncio.gather(
                *(
                    poll_browser(
                        server.port, s, tokens[i], args.period, mode == "poll+etag", start, deadline, wire, seen[i]
                    )
                    for i, s in enumerate(sessions)
                )
            )
        took = time.monotonic() - start
        cpu1, rcpu1 = procs.cpu_seconds(server.pids), procs.cpu_seconds([redis_pid])
        outcome = await loop.run_in_executor(None, lambda: parent.recv() if parent.poll(30) else None)
        publisher.join(5)
        close_all(clients)
        published = outcome["published"] if outcome else []

        staleness_us: list[int] = []
        missed = 0
        if mode == "sse":
            staleness_us = sorted(stats.latencies_us)
            delivered = sum(c.unique for c in clients)
            missed = sum(1 for row in published for t in row[1:] if t) - delivered
            wire.bytes_in = stats.bytes_in
            wire.bytes_out = sum(len(c.path) + 80 for c in clients)  # request line + headers, as sent
        else:
            for i, row in enumerate(published):
                for step in range(1, args.steps + 1):
                    if not row[step]:
                        continue
                    shown = seen[i].get(step)
                    if shown is None:
                        missed += 1
                    else:
                        staleness_us.append(max(0, shown - row[step]) // 1000)
            staleness_us.sort()
        return {
            "mode": mode,
            "browsers": args.browsers,
            "steps": args.steps,
            "seconds": args.seconds,
            "events_published": sum(1 for row in published for t in row[1:] if t),
            "staleness_ms": {
                "p50": percentile(staleness_us, 0.5) / 1000,
                "p99": percentile(staleness_us, 0.99) / 1000,
                "max": (staleness_us[-1] / 1000) if staleness_us else None,
            },
            "steps_never_shown": missed,
            "requests": wire.requests,
            "statuses": wire.statuses or dict(stats.status),
            "bytes_in": wire.bytes_in,
            "bytes_out": wire.bytes_out,
            "server_cpu_s": round(cpu1 - cpu0, 2),
            "redis_cpu_s": round(rcpu1 - rcpu0, 2),
            "wall_s": round(took, 1),
        }
    finally:
        server.stop()


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| mode | staleness p50 (ms) | staleness p99 (ms) | steps never shown | requests | bytes on the wire "
        "(in+out) | server CPU (s) | Redis CPU (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wire = r["bytes_in"] + r["bytes_out"]
        out.append(
            f"| {r['mode']} | {r['staleness_ms']['p50']:,.1f} | {r['staleness_ms']['p99']:,.1f} | "
            f"{r['steps_never_shown']:,} | {r['requests']:,} | {wire / 1e6:,.2f} MB | {r['server_cpu_s']:.2f} | "
            f"{r['redis_cpu_s']:.2f} |"
        )
    return "\n".join(out)


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    redis = procs.start_redis()
    rows = []
    try:
        for mode in args.modes.split(","):
            print(f"{mode} ...", flush=True)
            row = await asyncio.wait_for(run_mode(mode, args, redis), args.seconds + 180)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        redis.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--browsers", type=int, default=1000)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--period", type=float, default=2.0, help="poll period (s)")
    p.add_argument("--modes", default="sse,poll,poll+etag")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.browsers, args.steps, args.seconds = 200, 5, 10
    procs.raise_fd_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    rows = asyncio.run(amain(args))
    table = markdown(rows)
    header = (
        f"{args.browsers} browsers x {args.steps}-step job over {args.seconds:g} s, poll every {args.period:g} s"
        f" ({time.strftime('%Y-%m-%d %H:%M')})"
    )
    print(f"\n{header}\n\n{table}")
    RESULTS.mkdir(exist_ok=True)
    stem = "push_vs_poll_quick" if args.quick else "push_vs_poll"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"workload": header, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(f"{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
