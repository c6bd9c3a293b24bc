"""The Redis Cluster engine on a real 3-master cluster: slot routing, sharded Pub/Sub, lost connections, moved slots.

The replay contract itself runs against the cluster in test_replay_contract.py.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from sse_progress import AsyncProgressTracker, ProgressTracker
from sse_progress.config import Settings
from sse_progress.engines import create_engine
from sse_progress.engines.redis.cluster import RedisClusterEngine
from sse_progress.engines.redis.cluster_url import node_url
from sse_progress.protocol.events import EventDraft
from tests.support.clients import Publisher, collect_until_end, follow
from tests.support.processes import LiveServer, RedisClusterNodes, free_port, session_id_on_shard, wait_until


@pytest.fixture
async def engine(redis_cluster: RedisClusterNodes) -> AsyncIterator[RedisClusterEngine]:
    cluster_engine = RedisClusterEngine(redis_cluster.url, prefix="cluster", ttl=120)
    yield cluster_engine
    await cluster_engine.close()


def draft(session_id: str, etapa: int, status: str = "running") -> EventDraft:
    return EventDraft(session_id, etapa, 15, status=status, mensagem=f"step {etapa}")


def test_cluster_urls_pick_the_cluster_engine_and_keep_credentials() -> None:
    for url in ("redis+cluster://127.0.0.1:7000", "rediss+cluster://127.0.0.1:7000"):
        assert isinstance(create_engine(Settings(redis_url=url)), RedisClusterEngine)
    assert not isinstance(create_engine(Settings(redis_url="redis://127.0.0.1:7000/0")), RedisClusterEngine)
    assert node_url("rediss+cluster://user:pw@seed:7000?x=1") == "rediss://user:pw@seed:7000?x=1"
    assert node_url("redis+cluster://:pw@seed:7000", "::1", 7002) == "redis://:pw@[::1]:7002"
    with pytest.raises(ValueError, match=r"redis\+cluster://"):
        create_engine(Settings(redis_url="cluster://127.0.0.1:7000"))


async def test_a_sessions_keys_and_channel_share_one_slot_on_its_master(
    engine: RedisClusterEngine, redis_cluster: RedisClusterNodes
) -> None:
    for shard in range(3):
        session_id = session_id_on_shard(shard)
        await engine.publish(draft(session_id, 1))
        await engine.publish(draft(session_id, 15, "success"))
        keys = engine.keys
        names = [keys.stream(session_id), keys.snapshot(session_id), keys.meta(session_id)]
        assert {key_slot(name.encode()) for name in [*names, keys.channel(session_id).decode()]} == {
            key_slot(f"{{{session_id}}}".encode())
        }
        owner = redis_cluster.master_of(session_id)
        for port in redis_cluster.ports:
            client = redis_cluster.client(port)
            present = sorted(key.decode() for key in client.keys(f"cluster:*{{{session_id}}}"))
            client.close()
            assert present == (sorted(names) if port == owner else []), port


async def test_events_are_spublished_to_the_owning_shard_only(
    engine: RedisClusterEngine, redis_cluster: RedisClusterNodes, session_id: str
) -> None:
    channel = engine.keys.channel(session_id)
    owner = aioredis.Redis(port=redis_cluster.master_of(session_id))
    sharded = owner.pubsub()
    await sharded.ssubscribe(channel)
    classic = [aioredis.Redis(port=port).pubsub() for port in redis_cluster.ports]
    try:
        assert (await sharded.get_message(timeout=5))["type"] == "ssubscribe"  # type: ignore[index]
        for pubsub in classic:
            await pubsub.subscribe(channel)
            assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]

        envelope = (await engine.publish(draft(session_id, 1))).envelope

        message = await sharded.get_message(timeout=5)
        assert message is not None and (message["type"], message["data"]) == ("smessage", envelope)
        # A classic PUBLISH reaches every node's SUBSCRIBE; if the event had gone out that way it would come first.
        await owner.publish(channel, b"marker")
        for pubsub in classic:
            message = await pubsub.get_message(timeout=5)
            assert message is not None and message["data"] == b"marker"
    finally:
        for pubsub in [sharded, *classic]:
            await pubsub.aclose()
        await owner.aclose()


async def test_one_server_follows_sessions_on_every_master_with_one_connection_per_master(
    cluster_server: LiveServer, redis_cluster: RedisClusterNodes
) -> None:
    live = cluster_server
    sessions = [session_id_on_shard(shard) for shard in (0, 0, 1, 1, 2, 2)]
    publishers = [Publisher(live.url, live.token(sid, "publish"), sid) for sid in sessions]
    try:
        published = {sid: [(await pub.step(1))["id"]] for sid, pub in zip(sessions, publishers, strict=True)}
        followers = [Follower(live, sid, transport) for transport in ("sse", "ws") for sid in sessions]
        await Follower.all_live(followers)
        for port in redis_cluster.ports:
            client = redis_cluster.client(port)
            assert len(client.client_list(_type="pubsub")) == 1, f"master {port}: one Pub/Sub connection"
            client.close()
        for sid, publisher in zip(sessions, publishers, strict=True):
            published[sid].append((await publisher.step(15, "success"))["id"])
        for follower, sid in zip(followers, sessions * 2, strict=True):
            assert await follower.result() == published[sid], sid
    finally:
        for publisher in publishers:
            await publisher.aclose()


async def test_a_killed_shard_connection_loses_and_duplicates_nothing(redis_cluster: RedisClusterNodes) -> None:
    live = LiveServer(redis_cluster.url)
    live.start()
    sessions = [session_id_on_shard(shard) for shard in range(3)]
    publishers = [Publisher(live.url, live.token(sid, "publish"), sid, total=40) for sid in sessions]
    victim = redis_cluster.client(redis_cluster.ports[1])
    published: dict[str, list[str]] = {sid: [] for sid in sessions}

    async def publish(etapas: range, status: str = "running") -> None:
        for etapa in etapas:
            for sid, publisher in zip(sessions, publishers, strict=True):
                published[sid].append((await publisher.step(etapa, status))["id"])

    try:
        await publish(range(1, 2))
        followers = [Follower(live, sid, "sse", "earliest") for sid in sessions]
        await Follower.all_live(followers)
        await publish(range(2, 10))
        before = {entry["id"] for entry in victim.client_list(_type="pubsub")}
        assert victim.client_kill_filter(_type="pubsub") == len(before) >= 1
        # Published while that master's Pub/Sub connection is down: only the stream has them.
        await publish(range(10, 30))
        wait_until(lambda: bool(victim.client_list(_type="pubsub")), 10, "the server to resubscribe")
        assert not before & {entry["id"] for entry in victim.client_list(_type="pubsub")}
        await publish(range(30, 40))
        await publish(range(40, 41), "success")
        for follower, sid in zip(followers, sessions, strict=True):
            assert await follower.result() == published[sid], sid
        assert _resyncs(live) > 0
    finally:
        victim.close()
        for publisher in publishers:
            await publisher.aclose()
        live.stop()


async def test_a_slot_moved_to_another_master_loses_and_duplicates_nothing(
    cluster_server: LiveServer, redis_cluster: RedisClusterNodes
) -> None:
    live = cluster_server
    session_id = session_id_on_shard(0)
    slot = key_slot(f"{{{session_id}}}".encode())
    source, target = redis_cluster.ports[0], redis_cluster.ports[2]
    publisher = Publisher(live.url, live.token(session_id, "publish"), session_id, total=40)
    moved = False
    try:
        published = [(await publisher.step(1))["id"]]
        follower = Follower(live, session_id, "sse", "earliest")
        await Follower.all_live([follower])
        published += [(await publisher.step(etapa))["id"] for etapa in range(2, 10)]
        resyncs = _resyncs(live)
        _hand_over_slot(redis_cluster, slot, source, target)
        moved = True
        # The target owns the slot and the source does not know yet: these are announced where the server does not
        # listen. Once the source learns, it drops the server's subscription and the server moves it over.
        published += [(await publisher.step(etapa))["id"] for etapa in range(10, 20)]
        _tell_the_former_owner(redis_cluster, slot, source, target)
        published += [(await publisher.step(etapa))["id"] for etapa in range(20, 40)]
        published.append((await publisher.step(40, "success"))["id"])
        assert await follower.result() == published
        assert _resyncs(live) > resyncs, "readers were told to re-read what the move may have hidden"
    finally:
        await publisher.aclose()
        if moved:  # back where session_id_on_shard expects it
            _tell_the_former_owner(redis_cluster, slot, source, target)
            _hand_over_slot(redis_cluster, slot, target, source)
            _tell_the_former_owner(redis_cluster, slot, target, source)


async def test_a_burst_of_commands_queues_within_the_pool_one_pubsub_connection_per_master(
    engine: RedisClusterEngine, redis_cluster: RedisClusterNodes
) -> None:
    admins = {port: redis_cluster.client(port) for port in redis_cluster.ports}
    before = {port: len(admin.client_list()) for port, admin in admins.items()}
    sessions = [session_id_on_shard(shard) for shard in range(3) for _ in range(4)]
    feed = engine.open_feed(lambda session_id, envelope: None, lambda: None)
    try:
        await asyncio.gather(*(feed.add(session_id) for session_id in sessions))
        drafts = [draft(session_id, etapa) for session_id in sessions for etapa in range(1, 21)]
        await asyncio.gather(*(engine.publish(each) for each in drafts))
        await asyncio.gather(*(engine.read(session_id, (0, 0)) for session_id in sessions * 10))
        await engine.ping()
        opened = {port: len(admin.client_list()) - before[port] for port, admin in admins.items()}
        # The pool of 2 and one Pub/Sub connection per master; the cluster client keeps one more on the seed node,
        # for reloading the slot map.
        seed = redis_cluster.ports[0]
        assert all(opened[port] <= 2 + 1 + (port == seed) for port in redis_cluster.ports), opened
    finally:
        await feed.close()
        for admin in admins.values():
            admin.close()


async def test_readyz_is_503_while_a_master_is_down() -> None:
    own = RedisClusterNodes()
    live = LiveServer(own.url)
    try:
        own.start()
        live.start()
        own.processes[1].kill()
        wait_until(lambda: httpx.get(f"{live.url}/readyz").status_code == 503, 20, "/readyz to answer 503")
    finally:
        live.stop()
        own.stop()


async def test_with_a_master_down_sessions_on_the_other_masters_still_stream() -> None:
    own = RedisClusterNodes()
    live = LiveServer(own.url)
    elsewhere, on_the_killed_master = session_id_on_shard(0), session_id_on_shard(1)
    publisher = Publisher(live.url, live.token(elsewhere, "publish"), elsewhere)
    try:
        own.start()
        live.start()
        published = await publisher.step(1)
        async with follow("sse", live.url, on_the_killed_master, live.token(on_the_killed_master)) as follower:
            assert follower.status_code == 200  # the server now holds a Pub/Sub connection to master 1
            own.processes[1].kill()
            wait_until(lambda: httpx.get(f"{live.url}/readyz").status_code == 503, 20, "/readyz to answer 503")
        async with follow("sse", live.url, elsewhere, live.token(elsewhere), "0") as stream:
            assert stream.status_code == 200
            frame = await stream.next(timeout=10)
            assert frame is not None and frame.id == published["id"], "a session on a healthy master must stream"
    finally:
        await publisher.aclose()
        live.stop(kill=True)  # this test is about streaming; shutdown with a master down is not its subject
        own.stop()


def test_sync_tracker_publishes_to_the_cluster(
    cluster_server: LiveServer, redis_cluster: RedisClusterNodes, tmp_path: Path
) -> None:
    for shard in range(3):
        session_id = session_id_on_shard(shard)
        url = redis_cluster.url
        with ProgressTracker(total_etapas=2, session_id=session_id, redis_url=url, json_dir=tmp_path) as tracker:
            tracker.update_progress(1, "um")
            final = tracker.complete("pronto")
        token = cluster_server.token(session_id)
        response = httpx.get(f"{cluster_server.url}/sessions/{session_id}", params={"token": token})
        assert response.status_code == 200 and response.json()["data"] == final
        assert not list(tmp_path.iterdir()), "no JSON fallback while the cluster answers"


async def test_async_tracker_publishes_to_the_cluster(
    cluster_server: LiveServer, redis_cluster: RedisClusterNodes, session_id: str, tmp_path: Path
) -> None:
    async with AsyncProgressTracker(
        total_etapas=2, session_id=session_id, redis_url=redis_cluster.url, json_dir=tmp_path
    ) as tracker:
        await tracker.update_progress(1, "um")
        final = await tracker.complete("pronto")
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{cluster_server.url}/sessions/{session_id}", params={"token": cluster_server.token(session_id)}
        )
    assert response.status_code == 200 and response.json()["data"] == final


def test_tracker_starts_and_falls_back_to_its_file_while_the_cluster_is_down(session_id: str, tmp_path: Path) -> None:
    down = f"redis+cluster://127.0.0.1:{free_port()}"
    tracker = ProgressTracker(total_etapas=3, session_id=session_id, redis_url=down, json_dir=tmp_path)
    event = tracker.update_progress(1, "um")
    tracker.close()
    assert event is not None
    assert orjson.loads((tmp_path / f"progress_{session_id}.json").read_bytes())["mensagem"] == "um"


class Follower:
    """A client following a session to its end in a task; ``live`` is set once its first frame arrived.

    A frame means the server subscribed the session first (see replay.py), so later events reach it live.
    """

    def __init__(self, server: LiveServer, session_id: str, transport: str, resume: str | None = None) -> None:
        self.live = asyncio.Event()
        self.task = asyncio.create_task(self._run(server, session_id, transport, resume))

    async def _run(self, server: LiveServer, session_id: str, transport: str, resume: str | None) -> list[str]:
        async with follow(transport, server.url, session_id, server.token(session_id), resume) as stream:
            first = await stream.next(timeout=20)
            assert first is not None
            self.live.set()
            return [first.id, *(frame.id for frame in await collect_until_end(stream, timeout=20))]

    async def result(self) -> list[str]:
        """The ids received, in order; a stalled stream fails here rather than at the test's timeout."""
        return await asyncio.wait_for(self.task, 30)

    @staticmethod
    async def all_live(followers: list[Follower]) -> None:
        await asyncio.wait_for(asyncio.gather(*(follower.live.wait() for follower in followers)), 20)


def _resyncs(live: LiveServer) -> float:
    for line in httpx.get(f"{live.url}/metrics").text.splitlines():
        if line.startswith("sse_progress_redis_reconnects_total "):
            return float(line.split()[1])
    raise AssertionError("no sse_progress_redis_reconnects_total in /metrics")


def _hand_over_slot(cluster: RedisClusterNodes, slot: int, source: int, target: int) -> None:
    """Reshard ``slot``, keys included, from master ``source`` to master ``target``; all but the source are told."""
    clients = {port: cluster.client(port) for port in cluster.ports}
    try:
        ids = {port: client.execute_command("CLUSTER MYID").decode() for port, client in clients.items()}
        clients[target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        clients[source].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        keys = clients[source].execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
        if keys:
            clients[source].execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for port, client in clients.items():
            if port != source:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
    finally:
        for client in clients.values():
            client.close()


def _tell_the_former_owner(cluster: RedisClusterNodes, slot: int, source: int, target: int) -> None:
    """End the move: the source learns it no longer owns ``slot`` (and drops its subscribers to the slot)."""
    client, owner = cluster.client(source), cluster.client(target)
    try:
        target_id = owner.execute_command("CLUSTER MYID").decode()
        client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    finally:
        client.close()
        owner.close()
    wait_until(lambda: _owner_everywhere(cluster, slot) == {target}, 10, f"every node to see slot {slot} moved")


def _owner_everywhere(cluster: RedisClusterNodes, slot: int) -> set[int]:
    owners = set()
    for port in cluster.ports:
        client = cluster.client(port)
        try:
            for first, last, (_, owner, *_), *_ in client.execute_command("CLUSTER SLOTS"):
                if first <= slot <= last:
                    owners.add(int(owner))
        except redis.RedisError:
            owners.add(-1)
        finally:
            client.close()
    return owners


def test_a_redis_url_naming_a_cluster_node_is_refused_at_startup(redis_cluster: RedisClusterNodes) -> None:
    live = LiveServer(f"redis://127.0.0.1:{redis_cluster.ports[0]}")
    with pytest.raises(RuntimeError, match="server exited with") as refused:
        live.start()
    assert "is a Redis Cluster node" in str(refused.value) and "redis+cluster://" in str(refused.value)
    live.process = None


class ServerBeforeItsStore(LiveServer):
    """A server started while its Redis is not there yet: the process answering is all ``start`` waits for."""

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def test_a_cluster_node_found_after_startup_is_named_by_publish_read_readyz_and_one_error_log(session_id: str) -> None:
    port = free_port()
    live = ServerBeforeItsStore(f"redis://127.0.0.1:{port}")
    live.start()
    directory = tempfile.mkdtemp(prefix="sse-progress-late-node-")
    node = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--dir", directory, "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with redis.Redis(port=port) as admin:
            wait_until(lambda: _answers(admin), 10, "the cluster node")
        publish = {"Authorization": f"Bearer {live.token(session_id, 'publish')}"}
        answers = [
            httpx.post(f"{live.url}/sessions/{session_id}/events", json={"etapa_atual": 1, "total_etapas": 3},
                       headers=publish, timeout=10)
            for _ in range(3)
        ]  # fmt: skip
        answers.append(httpx.get(f"{live.url}/sessions/{session_id}", params={"token": live.token(session_id)}))
        for answer in answers:
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert "is a Redis Cluster node" in error and "redis+cluster://" in error, error
            assert "retry shortly" not in error
        ready = httpx.get(f"{live.url}/readyz", timeout=10)
        assert ready.status_code == 503 and "redis+cluster://" in ready.json()["error"]
        logged = [line for line in live.log.read_text().splitlines() if "is a Redis Cluster node" in line]
        assert len(logged) == 1 and "misconfigured" in logged[0], logged
    finally:
        live.stop()
        node.terminate()
        node.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
