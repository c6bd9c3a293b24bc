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
}
QUICK: dict[str, dict[str, Any]] = {
    "a": {"conns": 300, "sessions": 3, "rate": 2000, "duration": 2, "title": "300 conns / 3 sessions @ 2k/s"},
    "b": {"conns": 200, "sessions": 2, "rate": 5000, "duration": 2, "title": "200 conns / 2 sessions @ 5k/s"},
    "c": {"conns": 500, "sessions": 5, "rate": 0, "duration": 0, "title": "500 idle connections"},
    "d": {"conns": 300, "sessions": 3, "rate": 1000, "duration": 3, "storm_at": 1, "title": "storm, 300 clients"},
}


def start_target(name: str, redis: RedisServer) -> procs.Server:
    if name == "sse1":
        return procs.start_sse_progress(redis.url, workers=1)
    if name == "sse2":
        return procs.start_sse_progress(redis.url, workers=2)
    if name == "sse1-ss":
        return procs.start_sse_progress(redis.url, workers=1, env_extra={"SSE_PROGRESS_RESPONDER": "sse-starlette"})
    if name == "nchan":
        return procs.start_nchan()
    if name == "naive":
        return procs.start_naive(redis.url)
    raise ValueError(name)


def run_one(
    name: str, scenario: str, spec: dict[str, Any], redis: RedisServer, quick: bool, profile: bool
) -> dict[str, Any]:
    server = start_target(name, redis)
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
        limit = 360 + spec["duration"] * 2
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


def metric_rows(scenario: str) -> list[tuple[str, str, Any, bool]]:
    """(label, key path, digits, ratio-to-nchan?)"""
    if scenario == "c":
        return [
            ("connections held", "live_after_settle", 0, False),
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
    parser.add_argument("--scenarios", default="a,b,c,d")
    parser.add_argument("--profile", action="store_true", help="py-spy the server of scenario a (sse targets)")
    parser.add_argument("--name", default=None, help="results file stem (default: latest or quick)")
    for knob in ("conns", "sessions", "rate", "duration"):
        parser.add_argument(f"--{knob}", type=float, default=None, help=f"override {knob} of the chosen scenarios")
    args = parser.parse_args(argv)
    procs.raise_fd_limit()
    RESULTS.mkdir(parents=True, exist_ok=True)
    specs_all = QUICK if args.quick else FULL
    scenarios = [s for s in args.scenarios.split(",") if s]
    specs = {s: dict(specs_all[s]) for s in scenarios}
    for knob in ("conns", "sessions", "rate", "duration"):
        value = getattr(args, knob)
        if value is not None:
            for spec in specs.values():
                spec[knob] = value if knob == "duration" else int(value)
                spec["title"] = f"{spec['title']} [overridden]"
    targets = [t for t in args.targets.split(",") if t]
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
                    result = run_one(target, scenario, spec, redis, args.quick, profile)
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
