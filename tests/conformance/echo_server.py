"""An echo server on triows' connection engine, for the Autobahn|Testsuite fuzzing client.

    python -m tests.conformance.echo_server PORT

Everything but the application protocol is the server's own: the handshake, the frame parser,
the ordered write path, pings, the closing handshake and the close codes. Only what a message
means changes: it is sent back as it came (text as text, binary as binary), and there is no
welcome. Limits are raised to what the test suite sends (16 MiB messages). With
permessage-deflate negotiated (groups 12 and 13), every echo is compressed the way a broadcast
is (:func:`triows._core.deflate.deflated_frame`, within the window the client allowed).
"""

from __future__ import annotations

import logging
import sys

import trio

import triows
from triows._core.deflate import deflated_frame
from triows._core.frames import BINARY, TEXT, frame
from triows._server.connection import Connection
from triows._server.host import ConnectionHost
from triows._server.server import Server


class EchoConnection(Connection):
    __slots__ = ()

    @classmethod
    def welcome(cls, host: ConnectionHost, client_id: str) -> bytes:
        return b""

    def _greet(self) -> None:
        pass

    def _on_message(self, raw: str | bytes) -> None:
        self.frames_in += 1
        payload = raw.encode() if isinstance(raw, str) else raw
        echo = frame(TEXT if isinstance(raw, str) else BINARY, payload)
        if len(payload) <= self.deflate_limit:
            echo = deflated_frame(echo)
        self.queue_reply(echo)


def config(port: int) -> triows.Config:
    return triows.Config(
        host="127.0.0.1",
        port=port,
        max_message_size=20 * 1024 * 1024,
        outbox_size=100_000,
        outbox_max_bytes=256 * 1024 * 1024,
        heartbeat_interval=3600,
        max_connections_per_ip=0,
        publish_rate=0,
    )


async def serve_echo(
    port: int, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
) -> None:
    server = Server(config(port))
    server.connection_class = EchoConnection
    await server._run(None, task_status)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    trio.run(serve_echo, int(sys.argv[1]))
