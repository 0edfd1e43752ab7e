"""A publish served in the reader's step (the fast path) answers as the general path does.

The fast path (``read_request`` -> ``_publish_now`` -> the broker's ``publish_at_once``) skips
the request object, the general dispatch and the :class:`Publication`. Two servers get the
same frames from one client: one serves them by the fast path, the other by the general path
with a broker that numbers through a ``Publication`` and its callback. Everything the clients
see (the publisher's replies, a subscriber's messages, byte for byte) and every figure the
server keeps must be the same, for any sequence of requests, hostile ones included.
"""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import triows
from triows._core.auth import ANONYMOUS, Principal
from triows._core.frame_parser import FrameParser
from triows._core.frames import text_payload
from triows._net.websocket import WebSocket
from triows._server.connection import Connection
from triows._server.server import Server

WALL_CLOCK = 1_700_000_000.25


class Recorder(WebSocket):
    """A socket that takes every byte at once and keeps the frames written."""

    def __init__(self) -> None:
        super().__init__(trio.testing.MemorySendStream(), FrameParser(1 << 20), b"")  # type: ignore[arg-type]
        self.frames: list[bytes] = []

    def write_nowait(self, data: bytes | memoryview) -> int:
        self.frames.append(bytes(data))
        return len(data)


def serve(frames: list[str | bytes], *, fast: bool, principal: Principal, **config: Any) -> Any:
    """What the clients saw and the server counted after ``frames`` from one client."""

    async def main() -> Any:
        server = Server(triows.Config(server_id="n1", **config), wall_clock=lambda: WALL_CLOCK)
        server.broker.hub._epoch_prefix = "e"  # the same epochs on both servers
        if not fast:  # numbered through a Publication and its callback
            server.broker.numbers_at_once = False
        publisher_ws, subscriber_ws = Recorder(), Recorder()
        publisher = Connection(
            host=server, ws=publisher_ws, principal=principal, remote="-", client_id="pub"
        )
        subscriber = Connection(
            host=server, ws=subscriber_ws, principal=ANONYMOUS, remote="-", client_id="sub"
        )
        for connection in (publisher, subscriber):
            server.fanout.register(connection)
        async with trio.open_nursery() as nursery:
            publisher._nursery = subscriber._nursery = nursery
            publisher._publishes_now = fast
            for channel in ("rpc", "ok.1", "no.1"):
                subscriber._on_message(json.dumps({"type": "subscribe", "channel": channel}))
            for raw in frames:
                if fast:  # served as the reader serves a read: on its clocks, read once
                    server.read_clock.at = trio.current_time()
                    server.read_clock.ms = server.now_ms()
                publisher._on_message(raw)
                server.read_clock.at = None
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        broker = server.broker
        return {
            "publisher": [text_payload(f) for f in publisher_ws.frames],
            "subscriber": [text_payload(f) for f in subscriber_ws.frames],
            "figures": (
                broker.published,
                broker.deduplicated,
                broker.dedupe_entries,
                broker.hub.history_messages,
                broker.hub.history_bytes,
                dict(server.access.rate_limited),
                server.traffic.received,
                server.traffic.sent,
                publisher.frames_in,
                publisher.frames_out,
                server.ack_latency.count,
            ),
        }

    return trio.run(main, clock=trio.testing.MockClock())


CHANNELS = ["rpc", "ok.1", "no.1", "rpc", "bad name", "ok.*"]


@st.composite
def publish_frames(draw: st.DrawFn) -> str | bytes:
    shape = draw(st.integers(0, 9))
    fields: dict[str, Any] = {"type": "publish", "channel": draw(st.sampled_from(CHANNELS))}
    fields["data"] = draw(
        st.one_of(
            st.integers(),
            st.text(max_size=10),
            st.just("x" * 1100),  # over a small max_message_size: 413
            st.lists(st.integers(), max_size=3),
            st.just(json.loads("[" * 40 + "]" * 40)),  # too deep: 400
        )
    )
    ids = [None, 0, 1, 2, "a", "b", "é", 'q"\n', 2**53, True, 1.5, ""]
    request_id = draw(st.sampled_from(ids))
    if request_id is not None:
        fields["id"] = request_id
    if draw(st.booleans()):
        fields["echo"] = draw(st.sampled_from([True, False, 1]))
    if shape == 0:
        del fields["data"]
    if shape == 1:
        return json.dumps(fields).encode()  # binary frame
    if shape == 2:
        return " " + json.dumps(fields)
    if shape == 3:
        return json.dumps(fields)[:-1]  # cut
    if shape == 4:
        return draw(
            st.sampled_from(['{"type":"ping","id":1}', '{"type":"subscribe","channel":"rpc"}'])
        )
    return json.dumps(fields, separators=(",", ":") if draw(st.booleans()) else None)


CONFIGS = st.sampled_from(
    [
        {},
        {"publish_rate": 2, "user_publish_rate": 0, "max_message_size": 2048},
        {"publish_rate": 0, "user_publish_rate": 1, "dedupe_size": 2, "history_size": 0},
        {"publish_rate": 0, "dedupe_size": 0, "history_size": 2},
    ]
)
PRINCIPALS = st.sampled_from(
    [ANONYMOUS, Principal(user_id="u1"), Principal(user_id="u1", publish=["ok.*", "rpc"])]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(publish_frames(), max_size=30), CONFIGS, PRINCIPALS)
def test_the_fast_path_answers_as_the_general_path(
    frames: list[str | bytes], config: dict[str, Any], principal: Principal
) -> None:
    fast = serve(frames, fast=True, principal=principal, **config)
    general = serve(frames, fast=False, principal=principal, **config)
    assert fast == general


def test_the_fast_path_is_taken_and_answers_every_guarantee() -> None:
    """One fixed sequence, its replies spelled out: ack, dedupe, 429, 403, 413, 400."""
    frames: list[str | bytes] = [
        '{"type":"publish","channel":"rpc","data":1,"id":1}',
        '{"type":"publish","channel":"rpc","data":2,"id":1}',  # a repeat: acked, not sent
        '{"type":"publish","channel":"no.1","data":3,"id":2}',  # not allowed
        '{"type":"publish","channel":"rpc","data":"' + "x" * 1100 + '","id":3}',  # too large
        '{"type":"publish","channel":"rpc","data":4,"id":4,"echo":1}',  # bad echo
        '{"type":"publish","channel":"rpc","data":5,"id":5}',
        '{"type":"publish","channel":"rpc","data":6,"id":6}',  # over the rate (burst 5)
    ]
    principal = Principal(user_id="u1", publish=["ok.*", "rpc"])
    config = {"publish_rate": 2.5, "user_publish_rate": 0, "max_message_size": 2048}
    fast = serve(frames, fast=True, principal=principal, **config)
    assert fast == serve(frames, fast=False, principal=principal, **config)
    replies = [json.loads(p) for p in fast["publisher"]]
    assert [(r["type"], r.get("code"), r.get("seq")) for r in replies] == [
        ("ack", None, 1),
        ("ack", None, 1),
        ("error", 403, None),
        ("error", 413, None),
        ("error", 400, None),
        ("ack", None, 2),
        ("error", 429, None),
    ]
    messages = [json.loads(p) for p in fast["subscriber"][3:]]  # after the subscribed replies
    assert [(m["data"], m["seq"], m["id"], m["from"]) for m in messages] == [
        (1, 1, "e.1:1", "pub"),
        (5, 2, "e.1:2", "pub"),
    ]
    assert all(m["timestamp"] == int(WALL_CLOCK * 1000) for m in messages)
