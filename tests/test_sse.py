"""Server-Sent Events over real sockets: the event format, resume by ``Last-Event-ID`` (in
process and across two Redis nodes), authentication, limits, slow consumers and shutdown."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

import triows
from triows._core import sse

from .conftest import make_token
from .sseclient import Event, SseClient

pytestmark = pytest.mark.real_socket


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[triows.Server]:
    config = triows.Config(host="127.0.0.1", port=0, **overrides)
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, config)
        with trio.fail_after(20):
            yield server
            await server.aclose()


def messages(events: list[Event]) -> list[Any]:
    return [event.json()["data"] for event in events if event.name == "message"]


async def test_event_format() -> None:
    async with running(sse_keepalive=0.05, sse_retry=2.0) as server:
        client = await SseClient.open(server.port, "channel=a&channel=b&channel=a")
        assert client.status == 200
        assert "Content-Type: text/event-stream; charset=utf-8" in client.head
        assert "Cache-Control: no-cache" in client.head
        subscribed = await client.events(2)
        assert [e.name for e in subscribed] == ["subscribed", "subscribed"]
        assert [e.json()["channel"] for e in subscribed] == ["a", "b"]  # repeats once
        assert client.retry is not None
        assert 1000 <= client.retry <= 3000
        assert all(e.has_id for e in subscribed)
        await server.publish("a", {"n": 1})
        await server.publish("b", "two")
        first, second = await client.events(2)
        assert (first.name, second.name) == ("message", "message")
        body = first.json()
        assert body["type"] == "message"
        assert body["channel"] == "a"
        assert body["data"] == {"n": 1}
        assert body["seq"] == 1
        assert body["id"].endswith(":1")
        # Each id holds both channels' positions.
        state_a = server.hub.channel("a")
        state_b = server.hub.channel("b")
        assert state_a is not None
        assert state_b is not None
        assert sse.decode_id(first.last_id, ["a", "b"]) == [(state_a.epoch, 1), (state_b.epoch, 0)]
        assert sse.decode_id(second.last_id, ["a", "b"]) == [
            (state_a.epoch, 1),
            (state_b.epoch, 1),
        ]
        # Keep-alive comments flow while nothing is published.
        comments = 0
        while comments < 2:
            line = await client._line()
            assert line is not None
            comments += line.startswith(":")
        await client.aclose()


async def test_resume_by_last_event_id_replays_what_was_missed() -> None:
    async with running() as server:
        client = await SseClient.open(server.port, "channel=a&channel=b")
        await client.events(2)
        for n in range(3):
            await server.publish("a", n)
        seen = await client.events(3)
        last_id = seen[-1].last_id
        await client.aclose()
        await server.publish("a", 3)
        await server.publish("b", "b1")
        await server.publish("a", 4)

        again = await SseClient.open(server.port, "channel=a&channel=b", last_id=last_id)
        events = await again.events(5)
        assert [e.name for e in events] == [
            "subscribed",
            "message",
            "message",
            "subscribed",
            "message",
        ]
        assert events[0].json()["recovered"] is True
        assert messages(events) == [3, 4, "b1"]
        await server.publish("a", 5)
        (live,) = await again.events(1)
        assert live.json()["data"] == 5
        assert live.json()["seq"] == 6
        await again.aclose()


async def test_the_query_carries_the_last_id_across_a_reload() -> None:
    async with running() as server:
        client = await SseClient.open(server.port, "channel=a")
        await client.events(1)
        await server.publish("a", "one")
        (one,) = await client.events(1)
        await client.aclose()
        await server.publish("a", "two")
        # A new EventSource sends no Last-Event-ID: the page passes the one it kept.
        query = "channel=a&last_event_id=" + one.last_id
        again = await SseClient.open(server.port, query.replace("~", "%7E"))
        events = await again.events(2)
        assert messages(events) == ["two"]
        # The header wins over the query.
        third = await SseClient.open(server.port, query, last_id=events[-1].last_id)
        (subscribed,) = await third.events(1)
        assert subscribed.json()["recovered"] is True
        await again.aclose()
        await third.aclose()


async def test_history_gone_is_an_exact_gap() -> None:
    async with running(history_size=2) as server:
        client = await SseClient.open(server.port, "channel=a")
        (subscribed,) = await client.events(1)
        await client.aclose()
        for n in range(5):
            await server.publish("a", n)  # seqs 1..5; history keeps 4 and 5
        again = await SseClient.open(server.port, "channel=a", last_id=subscribed.last_id)
        events = await again.events(4)
        assert [e.name for e in events] == ["subscribed", "gap", "message", "message"]
        assert events[1].json() == {
            "channel": "a",
            "first": 1,
            "last": 3,
            "reason": "history expired",
        }
        assert not events[0].has_id  # the position moves with the gap, not before it
        assert messages(events) == [3, 4]
        await again.aclose()


async def test_another_epoch_is_a_gap_of_unknown_range() -> None:
    async with running() as server:
        stale = sse.encode_id(["a"], [("gone.1", 7)])
        client = await SseClient.open(server.port, "channel=a", last_id=stale)
        subscribed, gap = await client.events(2)
        assert subscribed.json()["recovered"] is False
        assert gap.json() == {
            "channel": "a",
            "first": None,
            "last": None,
            "reason": "epoch changed",
        }
        assert sse.decode_id(gap.last_id, ["a"])[0] != ("gone.1", 7)
        await client.aclose()


@pytest.mark.parametrize(
    "last_id", ["garbage", "1:x:a.1:0.1", "1:" + sse.fingerprint(["b"]) + ":a.1:0.1", "x" * 20000]
)
async def test_garbled_last_event_id_is_400_with_the_reason(last_id: str) -> None:
    async with running() as server:
        client = await SseClient.open(server.port, "channel=a", last_id=last_id[:15000])
        assert client.status in (400, 431)
        body = await client.body()
        if client.status == 400:
            assert b"bad Last-Event-ID" in body
        assert server.admission.connections == 0


async def test_bad_requests() -> None:
    async with running() as server:
        for query, status, words in [
            ("", 400, b"at least one channel"),
            ("channel=", 400, b"bad channel"),
            ("&".join(f"channel=c{i}" for i in range(101)), 400, b"at most 100"),
        ]:
            client = await SseClient.open(server.port, query)
            assert client.status == status
            assert words in await client.body()


async def test_authentication_by_query_or_header(secret: str) -> None:
    async with running(jwt_secret=secret) as server:
        refused = await SseClient.open(server.port, "channel=a")
        assert refused.status == 401
        assert b"missing token" in await refused.body()
        bad = await SseClient.open(server.port, "channel=a&token=nope")
        assert bad.status == 401
        token = make_token("alice", channels=["a*"])
        by_query = await SseClient.open(server.port, f"channel=a&token={token}")
        assert by_query.status == 200
        by_header = await SseClient.open(
            server.port, "channel=a", headers={"Authorization": f"Bearer {token}"}
        )
        assert by_header.status == 200
        forbidden = await SseClient.open(server.port, f"channel=a&channel=b&token={token}")
        assert forbidden.status == 403
        assert b"not allowed to subscribe on 'b'" in await forbidden.body()
        for client in (by_query, by_header):
            await client.aclose()


async def test_token_expiry_ends_the_stream(secret: str) -> None:
    import time

    async with running(jwt_secret=secret) as server:
        token = make_token("alice", exp=int(time.time()) + 1)
        client = await SseClient.open(server.port, f"channel=a&token={token}")
        await client.events(1)
        (close,) = await client.events(1)
        assert close.name == "close"
        assert close.json() == {"code": 1008, "reason": "Token expired"}
        assert await client.next() is None
        await client.aclose()
        while server.statistics().connections:  # noqa: ASYNC110 - no event for it
            await trio.sleep(0.01)


async def test_authorize_hook_per_channel() -> None:
    asked: list[str] = []

    async def authorize(principal: triows.Principal, action: triows.Action, channel: str) -> bool:
        asked.append(channel)
        return channel != "secret"

    async with running(authorize=authorize) as server:
        ok = await SseClient.open(server.port, "channel=a&channel=b")
        assert ok.status == 200
        no = await SseClient.open(server.port, "channel=a&channel=secret")
        assert no.status == 403
        assert asked == ["a", "b", "a", "secret"]
        await ok.aclose()


async def test_an_sse_stream_counts_as_a_connection() -> None:
    async with running(max_connections=2, max_connections_per_ip=0) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        first = await SseClient.open(server.port, "channel=a")
        async with open_websocket_url(url) as ws:
            await ws.get_message()
            assert server.admission.connections == 2
            # Full: a browser is told to come back later (200, a retry hint, one event), as
            # EventSource gives up for good on any other status.
            full = await SseClient.open(server.port, "channel=a")
            assert full.status == 200
            (refused,) = await full.events(1)
            assert refused.name == "refused"
            assert refused.json() == {"status": 503, "reason": "connection limit reached"}
            assert full.retry is not None
            assert await full.next() is None
        await first.aclose()


async def test_per_address_and_per_user_limits(secret: str) -> None:
    async with running(
        jwt_secret=secret, max_connections_per_ip=2, max_connections_per_user=1
    ) as server:
        token = make_token("bob")
        one = await SseClient.open(server.port, f"channel=a&token={token}")
        assert one.status == 200
        over_user = await SseClient.open(server.port, f"channel=a&token={token}")
        (refused,) = await over_user.events(1)
        assert refused.json()["status"] == 429
        assert "user" in refused.json()["reason"]
        two = await SseClient.open(server.port, f"channel=a&token={make_token('carol')}")
        over_ip = await SseClient.open(server.port, f"channel=a&token={make_token('dave')}")
        (refused,) = await over_ip.events(1)
        assert refused.json() == {"status": 429, "reason": "too many connections from this address"}
        for client in (one, two):
            await client.aclose()


async def test_a_slow_consumer_is_disconnected_and_its_memory_bounded() -> None:
    async with running(outbox_max_bytes=256 * 1024, close_timeout=0.5) as server:
        slow = await SseClient.open(server.port, "channel=a")  # never reads again
        fast = await SseClient.open(server.port, "channel=a")
        await fast.events(1)
        while server.hub.subscription_count < 2:  # noqa: ASYNC110 - no event for it
            await trio.sleep(0.01)
        seqs: list[int] = []

        async def read_fast() -> None:
            while True:
                (event,) = await fast.events(1)
                seqs.append(event.json()["seq"])

        payload = "x" * 60_000
        published = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_fast)
            while server.statistics().slow_consumer_disconnects == 0:
                await server.publish("a", payload)
                published += 1
                # Bounded in bytes: the outbox, plus the frame that went over it.
                assert server.statistics().queued_bytes <= 2 * (256 * 1024 + 61_000)
                assert published < 2000
                await trio.sleep(0.001)  # the fast reader keeps up
            while len(seqs) < published:  # noqa: ASYNC110 - the reader's progress
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        # The fast one got every message, in order; the slow one is gone.
        assert seqs == list(range(1, published + 1))
        # Its goodbye has close_timeout to be read.
        while len(server.connections()) > 1:  # noqa: ASYNC110 - no event for it
            await trio.sleep(0.01)
        assert server.connections()[0].client_id != ""
        await slow.aclose()
        await fast.aclose()


async def test_shutdown_ends_the_stream_with_an_event_that_says_so() -> None:
    async with trio.open_nursery() as nursery:
        config = triows.Config(host="127.0.0.1", port=0, sse_retry=10.0)
        server: triows.Server = await nursery.start(triows.serve, config)
        client = await SseClient.open(server.port, "channel=a")
        await client.events(1)
        await server.publish("a", "last")
        nursery.start_soon(server.aclose)
        with trio.fail_after(10):
            message, close = await client.events(2)
            assert message.json()["data"] == "last"
            assert close.name == "close"
            assert close.json() == {"code": 1001, "reason": "Server shutting down"}
            assert not close.has_id
            assert client.retry is not None
            assert 5000 <= client.retry <= 15000
            assert await client.next() is None
            await client.aclose()


async def test_sse_path_is_configurable_and_can_be_off() -> None:
    async with running(sse_path="/events") as server:
        client = await SseClient.open(server.port, "channel=a", path="/events")
        assert client.status == 200
        other = await SseClient.open(server.port, "channel=a", path="/sse")
        assert other.status == 404
        await other.body()
        await other.aclose()
        await client.aclose()
    async with running(sse_path=None) as server:
        off = await SseClient.open(server.port, "channel=a")
        assert off.status == 404
        assert b"nothing at /sse" in await off.body()
        await off.aclose()


async def test_resume_across_two_redis_nodes(shared_redis_url: str) -> None:
    redis_url = shared_redis_url  # one Redis, then a Redis Cluster
    channel = f"sse-{trio.current_time():.0f}-{id(redis_url)}"
    async with running(redis_url=redis_url) as a, running(redis_url=redis_url) as b:
        for node in (a, b):
            with trio.fail_after(10):
                await node.broker.up.wait_value(True)
        client = await SseClient.open(a.port, f"channel={channel}")
        await client.events(1)
        seqs = [await b.publish(channel, {"n": n}) for n in range(3)]
        seen = await client.events(3)
        assert [e.json()["seq"] for e in seen] == seqs
        await client.aclose()
        missed = [await a.publish(channel, {"n": n}) for n in range(3, 6)]
        # The browser comes back on the other node: everything it missed, once, in order.
        again = await SseClient.open(b.port, f"channel={channel}", last_id=seen[-1].last_id)
        events = await again.events(4)
        assert events[0].json()["recovered"] is True
        assert [e.json()["seq"] for e in events[1:]] == missed
        assert messages(events) == [{"n": 3}, {"n": 4}, {"n": 5}]
        live = await a.publish(channel, {"n": 6})
        (event,) = await again.events(1)
        assert event.json()["seq"] == live
        await again.aclose()


async def test_a_bug_in_one_stream_costs_that_stream_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from triows._server.sse import SseStream

    async with running() as server:
        broken = await SseClient.open(server.port, "channel=a")
        await broken.events(1)
        healthy = await SseClient.open(server.port, "channel=a&channel=b")
        await healthy.events(2)
        victims = [c for c in server.connections() if "b" not in server.hub.channels_of(c)]
        original = SseStream._frame_events

        def failing(self: SseStream, frame: bytes) -> bytes:
            if self in victims:
                raise RuntimeError("a bug")
            return original(self, frame)

        monkeypatch.setattr(SseStream, "_frame_events", failing)
        assert await server.publish("a", "x") == 1  # the publisher is not hurt
        (close,) = await broken.events(1)
        assert close.json() == {"code": 1011, "reason": "Internal error"}
        (message,) = await healthy.events(1)
        assert message.json()["data"] == "x"
        await broken.aclose()
        await healthy.aclose()


async def test_a_failing_authorize_hook_is_a_500() -> None:
    def authorize(principal: triows.Principal, action: triows.Action, channel: str) -> bool:
        raise RuntimeError("a bug in the application")

    async with running(authorize=authorize) as server:
        client = await SseClient.open(server.port, "channel=a")
        assert client.status == 500
        await client.body()
        await client.aclose()
        assert server.admission.connections == 0


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
async def test_a_silent_peer_is_given_up_by_the_kernel() -> None:
    async with running(sse_keepalive=4, heartbeat_timeout=3) as server:
        client = await SseClient.open(server.port, "channel=a")
        await client.events(1)
        (stream,) = server.connections()
        sock = stream.ws.stream.socket  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7000
        await client.aclose()


async def test_cross_origin_streams_and_refusals_carry_cors_headers() -> None:
    origin = "https://app.example.com"
    async with running(allow_origins=[origin], max_connections=1) as server:
        ok = await SseClient.open(server.port, "channel=a", headers={"Origin": origin})
        assert ok.status == 200
        assert f"Access-Control-Allow-Origin: {origin}" in ok.head
        full = await SseClient.open(server.port, "channel=a", headers={"Origin": origin})
        assert full.status == 200  # a refusal for now, readable by that page
        assert f"Access-Control-Allow-Origin: {origin}" in full.head
        await full.body()
        other = await SseClient.open(server.port, "channel=a", headers={"Origin": "https://x.y"})
        assert other.status == 403
        assert "Access-Control-Allow-Origin" not in other.head
        await other.body()
        await ok.aclose()


async def test_the_server_finds_and_disconnects_a_stream_by_its_client_id() -> None:
    # The dashboard lists a user's streams with their client ids and offers "Disconnect…" on
    # each (POST /api/disconnect {"client": id}); an anonymous stream is found by id alone.
    async with running() as server:
        client = await SseClient.open(server.port, "channel=a")
        await client.events(1)
        (stream,) = server.connections()
        found = await server.control.serve({"op": "connections", "client": stream.client_id})
        assert [c["client"] for c in found["connections"]] == [stream.client_id]
        assert found["connections"][0]["subscriptions"] == ["a"]
        assert found["connections"][0]["transport"] == "sse"
        assert found["connections"][0]["server_id"] == server.server_id  # which node holds it
        assert await server.disconnect(client=stream.client_id, reason="go") == 1
        (close,) = await client.events(1)
        assert (close.name, close.json()) == ("close", {"code": 4600, "reason": "go"})
        await client.aclose()


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_what_a_drop_policy_dropped_is_told_as_a_gap(policy: str) -> None:
    # The server's tracker moves past a message when its event is made; the outbox may drop
    # that event later. The browser must hear of it (a gap), or it never learns it missed it.
    async with running(outbox_max_bytes=64 * 1024, slow_consumer=policy) as server:
        client = await SseClient.open(server.port, "channel=a")  # does not read for a while
        await client.events(1)
        for _ in range(100):
            await server.publish("a", "x" * 20_000)
        assert server.statistics().dropped > 0
        await server.publish("a", "last")
        accounted: dict[int, str] = {}
        while len(accounted) < 101:
            (event,) = await client.events(1)
            if event.name == "message":
                seqs = [event.json()["seq"]]
            else:
                assert event.name == "gap"
                gap = event.json()
                assert gap["reason"] == "messages skipped"
                seqs = list(range(gap["first"], gap["last"] + 1))
            assert not set(seqs) & set(accounted)  # nothing both delivered and missing
            accounted.update(dict.fromkeys(seqs, event.name))
        assert sorted(accounted) == list(range(1, 102))
        assert "gap" in accounted.values()
        await client.aclose()


async def test_a_stream_with_too_many_gaps_waiting_is_a_slow_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("triows._core.sse_skips.MAX_RANGES", 0)
    async with running(outbox_max_bytes=64 * 1024, slow_consumer="drop_newest") as server:
        client = await SseClient.open(server.port, "channel=a")
        await client.events(1)
        for _ in range(20):
            await server.publish("a", "x" * 20_000)
        await server.publish("a", "more")  # the stream finds it cannot tell its gaps
        assert server.statistics().slow_consumer_disconnects == 1
        events: list[Event] = []
        while not events or events[-1].name == "message":
            events += await client.events(1)
        assert events[-1].name == "close"
        assert events[-1].json() == {"code": 1013, "reason": "Slow consumer: too many gaps to tell"}
        await client.aclose()
