"""Protocol v1 as a client sees it, against a real serve() on in-memory streams."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from triows._net.websocket import WebSocket
from triows.testing import open_test_server


async def test_welcome_frame(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(heartbeat_interval=7, server_id="node-1") as harness:
        async with harness.connect() as client:
            data = client.welcome["data"]
            assert client.welcome["type"] == "welcome"
            assert data["serverId"] == "node-1"
            assert data["heartbeat"] == 7
            assert isinstance(data["timestamp"], int)
            assert isinstance(data["clientId"], str)
            assert data["clientId"]


async def test_the_welcome_goes_out_with_the_101_in_one_write(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One system call and one wake-up of the client for both (a handshake's largest cost on
    # loopback is the kernel's work per write); counted once, as any frame out.
    writes: list[bytes] = []
    write_nowait = WebSocket.write_nowait

    def recorded(self: WebSocket, data: bytes | memoryview) -> int:
        writes.append(bytes(data))
        return write_nowait(self, data)

    monkeypatch.setattr(WebSocket, "write_nowait", recorded)
    async with open_test_server() as harness:
        async with harness.connect() as client:
            assert client.welcome["type"] == "welcome"
            assert len(writes) == 1
            assert writes[0].startswith(b"HTTP/1.1 101 ")
            assert b'{"type":"welcome"' in writes[0]
            (conn,) = harness.server.connections()
            assert conn.frames_out == 1
            assert harness.server.frame_totals()[1] == 1


async def test_publish_reaches_subscribers_but_not_sender(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as alice, harness.connect() as bob, harness.connect() as carol:
            for client in (alice, bob):
                reply = await client.request({"type": "subscribe", "channel": "room", "id": 1})
                assert reply["type"] == "subscribed"
                assert reply["id"] == 1
                assert reply["seq"] == 0
                epoch = reply["epoch"]
            ack = await alice.request(
                {"type": "publish", "channel": "room", "data": {"t": "hi"}, "id": "m1"}
            )
            assert ack == {"type": "ack", "id": "m1", "seq": 1}
            message = await bob.receive()
            assert message["type"] == "message"
            assert message["channel"] == "room"
            assert message["data"] == {"t": "hi"}
            assert message["from"] == alice.client_id
            assert message["seq"] == 1
            assert message["id"] == f"{epoch}:1"
            assert isinstance(message["timestamp"], int)
            # The sender got only its ack; carol is not subscribed.
            assert (await alice.request({"type": "ping"}))["type"] == "pong"
            assert (await carol.request({"type": "ping"}))["type"] == "pong"


async def test_publish_without_id_gets_no_ack(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as client:
            await client.send({"type": "publish", "channel": "x", "data": 1})
            assert (await client.request({"type": "ping", "id": 2}))["type"] == "pong"


async def test_sequence_numbers_are_per_channel(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as sub, harness.connect() as pub:
            for channel in ("a", "b"):
                await sub.request({"type": "subscribe", "channel": channel})
            seqs: list[int] = []
            for channel in ("a", "a", "b", "a"):
                ack = await pub.request(
                    {"type": "publish", "channel": channel, "data": None, "id": len(seqs)}
                )
                seqs.append(ack["seq"])
            assert seqs == [1, 2, 1, 3]
            got = [(m["channel"], m["seq"]) for m in [await sub.receive() for _ in range(4)]]
            assert got == [("a", 1), ("a", 2), ("b", 1), ("a", 3)]


async def test_unsubscribe_stops_delivery(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as sub, harness.connect() as pub:
            await sub.request({"type": "subscribe", "channel": "a"})
            assert await sub.request({"type": "unsubscribe", "channel": "a", "id": "u"}) == {
                "type": "unsubscribed",
                "channel": "a",
                "id": "u",
            }
            await pub.request({"type": "publish", "channel": "a", "data": 1, "id": 1})
            assert (await sub.request({"type": "ping"}))["type"] == "pong"
            # Unsubscribing again is harmless.
            assert (await sub.request({"type": "unsubscribe", "channel": "a"}))[
                "type"
            ] == "unsubscribed"


async def test_ping_pong(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(server_id="s1") as harness:
        async with harness.connect() as client:
            pong = await client.request({"type": "ping", "id": "p"})
            assert pong["type"] == "pong"
            assert pong["serverId"] == "s1"
            assert pong["id"] == "p"
            assert isinstance(pong["serverTime"], int)


async def test_subscribe_with_since_without_history_reports_the_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(history_size=0) as harness:
        async with harness.connect() as holder, harness.connect() as pub, harness.connect() as late:
            first = await holder.request({"type": "subscribe", "channel": "a"})
            for i in range(3):
                await pub.request({"type": "publish", "channel": "a", "data": i, "id": i})
            epoch = first["epoch"]
            up_to_date = await late.request(
                {"type": "subscribe", "channel": "a", "since": 3, "epoch": epoch}
            )
            assert up_to_date["recovered"] is True
            assert "gap" not in up_to_date
            await late.request({"type": "unsubscribe", "channel": "a"})
            behind = await late.request(
                {"type": "subscribe", "channel": "a", "since": 1, "epoch": epoch}
            )
            assert behind["recovered"] is False
            assert behind["gap"] == [2, 3]
            await late.request({"type": "unsubscribe", "channel": "a"})
            other = await late.request(
                {"type": "subscribe", "channel": "a", "since": 1, "epoch": "elsewhere"}
            )
            assert other["recovered"] is False
            assert "gap" not in other


async def test_server_publish_from_application(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as sub:
            await sub.request({"type": "subscribe", "channel": "news"})
            assert await harness.server.publish("news", {"h": 1}, sender="cms") == 1
            assert harness.server.publish_nowait("news", [2]) == 2
            first, second = await sub.receive(), await sub.receive()
            assert (first["data"], first["from"], first["seq"]) == ({"h": 1}, "cms", 1)
            assert (second["data"], second["from"], second["seq"]) == ([2], None, 2)


async def test_errors_keep_the_connection_usable(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as client:
            for raw in (
                "nope",
                b"\x00\x01",
                "[]",
                '{"type":"x","id":9}',
                '{"type":"subscribe","channel":"*"}',
            ):
                await client.send_raw(raw)
                reply = await client.receive()
                assert reply["type"] == "error"
                assert reply["code"] == 400
                assert reply["message"]
            assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_error_echoes_id(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as client:
            reply = await client.request({"type": "subscribe", "id": "s1"})
            assert reply == {
                "type": "error",
                "code": 400,
                "message": "missing field 'channel'",
                "id": "s1",
            }


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False)
)
frames = st.one_of(
    st.text(max_size=50),
    st.binary(max_size=50),
    st.builds(
        json.dumps,
        st.dictionaries(
            st.sampled_from(["type", "channel", "data", "id", "since", "epoch", "token"]),
            json_leaf | st.sampled_from(["publish", "subscribe", "unsubscribe", "ping", "refresh"]),
        ),
    ),
    st.just("[" * 5000 + "]" * 5000),
    st.just('{"type":"publish","channel":"a","data":' + "1" * 5000 + "}"),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(frames, min_size=1, max_size=8))
async def test_fuzzed_frames_never_break_the_connection(raw_frames: list[Any]) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as client:
            for raw in raw_frames:
                await client.send_raw(raw)
            reply = await client.request({"type": "ping", "id": "last"})
            while reply.get("id") != "last":
                assert reply["type"] in {"error", "subscribed", "unsubscribed", "ack", "pong"}
                if reply["type"] == "error":
                    assert reply["code"] in {400, 413}
                reply = await client.receive()
            assert reply["type"] == "pong"
            assert harness.server.statistics().connections == 1


async def test_a_publisher_gets_its_own_message_only_with_echo(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as alone:
            await alone.request({"type": "subscribe", "channel": "chat", "id": 1})
            plain = {"type": "publish", "channel": "chat", "data": "not echoed", "id": 2}
            assert (await alone.request(plain))["type"] == "ack"
            echoed = {"type": "publish", "channel": "chat", "data": "echoed", "id": 3, "echo": True}
            await alone.send(echoed)
            message = await alone.receive()
            assert (message["type"], message["data"], message["seq"]) == ("message", "echoed", 2)
            assert message["from"] == alone.welcome["data"]["clientId"]
            assert await alone.receive() == {"type": "ack", "id": 3, "seq": 2}
            bad = await alone.request({**echoed, "echo": "yes", "id": 4})
            assert (bad["code"], bad["message"]) == (400, "'echo' must be true or false")
