"""The Redis broker under faults found in review: colliding dedupe keys, a link state stuck at
"down", bugs and garbage in background work, lost replies, refusals such as OOM, and a broker
that stopped. Real Redis, real time, every wait bounded.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
import trio

from triows import BrokerUnavailableError, OutcomeUnknownError
from triows._brokers.redis.broker import RedisBroker
from triows._brokers.redis.publisher import Publisher
from triows._core import redis_format as fmt

from .conftest import SECRET, make_token
from .redisserver import RedisServer
from .test_redis_cluster import channel_name, open_node, publish

pytestmark = pytest.mark.real_socket


def test_dedupe_keys_of_different_users_and_channels_never_collide() -> None:
    # User "a:b" on channel "c" and user "a" on channel "b:c" used to share "d:user:a:b:c:1".
    # The channel is the key's hash tag; the other parts are length-prefixed.
    assert fmt.dedupe_key("c", "user", "a:b", "1") != fmt.dedupe_key("b:c", "user", "a", "1")
    assert fmt.dedupe_key("c", "user", "a:b", "1") != fmt.dedupe_key("c", "user", "a", "b:1")
    assert fmt.dedupe_key("b", "user", "a", "1") == "triows:{b}:o:4:user1:a1:1"


async def test_colliding_names_are_two_publications(redis_url: str) -> None:
    base = channel_name("k")
    first_user, first_channel = f"{base}:x", f"y{base}"
    second_user, second_channel = base, f"x:y{base}"
    assert f"{first_user}:{first_channel}" == f"{second_user}:{second_channel}"
    async with open_node(redis_url, jwt_secret=SECRET) as node:
        async with (
            node.connect(token=make_token(first_user)) as first,
            node.connect(token=make_token(second_user)) as second,
            node.connect(token=make_token("reader")) as reader,
        ):
            for channel in (first_channel, second_channel):
                await reader.request({"type": "subscribe", "channel": channel, "id": channel})
            assert await publish(first, first_channel, "one", 1) == 1
            assert await publish(second, second_channel, "two", 1) == 1
            got = {(await reader.receive_type("message"))["data"] for _ in range(2)}
            assert got == {"one", "two"}


async def test_link_state_comes_back_up_after_a_transient_command_failure(
    redis_url: str,
) -> None:
    """One failed command (say an XRANGE that timed out) marks the link down; the next
    command that works, here the watchdog's ping, must mark it up again."""
    async with open_node(redis_url, redis_timeout=0.2) as node:
        broker = node.server.broker
        assert isinstance(broker, RedisBroker)
        broker._link.part_down("commands", "TimeoutError: simulated")
        assert node.server.statistics().broker.state == "down"
        with trio.fail_after(5):
            await broker.up.wait_value(True)
        assert node.server.statistics().broker.state == "up"


async def test_a_node_that_follows_no_channel_comes_back_after_an_outage(
    own_redis: RedisServer,
) -> None:
    async with open_node(own_redis.url, redis_timeout=0.2) as node:
        broker = node.server.broker
        own_redis.kill()
        with trio.fail_after(10):
            await broker.up.wait_value(False)
        await trio.sleep(1)  # several watchdog rounds fail meanwhile
        own_redis.start()
        with trio.fail_after(10):
            await broker.up.wait_value(True)
        assert node.server.statistics().broker.reconnects == 1


async def test_a_malformed_pubsub_message_is_skipped_and_counted(redis_url: str) -> None:
    channel = channel_name("bad")
    raw = redis.Redis.from_url(redis_url)
    async with open_node(redis_url) as node, node.connect() as reader, node.connect() as writer:
        await reader.request({"type": "subscribe", "channel": channel, "id": 1})
        for garbage in (b"not a header", b"\xff\xfe\n{}", b"1 e tok -\nnot json"):
            await trio.to_thread.run_sync(raw.publish, fmt.pubsub_channel(channel), garbage)
        assert await publish(writer, channel, "fine", 1) == 1
        message = await reader.receive_type("message")
        assert (message["seq"], message["data"]) == (1, "fine")
        stats = node.server.statistics().broker
        assert (stats.malformed, stats.state, stats.repairs) == (3, "up", 0)
    raw.close()


async def test_a_bug_in_the_publisher_task_restarts_it_and_loses_nothing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Publisher._send_batch
    calls = [0]

    def flaky(self: Publisher, *args: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a bug")
        return original(self, *args)

    monkeypatch.setattr(Publisher, "_send_batch", flaky)
    channel = channel_name("bug")
    async with open_node(redis_url) as node, node.connect() as writer:
        with trio.fail_after(10):
            assert await publish(writer, channel, "x", 1) == 1
        assert node.server.statistics().broker.task_failures == 1


async def test_a_resend_long_after_a_lost_reply_is_not_published_twice(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the batch, the reply was lost, and more than two minutes went by before the
    resend (emulated by deleting every key that would have expired by then)."""
    original = Publisher._send_batch
    calls = [0]

    def reply_lost(self: Publisher, batch: Any, answered: Any, client: redis.Redis) -> Any:
        results = original(self, batch, answered, client)
        calls[0] += 1
        if calls[0] == 1:
            for key in client.scan_iter(match="triows:*"):
                if 0 < client.ttl(key) <= 130:
                    client.delete(key)
            raise redis.ConnectionError("reply lost")
        return results

    monkeypatch.setattr(Publisher, "_send_batch", reply_lost)
    channel = channel_name("lost")
    async with open_node(redis_url) as node, node.connect() as reader:
        await reader.request({"type": "subscribe", "channel": channel, "id": 1})
        with trio.fail_after(10):
            assert await node.server.publish(channel, "once") == 1
            assert await node.server.publish(channel, "next") == 2
            got = [(await reader.receive_type("message"))["data"] for _ in range(2)]
        assert got == ["once", "next"]


async def test_a_publication_that_came_back_is_not_resent_to_a_redis_that_lost_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the batch and published the message (the node saw it come back), then died
    before its reply and came back without its data (no persistence: emulated by deleting
    the channel's keys and the node's pending hash). Resending would publish the message a
    second time, in the new epoch; subscribers that had it would get it twice."""
    original = Publisher._send_batch
    calls = [0]
    channel = channel_name("echoed")

    def died_after_publishing(
        self: Publisher, batch: Any, answered: Any, client: redis.Redis
    ) -> Any:
        results = original(self, batch, answered, client)
        calls[0] += 1
        if calls[0] == 1:
            for _ in range(200):  # bounded: 2 s for the message to come back by pub/sub
                if batch[0].pub.numbered is None:
                    break
                time.sleep(0.01)
            client.delete(
                fmt.numbering_key(channel),
                fmt.stream_key(channel),
                fmt.pending_key(self.node_id, channel),
            )
            raise redis.ConnectionError("Redis died before its reply")
        return results

    monkeypatch.setattr(Publisher, "_send_batch", died_after_publishing)
    async with open_node(redis_url) as node, node.connect() as reader:
        await reader.request({"type": "subscribe", "channel": channel, "id": 1})
        with trio.fail_after(10):
            assert await node.server.publish(channel, "once") == 1
            await node.server.publish(channel, "next")
            got: list[Any] = []
            while not got or got[-1] != "next":
                got.append((await reader.receive_type("message"))["data"])
        assert got == ["once", "next"]


async def test_a_node_that_stops_before_redis_answered_says_the_outcome_is_unknown(
    own_redis: RedisServer,
) -> None:
    """Sent, then the node stopped without an answer: Redis may have run it, so the publisher
    must not read it as a failure (a retry with the same key tells)."""
    channel = channel_name("unknown")
    outcome: list[BaseException] = []

    async def publish_and_keep_the_error(server: Any) -> None:
        try:
            await server.publish(channel, "x", idempotency_key="k")
        except BrokerUnavailableError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        async with open_node(own_redis.url, redis_timeout=0.2) as node:
            await node.server.publish(channel, "first")  # the script is loaded
            own_redis.kill()
            with trio.fail_after(10):
                await node.server.broker.up.wait_value(False)
            nursery.start_soon(publish_and_keep_the_error, node.server)
            buffer = node.server.broker._publisher.buffer  # type: ignore[attr-defined]
            for _ in range(200):  # bounded: until the publisher tried to send it
                if buffer and buffer[0].sent:
                    break
                await trio.sleep(0.02)
    assert len(outcome) == 1
    assert isinstance(outcome[0], OutcomeUnknownError), outcome


async def test_redis_out_of_memory_holds_publications_and_hides_its_text(
    own_redis: RedisServer,
) -> None:
    channel = channel_name("oom")
    raw = redis.Redis.from_url(own_redis.url)
    async with open_node(own_redis.url, redis_timeout=0.3) as node, node.connect() as writer:
        assert await publish(writer, channel, "before", 1) == 1
        await trio.to_thread.run_sync(raw.config_set, "maxmemory", 1)
        await writer.send({"type": "publish", "channel": channel, "data": "held", "id": 2})
        with trio.fail_after(10):
            await node.server.broker.up.wait_value(False)
        assert "OutOfMemoryError" in node.server.broker._link.down["publish"]  # type: ignore[attr-defined]
        await trio.to_thread.run_sync(raw.config_set, "maxmemory", 0)
        with trio.fail_after(10):
            reply = await writer.receive()
        assert reply == {"type": "ack", "id": 2, "seq": 2}
    raw.close()


async def test_publish_after_the_broker_stopped_raises_instead_of_waiting(
    redis_url: str,
) -> None:
    async with open_node(redis_url) as node:
        server = node.server
    with trio.fail_after(5), pytest.raises(BrokerUnavailableError):
        await server.publish(channel_name("late"), "x")


async def test_a_publication_redis_refuses_for_good_is_500_without_redis_text(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        fmt, "PUBLISH_SCRIPT", "return redis.error_reply('ERR internal detail 10.0.0.7')"
    )
    async with open_node(redis_url) as node, node.connect() as writer:
        reply = await writer.request(
            {"type": "publish", "channel": channel_name("bad"), "data": 1, "id": 1}
        )
        assert reply == {"type": "error", "code": 500, "message": "internal error", "id": 1}


async def test_a_batch_in_a_thread_when_the_broker_stops_is_unknown_not_unsent(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops while the publisher's thread holds a batch it has not sent yet: trio
    abandons the thread, which goes on and sends it. "Not sent" (503, nothing was done) would
    be a lie then; the outcome is unknown."""
    channel = channel_name("stopping")
    entered, gate = threading.Event(), threading.Event()
    real_send = Publisher._send_batch

    def send(
        self: Publisher, batch: list[Any], answered: list[tuple[str, str]], client: Any
    ) -> Any:
        if any(pending.pub.channel == channel for pending in batch):
            entered.set()
            gate.wait(5)  # the thread is slow to start sending
        return real_send(self, batch, answered, client)

    monkeypatch.setattr(Publisher, "_send_batch", send)
    outcome: list[Exception] = []

    async def publish_and_keep_the_error(server: Any) -> None:
        try:
            await server.publish(channel, "x", idempotency_key="k")
        except BrokerUnavailableError as exc:
            outcome.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with open_node(redis_url) as node:
                nursery.start_soon(publish_and_keep_the_error, node.server)
                await trio.to_thread.run_sync(entered.wait, 5)
            gate.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], OutcomeUnknownError), outcome
    raw = redis.Redis.from_url(redis_url)
    for _ in range(100):  # and it was published indeed, by the abandoned thread
        if raw.xlen(fmt.stream_key(channel)):
            break
        await trio.sleep(0.02)
    assert raw.xlen(fmt.stream_key(channel)) == 1
    raw.close()


async def test_a_copy_of_a_failed_attempt_that_runs_late_publishes_nothing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch ran in Redis but its reply was lost (a timeout: Redis was stopped); the resend
    finds it done. A copy of that first attempt may still run later (a stopped Redis reads it
    when it resumes, after the node's next batches): it must find the publication done too,
    not publish it a second time (its pending field used to go with the next batch)."""
    channel = channel_name("late-copy")
    real_send = Publisher._send_batch
    first: list[tuple[Any, ...]] = []

    def send(
        self: Publisher, batch: list[Any], answered: list[tuple[str, str]], client: Any
    ) -> Any:
        sent, results = real_send(self, batch, answered, client)
        if not first and any(pending.pub.channel == channel for pending in sent):
            pending = sent[-1]
            first.append((pending.keys, pending.args, self._publish_sha))
            raise redis.ConnectionError("the reply was lost")  # Redis did run it
        return sent, results

    monkeypatch.setattr(Publisher, "_send_batch", send)
    async with open_node(redis_url, redis_timeout=0.3) as node:
        server = node.server
        with trio.fail_after(10):
            assert await server.publish(channel, "once") == 1
            assert await server.publish(channel, "next") == 2  # a later batch
            assert await server.publish(channel, "and next") == 3
        keys, args, sha = first[0]
        raw = redis.Redis.from_url(redis_url)
        late = await trio.to_thread.run_sync(
            lambda: raw.evalsha(sha, len(keys), *keys, *args, -1, "", fmt.PUBLISH)
        )
        assert [int(late[0]), int(late[2])] == [1, 1]  # done already: seq 1, a duplicate
        assert raw.xlen(fmt.stream_key(channel)) == 3
        raw.close()


async def test_nodes_of_the_old_key_layout_are_reported(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A node of a version before Redis Cluster support follows ``triows:m:<channel>``: it
    numbers channels apart from this version, so a new node says so at start."""
    old_node = redis.Redis.from_url(redis_url).pubsub()
    old_node.subscribe("triows:m:" + channel_name("old"))
    try:
        async with open_node(redis_url):
            pass
    finally:
        old_node.close()
    assert any("key layout 1" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
