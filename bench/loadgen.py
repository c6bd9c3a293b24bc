"""Low-overhead SSE load generator: N connections over S sessions, a paced publisher, latency and loss.

Run by ``bench/run.py`` in its own process (one per scenario), so its CPU never counts as the server's:

    python -m bench.loadgen --kind sse --port 8000 --redis-url redis://127.0.0.1:6379/0 --conns 5000 \
        --sessions 50 --delivery-rate 20000 --duration 15 --server-pid 1234 --secret <the server's> --out result.json

Clients (``bench/clients.py``) are raw ``asyncio.Protocol`` objects on uvloop (HTTP/1.1 GET, chunked decoding,
SSE framing by ``\\n\\n``), no HTTP library per connection. Each event carries ``{"t": publish time_ns,
"n": per-session sequence}``: ``t`` gives publish→receive latency, ``n`` (1:1 with the event id) gives lost and
duplicated events per connection with a bitmap.

``--transport ws`` opens WebSockets instead of SSE streams; ``--stalled N`` adds N clients that never read
(``bench/stalled.py``) and reports when the server cut each; over 25,000 connections the clients connect from
several 127.0.0.x addresses (``--source-addrs``).

The publisher runs in a separate process (so receive bursts never delay publish timestamps), on a fixed
schedule (event k at start + k/rate, sessions round-robin), with a few concurrent tasks:

* sse-progress and the naive app: straight to Redis with the project's publish Lua script
  (``RedisEngine.publish(EventDraft(...))``) — the same atomic XADD + SET + PUBLISH path a job uses, without
  charging HTTP parsing of publishes to the server whose *delivery* cost we measure;
* nchan: ``POST /pub/<session>`` on keep-alive connections (nchan has no other publish path; its publish
  cost is therefore inside its CPU figure, which favours sse-progress slightly — noted in the README).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import sys
import time
import uuid
from typing import Any

from bench import procs
from bench.clients import DEFERRED, LIVE, Client, Stats, close_all, connect, session_path
from bench.stalled import StalledClients, sockstat_tcp
from sse_progress.protocol.tokens import Role, TokenAuthority

# --------------------------------------------------------------------------------------------------- publisher


def publisher_main(cfg: dict[str, Any], pipe: Any) -> None:
    """Separate process: wait for a start time, publish on schedule, send back the per-session counts."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_publish(cfg, pipe))
    pipe.send(result)
    pipe.close()


async def _publish(cfg: dict[str, Any], pipe: Any) -> dict[str, Any]:
    sessions: list[str] = cfg["sessions"]
    rate: float = cfg["rate"]
    total: int = cfg["total"]
    tasks_n: int = cfg["tasks"]
    kind: str = cfg["kind"]
    published = [0] * len(sessions)
    errors = 0
    max_lag = 0.0

    if kind == "nchan":
        conns = [await asyncio.open_connection("127.0.0.1", cfg["port"]) for _ in range(tasks_n)]

        async def send(task: int, session: str, body: bytes) -> None:
            reader, writer = conns[task]
            writer.write(
                b"POST /pub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (session.encode(), len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            if status not in (200, 201, 202):
                raise RuntimeError(f"nchan publish answered {status}")

    else:
        from sse_progress.engines.redis.engine import RedisEngine
        from sse_progress.protocol.events import EventDraft

        engine = RedisEngine(cfg["redis_url"], pool_size=tasks_n + 1)
        await engine.ping()

        async def send(task: int, session: str, body: bytes) -> None:
            extra = json.loads(body)
            await engine.publish(
                EventDraft(session_id=session, etapa_atual=1, total_etapas=15, mensagem="bench", dados_extra=extra)
            )

    pipe.send("ready")
    start = pipe.recv()  # time.monotonic() reference shared through CLOCK_MONOTONIC
    await asyncio.sleep(max(0.0, start - time.monotonic()))

    async def worker(task: int) -> None:
        nonlocal errors, max_lag
        for k in range(task, total, tasks_n):
            due = start + k / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            s = k % len(sessions)
            n = k // len(sessions)
            body = b'{"t":%d,"n":%d}' % (time.time_ns(), n)
            try:
                await send(task, sessions[s], body)
                published[s] += 1
            except Exception:  # counted, never fatal: the report shows it
                errors += 1

    began = time.monotonic()
    await asyncio.gather(*(worker(t) for t in range(tasks_n)))
    elapsed = time.monotonic() - began
    if kind != "nchan":
        await engine.close()
    return {"published": published, "errors": errors, "elapsed": elapsed, "max_lag_s": max_lag}


# --------------------------------------------------------------------------------------------------- scenario


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


class ServerProbe:
    def __init__(self, root_pid: int, port: int, redis_port: int | None, redis_pid: int | None) -> None:
        self.root = root_pid
        self.port = port
        self.redis_port = redis_port
        self.redis_pid = redis_pid

    def pids(self) -> list[int]:
        return procs.descendants(self.root) if self.root else []

    def cpu(self) -> float:
        return procs.cpu_seconds(self.pids())

    def redis_cpu(self) -> float:
        return procs.cpu_seconds([self.redis_pid]) if self.redis_pid else 0.0

    def rss_kb(self) -> int:
        return procs.rss_kb(self.pids())

    def redis_conns(self) -> dict[int, int]:
        if not self.redis_port:
            return {}
        return procs.tcp_per_process(self.pids(), remote_port=self.redis_port)

    def client_conns(self) -> dict[int, int]:
        return procs.tcp_per_process(self.pids(), local_port=self.port)


async def open_all(
    loop: asyncio.AbstractEventLoop,
    args: argparse.Namespace,
    clients: list[Client],
    stats: Stats,
    parallel: int,
    resume: bool,
    deadline: float,
) -> tuple[int, float]:
    """Connect every client (at most ``parallel`` handshakes in flight); returns (#200, seconds)."""
    began = time.monotonic()
    gate = asyncio.Semaphore(parallel)

    async def one(client: Client) -> int:
        async with gate:
            try:
                return await asyncio.wait_for(
                    connect(loop, args.kind, args.port, client, stats, resume), max(0.1, deadline - time.monotonic())
                )
            except TimeoutError:
                return 0

    statuses = await asyncio.gather(*(one(c) for c in clients))
    return sum(1 for s in statuses if s == LIVE), time.monotonic() - began


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    procs.raise_fd_limit(args.conns + args.stalled + 2000)
    probe = ServerProbe(args.server_pid, args.port, args.redis_port, args.redis_pid)
    run_id = uuid.uuid4().hex[:8]
    sessions = [f"b{run_id}-{i}" for i in range(args.sessions)]
    tokens = [""] * len(sessions)
    if args.kind == "sse":
        authority = TokenAuthority((args.secret,))
        tokens = [authority.issue(s, Role.SUBSCRIBE, ttl=3600) for s in sessions]
    stats = Stats()
    # Over ~25,000 connections one source address runs out of ephemeral ports: spread them over 127.0.0.x.
    addrs = args.source_addrs or math.ceil(args.conns / 25000)
    clients = [
        Client(
            i,
            i % len(sessions),
            session_path(args.kind, sessions[i % len(sessions)], tokens[i % len(sessions)], args.transport),
            args.transport,
            f"127.0.0.{1 + i % addrs}" if addrs > 1 else "",
        )
        for i in range(args.conns)
    ]
    result: dict[str, Any] = {
        "kind": args.kind,
        "transport": args.transport,
        "scenario": args.scenario,
        "conns": args.conns,
        "sessions": args.sessions,
        "target_delivery_rate": args.delivery_rate,
        "duration_s": args.duration,
    }
    # Baselines: a warm server (one stream opened and closed) with 0 connections.
    warm_token = ""
    if args.kind == "sse":
        warm_token = TokenAuthority((args.secret,)).issue(f"w{run_id}", Role.SUBSCRIBE, ttl=3600)
    warm = Client(-1, 0, session_path(args.kind, f"w{run_id}", warm_token, args.transport), args.transport)
    await connect(loop, args.kind, args.port, warm, Stats(), False)
    close_all([warm])
    await asyncio.sleep(args.warm_sleep)
    result["rss_idle_kb"] = probe.rss_kb()
    result["redis_conns_idle"] = probe.redis_conns()
    result["source_addresses"] = addrs
    result["tcp_mem_pages_before"] = sockstat_tcp()

    deadline = time.monotonic() + args.connect_timeout
    connect_cpu0 = probe.cpu()
    ok, took = await open_all(loop, args, clients, stats, args.parallel, False, deadline)
    result["server_cpu_ms_per_connect"] = round((probe.cpu() - connect_cpu0) * 1000 / max(1, ok), 3)
    result["connected"] = ok
    result["connect_seconds"] = round(took, 3)
    result["statuses_on_connect"] = dict(stats.status)
    result["deferred_on_connect"] = dict(stats.deferred)
    stalled = StalledClients(args.port, args.stalled_rcvbuf)
    if args.stalled:
        # Spread over the same sessions as the healthy clients: the hub fans out to both.
        stalled_paths = [
            (i % len(sessions), session_path(args.kind, sessions[i % len(sessions)], tokens[i % len(sessions)]))
            for i in range(args.stalled)
        ]
        result["stalled_opened_200"] = await stalled.open(loop, stalled_paths)
    await asyncio.sleep(args.settle)
    live = sum(1 for c in clients if c.ended is not None and not c.ended.done() and c.headers == LIVE)
    result["live_after_settle"] = live
    rss_loaded = probe.rss_kb()
    result["rss_loaded_kb"] = rss_loaded
    result["rss_per_conn_kb"] = round((rss_loaded - result["rss_idle_kb"]) / live, 2) if live else None
    result["redis_conns_loaded"] = probe.redis_conns()
    result["client_conns_per_process"] = probe.client_conns()
    result["server_processes"] = len(probe.pids())

    if args.scenario == "c" or args.delivery_rate <= 0:
        close_all(clients)
        return result

    # ---- publishing
    fanout = args.conns / args.sessions
    publish_rate = args.delivery_rate / fanout
    total_events = int(publish_rate * args.duration)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    cfg = {
        "kind": args.kind,
        "sessions": sessions,
        "rate": publish_rate,
        "total": total_events,
        "tasks": args.publishers,
        "redis_url": args.redis_url,
        "port": args.port,
    }
    publisher = ctx.Process(target=publisher_main, args=(cfg, child), daemon=True)
    publisher.start()
    if not await loop.run_in_executor(None, parent.poll, 30):
        raise RuntimeError("publisher did not start")
    parent.recv()
    running = True

    async def keep_alive(client: Client) -> None:
        """Like EventSource: reconnect with Last-Event-ID when a healthy stream ends (bounded)."""
        if not client.ready:
            return  # never worked (e.g. the naive app's pool is exhausted): counted as never served
        while running and client.reconnects < args.max_reconnects:
            ended = client.ended
            assert ended is not None
            await ended
            if not running:
                return
            if client.storming or client.ended is not ended:  # the storm owns this reconnect
                while running and (client.storming or client.ended is ended):
                    await asyncio.sleep(0.1)
                continue
            delay = args.reconnect_delay
            if client.headers == DEFERRED:  # the server asked for a pause: wait it out, as EventSource does
                delay = (client.retry_ms or 0) / 1000
            else:
                stats.ended_early += 1
            client.reconnects += 1
            stats.reconnects += 1
            await asyncio.sleep(delay)
            if running:
                await connect(loop, args.kind, args.port, client, stats, True)

    for c in clients:
        c.ready = c.headers == LIVE and c.ended is not None and not c.ended.done()
    watchers = [asyncio.ensure_future(keep_alive(c)) for c in clients]
    cpu0, rcpu0, frames0 = probe.cpu(), probe.redis_cpu(), sum(c.received for c in clients)
    machine0, own0 = machine_busy_seconds(), os.times()
    t_start = time.monotonic() + 0.2
    parent.send(t_start)
    if args.mark:  # tells bench/run.py (e.g. its profiler) that publishing starts now
        with open(args.mark, "w") as mark:
            mark.write(str(t_start))
    storm: dict[str, Any] = {}
    if args.scenario == "d":
        await asyncio.sleep(max(0.0, t_start + args.storm_at - time.monotonic()))
        storm = await reconnect_storm(loop, args, clients, stats)
    publish_done = loop.run_in_executor(None, _recv_blocking, parent, args.duration + 60)
    peaks = {"rss_kb": probe.rss_kb(), "tcp_mem_pages": sockstat_tcp()}
    sampler = asyncio.ensure_future(sample(probe, stalled, peaks, args.sample_every))
    published = await publish_done
    t_published = time.monotonic()
    expected = published["published"] if published else [0] * len(sessions)
    # Drain: wait until every client has everything its session got, or until nothing arrived for `--drain`
    # seconds (then the rest is lost, not late), bounded by --max-drain.
    hard_deadline = t_published + args.max_drain
    progress, progress_at = -1, time.monotonic()
    while time.monotonic() < hard_deadline:
        if all(c.unique >= expected[c.session] for c in clients if c.ready):
            break
        now_received = sum(c.received for c in clients)
        if now_received != progress:
            progress, progress_at = now_received, time.monotonic()
        elif time.monotonic() - progress_at > args.drain:
            break
        await asyncio.sleep(0.1)
    t_end = time.monotonic()
    cpu1, rcpu1 = probe.cpu(), probe.redis_cpu()
    machine1, own1 = machine_busy_seconds(), os.times()
    running = False
    for w in watchers:
        w.cancel()
    sampler.cancel()
    publisher.join(5)

    deliveries = sum(c.received for c in clients) - frames0
    lat = sorted(stats.latencies_us)
    served = [c for c in clients if c.ready]
    lost = sum(max(0, expected[c.session] - c.unique) for c in served)
    never = [c for c in clients if not c.ready]
    result.update(
        {
            "publish_rate_target": round(publish_rate, 2),
            "events_published": sum(expected),
            "publish_errors": published.get("errors") if published else None,
            "publisher_max_lag_s": round(published.get("max_lag_s", 0.0), 3) if published else None,
            "publish_seconds": round(published.get("elapsed", 0.0), 3) if published else None,
            "deliveries": deliveries,
            "expected_deliveries": sum(expected[c.session] for c in served),
            "achieved_delivery_rate": round(deliveries / max(1e-9, t_end - t_start), 1),
            "lost": lost,
            "duplicated": sum(c.dups for c in clients),
            "out_of_order": sum(c.ooo for c in clients),
            "clients_never_served": len(never),
            "events_missed_by_unserved_clients": sum(expected[c.session] for c in never),
            "streams_ended_early": stats.ended_early,
            "reconnects": stats.reconnects,
            "connect_errors": stats.connect_errors,
            "statuses": dict(stats.status),
            "latency_ms": {
                "p50": percentile(lat, 0.50) / 1000,
                "p90": percentile(lat, 0.90) / 1000,
                "p99": percentile(lat, 0.99) / 1000,
                "max": (lat[-1] / 1000) if lat else float("nan"),
                "samples": len(lat),
            },
            "window_s": round(t_end - t_start, 3),
            "server_cpu_s": round(cpu1 - cpu0, 3),
            "server_cpu_util": round((cpu1 - cpu0) / max(1e-9, t_end - t_start), 3),
            "server_cpu_us_per_delivery": round((cpu1 - cpu0) * 1e6 / deliveries, 2) if deliveries else None,
            "redis_cpu_s": round(rcpu1 - rcpu0, 3),
            "loadgen_cpu_s": round(own1.user + own1.system - own0.user - own0.system, 3),
            # every core's busy time over the window: minus server + Redis + loadgen + publisher = other load
            "machine_busy_cores": round((machine1 - machine0) / max(1e-9, t_end - t_start), 2),
            "storm": storm,
            "deferred": dict(stats.deferred),
            "ws_close_codes": dict(stats.ws_close_codes),
            "server_rss_peak_kb": peaks["rss_kb"],
            "tcp_mem_pages_peak": peaks["tcp_mem_pages"],
        }
    )
    if args.stalled:
        # A write still blocked when publishing ended is cut all the same: give the last ones their heartbeats.
        waited_until = time.monotonic() + 2 * args.heartbeat + 1
        while any(not c.cut_at for c in stalled.clients) and time.monotonic() < waited_until:
            await asyncio.sleep(args.sample_every)
            stalled.check_resets(time.monotonic())
            stalled.sample(time.monotonic())
        # The stalled clients share the healthy clients' sessions, so this is what was sent to each of them.
        rate = stats.bytes_in / max(1, len(served)) / max(1e-9, t_end - t_start)
        result["stalled"] = stalled.report(args.heartbeat, rate, args.sample_every)
        result["tcp_mem_pages_stalled_cut"] = sockstat_tcp()  # the stalled clients still open, not reading
        result["tcp_orphans_stalled_cut"] = sockstat_tcp("orphan")
    close_all(clients)
    stalled.close()
    await asyncio.sleep(1.0)  # the kernel frees the sockets' memory once they are gone
    result["tcp_mem_pages_after"] = sockstat_tcp()
    result["tcp_orphans_after"] = sockstat_tcp("orphan")  # cut connections the kernel still sends from
    return result


async def sample(probe: ServerProbe, stalled: StalledClients, peaks: dict[str, int], every: float) -> None:
    """While publishing: peaks of server RSS and kernel TCP memory; the stalled clients' queues and cuts."""
    tick = 0
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        stalled.check_resets(now)
        if stalled.clients:
            stalled.sample(now)
        if tick % 4 == 0:
            peaks["rss_kb"] = max(peaks["rss_kb"], probe.rss_kb())
            peaks["tcp_mem_pages"] = max(peaks["tcp_mem_pages"], sockstat_tcp())
        tick += 1


def machine_busy_seconds() -> float:
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / procs.CLK_TCK


def _recv_blocking(pipe: Any, timeout: float) -> dict[str, Any] | None:
    if pipe.poll(timeout):
        message = pipe.recv()
        return message if isinstance(message, dict) else None
    return None


async def reconnect_storm(
    loop: asyncio.AbstractEventLoop, args: argparse.Namespace, clients: list[Client], stats: Stats
) -> dict[str, Any]:
    """Drop every connection at once (RST) and reconnect them all at once with Last-Event-ID."""
    targets = [c for c in clients if c.ready and c.ended is not None and not c.ended.done()]
    for c in targets:
        c.storming = True
    close_all(targets)
    began = time.monotonic()
    await asyncio.sleep(0)

    async def back(client: Client) -> int:
        client.reconnects += 1
        try:
            return await asyncio.wait_for(connect(loop, args.kind, args.port, client, stats, True), 60)
        except TimeoutError:
            return 0
        finally:
            client.storming = False

    statuses = await asyncio.gather(*(back(c) for c in targets))
    ok = sum(1 for s in statuses if s == 200)
    # Live again = the stream is open (status 200 received). Time until the last one is.
    last_live = max((c.connected_at for c in targets), default=began)
    return {
        "clients": len(targets),
        "reconnected_200": ok,
        "seconds_until_all_live": round(last_live - began, 3),
        "with_last_event_id": sum(1 for c in targets if c.last_id),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("sse", "nchan", "naive"), required=True)
    p.add_argument("--transport", choices=("sse", "ws"), default="sse", help="EventSource-like or WebSocket clients")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--scenario", default="a")
    p.add_argument("--redis-url", default="")
    p.add_argument("--redis-port", type=int, default=0)
    p.add_argument("--redis-pid", type=int, default=0)
    p.add_argument("--server-pid", type=int, default=0, help="root pid of the server (its descendants count)")
    p.add_argument("--secret", default=procs.SECRET)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--delivery-rate", type=float, default=1000, help="total deliveries/s (events/s x fan-out)")
    p.add_argument("--duration", type=float, default=10, help="seconds of publishing")
    p.add_argument("--publishers", type=int, default=4, help="concurrent publisher tasks")
    p.add_argument("--parallel", type=int, default=256, help="connection handshakes in flight")
    p.add_argument("--connect-timeout", type=float, default=90)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--warm-sleep", type=float, default=1.0, help="pause after the warm-up stream, before RSS")
    p.add_argument("--drain", type=float, default=5.0, help="stop waiting after this long without a delivery")
    p.add_argument("--max-drain", type=float, default=90.0, help="never wait longer than this after publishing")
    p.add_argument("--storm-at", type=float, default=4.0)
    p.add_argument("--max-reconnects", type=int, default=3)
    p.add_argument("--reconnect-delay", type=float, default=0.5)
    p.add_argument("--source-addrs", type=int, default=0, help="127.0.0.x addresses to connect from (0: auto)")
    p.add_argument("--stalled", type=int, default=0, help="extra clients that never read (slow-consumer scenario)")
    p.add_argument("--stalled-rcvbuf", type=int, default=4096, help="SO_RCVBUF of the stalled clients")
    p.add_argument("--heartbeat", type=float, default=15.0, help="the server's SSE_PROGRESS_HEARTBEAT (for the report)")
    p.add_argument("--sample-every", type=float, default=0.25, help="seconds between checks of the stalled clients")
    p.add_argument("--out", default="-")
    p.add_argument("--mark", default="", help="file written when publishing starts")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    time_limit = args.connect_timeout + args.duration + args.max_drain + 120
    result = asyncio.run(asyncio.wait_for(run(args), time_limit))
    text = json.dumps(result, indent=2)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
