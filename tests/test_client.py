"""triows.client against the real server on in-memory streams, in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from triows import client as wsclient
from triows.testing import MemoryStream, TestServer, open_test_server

from .conftest import SECRET, make_token

URL = "ws://triows.test/"


class Cutter:
    """Opens client streams to a test server and can cut the current one at any moment."""

    def __init__(self, harness: TestServer) -> None:
        self.harness = harness
        self.current: MemoryStream | None = None
        self.refuse = 0  # refuse this many next connection attempts
        self.attempts = 0
        self.eat_next_ack = False  # cut the link instead of delivering the next ack
        self.mute_after_welcome = False  # the next connection hears nothing after its welcome

    async def open(self) -> trio.abc.Stream:
        self.attempts += 1
        if self.refuse:
            self.refuse -= 1
            raise ConnectionRefusedError("refused by the test")
        stream = self.current = await self.harness.listener.connect()
        pipe = stream._in  # server -> client
        write_some = pipe.write_some

        def maybe_eat(data: bytes | memoryview) -> int:
            if self.eat_next_ack and b'"type":"ack"' in bytes(data):
                self.eat_next_ack = False
                pipe.closed = True  # the ack is lost with the link
                stream._out.eof = True
                pipe.eof = True
                pipe.readable.unpark_all()
                stream._out.readable.unpark_all()
                return len(data)
            return write_some(data)

        pipe.write_some = maybe_eat  # type: ignore[method-assign]
        if self.mute_after_welcome:
            self.mute_after_welcome = False

            welcomed = False

            def until_welcome(data: bytes | memoryview) -> int:
                nonlocal welcomed
                if welcomed:
                    return len(data)  # lost on the way
                welcomed = b'"type":"welcome"' in bytes(data)
                return write_some(data)

            pipe.write_some = until_welcome  # type: ignore[method-assign]
        return stream

    def freeze(self) -> None:
        """From now on nothing the server sends reaches the client (a silent dead link)."""
        assert self.current is not None
        self.current._in.write_some = lambda data: len(data)  # type: ignore[method-assign]

    async def cut(self) -> None:
        if self.current is not None:
            await trio.aclose_forcefully(self.current)


@asynccontextmanager
async def client_for(
    harness: TestServer, cutter: Cutter | None = None, **options: Any
) -> AsyncIterator[wsclient.Client]:
    opener = (cutter or Cutter(harness)).open
    async with wsclient.connect(URL, open_stream=opener, **options) as client:
        with trio.fail_after(60):
            await client.wait_open()
        yield client


@asynccontextmanager
async def subscribed_reader(harness: TestServer) -> AsyncIterator[wsclient.Subscription]:
    """An authenticated client following channel "c"."""
    async with client_for(harness, token=make_token("reader")) as reader:
        yield await reader.subscribe("c")


async def collect(subscription: wsclient.Subscription, until_seq: int) -> list[Any]:
    events: list[Any] = []
    with trio.fail_after(300):
        async for event in subscription:
            events.append(event)
            if isinstance(event, wsclient.Message) and event.seq >= until_seq:
                return events
    raise AssertionError(f"subscription ended after {events}")


async def test_subscribe_publish_and_ack(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with client_for(harness) as reader, client_for(harness) as writer:
            subscription = await reader.subscribe("news")
            assert await writer.publish("news", {"h": 1}) == 1
            assert await writer.publish("news", {"h": 2}) == 2
            events = await collect(subscription, 2)
            assert [(e.seq, e.data) for e in events] == [(1, {"h": 1}), (2, {"h": 2})]
            assert events[0].sender == writer.client_id


async def test_states_and_refused_requests(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        token = make_token(channels=["ok"])
        async with client_for(harness, token=token) as client:
            assert client.state.value is wsclient.ClientState.OPEN
            await client.subscribe("ok")
            with pytest.raises(wsclient.RequestError) as info:
                await client.subscribe("secret")
            assert info.value.code == 403
        # mypy keeps the narrowing from before the awaits above
        assert client.state.value is wsclient.ClientState.CLOSED  # type: ignore[comparison-overlap]
        with pytest.raises(wsclient.ClientClosedError):
            await client.publish("ok", 1)


async def test_permanent_rejection_closes_the_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        async with wsclient.connect(
            URL, token="bad", open_stream=harness.listener.connect
        ) as client:
            with pytest.raises(wsclient.ClientClosedError, match="HTTP 401"):
                await client.wait_open()
            with pytest.raises(wsclient.ClientClosedError, match="HTTP 401"):
                await client.publish("x", 1)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.floats(0.05, 9.5), max_size=4), history=st.sampled_from([3, 1000]))
def test_no_loss_no_duplicate_across_cuts(cuts: list[float], history: int) -> None:
    """A stream of 100 messages, the subscriber's connection cut at random moments: it sees
    every message once and in order while history covers the outage, and a reported gap
    (never a silent hole) when it does not."""
    total = 100

    async def scenario() -> None:
        async with open_test_server(history_size=history) as harness:
            cutter = Cutter(harness)
            async with client_for(harness, cutter, backoff_base=0.2, backoff_cap=1) as client:
                subscription = await client.subscribe("feed")
                async with trio.open_nursery() as nursery:

                    async def publish() -> None:
                        for n in range(total):
                            await harness.server.publish("feed", n)
                            await trio.sleep(0.1)

                    async def cut() -> None:
                        start = trio.current_time()
                        for at in sorted(cuts):
                            await trio.sleep_until(start + at)
                            await cutter.cut()

                    nursery.start_soon(publish)
                    nursery.start_soon(cut)
                    with trio.fail_after(120):
                        events = await collect(subscription, total)
            messages = [e.seq for e in events if isinstance(e, wsclient.Message)]
            gaps = [e for e in events if isinstance(e, wsclient.Gap)]
            assert messages == sorted(set(messages))  # in order, no duplicate
            covered = set(messages)
            for gap in gaps:
                assert gap.first is not None
                assert gap.last is not None
                covered |= set(range(gap.first, gap.last + 1))
            assert covered == set(range(1, total + 1))  # nothing silently missing
            if history == 1000:
                assert messages == list(range(1, total + 1))
                assert gaps == []

    # One virtual-time run per example (pytest-trio's fixtures do not mix with @given).
    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_publishes_while_offline_are_sent_once_after_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        async with subscribed_reader(harness) as subscription:
            cutter = Cutter(harness)
            async with client_for(
                harness, cutter, token=make_token("writer"), backoff_base=1, backoff_cap=2
            ) as writer:
                cutter.refuse = 3
                await cutter.cut()
                await writer.state.wait_value(wsclient.ClientState.RECONNECTING)
                async with trio.open_nursery() as nursery:
                    seqs: list[int] = []

                    async def publish(n: int) -> None:
                        seqs.append(await writer.publish("c", n))

                    for n in range(5):
                        nursery.start_soon(publish, n)
                        await trio.sleep(0.01)
                assert sorted(seqs) == [1, 2, 3, 4, 5]
                assert cutter.attempts >= 4
            events = await collect(subscription, 5)
            assert [e.data for e in events] == [0, 1, 2, 3, 4]


async def test_unacked_publish_is_resent_and_delivered_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        async with subscribed_reader(harness) as subscription:
            cutter = Cutter(harness)
            async with client_for(harness, cutter, token=make_token("w")) as writer:
                cutter.eat_next_ack = True
                assert await writer.publish("c", "once") == 1
                assert writer.connects == 2
                assert await writer.publish("c", "next") == 2
            events = await collect(subscription, 2)
            assert [e.data for e in events] == ["once", "next"]
        assert harness.server.statistics().published == 2


async def test_offline_queue_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        cutter = Cutter(harness)
        cutter.refuse = 1000
        async with wsclient.connect(
            URL, open_stream=cutter.open, offline_queue_size=2, publish_timeout=5
        ) as client:
            async with trio.open_nursery() as nursery:
                for n in range(2):
                    nursery.start_soon(client.publish, "c", n)
                await trio.sleep(0.1)
                with pytest.raises(wsclient.OfflineQueueFullError):
                    await client.publish("c", 3)
                nursery.cancel_scope.cancel()


async def test_publish_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        cutter = Cutter(harness)
        cutter.refuse = 1000
        async with wsclient.connect(URL, open_stream=cutter.open, publish_timeout=3) as client:
            start = trio.current_time()
            with pytest.raises(wsclient.PublishTimeoutError):
                await client.publish("c", 1)
            assert trio.current_time() - start == pytest.approx(3)
            assert not len(client._publishes)  # a timed-out, never-sent publish is not sent later


async def test_max_attempts(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        cutter = Cutter(harness)
        cutter.refuse = 1000
        async with wsclient.connect(URL, open_stream=cutter.open, max_attempts=3) as client:
            await client.state.wait_value(wsclient.ClientState.CLOSED)
            assert cutter.attempts == 3  # three failed attempts in a row, as in triows.js


async def test_adaptive_heartbeat_and_missed_pong(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(heartbeat_interval=1000, idle_timeout=0) as harness:
        cutter = Cutter(harness)
        async with client_for(harness, cutter, ping_min=1, ping_max=8, ping_timeout=2) as client:
            await trio.sleep(60)
            assert client.heartbeat.value == 8  # a healthy link is pinged rarely
            assert client.connects == 1
            cutter.freeze()  # the server's pongs stop arriving
            await trio.sleep(8 + 2 + 1)
            assert client.connects == 2  # a missed pong reconnected it
            assert client.heartbeat.value == 4


async def test_pool_round_robin(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with wsclient.open_pool(URL, size=3, open_stream=harness.listener.connect) as pool:
            for member in pool.clients:
                await member.state.wait_value(wsclient.ClientState.OPEN)
            seqs = [await pool.publish("c", n) for n in range(6)]
            assert seqs == [1, 2, 3, 4, 5, 6]
            stats = harness.server.connection_statistics()
            assert sorted(s.frames_in for s in stats) == [2, 2, 2]


async def test_closing_the_client_closes_cleanly(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with client_for(harness) as client:
            await client.subscribe("c")
            start = trio.current_time()
        # The server got a close frame (not a dropped socket) and answered it at once.
        assert trio.current_time() - start < 0.5
        await trio.sleep(0.01)
        stats = harness.server.statistics()
        assert (stats.connections, stats.closed_by_server) == (0, {})


async def test_resubscribe_refused_after_reconnect_ends_the_subscription_with_the_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    allowed = {"c"}

    def authorize(principal: object, action: object, channel: str) -> bool:
        return channel in allowed

    async with open_test_server(authorize=authorize) as harness:
        cutter = Cutter(harness)
        async with client_for(harness, cutter) as client:
            subscription = await client.subscribe("c")
            await harness.server.publish("c", "before")
            first = await subscription.__anext__()
            assert isinstance(first, wsclient.Message)
            assert first.data == "before"
            allowed.clear()  # e.g. the user's access was revoked
            await cutter.cut()
            with pytest.raises(wsclient.RequestError) as info:
                await subscription.__anext__()
            assert info.value.code == 403
            assert client.state.value is wsclient.ClientState.OPEN  # the client carries on


async def test_a_client_that_gives_up_ends_its_subscriptions_with_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        cutter = Cutter(harness)
        async with client_for(harness, cutter, max_attempts=2) as client:
            subscription = await client.subscribe("c")
            cutter.refuse = 1000
            await cutter.cut()
            with pytest.raises(wsclient.ClientClosedError, match="gave up after 2"):
                await subscription.__anext__()


async def test_backoff_restarts_after_a_successful_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each link dies by a missed pong (an error, not a clean close): more deaths than
    max_attempts must not exhaust the client, since every reconnect got through."""
    async with open_test_server(heartbeat_interval=1000) as harness:
        cutter = Cutter(harness)
        async with client_for(
            harness,
            cutter,
            backoff_base=1,
            backoff_cap=1000,
            max_attempts=3,
            ping_min=1,
            ping_max=1,
            ping_timeout=1,
        ) as client:
            for round_ in range(6):
                cutter.freeze()
                with trio.fail_after(5):  # ping 1 s + timeout 1 s + attempt-0 backoff <= 1 s
                    await client.state.wait_value(wsclient.ClientState.RECONNECTING)
                    await client.wait_open()
                assert client.connects == round_ + 2


async def test_token_function_renews_expiring_tokens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    import time

    issued: list[str] = []

    async def fresh_token() -> str:
        token = make_token("renewing", exp=int(time.time() + trio.current_time()) + 60)
        issued.append(token)
        return token

    def wall_clock() -> float:  # the server's clock follows virtual time
        return time.time() + trio.current_time()

    from triows import Config, serve
    from triows.testing import MemoryListener

    listener = MemoryListener()
    config = Config(jwt_secret=SECRET, heartbeat_interval=1000, idle_timeout=0)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve(
                config, listeners=[listener], wall_clock=wall_clock, task_status=task_status
            )
        )
        async with wsclient.connect(
            URL, token=fresh_token, open_stream=listener.connect, backoff_base=0.1
        ) as client:
            await client.wait_open()
            await trio.sleep(200)  # three expiries: closed with 1008, back with a new token
            assert client.state.value is wsclient.ClientState.OPEN
            assert client.connects >= 4
            assert len(set(issued)) == client.connects
        assert server.statistics().closed_by_server.get(1008, 0) >= 3
        await server.aclose()


async def test_a_subscription_nobody_reads_does_not_stall_the_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The buffer is bounded and the reader never waits for the application: acks and other
    channels keep flowing, and what was skipped comes back as one exact gap."""
    async with open_test_server() as harness:
        async with client_for(harness, subscription_buffer=5) as reader:
            async with client_for(harness) as writer:
                ignored = await reader.subscribe("ignored")
                other = await reader.subscribe("other")
                for n in range(20):
                    await writer.publish("ignored", n)
                with trio.fail_after(5):
                    assert await reader.publish("mine", "still acked") == 1
                    await writer.publish("other", "flows")
                    event = await other.__anext__()
                assert isinstance(event, wsclient.Message)
                assert event.data == "flows"
                events = [await ignored.__anext__() for _ in range(6)]
                assert [e.seq for e in events[:5]] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
                gap = events[5]
                assert isinstance(gap, wsclient.Gap)
                assert (gap.first, gap.last, gap.reason) == (6, 20, "subscription buffer full")
                assert ignored.skipped == 15
                await writer.publish("ignored", "after")
                event = await ignored.__anext__()
                assert isinstance(event, wsclient.Message)
                assert (event.seq, event.data) == (21, "after")


async def test_publishing_data_that_is_not_json_raises_at_the_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness, client_for(harness) as client:
        with trio.fail_after(1), pytest.raises(TypeError, match="JSON-serialisable"):
            await client.publish("c", {1, 2})
        assert client.connects == 1
        assert await client.publish("c", "fine") == 1


async def test_requests_while_the_connection_drops_raise_client_errors_or_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        cutter = Cutter(harness)
        async with client_for(harness, cutter, backoff_base=5, backoff_cap=5) as client:
            cutter.freeze()  # the server's replies no longer arrive
            with pytest.raises(wsclient.RequestTimeoutError):
                await client.subscribe("slow")
            await cutter.cut()
            # However the state reads while the link is gone, a request never fails with an
            # AttributeError: offline, a subscription is made on reconnect.
            subscription = await client.subscribe("later")
            with trio.fail_after(60):
                await client.state.wait_value(
                    lambda state: state is wsclient.ClientState.OPEN and client.connects >= 2
                )
            async with client_for(harness) as writer:
                await writer.publish("later", "x")
                with trio.fail_after(60):
                    event = await subscription.__anext__()
            assert isinstance(event, wsclient.Message)
            with pytest.raises(wsclient.ClientError):
                raise wsclient.ConnectionLostError("a ClientError")


async def test_a_refused_token_raises_client_closed_error_itself_from_the_block(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``except ClientClosedError:`` around ``async with connect(...)`` catches it: it is not
    wrapped in an ExceptionGroup by the client's nursery."""
    async with open_test_server(jwt_secret=SECRET) as harness:
        with pytest.raises(wsclient.ClientClosedError, match="HTTP 401"):
            async with wsclient.connect(
                URL, token="bad", open_stream=harness.listener.connect
            ) as client:
                await client.wait_open()


async def test_an_error_of_the_block_comes_out_as_it_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        with pytest.raises(KeyError, match="mine"):
            async with client_for(harness):
                raise KeyError("mine")


async def test_no_first_connection_within_connect_timeout_is_connection_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With no server, ``wait_open()`` does not hang: after ``connect_timeout`` (attempts and
    backoff included) the client stops and says why."""
    async with open_test_server() as harness:
        cutter = Cutter(harness)
        cutter.refuse = 1000
        start = trio.current_time()
        with trio.fail_after(60), pytest.raises(wsclient.ConnectionLostError) as info:
            async with wsclient.connect(URL, open_stream=cutter.open, connect_timeout=5) as c:
                await c.wait_open()
        assert trio.current_time() - start == pytest.approx(5)
        assert "within 5s" in str(info.value)
        assert "refused by the test" in str(info.value)  # the last attempt's failure
        assert c.state.value is wsclient.ClientState.CLOSED
        with pytest.raises(wsclient.ConnectionLostError):
            await c.publish("c", 1)


async def test_a_first_connection_that_hangs_is_bounded_by_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def silent() -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError

    start = trio.current_time()
    with trio.fail_after(60), pytest.raises(wsclient.ConnectionLostError):
        async with wsclient.connect(URL, open_stream=silent, connect_timeout=3) as client:
            await client.wait_open()
    assert trio.current_time() - start == pytest.approx(3)


async def test_connect_timeout_bounds_only_the_first_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        cutter = Cutter(harness)
        async with client_for(harness, cutter, connect_timeout=2, backoff_cap=1) as client:
            cutter.refuse = 20  # about 10 s of failed reconnects: longer than connect_timeout
            await cutter.cut()
            with trio.fail_after(60):
                await client.state.wait_value(
                    lambda state: state is wsclient.ClientState.OPEN and client.connects == 2
                )
            assert cutter.attempts == 22


async def test_every_failure_of_a_connection_is_logged_not_only_the_first(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from triows._client import client as _client

    async def two_failures(nursery: trio.Nursery, stream: object, **options: object) -> None:
        async def fail(exc: Exception) -> None:
            raise exc

        nursery.start_soon(fail, ValueError("the first failure"))
        nursery.start_soon(fail, LookupError("the second failure"))
        await trio.sleep_forever()

    monkeypatch.setattr(_client, "open_client", two_failures)
    async with open_test_server() as harness:
        async with wsclient.connect(URL, open_stream=harness.listener.connect, max_attempts=0):
            await trio.sleep(1)
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "the first failure" in logged
    assert "the second failure" in logged


async def test_a_close_during_a_failure_is_not_turned_into_a_reconnect(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's task group ends with the close's ``Cancelled`` and a failure at once:
    the ``Cancelled`` is not dropped, so the closed client does not go on reconnecting."""
    from triows._client import client as _client

    clients: list[wsclient.Client] = []

    async def fails_as_it_closes(nursery: trio.Nursery, stream: object, **options: object) -> None:
        async def fail() -> None:
            await trio.sleep(1)
            clients[0]._close("closed by the application")
            raise OSError("the link broke as it closed")

        nursery.start_soon(fail)
        await trio.sleep_forever()

    monkeypatch.setattr(_client, "open_client", fails_as_it_closes)
    async with open_test_server() as harness:
        async with wsclient.connect(URL, open_stream=harness.listener.connect) as client:
            clients.append(client)
            await trio.sleep(5)
            assert client.state.value is wsclient.ClientState.CLOSED


async def test_resubscribing_against_a_subscribe_rate_limit_converges_on_one_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``subscribe_rate=1``: a connection may subscribe 2 channels at once, then one a second.
    Six channels resubscribed at connect get 429s: they are sent again on the same connection
    after a random wait, a window at a time. Reconnecting instead would meet a fresh bucket of
    two each time, and never get all six."""
    channels = [f"ch{n}" for n in range(6)]
    async with open_test_server(subscribe_rate=1) as harness:
        cutter = Cutter(harness)
        async with wsclient.connect(
            URL, open_stream=cutter.open, backoff_base=0.5, backoff_cap=5
        ) as client:
            subscriptions = [await client.subscribe(channel) for channel in channels]  # offline
            with trio.fail_after(60):
                await client.wait_open()
            for _ in range(600):  # a minute, virtual
                if harness.server.statistics().subscriptions == len(channels):
                    break
                await trio.sleep(0.1)
            for channel in channels:
                await harness.server.publish(channel, channel)
            with trio.fail_after(5):
                got = [await s.__anext__() for s in subscriptions]
            assert [event.data for event in got] == channels  # type: ignore[union-attr]
            assert client.connects == 1
            assert cutter.attempts == 1


async def test_resubscribes_go_out_a_window_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a reconnect, 40 channels are resubscribed 16 at a time: with the server's
    replies held back, the server receives 16 subscribes, not 40."""
    from triows._client import link

    async with open_test_server(subscribe_rate=0) as harness:
        cutter = Cutter(harness)
        async with client_for(harness, cutter, ping_min=1000, ping_max=1000) as client:
            for n in range(40):
                await client.subscribe(f"ch{n}")
            cutter.mute_after_welcome = True
            await cutter.cut()
            with trio.fail_after(30):
                await client.state.wait_value(
                    lambda state: state is wsclient.ClientState.OPEN and client.connects == 2
                )
            await trio.sleep(5)
            newest = min(harness.server.connection_statistics(), key=lambda s: s.connected_for)
            assert newest.frames_in == link.RESUBSCRIBE_WINDOW == 16


async def test_the_error_of_the_block_keeps_its_own_context(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:

        async def failing_block() -> None:
            async with client_for(harness):
                raise KeyError("mine")

        with pytest.raises(KeyError) as info:
            await failing_block()
        assert info.value.__context__ is None  # not the client's task group
