"""Presence: members, join and leave, counts only, limits; in process and across Redis."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import redis
import trio
import trio.testing

from triows._brokers.presence_answers import ANSWER_TTL
from triows._brokers.redis.clients import Clients
from triows._core import presence as core
from triows.testing import open_test_server

from .conftest import SECRET, make_token
from .test_redis_cluster import channel_name, open_node


async def test_members_join_and_leave(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(presence=["room.*"], jwt_secret=SECRET) as harness:
        async with harness.connect(token=make_token("alice")) as alice:
            await alice.request({"type": "subscribe", "channel": "room.1", "id": 1})
            async with harness.connect(token=make_token("bob")) as bob:
                await bob.request({"type": "subscribe", "channel": "room.1", "id": 1})
                joined = await alice.receive_type("join")
                assert joined == {
                    "type": "join",
                    "channel": "room.1",
                    "clientId": bob.welcome["data"]["clientId"],
                    "userId": "bob",
                }
                answer = await bob.request({"type": "presence", "channel": "room.1", "id": 2})
                assert answer["count"] == 2
                assert sorted(m["userId"] for m in answer["members"]) == ["alice", "bob"]
                # Subscribing again is no second join.
                await bob.request({"type": "subscribe", "channel": "room.1", "id": 3})
                await bob.request({"type": "unsubscribe", "channel": "room.1", "id": 4})
                left = await alice.receive_type("leave")
                assert left["userId"] == "bob"
                await bob.request({"type": "subscribe", "channel": "room.1", "id": 5})
                assert (await alice.receive_type("join"))["userId"] == "bob"
            # Bob's connection closed: a leave, and nothing else in between.
            frame = await alice.receive()
            assert (frame["type"], frame["userId"]) == ("leave", "bob")
            answer = await alice.request({"type": "presence", "channel": "room.1", "id": 6})
            assert answer["count"] == 1


async def test_presence_is_opt_in_and_needs_permission(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(presence=["room.*"], jwt_secret=SECRET) as harness:
        token = make_token("eve", channels=["public.*"])
        async with harness.connect(token=token) as eve:
            off = await eve.request({"type": "presence", "channel": "public.1", "id": 1})
            assert (off["type"], off["code"]) == ("error", 400)
            assert "presence is off for 'public.1'" in off["message"]
            refused = await eve.request({"type": "presence", "channel": "room.1", "id": 2})
            assert (refused["type"], refused["code"]) == ("error", 403)


async def test_counts_only_and_the_member_limit(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(
        presence=["small.*"], presence_counts=["big.*"], presence_max_members=2
    ) as harness:
        async with harness.connect() as a, harness.connect() as b, harness.connect() as c:
            for client in (a, b):
                await client.request({"type": "subscribe", "channel": "big.1", "id": 1})
            answer = await a.request({"type": "presence", "channel": "big.1", "id": 2})
            assert (answer["count"], answer["members"]) == (2, None)
            for client in (a, b):
                await client.request({"type": "subscribe", "channel": "small.1", "id": 3})
            assert (await a.receive_type("join"))["clientId"] == b.welcome["data"]["clientId"]
            await c.request({"type": "subscribe", "channel": "small.1", "id": 4})
            # Three members are over the limit of 2: counts only, and no join for c.
            answer = await a.request({"type": "presence", "channel": "small.1", "id": 5})
            assert (answer["count"], answer["members"]) == (3, None)
            await a.send({"type": "ping", "id": 6})
            frames = [await a.receive()]
            while frames[-1]["type"] != "pong":
                frames.append(await a.receive())
            assert [f["type"] for f in frames] == ["pong"]


@pytest.mark.real_socket
async def test_presence_across_nodes_and_a_crashed_nodes_members_expire(
    shared_redis_url: str,
) -> None:
    """On one Redis and on a Redis Cluster (where the channel's hash is on its shard and the
    events cross the cluster by classic pub/sub)."""
    redis_url = shared_redis_url
    channel = channel_name("room")
    options = {"presence": ["room*"], "presence_ttl": 0.9}
    async with open_node(redis_url, **options) as a, open_node(redis_url, **options) as b:
        async with a.connect() as on_a, b.connect() as on_b:
            await on_a.request({"type": "subscribe", "channel": channel, "id": 1})
            await on_b.request({"type": "subscribe", "channel": channel, "id": 1})
            joined = await on_a.receive_type("join")
            assert joined["clientId"] == on_b.welcome["data"]["clientId"]
            answer = await on_a.request({"type": "presence", "channel": channel, "id": 2})
            assert answer["count"] == 2
            # A member of a node that crashed: in the hash, never refreshed again.
            ghost = core.Member("ghost-client", "ghost")
            expires = a.server.now_ms() + int(ANSWER_TTL * 1000) + 500
            connection = Clients(redis_url, 5).open()  # a cluster client on a cluster
            connection.hset(
                core.key(channel), "ghost-client", core.encode_entry(expires, "dead", "ghost")
            )
            # Written behind the nodes' backs (no event): answers read from Redis are reused
            # for ANSWER_TTL at most, so it shows once that has passed.
            await trio.sleep(ANSWER_TTL)
            answer = await on_a.request({"type": "presence", "channel": channel, "id": 3})
            assert answer["count"] == 3
            with trio.fail_after(5):
                left = await on_a.receive_type("leave")
            assert (left["clientId"], left["userId"]) == (ghost.client_id, "ghost")
            assert not connection.hexists(core.key(channel), "ghost-client")
            answer = await on_b.request({"type": "presence", "channel": channel, "id": 4})
            assert answer["count"] == 2
        # on_b's connection closed on node b: node a's subscriber hears it through Redis.
        async with a.connect() as watcher:
            await watcher.request({"type": "subscribe", "channel": channel, "id": 1})
            async with b.connect() as visitor:
                await visitor.request({"type": "subscribe", "channel": channel, "id": 1})
                assert (await watcher.receive_type("join"))["clientId"] == visitor.welcome["data"][
                    "clientId"
                ]
            with trio.fail_after(5):
                left = await watcher.receive_type("leave")
            assert left["clientId"] == visitor.welcome["data"]["clientId"]
            raw = connection.hgetall(core.key(channel))
            assert {k.decode() if isinstance(k, bytes) else k for k in raw} == {
                watcher.welcome["data"]["clientId"]
            }
            connection.close()


async def test_the_python_client_sees_presence(autojump_clock: trio.testing.MockClock) -> None:
    from triows import client as wsclient

    async with open_test_server(presence=["room.*"]) as harness:
        opener = harness.listener.connect
        async with wsclient.connect("ws://triows.test/", open_stream=opener) as alice:
            subscription = await alice.subscribe("room.1")
            async with wsclient.connect("ws://triows.test/", open_stream=opener) as bob:
                await bob.subscribe("room.1")
                joined = await subscription.__anext__()
                assert isinstance(joined, wsclient.Join)
                assert joined.client_id == bob.client_id
                presence = await alice.presence("room.1")
                assert presence.count == 2
                assert presence.members is not None
                assert {m[0] for m in presence.members} == {alice.client_id, bob.client_id}
            left = await subscription.__anext__()
            assert isinstance(left, wsclient.Leave)
            with pytest.raises(wsclient.RequestError) as refused:
                await alice.presence("other")
            assert refused.value.code == 400


@pytest.mark.real_socket
def test_a_member_is_announced_each_time_it_enters_the_hash_and_only_then(redis_url: str) -> None:
    """Joins and refreshes share PUT_SCRIPT: a refresh that finds a member swept announces
    it; a join racing a refresh (or a refresh of a member present) announces nothing more."""
    channel = f"put-{secrets.token_hex(4)}"  # the session's Redis is shared
    client = redis.Redis.from_url(redis_url)
    listener = client.pubsub()
    listener.subscribe(core.EVENTS_CHANNEL)
    member = core.Member("c1", "u1")
    event = core.encode_event("join", channel, member, "node")

    def put() -> int:
        entry = core.encode_entry(10**13, "node", "u1")
        args = [core.EVENTS_CHANNEL, 60_000, "c1", entry, event]
        return int(client.eval(core.PUT_SCRIPT, 1, core.key(channel), *args))  # type: ignore[arg-type]

    try:
        assert [put(), put()] == [1, 0]
        client.hdel(core.key(channel), "c1")  # swept by another node
        assert put() == 1
        published = []
        for _ in range(50):
            message = listener.get_message(timeout=0.1)
            if message is not None and message["type"] == "message":
                published.append(message["data"])
            if len(published) == 2:
                break
        assert published == [event.encode()] * 2
    finally:
        listener.close()
        client.close()


async def test_presence_answers_cost_nothing_per_member_until_the_members_change(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_test_server(presence=["room"], presence_counts=["hall"]) as harness:
        from triows._brokers import presence_answers

        listed: list[str] = []
        real = presence_answers.local_members

        def counting(hub: Any, channel: str) -> Any:
            listed.append(channel)
            return real(hub, channel)

        monkeypatch.setattr(presence_answers, "local_members", counting)
        async with harness.connect() as a, harness.connect() as b:
            for channel in ("room", "hall"):
                await a.request({"type": "subscribe", "channel": channel})
            for n in range(5):
                answer = await b.request({"type": "presence", "channel": "room", "id": n})
                assert (answer["count"], answer["id"]) == (1, n)
                counts = await b.request({"type": "presence", "channel": "hall", "id": n})
                assert (counts["count"], counts["members"]) == (1, None)
            assert listed == ["room"]  # made once; counts only never lists anyone
            await b.request({"type": "subscribe", "channel": "room"})  # a change
            answer = await b.request({"type": "presence", "channel": "room", "id": "x"})
            assert answer["count"] == 2
            assert listed == ["room", "room"]


async def test_a_refresh_lists_a_large_channels_members_in_steps() -> None:
    """A refresh lists every member of every presence channel here: with many, it must let the
    other tasks run meanwhile, not stall the event loop."""
    from types import SimpleNamespace

    from triows import Config
    from triows._brokers.fanout import FanOut
    from triows._brokers.memory import MemoryBroker
    from triows._brokers.presence import MEMBERS_PER_STEP, Presence

    config = Config(presence=("room*",))
    fanout = FanOut(1.0)
    hub = MemoryBroker(config, fanout, epoch_prefix="t").hub

    class Member:
        principal = SimpleNamespace(user_id=None, info=None)

        def __init__(self, client_id: str) -> None:
            self.client_id = client_id

    for n in range(2 * MEMBERS_PER_STEP + 1):
        hub.subscribe(Member(f"c{n}"), "room")  # type: ignore[arg-type]
    others_ran: list[bool] = []
    seen: list[bool] = []

    class Store:
        shared, node_id = True, "here"

        def listen(self, *callbacks: Any) -> None:
            pass

        async def refresh_and_sweep(self, mine: list[Any], *rest: Any) -> Any:
            seen.append(bool(others_ran))  # before this call's first checkpoint
            assert len(mine) == 2 * MEMBERS_PER_STEP + 1
            return {"room": []}, 0

    presence = Presence(config, hub, fanout, lambda: 0, Store())  # type: ignore[arg-type]

    async def another_task() -> None:
        others_ran.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(another_task)
        await presence._refresh_and_sweep()
    assert seen == [True]


async def test_the_presence_task_sleeps_between_refreshes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With nothing to write or read, the Redis presence task waits for its next refresh: it
    must not spin (a bounded count of its steps over a minute of virtual time)."""
    from triows import Config
    from triows._brokers.fanout import FanOut
    from triows._brokers.memory import MemoryBroker
    from triows._brokers.presence import Presence

    config = Config(presence=("room*",), presence_ttl=30)
    fanout = FanOut(1.0)
    hub = MemoryBroker(config, fanout, epoch_prefix="t").hub
    refreshes: list[int] = []

    class Store:
        shared, node_id = True, "here"

        def listen(self, *callbacks: Any) -> None:
            pass

        async def refresh_and_sweep(self, *args: Any) -> Any:
            refreshes.append(1)
            return {}, 0

    presence = Presence(config, hub, fanout, lambda: 0, Store())  # type: ignore[arg-type]
    steps: list[int] = []

    class CountSteps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("Presence.run"):
                steps.append(1)
                if len(steps) > 1000:
                    scope.cancel()  # spinning: stop it, and fail below

    trio.lowlevel.add_instrument(CountSteps())
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(presence.run)
            await trio.sleep(60)
            nursery.cancel_scope.cancel()
    assert len(steps) < 100


async def test_this_nodes_own_announcements_are_not_told_twice() -> None:
    """Joins here are told at once; the same joins come back from Redis pub/sub (this node
    announced them), before or after the channel's first read: they are not news then."""
    import json
    from types import SimpleNamespace

    from triows import Config
    from triows._brokers.fanout import FanOut
    from triows._brokers.memory import MemoryBroker
    from triows._brokers.presence import Presence

    config = Config(presence=("room*",))
    fanout = FanOut(1.0)
    hub = MemoryBroker(config, fanout, epoch_prefix="t").hub
    heard: dict[str, list[tuple[str, str]]] = {}

    class Member:
        principal = SimpleNamespace(user_id=None, info=None)

        def __init__(self, client_id: str) -> None:
            self.client_id = client_id
            heard[client_id] = []

        def deliver(self, frame: bytes, *args: Any) -> bool:
            event = json.loads(frame[2:])  # a small unmasked text frame: 2 bytes of header
            heard[self.client_id].append((event["type"], event["clientId"]))
            return True

    class Store:
        shared, node_id = True, "here"

        def listen(self, on_event: Any, on_resync: Any) -> None:
            self.on_event = on_event

    store = Store()
    presence = Presence(config, hub, fanout, lambda: 0, store)  # type: ignore[arg-type]
    first, second = Member("first"), Member("second")
    for member in (first, second):
        fanout.register(member)  # type: ignore[arg-type]
        hub.subscribe(member, "room")  # type: ignore[arg-type]
        presence.joined(member, "room")  # type: ignore[arg-type]
    for member in (first, second):  # this node's announcements, back from pub/sub
        event = core.encode_event("join", "room", core.Member(member.client_id, None), "here")
        store.on_event(event.encode())
    assert heard == {"first": [("join", "second")], "second": []}
