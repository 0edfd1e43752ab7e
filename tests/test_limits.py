"""Limits: connections, message size, subscriptions, request floods, paths."""

from __future__ import annotations

import logging

import pytest
import trio

from triows import HandshakeRequest, Principal
from triows.testing import ConnectionRejected, open_test_server

from .conftest import SECRET, make_token
from .rawclient import RawClient


async def test_connection_limit_is_503_before_upgrade(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_connections=2) as harness:
        async with harness.connect(), harness.connect():
            with pytest.raises(ConnectionRejected) as info:
                async with harness.connect():
                    pass
            assert info.value.status_code == 503
            assert harness.server.statistics().rejected == {503: 1}
        await trio.sleep(1)
        async with harness.connect():  # room again once they left
            pass


async def test_oversized_message_closes_with_1009(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(max_message_size=4096) as harness:
        async with harness.connect() as client:
            await client.send({"type": "publish", "channel": "a", "data": "x" * 5000})
            code, _ = await client.wait_closed()
            assert code == 1009
        assert harness.server.statistics().closed_by_server == {1009: 1}


async def test_data_too_large_for_a_broadcast_is_413(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_message_size=4096) as harness:
        async with harness.connect() as client:
            reply = await client.request(
                {"type": "publish", "channel": "a", "data": "x" * 3500, "id": 1}
            )
            assert (reply["code"], reply["id"]) == (413, 1)
            assert (
                await client.request(
                    {"type": "publish", "channel": "a", "data": "x" * 2000, "id": 2}
                )
            )["type"] == "ack"
        with pytest.raises(ValueError, match="larger than"):
            await harness.server.publish("a", "x" * 5000)


async def test_subscription_limit_is_429(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(max_subscriptions=2) as harness:
        async with harness.connect() as client:
            for channel in ("a", "b"):
                await client.request({"type": "subscribe", "channel": channel})
            reply = await client.request({"type": "subscribe", "channel": "c", "id": "x"})
            # Marked, so that a client tells it from a rate limit (which passes by waiting).
            assert (reply["code"], reply["id"], reply["limit"]) == (429, "x", "subscriptions")
            await client.request({"type": "unsubscribe", "channel": "a"})
            assert (await client.request({"type": "subscribe", "channel": "c"}))[
                "type"
            ] == "subscribed"


async def test_request_flood_gets_429_not_a_stall(autojump_clock: trio.testing.MockClock) -> None:
    gate = trio.Event()

    async def slow_authorize(*args: object) -> bool:
        await gate.wait()
        return True

    async with open_test_server(authorize=slow_authorize, inbox_size=4) as harness:
        client = await RawClient.connect(harness.listener)
        for n in range(10):
            await client.send({"type": "subscribe", "channel": "a", "id": n})
        await client.read_until(lambda c: len(c.of_type("error")) >= 5)
        assert {e["code"] for e in client.of_type("error")} == {429}
        refused = len(client.of_type("error"))
        gate.set()
        await client.read_until(lambda c: len(c.of_type("subscribed")) == 10 - refused)
        await client.send({"type": "ping", "id": "p"})
        await client.read_until(lambda c: c.of_type("pong"))


async def test_path_restriction(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(path="/ws") as harness:
        async with harness.connect("/ws?x=1"):
            pass
        with pytest.raises(ConnectionRejected) as info:
            async with harness.connect("/other"):
                pass
        assert info.value.status_code == 404


async def test_application_publish_validates_input(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        with pytest.raises(ValueError, match="may only contain"):
            await harness.server.publish("bad channel", 1)
        with pytest.raises(TypeError):
            await harness.server.publish("a", object())
        with pytest.raises(ValueError, match="not JSON compliant"):
            await harness.server.publish("a", float("nan"))


async def test_slow_handshake_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(handshake_timeout=3) as harness:
        stream = await harness.listener.connect()
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        start = trio.current_time()
        assert await stream.receive_some() == b""
        assert 3 <= trio.current_time() - start < 3.5


async def test_memory_guard_refuses_new_connections_and_recovers(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from triows._core import memory_guard

    rss = [100 << 20]
    monkeypatch.setattr(memory_guard, "read_rss", lambda: rss[0])
    async with open_test_server(memory_limit=200 << 20) as harness:
        async with harness.connect() as kept:
            rss[0] = 300 << 20
            await trio.sleep(1.5)
            stats = harness.server.statistics()
            assert (stats.memory_limited, stats.rss_bytes, stats.memory_limit_trips) == (
                True,
                300 << 20,
                1,
            )
            with pytest.raises(ConnectionRejected) as info:
                async with harness.connect():
                    pass
            assert info.value.status_code == 503
            assert (await kept.request({"type": "ping", "id": 1}))["type"] == "pong"
            rss[0] = 150 << 20
            await trio.sleep(1.5)
            assert not harness.server.statistics().memory_limited
            async with harness.connect():
                pass


async def test_connections_of_one_user_are_limited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET, max_connections_per_user=2) as harness:
        async with (
            harness.connect(token=make_token("ann")),
            harness.connect(token=make_token("ann")),
        ):
            with pytest.raises(ConnectionRejected) as info:
                async with harness.connect(token=make_token("ann")):
                    pass
            assert info.value.status_code == 429
            async with harness.connect(token=make_token("bob")):
                pass
        async with harness.connect(token=make_token("ann")):
            pass  # counted down as they left
        assert harness.server.statistics().rejected == {429: 1}


async def test_publish_and_subscribe_rates_per_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(publish_rate=5, subscribe_rate=1) as harness:
        async with harness.connect() as client:
            codes = [
                (await client.request({"type": "publish", "channel": "c", "data": n, "id": n}))[
                    "type"
                ]
                for n in range(12)
            ]
            assert codes == ["ack"] * 10 + ["error"] * 2  # a burst of twice the rate
            await trio.sleep(1)
            reply = await client.request({"type": "publish", "channel": "c", "data": 0, "id": 99})
            assert reply["type"] == "ack"
            for n in range(2):
                assert (await client.request({"type": "subscribe", "channel": f"s{n}"}))[
                    "type"
                ] == "subscribed"
            refused = await client.request({"type": "subscribe", "channel": "s2", "id": "x"})
            assert (refused["code"], refused["id"]) == (429, "x")
            assert "limit" not in refused  # a rate: it passes by waiting
        stats = harness.server.statistics()
        assert stats.rate_limited == {"publish": 2, "subscribe": 1}


async def test_publish_rate_per_user_spans_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET, publish_rate=0, user_publish_rate=2) as harness:
        async with (
            harness.connect(token=make_token("ann")) as one,
            harness.connect(token=make_token("ann")) as two,
        ):
            kinds = []
            for n in range(6):
                client = one if n % 2 else two
                frame = {"type": "publish", "channel": "c", "data": n, "id": n}
                kinds.append((await client.request(frame))["type"])
            assert kinds == ["ack"] * 4 + ["error"] * 2


async def test_streams_that_never_send_their_request_are_bounded_per_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_pending_per_ip=2, handshake_timeout=10) as harness:
        silent = [await harness.listener.connect(peer="10.0.0.1") for _ in range(2)]
        await trio.sleep(0.1)
        # A third from the same address is closed at once, unanswered...
        extra = await harness.listener.connect(peer="10.0.0.1")
        with trio.fail_after(1):
            assert await extra.receive_some(100) == b""
        assert harness.server.statistics().streams_refused == 1
        # ...while another address is served, and so are the probes.
        async with harness.connect(peer="10.0.0.2") as client:
            assert (await client.request({"type": "ping", "id": 1}))["type"] == "pong"
        await trio.sleep(11)  # the silent ones time out and free their places
        async with harness.connect(peer="10.0.0.1"):
            pass
        for stream in (*silent, extra):
            await stream.aclose()


async def test_waiting_streams_do_not_take_the_places_of_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_connections=1, max_pending=3) as harness:
        silent = [await harness.listener.connect() for _ in range(2)]
        await trio.sleep(0.1)
        async with harness.connect() as client:  # the one connection place is free
            with pytest.raises(ConnectionRejected) as info:
                async with harness.connect():
                    pass
            assert info.value.status_code == 503
            assert (await client.request({"type": "ping", "id": 1}))["type"] == "pong"
        for stream in silent:
            await stream.aclose()


UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_a_stream_evicted_as_its_head_arrives_is_cut_cleanly(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Its head came in the round a newer stream evicted it (its ticket given back, its
    # scope cancelled): read without a checkpoint, it went on to its handshake with a
    # released ticket ("a released ticket cannot do this", logged as a failed task).
    async with open_test_server(max_pending=1) as harness:
        for turns in range(3):
            for attempt in range(4):
                old = await harness.listener.connect(peer=f"10.0.{turns}.{attempt}")
                old.send_some_nowait(UPGRADE[:30])
                await trio.sleep(1)
                new = await harness.listener.connect(peer=f"10.1.{turns}.{attempt}")
                for _ in range(turns):
                    await trio.lowlevel.checkpoint()
                old.send_some_nowait(UPGRADE[30:])  # the head is in as the new one arrives
                await trio.sleep(1)
                await old.aclose()
                await new.aclose()
        await trio.sleep(1)
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert harness.server.admission.pending == 0
        assert harness.server.statistics().connections == 0


async def test_a_head_that_arrives_as_its_deadline_passes_is_cut_before_anything_is_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The stream's one scope carries the head's deadline: a head that came in the round that
    # deadline passed was served up to its next checkpoint (here, in the authenticate hook),
    # then cut without an answer.
    asked = []

    async def authenticate(info: HandshakeRequest) -> Principal:
        asked.append(info.path)
        await trio.lowlevel.checkpoint()
        return Principal(user_id="ann")

    async with open_test_server(authenticate=authenticate, handshake_timeout=10) as harness:
        stream = await harness.listener.connect()
        stream.send_some_nowait(UPGRADE[:30])
        await trio.sleep(9)
        stream.send_some_nowait(UPGRADE[30:])
        autojump_clock.jump(2)  # the deadline passes in the round the head comes
        with trio.fail_after(30):
            assert await stream.receive_some() == b""  # cut, as a head that came late
        assert asked == []
        assert harness.server.admission.pending == 0
