"""Two nodes on a real Redis Cluster while it changes under them: a channel's slot moves to
another master while messages are published, and a master is killed (SIGKILL) and its replica
promoted. Subscribers see every acked message once, in order, and a client resumes after it.

Real time (threads talk to real servers), so no autojump clock; every wait is bounded.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest
import trio

import triows
from triows._core import redis_format as fmt
from triows.testing import TestClient, TestServer

from .rediscluster import RedisClusterNodes, command
from .redisserver import RedisServer
from .test_redis_cluster import channel_name, open_node, publish

pytestmark = pytest.mark.real_socket


async def collect(client: TestClient, count: int) -> list[int]:
    return [(await client.receive_type("message"))["seq"] for _ in range(count)]


def move_slot(cluster: RedisClusterNodes, channel: str) -> tuple[int, int]:
    """Move the slot of ``channel`` to another master, the way ``redis-cli --cluster reshard``
    does: importing/migrating, MIGRATE of its keys, then the new owner told to the target, the
    source, and (again, as some tools do) every master: a master told again that it owns the
    slot drops the slot's shard subscribers once more. Returns the old and the new master's
    ports."""
    key = fmt.numbering_key(channel)
    source = cluster.master_of(key)
    target = next(node for node in cluster.masters if node is not source)
    slot = int(command(cluster.client(source), "CLUSTER", "KEYSLOT", key))
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    src, dst = cluster.client(source), cluster.client(target)
    command(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    command(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while True:
        keys = command(src, "CLUSTER", "GETKEYSINSLOT", slot, 100)
        if not keys:
            break
        command(src, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for node in (target, source, *cluster.masters):
        command(cluster.client(node), "CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return source.port, target.port


async def test_a_channel_whose_slot_moves_loses_and_doubles_nothing(
    redis_cluster: RedisClusterNodes,
) -> None:
    channel = channel_name("moving")
    async with open_node(redis_cluster.url) as a, open_node(redis_cluster.url) as b:
        async with a.connect() as reader, b.connect() as writer, b.connect() as local:
            for client in (reader, local):
                sub = await client.request({"type": "subscribe", "channel": channel, "id": 1})
            moved = threading.Event()
            ports: list[tuple[int, int]] = []

            def reshard() -> None:
                ports.append(move_slot(redis_cluster, channel))
                moved.set()

            with trio.fail_after(30):
                seqs = [await publish(writer, channel, n, n) for n in range(30)]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.to_thread.run_sync, reshard)
                    n = 30
                    while not moved.is_set():  # publishing all along the move
                        seqs.append(await publish(writer, channel, n, n))
                        n += 1
                for after in range(n, n + 30):  # and after it, from the new master
                    seqs.append(await publish(writer, channel, after, after))
                assert seqs == list(range(1, len(seqs) + 1))
                for client in (reader, local):
                    assert await collect(client, len(seqs)) == seqs
            old, new = ports[0]
            assert redis_cluster.master_of(fmt.numbering_key(channel)).port == new != old
            # Both nodes follow the channel on its new master now.
            shard = redis_cluster.client(redis_cluster.by_port(new))
            followers = command(shard, "PUBSUB", "SHARDNUMSUB", fmt.pubsub_channel(channel))
            assert followers[1] == 2
        # A client resumes on the other node, from before the move.
        async with a.connect() as late:
            with trio.fail_after(10):
                reply = await late.request(
                    {"type": "subscribe", "channel": channel, "since": 20, "epoch": sub["epoch"]}
                    | {"id": 2}
                )
                assert reply["recovered"] is True, reply
                assert await collect(late, len(seqs) - 20) == seqs[20:]


async def test_a_killed_master_is_replaced_by_its_replica_without_loss(
    own_redis_cluster: RedisClusterNodes,
) -> None:
    cluster = own_redis_cluster
    channel = channel_name("failover")
    key = fmt.numbering_key(channel)
    master = cluster.master_of(key)
    replica = cluster.replica_of(master)
    async with (
        open_node(cluster.cluster_url, redis_timeout=0.5) as a,
        open_node(cluster.url, redis_timeout=0.5) as b,
    ):
        async with a.connect() as reader, b.connect() as writer:
            sub = await reader.request({"type": "subscribe", "channel": channel, "id": 1})
            with trio.fail_after(60):
                seqs = [await publish(writer, channel, n, n) for n in range(20)]
                # Every acked write is on the replica before the master dies (what WAIT
                # gives; docs/deployment.md): the promoted replica has them all.
                master_client = cluster.client(master)
                replicated = await trio.to_thread.run_sync(
                    lambda: command(master_client, "WAIT", 1, 5000)
                )
                assert int(replicated) == 1
                master.kill()
                await trio.to_thread.run_sync(
                    lambda: command(cluster.client(replica), "CLUSTER", "FAILOVER", "TAKEOVER")
                )
                await trio.to_thread.run_sync(cluster.wait_ready)
                assert cluster.master_of(key) is replica
                seqs += [await publish(writer, channel, n, n) for n in range(20, 40)]
                assert seqs == list(range(1, 41))
                assert await collect(reader, 40) == seqs
        async with a.connect() as late:
            with trio.fail_after(20):
                reply = await late.request(
                    {"type": "subscribe", "channel": channel, "since": 10, "epoch": sub["epoch"]}
                    | {"id": 2}
                )
                assert reply["recovered"] is True, reply
                assert await collect(late, 30) == seqs[10:]
        assert a.server.statistics().broker.state == "up"


def test_a_cluster_url_names_its_seeds() -> None:
    from triows._brokers.redis.clients import RedisUrlError, cluster_seeds

    assert cluster_seeds("redis://h:1/0") is None
    seeds = cluster_seeds("rediss+cluster://u:p%40ss@h1:7000,h2:7001")
    assert seeds == (
        [("h1", 7000), ("h2", 7001)],
        {"ssl": True, "password": "p@ss", "username": "u"},
    )
    with pytest.raises(RedisUrlError):
        cluster_seeds("redis+cluster://h1,h2:7001")


async def test_a_node_holds_one_pubsub_connection_per_shard_not_per_channel(
    redis_cluster: RedisClusterNodes,
) -> None:
    names = [channel_name("bounded") for _ in range(30)]
    async with open_node(redis_cluster.url) as node, node.connect() as client:
        for n, name in enumerate(names):
            await client.request({"type": "subscribe", "channel": name, "id": n})

        def shard_subscribers() -> list[list[int]]:
            found = []
            for master in redis_cluster.masters:
                listed = command(redis_cluster.client(master), "CLIENT", "LIST", "TYPE", "pubsub")
                found.append(
                    [
                        int(field.split("=")[1])
                        for line in str(listed).splitlines()
                        for field in line.split()
                        if field.startswith("ssub=") and field != "ssub=0"
                    ]
                )
            return found

        per_master = await trio.to_thread.run_sync(shard_subscribers)
        # The channels spread over the three masters; each master has one connection of
        # this node holding all of its channels there.
        assert all(len(connections) == 1 for connections in per_master), per_master
        assert sum(sum(connections) for connections in per_master) == len(names)


async def test_a_stopped_master_is_noticed_and_its_replica_followed(
    own_redis_cluster: RedisClusterNodes,
) -> None:
    """A master that stops (SIGSTOP: no reset, no error, its sockets just go quiet) while its
    replica takes over: a node's shard connection to it would wait forever. Its pings go
    unanswered, the node starts its pub/sub session again on the cluster as it is now, and
    the channel's subscribers get what is published on the new master."""
    cluster = own_redis_cluster
    # Not on the first master: the cluster client's default node, which carries the classic
    # pub/sub connection and the watchdog's pings (that would notice a stop on their own).
    channel = channel_name("stopped")
    while cluster.master_of(fmt.numbering_key(channel)) is cluster.masters[0]:
        channel = channel_name("stopped")
    key = fmt.numbering_key(channel)
    master = cluster.master_of(key)
    replica = cluster.replica_of(master)
    witness = next(node for node in cluster.masters if node is not master)
    slot = int(command(cluster.client(witness), "CLUSTER", "KEYSLOT", key))
    assert master.process is not None
    async with (
        open_node(cluster.cluster_url, redis_timeout=0.5) as a,
        open_node(cluster.cluster_url, redis_timeout=0.5) as b,
        a.connect() as reader,
        b.connect() as writer,
    ):
        await reader.request({"type": "subscribe", "channel": channel, "id": 1})
        with trio.fail_after(60):
            seqs = [await publish(writer, channel, n, n) for n in range(10)]
            assert await collect(reader, 10) == seqs
            replicated = await trio.to_thread.run_sync(
                lambda: command(cluster.client(master), "WAIT", 1, 5000)
            )
            assert int(replicated) == 1
            master.process.send_signal(signal.SIGSTOP)
            try:
                await trio.to_thread.run_sync(
                    lambda: command(cluster.client(replica), "CLUSTER", "FAILOVER", "TAKEOVER")
                )
                for _ in range(400):  # the other masters hear of the takeover
                    if cluster.owner_seen_by(witness, slot) == replica.port:
                        break
                    await trio.sleep(0.05)
                seqs += [await publish(writer, channel, n, n) for n in range(10, 20)]
                assert seqs == list(range(1, 21))
                assert await collect(reader, 10) == seqs[10:]
            finally:
                master.process.send_signal(signal.SIGCONT)


def classic_connections_on(cluster: RedisClusterNodes, *nodes: TestServer) -> RedisServer:
    """The master both nodes hold their classic pub/sub connection (control channel, reply
    channels) to: their cluster client's default node."""
    ports = {
        node.server.broker._bridge.client().get_default_node().port  # type: ignore[attr-defined]
        for node in nodes
    }
    assert len(ports) == 1
    return cluster.by_port(ports.pop())


def _first_slot(cluster: RedisClusterNodes, master: RedisServer) -> int:
    return next(s for s in range(0, 16384, 64) if cluster.owner_of_slot(s) is master)


async def test_control_requests_reach_every_node_after_a_failover(
    own_redis_cluster: RedisClusterNodes,
) -> None:
    """The master the nodes hold their classic pub/sub connection to (the control channel,
    the reply channels) is killed and its replica promoted: control requests asked on either
    node still reach, and count, every node's connections."""
    cluster = own_redis_cluster
    async with (
        open_node(cluster.cluster_url, redis_timeout=0.5) as a,
        open_node(cluster.url, redis_timeout=0.5) as b,
    ):
        async with a.connect() as on_a, b.connect() as on_b:
            with trio.fail_after(10):
                assert await b.server.disconnect(user="nobody") == 0
            master = classic_connections_on(cluster, a, b)
            replica = cluster.replica_of(master)
            master.kill()
            await trio.to_thread.run_sync(
                lambda: command(cluster.client(replica), "CLUSTER", "FAILOVER", "TAKEOVER")
            )
            await trio.to_thread.run_sync(cluster.wait_ready)
            with trio.fail_after(30):
                for node in (a, b):
                    await node.server.broker.up.wait_value(True)
                # A request may fail while the nodes reconnect: asked again until it works.
                while True:
                    try:
                        closed = await b.server.disconnect(client=on_a.client_id)
                    except triows.BrokerUnavailableError:
                        await trio.sleep(0.1)
                        continue
                    break
                assert closed == 1
                assert await a.server.disconnect(client=on_b.client_id) == 1


async def test_control_requests_count_nodes_listening_on_a_demoted_master(
    own_redis_cluster: RedisClusterNodes,
) -> None:
    """A manual failover demotes the master the nodes hold their classic pub/sub connection to
    (Redis keeps such connections; they still get every PUBLISH): the nodes listening there,
    on a replica now, are counted and waited for."""
    cluster = own_redis_cluster
    async with (
        open_node(cluster.url, redis_timeout=0.5) as a,
        open_node(cluster.url, redis_timeout=0.5) as b,
    ):
        async with a.connect() as on_a, b.connect() as on_b:
            with trio.fail_after(10):
                assert await b.server.disconnect(user="nobody") == 0
            master = classic_connections_on(cluster, a, b)
            replica = cluster.replica_of(master)
            await trio.to_thread.run_sync(
                lambda: command(cluster.client(replica), "CLUSTER", "FAILOVER")
            )
            # Every Redis node sees the replica as master of the old one's slots: done.
            slot = _first_slot(cluster, master)
            await trio.to_thread.run_sync(
                lambda: cluster._wait(
                    lambda: all(
                        cluster.owner_seen_by(node, slot) == replica.port for node in cluster.nodes
                    ),
                    "failover",
                )
            )
            # The nodes' clients learn the new slot map (as any MOVED makes them do).
            for node in (a, b):
                client: Any = node.server.broker._bridge.client()  # type: ignore[attr-defined]
                await trio.to_thread.run_sync(client.nodes_manager.initialize)
                assert client.nodes_manager.get_node_from_slot(slot).port == replica.port
            with trio.fail_after(10):
                assert await b.server.disconnect(client=on_a.client_id) == 1
                assert await a.server.disconnect(client=on_b.client_id) == 1


async def test_a_dead_replica_does_not_stop_control_requests(
    own_redis_cluster: RedisClusterNodes,
) -> None:
    """The control channel's subscribers are counted on every Redis node, replicas included:
    one that is down is left out of the count, and the request is answered."""
    cluster = own_redis_cluster
    async with (
        open_node(cluster.url, redis_timeout=0.5) as a,
        open_node(cluster.url, redis_timeout=0.5) as b,
    ):
        async with a.connect() as on_a:
            with trio.fail_after(10):
                assert await b.server.disconnect(user="nobody") == 0
            command_client: Any = b.server.broker._bridge.client()  # type: ignore[attr-defined]
            with trio.fail_after(10):  # until the client knows the replicas
                while len(command_client.get_nodes()) < len(cluster.nodes):
                    await trio.sleep(0.1)
                    await trio.to_thread.run_sync(command_client.nodes_manager.initialize)
            cluster.replicas[0].kill()
            with trio.fail_after(10):
                assert await b.server.disconnect(client=on_a.client_id) == 1
