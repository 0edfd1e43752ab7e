"""A Server-Sent Events client for tests: raw TCP, parsing as the WHATWG HTML standard says
("Interpreting an event stream"), so tests see exactly the bytes a browser would read."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio


@attrs.define
class Event:
    name: str  # "message" when the stream said none
    data: str
    #: The stream's last event id after this event (what a browser would send back).
    last_id: str
    #: Whether this event had an ``id:`` line of its own.
    has_id: bool

    def json(self) -> Any:
        return json.loads(self.data)


class SseClient:
    def __init__(self, stream: trio.SocketStream, status: int, head: str, rest: bytes) -> None:
        self.stream = stream
        self.status = status
        self.head = head
        self._buffer = rest
        self.last_id = ""
        self.retry: int | None = None
        self.comments = 0
        self.ended = False

    @classmethod
    async def open(
        cls,
        port: int,
        query: str,
        *,
        path: str = "/sse",
        headers: dict[str, str] | None = None,
        last_id: str | None = None,
    ) -> SseClient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        lines = [f"GET {path}?{query} HTTP/1.1", "Host: test", "Accept: text/event-stream"]
        if last_id is not None:
            lines.append(f"Last-Event-ID: {last_id}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError(f"closed before a response head: {buffer!r}")
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        client = cls(stream, status, head.decode("latin-1"), rest)
        client.last_id = last_id or ""
        return client

    async def body(self) -> bytes:
        """Everything until the server closes (refusals)."""
        data = self._buffer
        while chunk := await self.stream.receive_some(65536):
            data += chunk
        self.ended = True
        return data

    async def _line(self) -> str | None:
        while True:
            for separator in (b"\n",):
                at = self._buffer.find(separator)
                if at >= 0:
                    line, self._buffer = self._buffer[:at], self._buffer[at + 1 :]
                    return line.rstrip(b"\r").decode()
            data = await self.stream.receive_some(65536)
            if not data:
                self.ended = True
                return None
            self._buffer += data

    async def next(self) -> Event | None:
        """The next event dispatched; None once the stream ended."""
        name, has_id = "", False
        data: list[str] = []
        while True:
            line = await self._line()
            if line is None:
                return None
            if line == "":
                if data:
                    return Event(name or "message", "\n".join(data), self.last_id, has_id)
                name, has_id = "", False
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id" and "\0" not in value:
                self.last_id, has_id = value, True
            elif field == "retry" and value.isdigit():
                self.retry = int(value)

    async def events(self, count: int, *, skip: tuple[str, ...] = ()) -> list[Event]:
        found: list[Event] = []
        while len(found) < count:
            event = await self.next()
            if event is None:
                raise ConnectionError(f"stream ended after {found}")
            if event.name not in skip:
                found.append(event)
        return found

    async def aclose(self) -> None:
        await self.stream.aclose()
