"""triows.client follows the shared pacing and retry rules (triows/_core/retry.py, pinned by
tests/vectors/retry.json for both clients): what those rules mean against the real server, on
in-memory streams, in virtual time."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from triows import Action, Config, Principal, Server, serve
from triows import client as wsclient
from triows._core import compiled_json, protocol
from triows.testing import MemoryListener, open_test_server

from .conftest import SECRET, make_token
from .test_client import URL, Cutter, client_for


def wall_clock() -> float:
    """The server's wall clock, following virtual time (tokens expire in it)."""
    return time.time() + trio.current_time()


def token(user: str, lifetime: float) -> str:
    return make_token(user, exp=int(wall_clock() + lifetime))


@asynccontextmanager
async def jwt_server(**overrides: Any) -> AsyncIterator[tuple[Server, MemoryListener]]:
    listener = MemoryListener()
    config = Config(jwt_secret=SECRET, heartbeat_interval=1000, idle_timeout=0, **overrides)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve(
                config, listeners=[listener], wall_clock=wall_clock, task_status=task_status
            )
        )
        yield server, listener
        await server.aclose()


# -- resubscribes and publishes, paced --------------------------------------------------------


async def test_a_burst_of_rate_limited_resubscribes_is_one_pause_not_one_per_refusal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """20 channels resubscribed against ``subscribe_rate=1``: 2 go through, 18 are refused at
    once. That is one pause (a random wait up to 0.5 s), not 18 growing ones: the old client
    waited up to 30 s after such a burst and took minutes to get all 20."""
    random.seed(20)
    channels = [f"ch{n}" for n in range(20)]
    async with open_test_server(subscribe_rate=1) as harness:
        cutter = Cutter(harness)
        cutter.refuse = 1
        async with wsclient.connect(URL, open_stream=cutter.open, backoff_base=0.5) as client:
            for channel in channels:
                await client.subscribe(channel)  # offline: made on connect
            await client.wait_open()
            started = trio.current_time()
            for _ in range(1200):  # two minutes, virtual
                if harness.server.statistics().subscriptions == len(channels):
                    break
                await trio.sleep(0.1)
            took = trio.current_time() - started
    # The bucket lets one through a second: about 18 s, whatever the pauses drawn.
    assert took < 30, f"20 resubscribes took {took:.1f} s"


async def test_publishes_queued_offline_go_out_a_window_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """100 publishes queued while offline: with the server's acks held back, it receives 16
    (the window, as triows.js's), not 100 at once."""
    async with open_test_server() as harness:
        cutter = Cutter(harness)
        cutter.refuse = 1
        async with (
            wsclient.connect(URL, open_stream=cutter.open, ping_min=1000, ping_max=1000) as client,
            trio.open_nursery() as nursery,
        ):
            for n in range(100):
                nursery.start_soon(client.publish, "c", n)
            await trio.lowlevel.checkpoint()
            cutter.mute_after_welcome = True
            with trio.fail_after(30):
                await client.wait_open()
            await trio.sleep(5)
            [stats] = harness.server.connection_statistics()
            assert stats.frames_in == 16
            nursery.cancel_scope.cancel()


async def test_publishes_refused_for_now_are_sent_again_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """200 publishes queued offline against ``publish_rate=10``: a 429 means "not numbered",
    so each goes again with its id after a pause. Every one is acked, and delivered once."""
    async with open_test_server(publish_rate=10) as harness:
        async with client_for(harness) as reader:
            subscription = await reader.subscribe("c")
            cutter = Cutter(harness)
            cutter.refuse = 1
            async with (
                wsclient.connect(URL, open_stream=cutter.open, publish_timeout=120) as writer,
                trio.open_nursery() as nursery,
            ):
                acked: list[int] = []

                async def publish(n: int) -> None:
                    acked.append(await writer.publish("c", n))

                for n in range(200):
                    nursery.start_soon(publish, n)
            assert sorted(acked) == list(range(1, 201))
            with trio.fail_after(5):
                got = [await subscription.__anext__() for _ in range(200)]
            assert sorted(event.data for event in got) == list(range(200))  # type: ignore[union-attr]
            assert harness.server.statistics().rate_limited["publish"] > 0


async def test_a_resubscribe_over_the_subscription_limit_ends_that_subscription(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three channels resubscribed against ``max_subscriptions=2``: the third gets 429 with
    ``limit: subscriptions``. Waiting does not help: it is not sent again; its subscription
    ends with the error (the others go on)."""
    async with open_test_server(max_subscriptions=2) as harness:
        cutter = Cutter(harness)
        cutter.refuse = 1
        async with wsclient.connect(URL, open_stream=cutter.open) as client:
            subscriptions = [await client.subscribe(name) for name in ("a", "b", "c")]
            await client.wait_open()
            await trio.sleep(30)
            [stats] = harness.server.connection_statistics()
            assert stats.frames_in == 3, "the refused one was sent again"
            with pytest.raises(wsclient.RequestError) as refused:
                await subscriptions[2].__anext__()
            assert refused.value.code == 429
            await harness.server.publish("a", "still here")
            with trio.fail_after(5):
                assert (await subscriptions[0].__anext__()).data == "still here"  # type: ignore[union-attr]


async def test_after_a_reconnect_resubscribes_go_out_before_queued_publishes(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[str] = []
    read = protocol.read_request

    def recording(raw: str | bytes) -> protocol.PublishFields | protocol.Request:
        request = read(raw)
        # The common publish comes as its fields (a tuple), everything else as a request.
        received.append("Publish" if isinstance(request, tuple) else type(request).__name__)
        return request

    monkeypatch.setattr(protocol, "read_request", recording)  # what the server reads
    async with open_test_server() as harness:
        cutter = Cutter(harness)
        async with client_for(harness, cutter) as client, trio.open_nursery() as nursery:
            for channel in ("a", "b"):
                await client.subscribe(channel)
            await cutter.cut()
            await client.state.wait_value(wsclient.ClientState.RECONNECTING)
            received.clear()
            for n in range(3):
                nursery.start_soon(client.publish, "a", n)
            with trio.fail_after(30):
                await client.state.wait_value(
                    lambda state: state is wsclient.ClientState.OPEN and client.connects == 2
                )
            await trio.sleep(1)
    assert received[:5] == ["Subscribe", "Subscribe", "Publish", "Publish", "Publish"]


async def test_a_subscribe_the_server_does_not_answer_in_time_is_undone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No answer within the client's timeout: ``subscribe()`` raises and the channel is not
    followed; the server, which subscribes later, is told to unsubscribe (as triows.js does),
    so no subscription is left behind on it."""

    answers = [5.0]

    async def slow(principal: Principal, action: Action, channel: str) -> bool:
        await trio.sleep(answers.pop() if answers else 0)  # slow the first time
        return True

    async with open_test_server(authorize=slow, handshake_timeout=30) as harness:
        async with client_for(harness, publish_timeout=1) as client:
            with pytest.raises(wsclient.RequestTimeoutError):
                await client.subscribe("slow")
            await trio.sleep(10)
            assert harness.server.statistics().subscriptions == 0
            await client.subscribe("slow")  # it can be followed again
            assert harness.server.statistics().subscriptions == 1


async def test_a_position_the_server_would_refuse_is_refused_before_anything_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``check_position`` (tests/vectors/positions.json, the rule triows.js keeps too): a
    fractional or out-of-range ``since``, an epoch without its since, a bad ``rewind`` raise
    ValueError at once; nothing reaches the server and the channel is not followed."""
    async with open_test_server() as harness:
        async with client_for(harness) as client:
            await client.subscribe("kept")
            bad: list[tuple[dict[str, Any], str]] = [
                ({"since": 1.5, "epoch": "e1"}, "'since' must be an integer"),
                ({"since": -1, "epoch": "e1"}, "'since' must be an integer"),
                ({"since": 2**53, "epoch": "e1"}, "'since' must be an integer"),
                ({"epoch": "e1"}, "an epoch needs its since"),
                ({"rewind": -1}, "'rewind' must be an integer"),
                ({"since": 3}, "a position with a seq has an epoch"),
            ]
            for position, reason in bad:
                with pytest.raises(ValueError, match=reason):
                    await client.subscribe("odd", **position)
                with pytest.raises(ValueError, match=reason):  # a followed channel too
                    await client.subscribe("kept", **position)
            await trio.sleep(1)
            assert harness.server.statistics().subscriptions == 1
            assert harness.server.statistics().channels == 1


async def test_the_clients_publish_is_decoded_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """triows.client's publish is decoded once by the server, by msgspec (compiled_json):
    never a second time by the standard library's decoder."""
    decodes: list[str] = []
    decode = compiled_json.decode

    def counting(text: str) -> Any:
        if '"publish"' in text:
            decodes.append(text)
        return decode(text)

    def standard(text: str) -> Any:
        raise AssertionError(f"decoded by the standard path: {text}")

    monkeypatch.setattr(compiled_json, "decode", counting)
    async with open_test_server() as harness:
        async with client_for(harness) as client:
            await client.publish("room", {"n": 0})  # a channel's first is checked in full
            monkeypatch.setattr(protocol._decoder, "decode", standard)
            decodes.clear()
            await client.publish("room", {"n": [1, "é"]})
            await client.publish("room", {"n": 2})
    assert len(decodes) == 2


# -- when to stop, when to try again ------------------------------------------------------------


async def test_cancelling_an_open_client_keeps_the_callers_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The caller's deadline passes inside the block: the client sends its close frame and
    returns, without waiting for the server's answer (its reader is cancelled too)."""
    async with open_test_server() as harness:
        started = trio.current_time()
        with trio.move_on_after(0.5):
            async with client_for(harness) as client:
                await client.subscribe("c")
                await trio.sleep_forever()
        assert trio.current_time() - started == pytest.approx(0.5)
        await trio.sleep(0.01)
        stats = harness.server.statistics()
        assert (stats.connections, stats.closed_by_server) == (0, {})


@pytest.mark.parametrize("request_read", [True, False])
async def test_a_stream_that_ends_before_the_handshake_is_answered_fails_at_once(
    autojump_clock: trio.testing.MockClock, request_read: bool
) -> None:
    """trio-websocket's reader ends quietly on such a stream (EOF, or the request cannot be
    sent) without waking the handshake's waiter, which waited for the caller's deadline."""
    from triows._client.transport import ConnectionClosed, open_client

    client_end, server_end = trio.testing.memory_stream_pair()
    started = trio.current_time()

    async def handshake() -> None:
        async with trio.open_nursery() as nursery:
            if request_read:
                nursery.start_soon(_read_then_close, server_end)
            else:
                await server_end.aclose()
            await open_client(nursery, client_end, host="triows.test", path="/")

    with trio.fail_after(5), pytest.raises(ExceptionGroup) as raised:
        await handshake()
    assert raised.group_contains(ConnectionClosed)
    assert trio.current_time() == started


async def _read_then_close(stream: trio.abc.Stream) -> None:
    """A server side that takes the handshake request and closes without answering it (a
    listener reset with the connection still in its queue)."""
    await stream.receive_some()
    await stream.aclose()


async def test_a_reconnect_whose_connection_ends_unanswered_tries_again_after_its_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A worker killed under a client: the kernel closes the worker's connections before its
    listening socket, so a client quick to reconnect can land in that socket's queue and be
    reset before the 101. The client tries again after its backoff, not after
    ``connect_timeout`` (10 s: a publish timed out meanwhile, or a reader fell further behind
    than history reaches and got a gap; tests/test_workers.py saw both)."""
    async with open_test_server() as harness, trio.open_nursery() as nursery:
        cutter = Cutter(harness)
        unanswered = 0

        async def open_stream() -> trio.abc.Stream:
            nonlocal unanswered
            if cutter.attempts == 1 and not unanswered:  # the first reconnect
                unanswered += 1
                client_end, server_end = trio.testing.memory_stream_pair()
                nursery.start_soon(_read_then_close, server_end)
                return client_end
            return await cutter.open()

        async with wsclient.connect(
            URL, open_stream=open_stream, backoff_base=0.05, backoff_cap=0.3
        ) as client:
            await client.wait_open()
            await cutter.cut()
            cut_at = trio.current_time()
            with trio.fail_after(60):
                await client.state.wait_value(
                    lambda state: state is wsclient.ClientState.OPEN and client.connects == 2
                )
            assert unanswered == 1
            assert trio.current_time() - cut_at < 1


async def test_a_token_function_that_hands_one_stale_token_is_asked_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tokens = [token("ann", -10)]  # expired

    def tokens_please() -> str:
        return tokens.pop() if tokens else token("ann", 3600)

    async with jwt_server() as (server, listener):
        async with wsclient.connect(URL, token=tokens_please, open_stream=listener.connect) as c:
            with trio.fail_after(30):
                await c.wait_open()
        assert server.statistics().rejected == {401: 1}


async def test_a_token_function_whose_tokens_are_refused_twice_in_a_row_stops_the_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jwt_server() as (server, listener):
        with pytest.raises(wsclient.ClientClosedError, match="rejected with HTTP 401"):
            async with wsclient.connect(
                URL, token=lambda: token("ann", -10), open_stream=listener.connect
            ) as client:
                await client.wait_open()
        assert server.statistics().rejected == {401: 2}


async def test_a_server_that_closes_right_after_the_welcome_meets_a_growing_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every token lasts 1 s: the server closes each connection with 1008 right after its
    welcome. Such closes are failed attempts (the backoff grows, max_attempts ends them), not
    connections that worked (which would reconnect within ``backoff_base`` for ever)."""
    async with jwt_server() as (server, listener):
        async with wsclient.connect(
            URL, token=lambda: token("ann", 1), open_stream=listener.connect, max_attempts=4
        ) as client:
            with trio.fail_after(120):
                await client.state.wait_value(wsclient.ClientState.CLOSED)
            assert client.connects == 4
        assert server.statistics().closed_by_server == {1008: 4}


async def test_a_close_that_says_do_not_reconnect_stops_the_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A close in 4500-4999 (a refusal as a close code, or a disconnect the server starts)
    stops the client; one in 4000-4499 is a failed attempt."""
    async with open_test_server() as harness:
        cutter = Cutter(harness)
        async with client_for(harness, cutter) as client:
            for connection in harness.server.connections():
                connection.close(4429, "later")
            with trio.fail_after(30):
                await client.state.wait_value(
                    lambda state: state is wsclient.ClientState.OPEN and client.connects == 2
                )
            for connection in harness.server.connections():
                connection.close(4503, "banned")
            with trio.fail_after(30):
                await client.state.wait_value(wsclient.ClientState.CLOSED)
            assert cutter.attempts == 2


async def test_a_subscription_nobody_reads_is_bounded_in_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Large messages on a channel nobody iterates: the subscription keeps at most
    ``subscription_buffer_bytes`` of them (not 1000 of any size), then one exact gap."""
    async with open_test_server(max_message_size=128 * 1024) as harness:
        async with client_for(harness, subscription_buffer_bytes=300_000) as client:
            subscription = await client.subscribe("big")
            for _ in range(20):
                await harness.server.publish("big", "x" * 60_000)
            await trio.sleep(1)
            assert subscription._backlog.nbytes <= 300_000
            events = [await subscription.__anext__() for _ in range(len(subscription._backlog))]
            seqs = [event.seq for event in events if isinstance(event, wsclient.Message)]
            gaps = [event for event in events if isinstance(event, wsclient.Gap)]
            assert seqs == list(range(1, len(seqs) + 1))
            assert len(seqs) <= 5
            assert [(g.first, g.last) for g in gaps] == [(len(seqs) + 1, 20)]


async def test_channels_unsubscribed_while_their_resubscribe_waits_do_not_stall_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Five channels against ``subscribe_rate=1``: two go through, three wait out a pause;
    the application unsubscribes one of them meanwhile. It makes room for the next ones: the
    other two are subscribed, with no stall until the next reconnect."""
    random.seed(7)
    async with open_test_server(subscribe_rate=1) as harness:
        cutter = Cutter(harness)
        cutter.refuse = 1
        async with wsclient.connect(URL, open_stream=cutter.open, backoff_base=0.5) as client:
            for channel in "abcde":
                await client.subscribe(channel)
            await client.wait_open()
            await subscriptions_reach(harness.server, 2, step=0.01)
            await client.unsubscribe("c")  # refused, waiting for its pause to end
            with trio.fail_after(30):
                await subscriptions_reach(harness.server, 4, step=0.1)
            assert sorted(client._subscriptions) == ["a", "b", "d", "e"]


async def subscriptions_reach(server: Server, count: int, *, step: float) -> None:
    """Poll (the server has no event for it) until ``count`` subscriptions are held."""
    for _ in range(100_000):
        if server.statistics().subscriptions >= count:
            return
        await trio.sleep(step)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\nForbidden\n",  # body until EOF
        b"HTTP/1.0 401 Unauthorized\r\n\r\n",
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\nshort",  # cut short
    ],
)
async def test_a_refusal_whose_body_ends_with_the_stream_is_a_refusal(
    autojump_clock: trio.testing.MockClock, answer: bytes
) -> None:
    """trio-websocket never hands the EOF to wsproto, so such a refusal never raised; it must
    not read as a lost connection (retried for ever) but stop the client like any 401/403."""
    from triows._client.transport import ConnectionRejected, open_client

    client_end, server_end = trio.testing.memory_stream_pair()

    async def refuse() -> None:
        await server_end.receive_some()
        await server_end.send_all(answer)
        await server_end.aclose()

    with trio.fail_after(5), pytest.RaisesGroup(ConnectionRejected, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refuse)
            await open_client(nursery, client_end, host="triows.test", path="/")


@pytest.mark.parametrize(
    "answer",
    [
        # A 101 whose Sec-WebSocket-Accept is not the key's.
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",  # not HTTP at all
    ],
)
async def test_an_answer_that_is_no_websocket_handshake_fails_the_attempt_as_1002(
    autojump_clock: trio.testing.MockClock, answer: bytes
) -> None:
    """wsproto refuses the answer; trio-websocket then tries to send a refusal as the client,
    which h11 refuses: that was an error with a traceback out of the reader (logged as a bug
    on every attempt). It is a bad peer: the attempt fails with 1002, and is tried again."""
    from triows._client.transport import ConnectionClosed, open_client

    client_end, server_end = trio.testing.memory_stream_pair()

    async def answer_badly() -> None:
        await server_end.receive_some()
        await server_end.send_all(answer)

    with trio.fail_after(5), pytest.RaisesGroup(ConnectionClosed, flatten_subgroups=True) as got:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_badly)
            await open_client(nursery, client_end, host="triows.test", path="/")
    (closed,) = got.value.exceptions
    assert isinstance(closed, ConnectionClosed)
    assert closed.reason is not None
    assert closed.reason.code == 1002


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n",
        b"",  # the stream ends before any answer
    ],
)
async def test_a_failed_handshake_closes_its_stream(
    autojump_clock: trio.testing.MockClock, answer: bytes
) -> None:
    """Whatever ends the attempt (an answer wsproto refused, a refusal, the stream ending), the
    stream is closed when ``open_client`` raises. It was left open in each case (found by a
    review): a socket held until the caller closed it itself, which the test kit's ``connect``
    did not."""
    from triows._client.transport import open_client

    client_end, server_end = trio.testing.memory_stream_pair()

    async def answer_and_listen() -> None:
        await server_end.receive_some()
        await server_end.send_all(answer)
        await server_end.send_eof()  # still listening: does the client close its end?

    with trio.fail_after(5), pytest.RaisesGroup(Exception, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_and_listen)
            await open_client(nursery, client_end, host="triows.test", path="/")
    with trio.fail_after(1):
        assert await server_end.receive_some() == b""


async def test_a_request_h11_will_not_send_is_our_error_not_a_bad_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """h11 refuses to send a request with an illegal target or header: that is the caller's
    error, raised as itself, not a server's "invalid handshake answer" (1002, retried)."""
    from h11 import LocalProtocolError

    from triows._client.transport import open_client

    client_end, _server_end = trio.testing.memory_stream_pair()
    with trio.fail_after(5), pytest.RaisesGroup(LocalProtocolError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await open_client(nursery, client_end, host="triows.test", path="/a b")


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        # A proxy's refusal whose body runs to the end of the connection: the client stops.
        (b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\nForbidden\n", "stopped"),
        # No WebSocket handshake at all: a failed attempt, tried again after the backoff.
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "retried"),
    ],
)
async def test_the_client_judges_a_handshakes_odd_ends(
    autojump_clock: trio.testing.MockClock, answer: bytes, outcome: str
) -> None:
    async with open_test_server() as harness, trio.open_nursery() as nursery:
        attempts = 0

        async def answer_first_attempt(server_end: trio.abc.Stream) -> None:
            await server_end.receive_some()
            await server_end.send_all(answer)
            await server_end.aclose()

        async def open_stream() -> trio.abc.Stream:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                client_end, server_end = trio.testing.memory_stream_pair()
                nursery.start_soon(answer_first_attempt, server_end)
                return client_end
            return await harness.listener.connect()

        started = trio.current_time()
        async with wsclient.connect(
            URL, open_stream=open_stream, backoff_base=0.05, backoff_cap=0.3
        ) as client:
            if outcome == "stopped":
                with pytest.raises(wsclient.ClientClosedError, match="rejected with HTTP 403"):
                    await client.wait_open()
                assert attempts == 1
            else:
                with trio.fail_after(60):
                    await client.wait_open()
                assert attempts == 2
                assert trio.current_time() - started < 1  # the backoff, not connect_timeout
