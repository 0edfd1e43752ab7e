"""The baseline: the obvious broadcast server on bare trio-websocket.

Every message a client sends is relayed to every other client with ``send_message``, one
awaited send per receiver, as a tutorial would write it (or, in echo mode, sent back to its
sender). No protocol, no sequence numbers, no heartbeat.

    python bare_server.py PORT [broadcast|echo]
"""

from __future__ import annotations

import sys

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

clients: set[WebSocketConnection] = set()


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    clients.add(ws)
    try:
        while True:
            message = await ws.get_message()
            for other in list(clients):
                if other is not ws:
                    try:
                        await other.send_message(message)
                    except ConnectionClosed:
                        clients.discard(other)
    except ConnectionClosed:
        pass
    finally:
        clients.discard(ws)


async def echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def main(port: int, mode: str) -> None:
    await serve_websocket(echo if mode == "echo" else handler, "127.0.0.1", port, ssl_context=None)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "broadcast")
