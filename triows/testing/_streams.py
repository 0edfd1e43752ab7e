"""In-memory byte streams with bounded buffers, like a TCP connection with no network.

Bounded on purpose: a peer that stops reading fills the buffer, and the writer then feels
backpressure exactly as it would from a kernel socket buffer. That is what lets slow-consumer
behaviour be tested in virtual time. ``send_some_nowait`` is the counterpart of a non-blocking
``socket.send``, so the server's direct write path runs in these tests too.
"""

from __future__ import annotations

import trio
from trio.lowlevel import ParkingLot, checkpoint

DEFAULT_BUFFER = 64 * 1024


class _Pipe:
    """One direction: a byte buffer with a capacity, and the tasks waiting on it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = bytearray()
        self.eof = False  # the sender is done
        self.closed = False  # the receiver is gone
        self.readable = ParkingLot()
        self.writable = ParkingLot()

    def write_some(self, data: bytes | memoryview) -> int:
        if self.closed or self.eof:
            raise trio.BrokenResourceError("the other end is closed")
        room = self.capacity - len(self.buffer)
        chunk = data[:room]
        if chunk:
            self.buffer += chunk
            self.readable.unpark_all()
        return len(chunk)


class MemoryStream(trio.abc.HalfCloseableStream):
    """One end of :func:`memory_stream_pair`.

    ``peer`` is the address the server sees for the other end (``None``: an address of its
    own), so that per-address limits can be tested in virtual time.
    """

    def __init__(self, outgoing: _Pipe, incoming: _Pipe, peer: str | None = None) -> None:
        self._out = outgoing
        self._in = incoming
        self._closed = False
        self.peer = peer

    def send_some_nowait(self, data: bytes | memoryview) -> int:
        """Write what fits in the buffer now; 0 when it is full or the stream is broken."""
        if self._closed:
            return 0
        try:
            return self._out.write_some(data)
        except trio.BrokenResourceError:
            return 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError
        view = memoryview(data)
        await checkpoint()
        while view:
            written = self._out.write_some(view)
            view = view[written:]
            if view:
                await self._out.writable.park()
                if self._closed:
                    raise trio.ClosedResourceError

    async def wait_send_all_might_not_block(self) -> None:
        while len(self._out.buffer) >= self._out.capacity and not self._out.closed:
            await self._out.writable.park()

    async def send_eof(self) -> None:
        await checkpoint()
        self._out.eof = True
        self._out.readable.unpark_all()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError
        await checkpoint()
        pipe = self._in
        while not pipe.buffer:
            if pipe.eof:
                return b""
            await pipe.readable.park()
            if self._closed:
                raise trio.ClosedResourceError
        size = len(pipe.buffer) if max_bytes is None else min(max_bytes, len(pipe.buffer))
        data = bytes(pipe.buffer[:size])
        del pipe.buffer[:size]
        pipe.writable.unpark_all()
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._in.closed = True
            self._in.buffer.clear()
            for pipe in (self._out, self._in):
                pipe.readable.unpark_all()
                pipe.writable.unpark_all()
        await checkpoint()


def memory_stream_pair(buffer_size: int = DEFAULT_BUFFER) -> tuple[MemoryStream, MemoryStream]:
    """Two connected streams; each direction buffers at most ``buffer_size`` bytes."""
    a_to_b, b_to_a = _Pipe(buffer_size), _Pipe(buffer_size)
    return MemoryStream(a_to_b, b_to_a), MemoryStream(b_to_a, a_to_b)


class MemoryListener(trio.abc.Listener[MemoryStream]):
    """A listener whose clients are in-process: :meth:`connect` returns the client end."""

    def __init__(self, buffer_size: int = DEFAULT_BUFFER) -> None:
        self._buffer_size = buffer_size
        self._send, self._receive = trio.open_memory_channel[MemoryStream](float("inf"))
        self.accepted = 0

    async def connect(self, *, peer: str | None = None) -> MemoryStream:
        """A new client; the server sees it coming from ``peer`` (an address of its own
        when None)."""
        client, server = memory_stream_pair(self._buffer_size)
        server.peer = peer
        try:
            await self._send.send(server)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionRefusedError("the server is not listening") from None
        return client

    async def accept(self) -> MemoryStream:
        try:
            stream = await self._receive.receive()
        except (trio.ClosedResourceError, trio.EndOfChannel):
            raise trio.ClosedResourceError from None
        self.accepted += 1
        return stream

    async def aclose(self) -> None:
        await self._receive.aclose()
        await self._send.aclose()
