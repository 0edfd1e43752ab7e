"""Deferred writes: frames a connection would have written at once go out in the flusher's
batch (triows._server.flusher), in order, and nothing the old path sent is lost, reordered,
dropped by a policy or made a slow consumer by the deferral."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from wsproto.events import TextMessage

import triows
from triows import SlowConsumerPolicy
from triows._core import protocol
from triows._core.frames import PING, frame, text_frame
from triows._server.connection import Connection
from triows._server.flusher import FLUSHES_PER_STEP, Flusher
from triows._server.outbound import DEFER_MAX
from triows.testing import open_test_server

from .rawclient import RawClient
from .wireclient import TEXT, WireClient, encode_frame

QUIET: dict[str, Any] = {"heartbeat_interval": 1000}


def server_side(harness: Any) -> Connection:
    (conn,) = [c for c in harness.server.connections() if isinstance(c, Connection)]
    return conn


def burst(client: RawClient, *frames: dict[str, Any]) -> bytes:
    """Several requests as one write: the server's reader serves them in one step."""
    return b"".join(client.ws.send(TextMessage(data=json.dumps(f))) for f in frames)


async def test_replies_deliveries_and_pings_keep_their_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(**QUIET) as harness:
        client = await RawClient.connect(harness.listener)
        await client.subscribe("c")
        conn = server_side(harness)
        flushed = harness.server.flusher.flushed
        await client.stream.send_all(
            burst(
                client,
                {"type": "ping", "id": "a"},
                {"type": "publish", "channel": "c", "data": 1, "id": "b", "echo": True},
                {"type": "ping", "id": "c"},
            )
        )
        # A heartbeat ping and two replies made in one synchronous step: one batch.
        await trio.testing.wait_all_tasks_blocked()
        conn.queue_reply({"type": "x", "n": 1})
        conn._send(frame(PING, b"hb"))
        conn.queue_reply({"type": "x", "n": 2})
        assert conn._deferred is not None  # deferred, not written yet
        await client.read_until(lambda c: len(c.of_type("x")) == 2)
        kinds = [(m["type"], m.get("id", m.get("n"))) for m in client.messages[2:]]
        assert kinds == [
            ("pong", "a"),
            ("message", kinds[1][1]),
            ("ack", "b"),
            ("pong", "c"),
            ("x", 1),
            ("x", 2),
        ]
        assert harness.server.flusher.flushed > flushed  # they did go through the flusher


@pytest.mark.real_socket
async def test_heartbeat_ping_between_deferred_replies_stays_between() -> None:
    """The server's own ping takes the same deferred path: a client reading raw frames sees
    reply, ping, reply, in that order."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            triows.serve, triows.Config(port=0, host="127.0.0.1", heartbeat_interval=1000)
        )
        client = await WireClient.connect(server.port)
        client.answer_pings = False
        (conn,) = server.connections()
        assert isinstance(conn, Connection)
        conn.queue_reply({"type": "x", "n": 1})
        conn._send(frame(PING, b"hb"))
        conn.queue_reply({"type": "x", "n": 2})
        await client.read_until(lambda c: len(c.texts()) == 3)
        opcodes = [(op, payload[:12]) for op, payload in client.frames[1:]]
        assert [op for op, _ in opcodes] == [TEXT, 0x9, TEXT]
        await server.aclose()


async def test_error_reply_then_close_reaches_the_peer_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(**QUIET) as harness:
        client = await RawClient.connect(harness.listener)
        # A request and then a protocol violation (an unmasked client frame) in one write:
        # the pong is deferred, and the reader ends the connection with 1002 in the same step.
        request = burst(client, {"type": "ping", "id": "before"})
        await client.stream.send_all(request + b"\x81\x02hi")
        code = await client.read_until_closed()
        assert code == 1002
        assert [m.get("id") for m in client.of_type("pong")] == ["before"]


async def test_goodbye_sends_deferred_frames_the_flusher_never_reached(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Whatever the close (here 1008, no drain), frames deferred but never attempted go out
    before the close frame, even if the flusher has not come round."""
    async with open_test_server(**QUIET) as harness:
        client = await RawClient.connect(harness.listener)
        conn = server_side(harness)
        stalled = Flusher()
        stalled.running = True  # says it runs, never flushes
        conn._flusher = stalled
        conn.queue_reply(protocol.error_frame(protocol.FORBIDDEN, "no", "r1"))
        conn.close(1008, "Token expired")
        assert await client.read_until_closed() == 1008
        assert [m.get("id") for m in client.of_type("error")] == ["r1"]


async def test_partial_write_queues_the_tail_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(buffer_size=2048, outbox_size=2, **QUIET) as harness:
        client = await RawClient.connect(harness.listener)
        conn = server_side(harness)
        frames = [
            text_frame(json.dumps({"type": "x", "n": n, "p": "y" * 900}).encode()) for n in range(5)
        ]
        for data in frames:  # 5 x ~930 bytes: the 2 KiB buffer cuts the third
            conn.queue_reply(data)
        await trio.testing.wait_all_tasks_blocked()
        # The flusher wrote what fitted; the cut frame's tail and the rest wait, in order
        # (replies: kept over capacity), for the writer.
        assert conn._tail_queued or conn.ws.writing
        assert conn.close_code is None
        await client.read_until(lambda c: len(c.of_type("x")) == 5)
        assert [m["n"] for m in client.of_type("x")] == list(range(5))
        assert harness.server.statistics().dropped == 0


async def test_refused_deliveries_keep_their_channel_policy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Deliveries deferred together and refused at the flush are queued by the channel's
    rules, as if each had been written then: a stalled `disconnect` subscriber is closed."""
    async with open_test_server(
        buffer_size=2048,
        outbox_size=2,
        slow_consumer=SlowConsumerPolicy.DISCONNECT,
        **QUIET,
    ) as harness:
        stalled = await RawClient.connect(harness.listener)
        await stalled.subscribe("c")
        requests = [
            {"type": "publish", "channel": "c", "data": {"n": n, "p": "p" * 30}, "id": n}
            for n in range(18)
        ]
        publisher = await RawClient.connect(harness.listener)
        data = burst(publisher, *requests)
        # One read (under the 2 KiB buffer) of 18 publishes, served in one step: their ~3.6 KB
        # of deliveries to the stalled subscriber are deferred together, refused at the flush
        # past the socket's 2 KiB, and then meet its outbox of 2.
        assert len(data) < 2048
        await publisher.stream.send_all(data)
        await publisher.read_until(lambda c: len(c.of_type("ack")) == 18)
        assert DEFER_MAX > 18 * 250
        assert await stalled.read_until_closed() == 1013
        assert harness.server.statistics().slow_consumer_disconnects == 1


@pytest.mark.parametrize(
    "limits",
    [{"outbox_size": 1}, {"outbox_max_bytes": 1}],
    ids=["outbox_size=1", "outbox_max_bytes=1"],
)
@pytest.mark.parametrize("policy", list(SlowConsumerPolicy))
async def test_tiny_outbox_drops_nothing_the_socket_had_room_for(
    autojump_clock: trio.testing.MockClock, limits: dict[str, Any], policy: SlowConsumerPolicy
) -> None:
    """A reply and deliveries deferred in one batch: the socket has room for all, so none is
    dropped and nobody is a slow consumer, as when each was written at once."""
    async with open_test_server(slow_consumer=policy, **limits, **QUIET) as harness:
        client = await RawClient.connect(harness.listener)
        await client.subscribe("c")
        await client.stream.send_all(
            burst(
                client,
                {"type": "ping", "id": "p"},
                *(
                    {"type": "publish", "channel": "c", "data": n, "id": n, "echo": True}
                    for n in range(5)
                ),
            )
        )
        await client.read_until(lambda c: len(c.of_type("ack")) == 5)
        await client.read_until(lambda c: len(c.of_type("message")) == 5)
        stats = harness.server.statistics()
        assert stats.dropped == 0
        assert stats.slow_consumer_disconnects == 0
        assert [m["data"] for m in client.of_type("message")] == list(range(5))


async def test_a_flush_that_fails_closes_that_connection_only(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_test_server(**QUIET) as harness:
        broken = await RawClient.connect(harness.listener)
        broken_conn = server_side(harness)
        async with harness.connect() as healthy:
            flush = Connection.flush_deferred

            def fail_for_one(self: Connection) -> None:
                if self is broken_conn:
                    raise RuntimeError("a bug in a flush")
                flush(self)

            monkeypatch.setattr(Connection, "flush_deferred", fail_for_one)
            await broken.send({"type": "ping", "id": 1})
            assert await broken.read_until_closed() == 1011
            # The flusher goes on for everyone else.
            flushed = harness.server.flusher.flushed
            for n in range(3):
                reply = await healthy.request({"type": "ping", "id": n})
                assert reply["type"] == "pong"
            assert harness.server.flusher.flushed > flushed
            assert harness.server.flusher.running


async def test_a_crashed_flusher_is_restarted_and_nothing_hangs_meanwhile(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_test_server(**QUIET) as harness:
        flusher = harness.server.flusher
        async with harness.connect() as client:
            original = Flusher._wait
            crashes = 0

            async def crash_once(self: Flusher) -> None:
                nonlocal crashes
                if crashes == 0:
                    crashes += 1
                    raise RuntimeError("a bug in the flusher")
                await original(self)

            monkeypatch.setattr(Flusher, "_wait", crash_once)
            # The crash happens the next time the flusher waits: after this request's flush.
            assert (await client.request({"type": "ping", "id": 0}))["type"] == "pong"
            await trio.testing.wait_all_tasks_blocked()
            assert crashes == 1
            assert harness.server.statistics().task_failures == 1
            assert not flusher.running  # writes go out at once while it waits to restart
            assert (await client.request({"type": "ping", "id": 1}))["type"] == "pong"
            await trio.sleep(60)  # past any restart backoff
            assert flusher.running
            flushed = flusher.flushed
            assert (await client.request({"type": "ping", "id": 2}))["type"] == "pong"
            assert flusher.flushed > flushed


async def test_shutdown_sends_deferred_replies_before_1001(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(**QUIET) as harness:
        client = await RawClient.connect(harness.listener)
        conn = server_side(harness)
        conn.queue_reply({"type": "x", "n": 1})
        conn.queue_reply({"type": "x", "n": 2})
        assert conn._deferred is not None
        await harness.server.aclose()
        assert await client.read_until_closed() == 1001
        assert [m["n"] for m in client.of_type("x")] == [1, 2]


async def test_cancelled_server_sends_deferred_replies_before_1001(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No aclose(): the server's nursery is cancelled; the flusher is cancelled with it and
    still owes (and sends) what was deferred, then the goodbye's 1001."""
    listener = triows.testing.MemoryListener()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: triows.serve(
                triows.Config(heartbeat_interval=1000),
                listeners=[listener],
                task_status=task_status,
            )
        )
        client = await RawClient.connect(listener)
        (conn,) = server.connections()
        conn.queue_reply({"type": "x", "n": 1})
        conn.queue_reply({"type": "x", "n": 2})
        nursery.cancel_scope.cancel()
    assert await client.read_until_closed() == 1001
    assert [m["n"] for m in client.of_type("x")] == [1, 2]


@pytest.mark.real_socket
async def test_many_connections_get_every_reply_in_order_over_tcp() -> None:
    """Real sockets: 20 clients each write 100 requests at once; every reply comes, in order,
    through the flusher, and every byte parses as whole server frames."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            triows.serve,
            triows.Config(port=0, host="127.0.0.1", publish_rate=0, heartbeat_interval=1000),
        )
        flushed = server.flusher.flushed

        async def one(index: int) -> None:
            client = await WireClient.connect(server.port)
            frames = []
            for n in range(100):
                kind = n % 3
                if kind == 0:
                    frames.append({"type": "ping", "id": n})
                elif kind == 1:
                    frames.append({"type": "publish", "channel": f"c{index}", "data": n, "id": n})
                else:
                    frames.append({"type": "unsubscribe", "channel": f"c{index}", "id": n})
            await client.send_raw(
                b"".join(encode_frame(TEXT, json.dumps(f).encode()) for f in frames)
            )
            await client.read_until(lambda c: len(c.texts()) == 101)
            assert [t.get("id") for t in client.texts()[1:]] == list(range(100))
            await client.aclose()

        async with trio.open_nursery() as clients:
            for index in range(20):
                clients.start_soon(one, index)
        assert server.flusher.flushed > flushed
        await server.aclose()
        nursery.cancel_scope.cancel()


class _Fake:
    def __init__(self, on_flush: Any = None) -> None:
        self.flushed = 0
        self.on_flush = on_flush

    def flush_deferred(self) -> None:
        self.flushed += 1
        if self.on_flush is not None:
            self.on_flush()

    def flush_failed(self) -> None:  # pragma: no cover - not called here
        raise AssertionError


async def test_a_cancelled_flusher_flushes_what_is_registered_before_it_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelled between two steps of a long list, the flusher still writes the rest
    (synchronously, in its finally) and lets nothing defer to it any more."""
    flusher = Flusher()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run)
        await trio.testing.wait_all_tasks_blocked()
        assert flusher.running
        first = _Fake(on_flush=nursery.cancel_scope.cancel)
        rest = [_Fake() for _ in range(FLUSHES_PER_STEP)]
        for conn in [first, *rest]:
            flusher.register(conn)
    assert not flusher.running
    assert [conn.flushed for conn in [first, *rest]] == [1] * (FLUSHES_PER_STEP + 1)


async def test_the_flusher_lets_others_run_between_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Thousands of connections to flush are served FLUSHES_PER_STEP at a time, with a
    checkpoint between (another task gets its turn), never in one stall."""
    flusher = Flusher()
    ticks = 0
    seen: list[int] = []

    async def other_task() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(other_task)
        conns = [_Fake(on_flush=lambda: seen.append(ticks)) for _ in range(5 * FLUSHES_PER_STEP)]
        for conn in conns:
            flusher.register(conn)
        while len(seen) < len(conns):
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    assert [conn.flushed for conn in conns] == [1] * len(conns)
    # The other task runs once per scheduler batch, before or after the flusher: five steps
    # span at least three of its turns, and no turn sees more than two steps' flushes.
    assert seen[-1] - seen[0] >= 3
    assert max(seen.count(tick) for tick in set(seen)) <= 2 * FLUSHES_PER_STEP


async def test_a_flush_that_finds_a_slow_consumer_offers_it_nothing_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """More than DEFER_MAX delivered to a stalled `disconnect` subscriber in one step: the
    deferred frames are written at once, the socket refuses most, the outbox of 1 overflows
    and the subscriber is closed there. The frame that made the flush is offered nothing
    more (as `deliver` does for a closed connection): one slow consumer, counted once."""
    async with open_test_server(
        buffer_size=2048,
        outbox_size=1,
        slow_consumer=SlowConsumerPolicy.DISCONNECT,
        **QUIET,
    ) as harness:
        stalled = await RawClient.connect(harness.listener)
        await stalled.subscribe("c")
        conn = server_side(harness)
        server = harness.server
        pad = "p" * 1000
        count = DEFER_MAX // 1000 + 2
        for n in range(count):  # one synchronous step: every delivery would be deferred
            server.publish_nowait("c", {"n": n, "p": pad})
            if conn.close_code is not None:
                break
        assert conn.close_code == 1013
        assert server.statistics().slow_consumer_disconnects == 1
        assert await stalled.read_until_closed() == 1013
        assert server.statistics().slow_consumer_disconnects == 1


async def test_a_bug_that_ends_the_flusher_mid_batch_leaves_no_connection_waiting(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever ends the flusher's task in the middle of a batch (here a bug in closing a
    connection whose flush failed), the connections after it in that batch are still
    flushed on the way out: none keeps frames deferred to a flush that never comes."""
    async with open_test_server(**QUIET) as harness:
        first = await RawClient.connect(harness.listener)
        second = await RawClient.connect(harness.listener)
        first_conn, second_conn = sorted(
            (c for c in harness.server.connections() if isinstance(c, Connection)),
            key=lambda c: c.connected_at,
        )
        flush = Connection.flush_deferred

        def fail_for_first(self: Connection) -> None:
            if self is first_conn:
                raise RuntimeError("a bug in a flush")
            flush(self)

        def fail_to_close(self: Connection) -> None:
            raise RuntimeError("a bug in closing it")

        monkeypatch.setattr(Connection, "flush_deferred", fail_for_first)
        monkeypatch.setattr(Connection, "flush_failed", fail_to_close)
        first_conn.queue_reply({"type": "x", "n": 1})
        second_conn.queue_reply({"type": "x", "n": 2})  # the same batch, after the first
        with trio.fail_after(5):
            await second.read_until(lambda c: c.of_type("x"))
        assert [m["n"] for m in second.of_type("x")] == [2]
        assert second_conn._deferred is None
        del first
