"""The `websockets` library's Trio implementation (``websockets.trio``, 17), as its docs show.

    python websockets_trio_server.py PORT broadcast   # relay each message to every other client
    python websockets_trio_server.py PORT echo        # answer each message with itself

Broadcast uses the library's own ``broadcast()`` (awaited: it writes to each connection in
turn). Keepalive pings stay on (every 20 s), as triows' heartbeats do.
"""

from __future__ import annotations

import sys

import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.server import ServerConnection, broadcast, serve

clients: set[ServerConnection] = set()


async def relay(ws: ServerConnection) -> None:
    clients.add(ws)
    try:
        async for message in ws:
            await broadcast([c for c in clients if c is not ws], message)
    except ConnectionClosed:
        pass
    finally:
        clients.discard(ws)


async def echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


async def main(port: int, mode: str) -> None:
    handler = echo if mode == "echo" else relay
    await serve(handler, port, host="127.0.0.1", compression=None, max_size=1 << 20)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "broadcast")
