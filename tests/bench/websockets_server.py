"""The fast peer: the `websockets` library (asyncio, C speedups), written as its docs show.

    python websockets_server.py PORT broadcast   # relay each message to every other client
    python websockets_server.py PORT echo        # answer each message with itself
    python websockets_server.py PORT rooms       # relay to the other members of the room
                                                 # named by the URL path (chat scenarios)
    python websockets_server.py PORT broadcast deflate  # with its default compression on

Broadcast uses ``websockets.broadcast`` (frames once, writes without awaiting, skips clients
whose buffer is full), the library's recommended way. Its default keepalive pings stay on
(every 20 s), like triows' heartbeats.
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

clients: set[ServerConnection] = set()
rooms: dict[str, set[ServerConnection]] = {}


async def relay(ws: ServerConnection) -> None:
    clients.add(ws)
    try:
        async for message in ws:
            broadcast([c for c in clients if c is not ws], message)
    except ConnectionClosed:  # a client that left without a close frame
        pass
    finally:
        clients.discard(ws)


async def room(ws: ServerConnection) -> None:
    name = ws.request.path if ws.request is not None else "/"
    members = rooms.setdefault(name, set())
    members.add(ws)
    try:
        async for message in ws:
            broadcast([c for c in members if c is not ws], message)
    except ConnectionClosed:
        pass
    finally:
        members.discard(ws)
        if not members:
            rooms.pop(name, None)


async def echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


async def main(port: int, mode: str, compression: str | None) -> None:
    handler = {"echo": echo, "rooms": room}.get(mode, relay)
    async with serve(
        handler, "127.0.0.1", port, compression=compression, max_size=1 << 20
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    mode = sys.argv[2] if len(sys.argv) > 2 else "broadcast"
    compression = "deflate" if sys.argv[3:] == ["deflate"] else None
    asyncio.run(main(int(sys.argv[1]), mode, compression))
