"""A bare wsproto client over a triows.testing MemoryStream, for peers that misbehave.

Unlike TestClient it reads only when told to: between reads it is a stalled peer whose buffer
fills, which never answers pings, exactly like a frozen browser tab.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate

from triows.testing import MemoryListener


class RawClient:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._parts: list[str] = []
        #: Bytes read from the server, and the extensions it accepted.
        self.received = 0
        self.extensions: list[Extension] = []

    @classmethod
    async def connect(
        cls, listener: MemoryListener, path: str = "/", *, deflate: bool = False
    ) -> RawClient:
        """``deflate``: offer permessage-deflate (wsproto's, as a browser offers it)."""
        client = cls(await listener.connect())
        offers: list[Extension] = [PerMessageDeflate()] if deflate else []
        request = Request(host="t", target=path, extensions=offers)
        await client.stream.send_all(client.ws.send(request))
        await client.read_until(lambda c: bool(c.messages))  # the welcome
        return client

    async def subscribe(self, *channels: str) -> None:
        """Subscribe and wait for the confirmations (reading, so not yet stalled)."""
        expected = len(self.of_type("subscribed")) + len(channels)
        for channel in channels:
            await self.send({"type": "subscribe", "channel": channel})
        await self.read_until(lambda c: len(c.of_type("subscribed")) >= expected)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=json.dumps(frame))))

    async def read_some(self) -> None:
        data = await self.stream.receive_some(65536)
        self.received += len(data)
        self.ws.receive_data(bytes(data) if data else None)
        for event in self.ws.events():
            if isinstance(event, Message):
                self._parts.append(event.data)
                if event.message_finished:
                    self.messages.append(json.loads("".join(self._parts)))
                    self._parts.clear()
            elif isinstance(event, Ping):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.send_all(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code, self.close_reason = event.code, event.reason
            elif isinstance(event, RejectConnection):
                raise ConnectionError(event.status_code)
            else:
                assert isinstance(event, AcceptConnection), event
                self.extensions = list(event.extensions)

    async def read_until(self, done: Any, timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while not done(self):
                await self.read_some()

    async def read_until_closed(self, timeout: float = 60) -> int:
        await self.read_until(lambda c: c.close_code is not None, timeout)
        assert self.close_code is not None
        return self.close_code

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def abort(self) -> None:
        await trio.aclose_forcefully(self.stream)
