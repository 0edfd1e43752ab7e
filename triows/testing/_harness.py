"""A real ``serve()`` on in-memory streams, and a small JSON client to talk to it.

Everything runs in one Trio run with no sockets, so tests can use pytest-trio's
``autojump_clock``: heartbeats, expiries and timeouts happen in virtual time, instantly and
deterministically.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from wsproto.utilities import LocalProtocolError

from .._client.transport import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_client,
)
from .._config import Config
from .._server.server import Server, serve
from ._streams import DEFAULT_BUFFER, MemoryListener

__all__ = ["ConnectionClosed", "ConnectionRejected", "TestClient", "TestServer", "open_test_server"]


#: Frames the server sends unasked: :meth:`TestClient.request` skips them.
DELIVERIES = frozenset({"message", "join", "leave"})


class TestClient:
    """One client connection; frames are dicts in and out."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, ws: WebSocketConnection, welcome: dict[str, Any], *, receive_timeout: float = 60
    ) -> None:
        self.ws = ws
        self.welcome = welcome
        self.client_id: str = welcome["data"]["clientId"]
        #: Every wait of this client gives up (``trio.TooSlowError``) after this long, so a
        #: test that expects a frame that never comes fails instead of hanging. Use
        #: ``trio.fail_after`` around a call for a tighter bound.
        self.receive_timeout = receive_timeout

    async def send(self, frame: Mapping[str, Any]) -> None:
        await self.ws.send_message(json.dumps(frame))

    async def send_raw(self, message: str | bytes) -> None:
        await self.ws.send_message(message)

    async def _next(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.ws.get_message())
        return frame

    async def receive(self) -> dict[str, Any]:
        """The next frame from the server; ``ConnectionClosed`` when there is none."""
        with trio.fail_after(self.receive_timeout):
            return await self._next()

    async def receive_type(self, kind: str) -> dict[str, Any]:
        """Skip frames until one of ``type == kind`` arrives."""
        with trio.fail_after(self.receive_timeout):
            while True:
                frame = await self._next()
                if frame.get("type") == kind:
                    return frame

    async def request(self, frame: Mapping[str, Any]) -> dict[str, Any]:
        """Send a frame and return the next frame that is not a ``message`` (nor a presence
        ``join`` or ``leave``: those are deliveries too, not replies)."""
        await self.send(frame)
        with trio.fail_after(self.receive_timeout):
            while True:
                reply = await self._next()
                if reply.get("type") not in DELIVERIES:
                    return reply

    async def wait_closed(self) -> tuple[int | None, str | None]:
        """Read until the server closes; returns ``(code, reason)``."""
        with trio.fail_after(self.receive_timeout):
            try:
                while True:
                    await self.ws.get_message()
            except ConnectionClosed as closed:
                reason = closed.reason
                return (reason.code, reason.reason) if reason else (None, None)

    async def aclose(self, code: int = 1000) -> None:
        await self.ws.aclose(code)


@attrs.define
class TestServer:
    """A running server reachable through :meth:`connect`."""

    __test__ = False

    server: Server
    listener: MemoryListener

    @asynccontextmanager
    async def connect(
        self,
        path: str = "/",
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_queue_size: int = 64,
        receive_timeout: float = 60,
        peer: str | None = None,
    ) -> AsyncIterator[TestClient]:
        """Open a client; raises ``ConnectionRejected`` (with ``status_code``) when refused,
        ``ConnectionClosed`` when the stream ends before the welcome.

        ``token`` is sent as ``Authorization: Bearer``. A small ``message_queue_size`` with a
        client that stops reading makes a realistic stalled consumer. ``peer`` is the address
        the server sees (for per-address limits); by default every client has its own.
        """
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        if token is not None:
            extra.append((b"Authorization", f"Bearer {token}".encode()))
        stream = await self.listener.connect(peer=peer)
        closing = opened = False
        try:
            async with trio.open_nursery() as nursery:
                # Bounded like every wait of the client: a server that never answers (or
                # never welcomes) must fail the test, not let the autojump clock spin
                # through the server's timers. One that ends the stream before its 101
                # fails at once (open_client).
                with trio.fail_after(receive_timeout):
                    ws = await open_client(
                        nursery,
                        stream,
                        host="triows.test",
                        path=path,
                        headers=extra,
                        message_queue_size=message_queue_size,
                    )
                    welcome = json.loads(await ws.get_message())
                opened = True
                client = TestClient(ws, welcome, receive_timeout=receive_timeout)
                try:
                    yield client
                finally:
                    closing = True
                    with trio.move_on_after(5) as scope:
                        scope.shield = True
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            remaining: BaseExceptionGroup[Any] | None = group
            if closing:
                # A server ping that crossed our close frame: trio-websocket's reader then
                # tries to pong on a closing connection and wsproto refuses. Our close wins;
                # nothing was lost, and a test must not fail on when a heartbeat fell.
                _, remaining = group.split(LocalProtocolError)
            if remaining is None:
                return
            # Alone, a refusal, no answer in time, or a connection that ended before its
            # welcome comes out as itself.
            for alone in (
                (ConnectionRejected,)
                if opened
                else (ConnectionRejected, trio.TooSlowError, ConnectionClosed)
            ):
                matched, rest = remaining.split(alone)
                if matched is not None and rest is None:
                    raise _first(matched) from None
            if remaining is group:
                raise
            raise remaining from None


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_test_server(
    config: Config | None = None, *, buffer_size: int = DEFAULT_BUFFER, **overrides: Any
) -> AsyncIterator[TestServer]:
    """Run ``serve()`` on a :class:`MemoryListener` for the duration of the block.

    ``overrides`` are ``Config`` fields (``open_test_server(heartbeat_interval=5)``). The server
    is shut down gracefully when the block ends.
    """
    config = attrs.evolve(config or Config(), **overrides)
    listener = MemoryListener(buffer_size)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            lambda task_status: serve(config, listeners=[listener], task_status=task_status)
        )
        try:
            yield TestServer(server, listener)
        finally:
            with trio.CancelScope(shield=True):
                await server.aclose()
