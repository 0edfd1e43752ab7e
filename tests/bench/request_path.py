"""The request path alone, in process: µs of CPU per ``publish`` from frame payload to ack.

    python tests/bench/request_path.py [--requests 50000] [--profile] [--payload 1024]
        [--no-id] [--set history_size=0 --set publish_rate=1000 ...]

A connection of a real :class:`~triows._server.server.Server` (defaults, in-process broker)
is handed the text of ``publish`` frames (with an ``id``, to a channel nobody follows) by its
reader's own entry point, ``_on_message``; its socket takes every byte at once. What is
measured is what triows adds between a parsed WebSocket message and the ack's frame in the
socket's buffer: the engine's framing and the system calls are not in it (the benchmark's
engine echo measures those). ``--profile`` prints cProfile's top functions instead, which is
how docs/design.md's per-step breakdown is read. ``--no-id`` publishes without an ``id`` (no
dedupe entry, no ack), ``--set name=value`` changes a :class:`~triows.Config` field: what a
guarantee costs is the difference.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from typing import Any

import trio
import trio.testing

import triows
from triows._core.auth import ANONYMOUS
from triows._core.frame_parser import FrameParser
from triows._net.websocket import WebSocket
from triows._server.connection import Connection
from triows._server.server import Server


class Sink(WebSocket):
    """A socket that takes every byte at once."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        super().__init__(trio.testing.MemorySendStream(), FrameParser(1 << 20), b"")  # type: ignore[arg-type]
        self.written = 0

    def write_nowait(self, data: bytes | memoryview) -> int:
        self.written += 1
        return len(data)


def frames(count: int, payload: int, with_id: bool = True) -> list[str]:
    pad = "x" * payload
    return [
        json.dumps(
            {"type": "publish", "channel": "rpc", "data": {"n": n, "pad": pad}}
            | ({"id": n} if with_id else {}),
            separators=(",", ":"),  # compact, as JSON.stringify (every browser client) writes
        )
        for n in range(count)
    ]


def config_values(settings: list[str]) -> dict[str, Any]:
    """``name=value`` pairs, values read as JSON (numbers, true/false) or else as text."""
    values: dict[str, Any] = {}
    for setting in settings:
        name, _, text = setting.partition("=")
        try:
            values[name] = json.loads(text)
        except ValueError:
            values[name] = text
    return values


async def measure(args: argparse.Namespace) -> None:
    settings = {"publish_rate": 0, "max_connections_per_ip": 0} | config_values(args.set)
    server = Server(triows.Config(**settings))
    ws = Sink()
    connection = Connection(host=server, ws=ws, principal=ANONYMOUS, remote="-", client_id="c1")
    async with trio.open_nursery() as nursery:
        connection._nursery = nursery
        texts = frames(args.requests, args.payload, with_id=not args.no_id)
        on_message = connection._on_message
        for text in texts[:1000]:  # warm up
            on_message(text)
        profiler = cProfile.Profile() if args.profile else None
        best = float("inf")
        for _ in range(args.rounds):
            start = time.thread_time()
            if profiler is not None:
                profiler.enable()
            for text in texts:
                on_message(text)
            if profiler is not None:
                profiler.disable()
            best = min(best, time.thread_time() - start)
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    if not args.no_id:
        assert ws.written >= args.rounds * args.requests, "every publish was acked"
    if profiler is not None:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(30)
    print(
        f"publish→ack request path ({args.payload}-byte pad): "
        f"{best / args.requests * 1e6:.2f} µs of CPU per request (best of {args.rounds})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--payload", type=int, default=64, help="bytes of padding in data")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-id", action="store_true", help="publish without an id (no ack)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a Config field"
    )
    args: Any = parser.parse_args()
    trio.run(measure, args)


if __name__ == "__main__":
    main()
