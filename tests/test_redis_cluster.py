"""Nodes sharing a real Redis: one numbering per channel, fan-out and resume across nodes.

Every test runs twice: on one Redis, and on a Redis Cluster of three masters (given by one
node's URL, as a user would: the node says it is in a cluster), where the channels spread over
the shards and travel by sharded pub/sub.

Real time (threads talk to a real server), so no autojump clock; every wait is bounded.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from triows import Server
from triows._brokers.redis.clients import Clients
from triows._core import redis_format as fmt
from triows.testing import TestClient, TestServer, open_test_server

pytestmark = pytest.mark.real_socket


@pytest.fixture
def redis_url(shared_redis_url: str) -> str:
    """One Redis, then a cluster (:func:`tests.conftest.shared_redis_url`)."""
    return shared_redis_url


_names = itertools.count()


def channel_name(prefix: str = "c") -> str:
    """A channel no other test of the session uses (they share one Redis)."""
    return f"{prefix}-{trio.current_time():.0f}-{next(_names)}"


async def wait_until_up(server: Server, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        await server.broker.up.wait_value(True)


@asynccontextmanager
async def open_node(redis_url: str, **overrides: Any) -> AsyncIterator[TestServer]:
    async with open_test_server(redis_url=redis_url, **overrides) as node:
        await wait_until_up(node.server)
        yield node


async def publish(client: TestClient, channel: str, data: Any, request_id: Any) -> int:
    ack = await client.request(
        {"type": "publish", "channel": channel, "data": data, "id": request_id}
    )
    assert ack["type"] == "ack", ack
    return int(ack["seq"])


async def test_a_client_on_one_node_gets_what_another_node_publishes(redis_url: str) -> None:
    channel = channel_name()
    async with open_node(redis_url) as a, open_node(redis_url) as b:
        async with a.connect() as reader, b.connect() as writer, b.connect() as local:
            for client in (reader, local):
                reply = await client.request({"type": "subscribe", "channel": channel, "id": 1})
                assert reply["seq"] == 0
            seqs = [await publish(writer, channel, {"n": n}, n) for n in range(50)]
            assert seqs == list(range(1, 51))
            for client in (reader, local):
                got = [await client.receive_type("message") for _ in range(50)]
                assert [m["seq"] for m in got] == seqs
                assert [m["data"]["n"] for m in got] == list(range(50))
                assert len({m["id"] for m in got}) == 50
            # Once: the next message anyone gets is the next one published.
            await publish(writer, channel, "end", "end")
            for client in (reader, local):
                assert (await client.receive_type("message"))["data"] == "end"


async def test_the_publisher_gets_its_ack_not_its_message(redis_url: str) -> None:
    channel = channel_name()
    async with open_node(redis_url) as a, a.connect() as client, a.connect() as other:
        await client.request({"type": "subscribe", "channel": channel, "id": 1})
        assert await publish(client, channel, "mine", "x") == 1
        assert await publish(other, channel, "theirs", "y") == 2
        message = await client.receive_type("message")
        assert (message["seq"], message["data"]) == (2, "theirs")


async def test_both_nodes_number_one_sequence(redis_url: str) -> None:
    channel = channel_name()
    async with open_node(redis_url) as a, open_node(redis_url) as b:
        async with a.connect() as on_a, b.connect() as on_b, a.connect() as reader:
            await reader.request({"type": "subscribe", "channel": channel, "id": 1})
            seqs = []
            for n in range(20):
                seqs.append(await publish(on_a if n % 2 else on_b, channel, n, n))
            assert seqs == list(range(1, 21))
            got = [(await reader.receive_type("message"))["seq"] for _ in range(20)]
            assert got == seqs
            assert a.server.statistics().published == b.server.statistics().published == 10
            assert a.server.statistics().delivered == 20  # to the reader, the only subscriber


async def test_a_client_moving_to_another_node_resumes_without_loss(redis_url: str) -> None:
    channel = channel_name()
    async with open_node(redis_url) as a, open_node(redis_url) as b:
        async with a.connect() as writer:
            async with a.connect() as mover:
                reply = await mover.request({"type": "subscribe", "channel": channel, "id": 1})
                epoch = reply["epoch"]
                for n in range(5):
                    await publish(writer, channel, n, n)
                seen = [(await mover.receive_type("message"))["seq"] for _ in range(5)]
            for n in range(5, 12):  # published while it is away
                await publish(writer, channel, n, n)
            async with b.connect() as moved:
                reply = await moved.request(
                    {
                        "type": "subscribe",
                        "channel": channel,
                        "id": 2,
                        "since": seen[-1],
                        "epoch": epoch,
                    }
                )
                assert reply["recovered"] is True
                assert reply["epoch"] == epoch
                replayed = [(await moved.receive_type("message"))["seq"] for _ in range(7)]
                assert replayed == list(range(6, 13))
                await publish(writer, channel, "live", "live")
                assert (await moved.receive_type("message"))["seq"] == 13


async def test_publish_ids_are_deduplicated_across_nodes(redis_url: str) -> None:
    channel = channel_name()
    async with open_node(redis_url) as a, open_node(redis_url) as b:
        async with a.connect() as first, b.connect() as second:
            # Anonymous clients: dedupe per connection, so use one connection twice.
            assert await publish(first, channel, 1, "same") == 1
            assert await publish(first, channel, 1, "same") == 1
            assert await publish(second, channel, 2, "same") == 2
            assert a.server.statistics().deduplicated == 1


async def test_application_publish_waits_for_redis_and_nowait_is_refused(redis_url: str) -> None:
    channel = channel_name()
    async with open_node(redis_url) as a, open_node(redis_url) as b, b.connect() as reader:
        await reader.request({"type": "subscribe", "channel": channel, "id": 1})
        assert await a.server.publish(channel, {"from": "app"}) == 1
        message = await reader.receive_type("message")
        assert (message["seq"], message["data"], message["from"]) == (1, {"from": "app"}, None)
        with pytest.raises(RuntimeError, match="in-process broker"):
            a.server.publish_nowait(channel, 1)
        stats = a.server.statistics().broker
        assert (stats.kind, stats.state, stats.buffered) == ("redis", "up", 0)


async def test_resume_is_bounded_by_history_size_with_an_exact_gap(redis_url: str) -> None:
    channel = channel_name()
    async with open_node(redis_url, history_size=3) as a, a.connect() as writer:
        async with a.connect() as first:
            reply = await first.request({"type": "subscribe", "channel": channel, "id": 1})
        for n in range(10):
            await publish(writer, channel, n, n)
        async with a.connect() as back:
            reply = await back.request(
                {
                    "type": "subscribe",
                    "channel": channel,
                    "id": 2,
                    "since": 2,
                    "epoch": reply["epoch"],
                }
            )
            assert (reply["recovered"], reply["gap"], reply["seq"]) == (False, [3, 7], 10)
            assert [(await back.receive_type("message"))["seq"] for _ in range(3)] == [8, 9, 10]


async def test_resume_from_another_epoch_is_not_recovered(redis_url: str) -> None:
    channel = channel_name()
    async with open_node(redis_url) as a, a.connect() as client:
        await publish(client, channel, 0, 0)
        reply = await client.request(
            {"type": "subscribe", "channel": channel, "id": 1, "since": 1, "epoch": "other"}
        )
        assert (reply["recovered"], reply["seq"]) == (False, 1)
        assert "gap" not in reply


def test_logged_redis_urls_hide_the_password() -> None:
    from triows._brokers.redis.broker import _safe_url

    assert _safe_url("redis://:secret@db:6379/0") == "redis://***@db:6379/0"
    assert _safe_url("redis://db:6379/0") == "redis://db:6379/0"


async def test_latencies_across_redis_are_measured(redis_url: str) -> None:
    """Publish→ack, delivery lag and Redis round trips: what /metrics and the monitor show."""
    channel = channel_name()
    async with open_node(redis_url) as a, open_node(redis_url) as b:
        async with a.connect() as reader, b.connect() as writer:
            await reader.request({"type": "subscribe", "channel": channel, "id": 1})
            for n in range(5):
                await publish(writer, channel, n, n)
            for _ in range(5):
                await reader.receive_type("message")
            acks = b.server.ack_latency
            assert acks.count == 5
            assert acks.total > 0  # waited for Redis: not the in-process zero
            assert a.server.broker.delivery_lag.count == 5
            assert b.server.broker.round_trips.count > 0
            published = await b.server.publish_message(channel, "x", idempotency_key="once")
            again = await b.server.publish_message(channel, "x", idempotency_key="once")
            assert again == published
            assert published.epoch
            assert published.seq == 6


async def test_echo_reaches_the_publisher_across_redis(redis_url: str) -> None:
    channel = channel_name()
    async with open_node(redis_url) as a, open_node(redis_url) as b:
        async with a.connect() as reader, b.connect() as writer:
            for client in (reader, writer):
                await client.request({"type": "subscribe", "channel": channel, "id": 1})
            frame = {"type": "publish", "channel": channel, "data": 1, "id": 2, "echo": True}
            await writer.send(frame)
            own = await writer.receive_type("message")
            assert (own["seq"], own["from"]) == (1, writer.welcome["data"]["clientId"])
            assert (await reader.receive_type("message"))["seq"] == 1
            await publish(writer, channel, 2, 3)  # without echo: not to itself
            assert (await reader.receive_type("message"))["seq"] == 2
            await writer.send({"type": "ping", "id": 4})
            assert (await writer.receive())["type"] == "pong"


async def test_rewind_and_history_on_another_node(redis_url: str) -> None:
    """What one node published, another rewinds and pages from the stream, by the same
    rule as in process (tests/test_control.py)."""
    channel = channel_name()
    async with (
        open_node(redis_url, history_size=10) as a,
        open_node(redis_url, history_size=10) as b,
    ):
        async with a.connect() as writer, b.connect() as late:
            seqs = [await publish(writer, channel, n, n) for n in range(12)]
            reply = await late.request({"type": "subscribe", "channel": channel, "rewind": 20})
            assert (reply["seq"], reply["rewound"]) == (12, 10)
            rewound = [await late.receive() for _ in range(10)]
            assert [m["seq"] for m in rewound] == seqs[2:]
            await publish(writer, channel, "live", "live")
            live = await late.receive()
            assert (live["seq"], live["data"]) == (13, "live")
            page = await late.request(
                {"type": "history", "channel": channel, "limit": 3, "reverse": True, "since": 12}
            )
            assert page["messages"] == rewound[-2:-5:-1]
            assert (page["seq"], page["epoch"]) == (13, reply["epoch"])


async def test_rewind_while_the_channel_moves_loses_and_doubles_nothing(redis_url: str) -> None:
    """A late joiner rewinds on one node while another publishes without pause: the rewound
    messages and the live ones meet exactly (the same care as a resume)."""
    channel = channel_name()
    async with (
        open_node(redis_url, history_size=50) as a,
        open_node(redis_url, history_size=50) as b,
    ):
        async with a.connect() as writer, b.connect() as late:
            for n in range(30):
                await publish(writer, channel, n, n)
            stop = trio.Event()

            async def keep_publishing() -> None:
                n = 30
                while not stop.is_set():
                    await publish(writer, channel, n, n)
                    n += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_publishing)
                await trio.sleep(0.05)
                reply = await late.request(
                    {"type": "subscribe", "channel": channel, "rewind": 10, "id": "r"}
                )
                await trio.sleep(0.2)
                stop.set()
            last = await publish(writer, channel, "end", "end")
            got: list[int] = []
            while not got or got[-1] != last:
                got.append((await late.receive_type("message"))["seq"])
            first = reply["seq"] - reply["rewound"] + 1
            assert reply["rewound"] >= 10
            assert got == list(range(first, last + 1))


async def test_info_travels_with_presence_between_nodes(redis_url: str) -> None:
    """A member's info, from its token, in the other node's joins, leaves and answers."""
    from .conftest import SECRET, make_token

    channel = channel_name("room")
    options: dict[str, Any] = {"jwt_secret": SECRET, "presence": ["room-*"]}
    async with open_node(redis_url, **options) as a, open_node(redis_url, **options) as b:
        async with b.connect(token=make_token("bob")) as bob:
            await bob.request({"type": "subscribe", "channel": channel})
            token = make_token("ann", info={"name": "Ann"})
            async with a.connect(token=token) as ann:
                await ann.request({"type": "subscribe", "channel": channel})
                join = await bob.receive_type("join")
                assert (join["userId"], join["info"]) == ("ann", {"name": "Ann"})
                answer = await bob.request({"type": "presence", "channel": channel})
                infos = {m["userId"]: m.get("info") for m in answer["members"]}
                assert infos == {"ann": {"name": "Ann"}, "bob": None}
            leave = await bob.receive_type("leave")
            assert (leave["userId"], leave["info"]) == ("ann", {"name": "Ann"})


async def test_numbers_redis_lost_are_not_given_again(redis_url: str) -> None:
    """Redis comes back with part of its data (a failover to a replica that lagged, a restart
    from an older file): its numbering is below what a node delivered. The node's resync
    raises it again, so the next publication is not numbered like a lost one (which the node
    would drop as a duplicate: a message acked and never delivered)."""
    channel = channel_name("lost")
    clients = Clients(redis_url, 5)
    raw = await trio.to_thread.run_sync(clients.open)
    async with open_node(redis_url) as a, open_node(redis_url) as b:
        async with a.connect() as reader, b.connect() as writer:
            await reader.request({"type": "subscribe", "channel": channel, "id": 1})
            assert [await publish(writer, channel, n, n) for n in range(5)] == [1, 2, 3, 4, 5]
            assert [m["seq"] for m in [await reader.receive_type("message") for _ in range(5)]]

            def lose_the_last_three() -> None:
                raw.hset(fmt.numbering_key(channel), "seq", 2)
                raw.xdel(fmt.stream_key(channel), "3-0", "4-0", "5-0")
                # Every pub/sub connection breaks, as in a failover: the nodes resync.
                nodes = (
                    [clients.node(n.host, n.port) for n in raw.get_primaries()]  # type: ignore[attr-defined]
                    if clients.cluster
                    else [raw]
                )
                for node in nodes:
                    node.client_kill_filter(_type="pubsub")

            await trio.to_thread.run_sync(lose_the_last_three)
            with trio.fail_after(10):
                for _ in range(500):  # node a raises it back to what it delivered
                    seq = await trio.to_thread.run_sync(raw.hget, fmt.numbering_key(channel), "seq")
                    if int(seq or 0) >= 5:
                        break
                    await trio.sleep(0.02)
                assert await publish(writer, channel, "after", "after") == 6
                message = await reader.receive_type("message")
                assert (message["seq"], message["data"]) == (6, "after")
    raw.close()


async def test_foreign_control_messages_are_skipped_and_control_goes_on(redis_url: str) -> None:
    """Whatever else publishes on the control channels (an id that is not a string, a
    request without its fields) is skipped or answered as an error; the node goes on."""
    import redis

    async with open_node(redis_url) as a, open_node(redis_url) as b:
        broker = b.server.broker
        reply = f"triows:ctl-reply:{broker.node_id}"  # type: ignore[attr-defined]
        foreign = redis.Redis.from_url(redis_url)
        try:
            for channel, data in [
                (reply, b'{"id":[1],"answer":{}}'),
                (reply, b'{"id":{"a":1}}'),
                ("triows:control", b'{"id":[1],"from":"x","req":{"op":"channels"}}'),
                ("triows:control", b'{"id":"q","from":"x","req":{"op":"disconnect"}}'),
            ]:
                await trio.to_thread.run_sync(foreign.publish, channel, data)
        finally:
            foreign.close()
        async with a.connect() as c1, b.connect() as c2:
            assert await b.server.disconnect(client=c1.client_id) == 1
            assert await a.server.disconnect(client=c2.client_id) == 1
        assert broker.malformed >= 1  # type: ignore[attr-defined]


async def test_big_control_answers_are_encoded_and_read_off_the_event_loop(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's listing of 100,000 channels is megabytes of JSON: encoded by the answering
    node and decoded by the asking one on the event loop, it stalled every connection of
    both for a quarter of a second per /api/channels."""
    import threading

    from triows._brokers.redis import control

    in_threads: dict[str, list[bool]] = {}
    for name in ("_encode_answer", "_decode_answers"):
        step = getattr(control, name)
        seen: list[bool] = []
        in_threads[name] = seen

        def watched(value: Any, step: Any = step, seen: list[bool] = seen) -> Any:
            seen.append(threading.current_thread() is not threading.main_thread())
            return step(value)

        monkeypatch.setattr(control, name, watched)
    channel = channel_name()
    async with open_node(redis_url) as a, open_node(redis_url) as b:
        async with b.connect() as member:
            await member.request({"type": "subscribe", "channel": channel})
            listed = {c["channel"]: c["subscribers"] for c in await a.server.channels()}
            assert listed[channel] == 1
    for seen in in_threads.values():
        assert seen
        assert all(seen)


async def test_a_node_loads_every_revocation_kept(redis_url: str) -> None:
    """Revocations of many users (their keys spread over every slot of a cluster) are all
    found by a node that starts later."""
    from triows._brokers.redis.control import load_revocations, store_revocation

    users = [channel_name("revoked") for _ in range(40)]
    clients = Clients(redis_url, 5)
    raw = await trio.to_thread.run_sync(clients.open)
    try:
        for n, user in enumerate(users):
            await trio.to_thread.run_sync(store_revocation, user, 1000.0 + n, 60, raw)
        found = dict(await trio.to_thread.run_sync(load_revocations, raw))
        assert {user: found.get(user) for user in users} == {
            user: 1000.0 + n for n, user in enumerate(users)
        }
    finally:
        raw.close()
