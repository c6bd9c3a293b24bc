"""What the session index costs a publish: N publishes through ``RedisEngine`` with and without it.

    .venv/bin/python -m bench.index_cost                # 5 000 publishes per run, 10 rounds, about a minute
    .venv/bin/python -m bench.index_cost --publishes 2000 --rounds 4

A private ``redis-server`` (no persistence, free port). Each round runs both variants, alternating which goes
first, on fresh sessions (200 jobs of 20 steps then ``success``, interleaved as a fleet would publish them):

* ``without``: the publish script as it was before the index (stream, snapshot, meta, announcement);
* ``with``: today's script, which also keeps the step durations and the index sorted sets and totals.

Two figures per variant, medians over the rounds: the time a publisher waits per event (one in flight, the
client round trip included), and the script's own time inside Redis (``INFO commandstats`` usec_per_call),
which is what a loaded Redis pays. Writes ``bench/results/index_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import time
import uuid
from pathlib import Path

import redis

from sse_progress.engines.redis.engine import RedisEngine
from sse_progress.protocol.events import EventDraft

from .procs import free_port

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 20
# The publish script as it was before the index, verbatim: no step durations, no index keys.
BASELINE_SCRIPT = """
local stream, snapshot, meta = KEYS[1], KEYS[2], KEYS[3]
local channel, draft, terminal = ARGV[1], ARGV[2], ARGV[3]
local etapa, total, now_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local maxlen, ttl, publisher, sequence = ARGV[7], tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])

if redis.call('HEXISTS', meta, 'terminal') == 1 then
  return {'terminal', redis.call('GET', snapshot) or ''}
end
if publisher ~= '' then
  local field = 'pub:' .. publisher
  if sequence <= tonumber(redis.call('HGET', meta, field) or '-1') then
    return {'duplicate', redis.call('GET', snapshot) or ''}
  end
  redis.call('HSET', meta, field, sequence)
end

redis.call('HSETNX', meta, 'started', now_ms)
local started = tonumber(redis.call('HGET', meta, 'started'))
local eta = 'null'
if terminal == '1' then
  eta = '0.0'
elseif etapa >= 1 then
  local elapsed = math.max(0, now_ms - started) / 1000
  eta = string.format('%.1f', elapsed / etapa * math.max(0, total - etapa))
end

local stored = string.sub(draft, 1, -2) .. ',"eta_seconds":' .. eta .. '}'
local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', stored)
local envelope = '{"id":"' .. id .. '",' .. string.sub(stored, 2)
redis.call('SET', snapshot, envelope, 'EX', ttl)
redis.call('EXPIRE', stream, ttl)
if terminal == '1' then
  redis.call('HSET', meta, 'terminal', id)
end
redis.call('EXPIRE', meta, ttl)
redis.call('PUBLISH', channel, envelope)
return {'ok', envelope}
"""


def drafts(publishes: int) -> list[EventDraft]:
    jobs = max(1, publishes // (STEPS + 1))
    names = [f"b{uuid.uuid4().hex[:12]}" for _ in range(jobs)]
    out = []
    for step in range(1, STEPS + 2):  # step STEPS + 1 is the terminal event
        for name in names:
            status = "success" if step > STEPS else "running"
            message = f"Tela {step}: preenchendo os dados do veículo e do condutor"  # as the example bot writes
            out.append(EventDraft(name, min(step, STEPS), STEPS, status=status, mensagem=message))
    return out[:publishes]


async def run_variant(url: str, indexed: bool, publishes: int) -> tuple[float, float]:
    engine = RedisEngine(url, prefix="bench" + uuid.uuid4().hex[:6], ttl=3600)
    if not indexed:
        engine._publish = engine.client.register_script(BASELINE_SCRIPT)
    events = drafts(publishes)
    await engine.publish(EventDraft("warm" + uuid.uuid4().hex[:6], 1, 2))  # the script is loaded
    stats = redis.Redis.from_url(url)
    stats.config_resetstat()
    started = time.perf_counter()
    for draft in events:
        await engine.publish(draft)
    elapsed = time.perf_counter() - started
    script_usec = float(stats.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
    stats.flushall()
    stats.close()
    await engine.close()
    return elapsed / len(events) * 1e6, script_usec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        figures: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
        for round_number in range(args.rounds):
            order = ("without", "with") if round_number % 2 == 0 else ("with", "without")
            for variant in order:
                figures[variant].append(asyncio.run(run_variant(url, variant == "with", args.publishes)))
                print(f"round {round_number + 1} {variant:>7}: {figures[variant][-1][0]:.1f} µs/publish, "
                      f"script {figures[variant][-1][1]:.1f} µs", flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)

    # Medians, and minimums: on a shared machine the quietest round is the closest to the code's own cost.
    summary = {
        variant: {
            "publish_us": round(statistics.median(wait for wait, _ in runs), 1),
            "script_us": round(statistics.median(script for _, script in runs), 1),
            "publish_us_min": round(min(wait for wait, _ in runs), 1),
            "script_us_min": round(min(script for _, script in runs), 1),
        }
        for variant, runs in figures.items()
    }
    base, indexed = summary["without"], summary["with"]
    delta_wait = 100 * (indexed["publish_us"] / base["publish_us"] - 1)
    delta_script = 100 * (indexed["script_us"] / base["script_us"] - 1)
    delta_wait_min = 100 * (indexed["publish_us_min"] / base["publish_us_min"] - 1)
    delta_script_min = 100 * (indexed["script_us_min"] / base["script_us_min"] - 1)
    report = {
        "publishes": args.publishes,
        "rounds": args.rounds,
        **summary,
        "delta_publish_pct": round(delta_wait, 1),
        "delta_script_pct": round(delta_script, 1),
        "delta_publish_pct_min": round(delta_wait_min, 1),
        "delta_script_pct_min": round(delta_script_min, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "index_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    table = (
        f"# Publish cost of the session index ({args.publishes} publishes × {args.rounds} rounds)\n\n"
        "| variant | µs per publish, publisher waits (median / min) | µs inside Redis, script (median / min) |\n"
        "|---|---|---|\n"
        f"| without index | {base['publish_us']} / {base['publish_us_min']} "
        f"| {base['script_us']} / {base['script_us_min']} |\n"
        f"| with index | {indexed['publish_us']} / {indexed['publish_us_min']} "
        f"| {indexed['script_us']} / {indexed['script_us_min']} |\n"
        f"| delta | {delta_wait:+.1f} % / {delta_wait_min:+.1f} % "
        f"| {delta_script:+.1f} % / {delta_script_min:+.1f} % |\n"
    )
    (RESULTS / "index_cost.md").write_text(table)
    print("\n" + table)


if __name__ == "__main__":
    main()
