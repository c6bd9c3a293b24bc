"""Run every target through every scenario, side by side, and write the table, JSON and chart.

    .venv/bin/python -m bench.run            # full run (~7 min)
    .venv/bin/python -m bench.run --quick    # smoke version (< 2 min)
    .venv/bin/python -m bench.run --targets sse1 --scenarios a --profile   # py-spy profile of the delivery path

Targets: ``sse1`` sse-progress (Redis engine, one uvicorn process), ``sse2`` the same with ``--workers 2``,
``sse1-ss`` one process serving streams with sse-starlette (``SSE_PROGRESS_RESPONDER=sse-starlette``),
``nchan`` nginx + nchan (one worker, the C reference), ``naive`` Starlette + sse-starlette with one Redis
Pub/Sub per client (``bench/naive_app.py``). Each (target, scenario) gets a freshly started server; one
private redis-server (no persistence) serves the whole run. The load generator (``bench/loadgen.py``) runs
in its own process; client, publisher, server and Redis all share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from tests.support.processes import RedisServer

RESULTS = procs.BENCH / "results"

TARGETS = {
    "sse1": "sse-progress (1 proc)",
    "sse2": "sse-progress (--workers 2)",
    "sse1-ss": "sse-progress, sse-starlette responder (1 proc)",
    "nchan": "nchan (C reference)",
    "naive": "naive (Pub/Sub per client)",
}

# conns, sessions, deliveries/s, seconds of publishing, extra loadgen flags
FULL: dict[str, dict[str, Any]] = {
    "a": {"conns": 5000, "sessions": 50, "rate": 20000, "duration": 15, "title": "5k conns / 50 sessions @ 20k/s"},
    "b": {"conns": 1000, "sessions": 10, "rate": 50000, "duration": 15, "title": "1k conns / 10 sessions @ 50k/s"},
    "c": {"conns": 10000, "sessions": 100, "rate": 0, "duration": 0, "title": "10k idle connections"},
    "d": {
        "conns": 5000,
        "sessions": 50,
        "rate": 5000,
        "duration": 12,
        "storm_at": 4,
        "title": "reconnect storm, 5k clients",
    },
    "e": {
        "conns": 5000,
        "sessions": 50,
        "rate": 20000,
        "duration": 15,
        "transport": "ws",
        "title": "(a) over WebSocket: 5k conns / 50 sessions @ 20k/s",
    },
    # 200 clients that never read, on the healthy clients' sessions. At 4 events/s per client (~1.5 KB/s) the
    # kernel queues and uvloop's 64 KiB take about two minutes to fill before a write to one blocks.
    "s": {
        "conns": 5000,
        "sessions": 50,
        "rate": 20000,
        "duration": 180,
        "stalled": 200,
        "heartbeat": 5,
        "title": "slow consumers: 5k healthy @ 20k/s + 200 that never read",
    },
}
QUICK: dict[str, dict[str, Any]] = {
    "a": {"conns": 300, "sessions": 3, "rate": 2000, "duration": 2, "title": "300 conns / 3 sessions @ 2k/s"},
    "b": {"conns": 200, "sessions": 2, "rate": 5000, "duration": 2, "title": "200 conns / 2 sessions @ 5k/s"},
    "c": {"conns": 500, "sessions": 5, "rate": 0, "duration": 0, "title": "500 idle connections"},
    "d": {"conns": 300, "sessions": 3, "rate": 1000, "duration": 3, "storm_at": 1, "title": "storm, 300 clients"},
    "e": {"conns": 300, "sessions": 3, "rate": 2000, "duration": 2, "transport": "ws", "title": "(a) over WS, 300"},
    # 30 events/s per client, so that 20 stalled clients fill their buffers within the quick run.
    "s": {
        "conns": 150,
        "sessions": 3,
        "rate": 4500,
        "duration": 25,
        "stalled": 20,
        "heartbeat": 2,
        "title": "slow consumers: 150 @ 4.5k/s + 20 that never read",
    },
}
# What each scenario needs of a target; the others are skipped.
NEEDS_WEBSOCKET = {"e"}
WITHOUT_WEBSOCKET = {"naive"}


def server_env(spec: dict[str, Any]) -> dict[str, str]:
    """Server settings a scenario changes (said in the README): the heartbeat, and room for every connection."""
    env = {}
    if "heartbeat" in spec:
        env["SSE_PROGRESS_HEARTBEAT"] = str(spec["heartbeat"])
    held = spec["conns"] + spec.get("stalled", 0) + 1000
    if held > 20000:  # SSE_PROGRESS_MAX_CONNECTIONS' default
        env["SSE_PROGRESS_MAX_CONNECTIONS"] = str(held)
    return env


def start_target(name: str, redis: RedisServer, spec: dict[str, Any]) -> procs.Server:
    env = server_env(spec)
    if name == "sse1":
        return procs.start_sse_progress(redis.url, workers=1, env_extra=env)
    if name == "sse2":
        return procs.start_sse_progress(redis.url, workers=2, env_extra=env)
    if name == "sse1-ss":
        return procs.start_sse_progress(
            redis.url, workers=1, env_extra={**env, "SSE_PROGRESS_RESPONDER": "sse-starlette"}
        )
    if name == "nchan":
        return procs.start_nchan(max(25000, spec["conns"] + spec.get("stalled", 0) + 1000))
    if name == "naive":
        return procs.start_naive(redis.url)
    raise ValueError(name)


def run_one(
    name: str,
    scenario: str,
    spec: dict[str, Any],
    redis: RedisServer,
    quick: bool,
    profile: bool,
    source_addrs: int = 0,
) -> dict[str, Any]:
    if scenario in NEEDS_WEBSOCKET and name in WITHOUT_WEBSOCKET:
        return {"error": "no WebSocket endpoint"}
    server = start_target(name, redis, spec)
    out = RESULTS / f".{name}-{scenario}.json.tmp"
    cmd = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--kind",
        server.kind,
        "--port",
        str(server.port),
        "--scenario",
        scenario,
        "--redis-url",
        redis.url,
        "--redis-port",
        str(redis.port),
        "--redis-pid",
        str(redis.process.pid if redis.process else 0),
        "--secret",
        server.secret,
        "--server-pid",
        str(server.proc.pid),
        "--conns",
        str(spec["conns"]),
        "--sessions",
        str(spec["sessions"]),
        "--delivery-rate",
        str(spec["rate"]),
        "--duration",
        str(spec["duration"]),
        "--settle",
        "0.5" if quick else "3",
        "--drain",
        "2" if quick else "5",
        "--max-drain",
        "20" if quick else "90",
        "--warm-sleep",
        "0.3" if quick else "1",
        "--out",
        str(out),
    ]
    if "storm_at" in spec:
        cmd += ["--storm-at", str(spec["storm_at"])]
    if "transport" in spec:
        cmd += ["--transport", spec["transport"]]
    if source_addrs:
        cmd += ["--source-addrs", str(source_addrs)]
    if spec.get("stalled"):
        cmd += ["--stalled", str(spec["stalled"]), "--heartbeat", str(spec["heartbeat"])]
    mark = RESULTS / f".{name}-{scenario}.mark.tmp"
    mark.unlink(missing_ok=True)
    if profile:
        cmd += ["--mark", str(mark)]
    spies: list[subprocess.Popen[bytes]] = []
    began = time.monotonic()
    try:
        loadgen = subprocess.Popen(cmd, cwd=procs.ROOT)
        if profile:
            spies = start_profilers(server, name, scenario, spec, mark, loadgen)
        limit = 360 + spec["duration"] * 2 + spec.get("heartbeat", 0) * 2
        try:
            loadgen.wait(limit)
        except subprocess.TimeoutExpired:
            loadgen.kill()
            loadgen.wait()
            return {"error": f"loadgen timed out after {limit}s"}
        if loadgen.returncode != 0 or not out.exists():
            return {"error": f"loadgen exited with {loadgen.returncode}"}
        result: dict[str, Any] = json.loads(out.read_text())
        out.unlink()
        result["server_log_errors"] = count_log_errors(server.log)
        result["wall_s"] = round(time.monotonic() - began, 1)
        return result
    finally:
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        server.stop()


def count_log_errors(log: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    try:
        for line in log.read_text(errors="replace").splitlines():
            for marker in ("MaxConnectionsError", "Too many connections", "Exception in ASGI", "Traceback"):
                if marker in line:
                    counts[marker] += 1
    except OSError:
        pass
    return dict(counts)


def start_profilers(
    server: procs.Server,
    name: str,
    scenario: str,
    spec: dict[str, Any],
    mark: Path,
    loadgen: subprocess.Popen[bytes],
) -> list[subprocess.Popen[bytes]]:
    """py-spy (nonblocking) on the server while it publishes: a flame graph and collapsed stacks."""
    pyspy = Path(sys.executable).with_name("py-spy")
    pid = server.pids[-1]  # the worker (the only process with --workers 1)
    # Skip connection setup: start sampling once publishing has begun (bounded wait).
    deadline = time.monotonic() + 120
    while not mark.exists() and loadgen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    mark.unlink(missing_ok=True)
    time.sleep(0.5)
    duration = max(2, int(spec["duration"]) - 2)
    spies = []
    for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
        target = RESULTS / f"profile_{name}_{scenario}.{suffix}"
        spies.append(
            subprocess.Popen(
                [
                    *(str(pyspy), "record", "--nonblocking", "--rate", "200", "--pid", str(pid)),
                    *("--duration", str(duration), "--format", fmt, "-o", str(target)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return spies


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive time per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count
    lines = [f"samples: {total}", "", "self time:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top + 15)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rpartition(":")[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


# --------------------------------------------------------------------------------------------------- report


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _per_process(counts: dict[str, int] | None) -> str:
    if not counts:
        return "–"
    values = [v for v in counts.values() if v]
    return f"max {max(counts.values())} (total {sum(values)} / {len(counts)} procs)"


def compare_with_a(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    """WebSocket (e) and slow consumers (s) against the same target's SSE figures of (a) in this run."""
    for by_scenario in results.values():
        a = by_scenario.get("a")
        if not a or "error" in a:
            continue
        e, slow = by_scenario.get("e"), by_scenario.get("s")
        if e and "error" not in e and e.get("server_cpu_us_per_delivery") and a.get("server_cpu_us_per_delivery"):
            ratio = e["server_cpu_us_per_delivery"] / a["server_cpu_us_per_delivery"]
            e["vs_a"] = {"server_cpu_us_per_delivery": round(ratio, 3)}
        if slow and "error" not in slow and a.get("latency_ms", {}).get("p99"):
            slow["vs_a"] = {"latency_ms": {"p99": round(slow["latency_ms"]["p99"] / a["latency_ms"]["p99"], 3)}}


def metric_rows(scenario: str) -> list[tuple[str, str, Any, bool]]:
    """(label, key path, digits, ratio-to-nchan?)"""
    if scenario == "s":
        return [
            ("healthy: deliveries/s achieved", "achieved_delivery_rate", 0, True),
            ("healthy: latency p50 (ms)", "latency_ms.p50", 1, True),
            ("healthy: latency p99 (ms)", "latency_ms.p99", 1, True),
            ("healthy: p99 / p99 of (a), same run", "vs_a.latency_ms.p99", 2, False),
            ("healthy: latency max (ms)", "latency_ms.max", 1, True),
            ("healthy: lost / duplicated", "lost_pair", 0, False),
            ("server CPU µs / delivery", "server_cpu_us_per_delivery", 1, True),
            ("server RSS peak (MB)", "server_rss_peak_mb", 0, True),
            ("kernel TCP memory before / peak / cuts done / all closed (MB)", "tcp_mem_quad", 0, False),
            ("TCP orphans, cuts done / all closed", "orphans_pair", 0, False),
            ("stalled clients cut / opened", "stalled_pair", 0, False),
            ("stalled: cut by reset / FIN behind unsent bytes", "stalled_how", 0, False),
            (
                "stalled: unsent bytes left in the kernel each (median)",
                "stalled.orphan_bytes_per_client.median",
                0,
                False,
            ),
            ("stalled: saw the end while still connected", "stalled.client_saw_the_end", 0, False),
            ("stalled: seconds from open to cut (min / median / max)", "stalled.seconds_open_to_cut", 1, False),
            ("stalled: kernel bytes queued each (median)", "stalled.kernel_bytes_queued_per_client.median", 0, False),
            ("stalled: est. write blocked → cut, max (s)", "stalled.estimated_block_to_cut_s.max", 1, False),
            ("every stalled client cut within two heartbeats", "stalled_verdict", 0, False),
        ]
    if scenario == "c":
        return [
            ("connections held", "live_after_settle", 0, False),
            ("source addresses (127.0.0.x)", "source_addresses", 0, False),
            ("connect time (s)", "connect_seconds", 2, True),
            ("server CPU ms per new connection", "server_cpu_ms_per_connect", 2, True),
            ("RSS per connection (KB)", "rss_per_conn_kb", 1, True),
            ("server RSS idle / loaded (MB)", "rss_pair", 0, False),
            ("Redis connections per process", "redis_conns_loaded", 0, False),
        ]
    rows = [
        ("deliveries/s achieved", "achieved_delivery_rate", 0, True),
        ("latency p50 (ms)", "latency_ms.p50", 1, True),
        ("latency p99 (ms)", "latency_ms.p99", 1, True),
        ("latency max (ms)", "latency_ms.max", 1, True),
        ("server CPU µs / delivery", "server_cpu_us_per_delivery", 1, True),
        ("server CPU (cores busy)", "server_cpu_util", 2, False),
        ("whole machine busy (cores, of 2)", "machine_busy_cores", 2, False),
        ("delivered / expected", "delivered_pair", 0, False),
        ("lost / duplicated", "lost_pair", 0, False),
        ("clients never served", "clients_never_served", 0, False),
        ("streams cut + reconnected", "reconnects", 0, False),
        ("Redis connections per process", "redis_conns_loaded", 0, False),
    ]
    if scenario == "d":
        rows.insert(0, ("storm: seconds until all live", "storm.seconds_until_all_live", 2, True))
        rows.insert(1, ("storm: reconnected (200)", "storm.reconnected_200", 0, False))
    if scenario == "e":
        rows.insert(5, ("µs / delivery: WebSocket / SSE (a), same run", "vs_a.server_cpu_us_per_delivery", 2, False))
    rows.insert(-3, ("answers deferred (retry later)", "deferred_total", 0, False))
    return rows


def lookup(result: dict[str, Any], key: str) -> Any:
    if "error" in result:
        return None
    if key == "rss_pair":
        return f"{result['rss_idle_kb'] / 1024:.0f} / {result['rss_loaded_kb'] / 1024:.0f}"
    if key == "delivered_pair":
        return f"{result.get('deliveries', 0):,} / {result.get('expected_deliveries', 0):,}"
    if key == "lost_pair":
        return f"{result.get('lost', 0):,} / {result.get('duplicated', 0):,}"
    if key == "redis_conns_loaded":
        return _per_process(result.get(key))
    if key == "deferred_total":
        return sum(result.get("deferred_on_connect", {}).values()) + sum(result.get("deferred", {}).values())
    if key == "server_rss_peak_mb":
        return result.get("server_rss_peak_kb", 0) / 1024
    if key == "tcp_mem_quad":
        pages = [result.get(f"tcp_mem_pages_{when}", 0) for when in ("before", "peak", "stalled_cut", "after")]
        return " / ".join(f"{p * procs.PAGE_KB / 1024:.1f}" for p in pages)
    if key == "orphans_pair":
        return f"{result.get('tcp_orphans_stalled_cut', 0)} / {result.get('tcp_orphans_after', 0)}"
    stalled = result.get("stalled") or {}
    if key == "stalled_pair":
        return f"{stalled.get('cut', 0)} / {stalled.get('clients', 0)}"
    if key == "stalled_how":
        how = stalled.get("cut_by", {})
        return f"{how.get('reset', 0)} / {how.get('FIN behind unsent bytes', 0)}"
    if key == "stalled_verdict":
        if result.get("kind") != "sse":
            return "– (sse-progress's rule)"
        verdict = "yes" if stalled.get("every_cut_within_two_heartbeats") else "**no**"
        return f"{verdict} (heartbeat {stalled.get('heartbeat_s')} s, limit {stalled.get('limit_s')} s)"
    if key == "stalled.seconds_open_to_cut":
        spread = stalled.get("seconds_open_to_cut") or {}
        return " / ".join(f"{spread.get(k, 0):.1f}" for k in ("min", "median", "max")) if spread else None
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def table(results: dict[str, dict[str, dict[str, Any]]], specs: dict[str, dict[str, Any]], targets: list[str]) -> str:
    out = []
    for scenario, spec in specs.items():
        if not any(scenario in results.get(t, {}) for t in targets):
            continue
        out.append(f"\n### ({scenario}) {spec['title']}\n")
        header = ["metric", *[TARGETS[t] for t in targets]]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for label, key, digits, ratio in metric_rows(scenario):
            cells = [label]
            base = lookup(results.get("nchan", {}).get(scenario, {"error": 1}), key)
            for t in targets:
                r = results.get(t, {}).get(scenario)
                if r is None:
                    cells.append("–")
                    continue
                if "error" in r:
                    cells.append(f"error: {r['error']}")
                    continue
                value = lookup(r, key)
                cell = _fmt(value, digits) if not isinstance(value, str) else value
                if (
                    ratio
                    and t != "nchan"
                    and isinstance(value, (int, float))
                    and isinstance(base, (int, float))
                    and base
                    and not math.isnan(float(value))
                ):
                    cell += f" (×{value / base:.2f})"
                cells.append(cell)
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def chart(results: dict[str, dict[str, dict[str, Any]]], targets: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("server CPU µs per delivery", [("a", "server_cpu_us_per_delivery"), ("b", "server_cpu_us_per_delivery")]),
        ("latency p99 (ms)", [("a", "latency_ms.p99"), ("b", "latency_ms.p99")]),
        ("deliveries/s achieved", [("a", "achieved_delivery_rate"), ("b", "achieved_delivery_rate")]),
        ("RSS per idle connection (KB)", [("c", "rss_per_conn_kb")]),
        ("reconnect storm: s until all live", [("d", "storm.seconds_until_all_live")]),
        ("lost + duplicated events", [("a", "lost"), ("b", "lost"), ("d", "lost")]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    width = 0.8 / max(1, len(targets))
    for ax, (label, series) in zip(axes.flat, panels, strict=True):
        for i, t in enumerate(targets):
            values = []
            for scenario, key in series:
                v = lookup(results.get(t, {}).get(scenario, {"error": 1}), key)
                if key == "lost":
                    r = results.get(t, {}).get(scenario, {})
                    v = (r.get("lost") or 0) + (r.get("duplicated") or 0) if r and "error" not in r else None
                values.append(float(v) if isinstance(v, (int, float)) else 0.0)
            xs = [j + i * width for j in range(len(series))]
            ax.bar(xs, values, width, label=TARGETS[t])
        ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(series))])
        ax.set_xticklabels([f"({s})" for s, _ in series])
        ax.set_title(label, fontsize=10)
        if "latency" in label or "storm" in label:
            ax.set_yscale("log")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke version (< 2 minutes)")
    parser.add_argument("--targets", default="sse1,sse2,nchan,naive")
    parser.add_argument("--scenarios", default="a,b,c,d", help="any of a,b,c,d,e,s (e and s on request)")
    parser.add_argument("--profile", action="store_true", help="py-spy the server of scenario a (sse targets)")
    parser.add_argument("--name", default=None, help="results file stem (default: latest or quick)")
    parser.add_argument(
        "--source-addrs", type=int, default=0, help="127.0.0.x addresses clients connect from (0: one per 25k)"
    )
    for knob in ("conns", "sessions", "rate", "duration", "stalled", "heartbeat"):
        parser.add_argument(f"--{knob}", type=float, default=None, help=f"override {knob} of the chosen scenarios")
    args = parser.parse_args(argv)
    procs.raise_fd_limit()
    RESULTS.mkdir(parents=True, exist_ok=True)
    specs_all = QUICK if args.quick else FULL
    scenarios = [s for s in args.scenarios.split(",") if s]
    specs = {s: dict(specs_all[s]) for s in scenarios}
    for knob in ("conns", "sessions", "rate", "duration", "stalled", "heartbeat"):
        value = getattr(args, knob)
        if value is not None:
            for spec in specs.values():
                if knob in ("stalled", "heartbeat") and "stalled" not in spec:
                    continue  # only the slow-consumer scenario has stalled clients and a heartbeat of its own
                spec[knob] = value if knob in ("duration", "heartbeat") else int(value)
                spec["title"] = spec["title"].removesuffix(" [overridden]") + " [overridden]"
    if "c" in specs:
        specs["c"]["title"] = f"{specs['c']['conns']:,} idle connections"
    targets = [t for t in args.targets.split(",") if t]
    # Inherited by the servers and the load generator: each end holds one descriptor per connection.
    procs.raise_fd_limit(max(spec["conns"] + spec.get("stalled", 0) for spec in specs.values()) + 5000)
    stem = args.name or ("quick" if args.quick else "latest")

    redis = procs.start_redis()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    began = time.monotonic()
    try:
        for target in targets:
            for scenario, spec in specs.items():
                profile = args.profile and target.startswith("sse") and scenario == "a"
                print(f"[{time.monotonic() - began:6.1f}s] {target} / ({scenario}) {spec['title']} ...", flush=True)
                try:
                    result = run_one(target, scenario, spec, redis, args.quick, profile, args.source_addrs)
                except Exception as error:  # a broken target is a figure, not a crash of the harness
                    result = {"error": f"{type(error).__name__}: {error}"}
                results.setdefault(target, {})[scenario] = result
                keys = ("error", "achieved_delivery_rate", "server_cpu_us_per_delivery", "lost", "rss_per_conn_kb")
                brief = {k: result.get(k) for k in keys if result.get(k) is not None}
                print(f"         -> {brief}", flush=True)
                if profile:
                    raw = RESULTS / f"profile_{target}_{scenario}.txt"
                    if raw.exists():
                        summary = summarize_profile(raw)
                        (RESULTS / f"profile_{target}_{scenario}.summary.txt").write_text(summary + "\n")
                        print(summary)
    finally:
        redis.stop()
    compare_with_a(results)

    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "scenarios": specs,
        "targets": {t: TARGETS[t] for t in targets},
        "wall_s": round(time.monotonic() - began, 1),
        "load_average_after": os.getloadavg(),
    }
    text = table(results, specs, targets)
    print(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(f"Run {meta['when']} ({'quick' if args.quick else 'full'})\n{text}\n")
    try:
        chart(results, targets, RESULTS / f"{stem}.png", f"sse-progress bench ({stem}, {meta['when']})")
    except ImportError:
        print("matplotlib missing: pip install -r bench/requirements.txt (no chart written)")
    print(f"\nwrote {RESULTS / stem}.json/.md/.png in {meta['wall_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
