"""A minimal Python subscriber speaking protocol v1 with trio-websocket.

    .venv/bin/python -m triows &                 # in one terminal
    .venv/bin/python examples/python_subscriber.py ws://127.0.0.1:8080/ news

(A reconnecting client with resume comes as ``triows.client``.) Ctrl-C stops it.
"""

from __future__ import annotations

import json
import sys

import trio
from trio_websocket import open_websocket_url


async def main(url: str, channel: str) -> None:
    async with open_websocket_url(url) as ws:
        welcome = json.loads(await ws.get_message())
        print("connected as", welcome["data"]["clientId"])
        await ws.send_message(json.dumps({"type": "subscribe", "channel": channel, "id": 1}))
        await ws.send_message(
            json.dumps({"type": "publish", "channel": channel, "data": "hello", "id": 2})
        )
        while True:
            frame = json.loads(await ws.get_message())
            print(frame)


if __name__ == "__main__":
    try:
        trio.run(
            main,
            sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/",
            sys.argv[2] if len(sys.argv) > 2 else "news",
        )
    except* KeyboardInterrupt:  # Ctrl-C stops it without a traceback
        pass
