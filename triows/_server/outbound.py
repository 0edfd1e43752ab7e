"""A connection's one ordered write path, and its goodbye.

Every byte reaches the socket through :meth:`Outbound._send` (replies, pings, pongs, the close
frame) or :meth:`Outbound.deliver` (broadcast frames): written at once when nothing is queued
before it and the socket has room, and otherwise queued in the outbox, a partly written
frame's tail first, for a writer task that runs only while the socket refuses bytes. So no
frame can land inside another, and an idle connection has no writer task.

Whatever ends the connection, :meth:`Outbound._say_goodbye` finishes a half-written frame,
sends the close frame (after draining the outbox on a graceful shutdown) and waits a bounded
time for the peer's, shielded from cancellation: a cancelled server still owes its clients a
close frame.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from .._core import protocol
from .._core.frame_parser import NO_STATUS, Close, Failure, FrameParser
from .._core.frames import close_frame, text_frame
from .._core.outbox import DropCounter, Outbox, SlowConsumerPolicy, Verdict
from .._net.websocket import Closed, WebSocket
from .host import ConnectionHost

log = logging.getLogger("triows.connection")

#: Largest single write of queued frames; keeps one slow socket from pinning a huge buffer.
WRITE_BATCH = 64 * 1024
#: Without ``Server.aclose()`` (plain cancellation) a connection still gets this long to say 1001.
CANCELLED_GOODBYE = 1.0

GOING_AWAY = 1001
POLICY = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011
#: What a connection that ended without a close frame counts as (RFC 6455 §7.1.5).
ABNORMAL = 1006

#: Something a request still has to wait for once its synchronous part is done.
Wait = Callable[[], Awaitable[None]]


def _cancelled() -> bool:
    """Whether the calling task is cancelled (from outside too): a write started now would be
    cut at its first checkpoint, leaving the stream unusable for the close frame."""
    return trio.current_effective_deadline() == float("-inf")


class Outbound:
    """The write path's state; :class:`triows._server.connection.Connection` builds on it.
    ``_nursery`` is the connection's (the writer task runs there) and ``_ending`` says its
    tasks are being cancelled."""

    __slots__ = (
        "_close_deadline",
        "_drain",
        "_ending",
        "_host",
        "_nursery",
        "_peer_closed",
        "_room",
        "_send_scope",
        "_tail_queued",
        "_traffic",
        "_writer_running",
        "close_code",
        "close_reason",
        "closed_by_server",
        "deflate_limit",
        "frames_out",
        "outbox",
        "ws",
    )

    def __init__(self, host: ConnectionHost, ws: WebSocket) -> None:
        config = host.config
        self._host = host
        self.ws = ws
        self.outbox = Outbox(config.outbox_size, config.outbox_max_bytes, host.outbox_totals)
        self._traffic = host.traffic
        self._nursery: trio.Nursery | None = None
        self._writer_running = False
        self._tail_queued = False  # the outbox starts with the unwritten tail of a frame
        self._peer_closed = False  # the peer sent its close frame (valid or not)
        self._room: trio.Event | None = None
        #: The connection is ending: its tasks are cancelled (or will be once they start).
        self._ending = False
        self._send_scope: trio.CancelScope | None = None  # the writer's write in progress
        self._drain = False
        self._close_deadline: float | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by_server = False
        self.frames_out = 0
        #: Largest broadcast payload this peer may be sent compressed (0: no permessage-deflate).
        self.deflate_limit = ws.deflate_limit

    # -- ending ---------------------------------------------------------------------------------

    def close(
        self, code: int, reason: str, *, drain: bool = False, deadline: float | None = None
    ) -> None:
        """Ask the connection to end with ``code``; the first reason given wins."""
        if self.close_code is None:
            self.close_code, self.close_reason, self._drain = code, reason, drain
            self.closed_by_server = True
            self._close_deadline = (
                deadline
                if deadline is not None
                else trio.current_time() + self._host.config.close_timeout
            )
            self._host.count_close(code)
            send = self._send_scope
            if send is not None:
                # Let a write in progress finish: cutting it would leave half a frame on the
                # wire and nothing more could be sent, not even the close frame.
                send.shield = True
                send.deadline = min(send.deadline, self._close_deadline)
        self._end()

    def _end(self) -> None:
        """Stop every task of this connection; run() then says goodbye."""
        self._ending = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _peer_left(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    async def _say_goodbye(self) -> None:
        # Shielded, because a cancelled server still owes its clients a close frame; bounded,
        # because a peer that does not answer must not hold shutdown up.
        deadline = self._close_deadline
        if deadline is None:  # cancelled from outside, or the peer left first
            deadline = trio.current_time() + CANCELLED_GOODBYE
        if self.close_code is None:  # cancelled from outside: still a 1001 goodbye
            self.close(GOING_AWAY, "Server shutting down", deadline=deadline)
        ws = self.ws
        goodbye = self._close_frame()
        if (
            goodbye
            and self._peer_closed
            and not self._tail_queued
            and not (self._drain and self.outbox)
            and ws.write_nowait(goodbye) == len(goodbye)
        ):
            # The common goodbye (the peer closed; nothing owed before our close frame) taken
            # whole by the socket: nothing to wait for, so no scope and no task switch.
            goodbye = b""
        else:
            with trio.move_on_at(deadline) as scope:
                scope.shield = True
                try:
                    if self._drain:
                        while self.outbox:
                            await self._write_batch(WRITE_BATCH)
                    elif self._tail_queued:  # a frame is half on the wire: finish it first
                        await self._write_batch(0)
                    if goodbye:
                        await ws.write(goodbye)
                    if self.closed_by_server and not self._peer_closed:
                        await self._wait_for_peer_close()
                except Closed:
                    pass
        self.outbox.clear()
        if self._room is not None:
            self._room.set()
        ws.close_now()

    def _close_frame(self) -> bytes:
        """Our close frame: with our code when we closed, else the peer's echoed (none when
        the connection ended without the peer's close frame)."""
        if self.closed_by_server:
            return close_frame(self.close_code, self.close_reason)
        if self._peer_closed:  # the peer's close: answer it
            return close_frame(None if self.close_code == NO_STATUS else self.close_code)
        return b""

    async def _wait_for_peer_close(self) -> None:
        """Read (and ignore) until the peer's close frame or the end of the stream."""
        ws = self.ws
        # After a protocol error the old parser is done; the peer's answer comes in a segment
        # of its own, so a fresh parser finds it (reading compressed frames too, if negotiated).
        old = ws.parser
        parser = FrameParser(old.max_message, inflate=old.inflate) if old.done else old
        while True:
            data = b"" if parser.pending else await ws.receive()
            if not data and not parser.pending:
                return
            for event in parser.feed(data):
                if isinstance(event, Close | Failure):
                    return
            if parser.pending:
                await trio.lowlevel.checkpoint()  # what a read inflates, in steps

    # -- sending: one ordered path ---------------------------------------------------------------

    def deliver(self, frame: bytes, policy: SlowConsumerPolicy, counter: DropCounter) -> bool:
        """Hand a broadcast frame to this subscriber without waiting.

        Returns False only under the ``block`` policy when the outbox went over capacity: the
        publisher must then wait in :meth:`wait_for_room`.
        """
        if self.close_code is not None:
            return True
        self.frames_out += 1
        self._traffic.sent += 1
        if self._write_now(frame):
            return True
        verdict = self.outbox.offer(frame, policy, counter)
        if verdict is Verdict.QUEUED:
            self._start_writer()
            return True
        if verdict is Verdict.OVER:
            self._start_writer()
            return False
        if verdict is Verdict.DISCONNECT:
            self._host.fanout.slow_consumer(self, "Slow consumer")
        return True

    def _write_now(self, frame: bytes) -> bool:
        """Write ``frame`` straight into the socket if nothing is queued before it.

        True when it is handled: fully written, or written in part with the tail queued first
        (a tail cannot be dropped). False when the caller must queue the whole frame.
        """
        if self.outbox:  # queued frames, or frames being written: they go first
            return False
        written = self.ws.write_nowait(frame)
        if written == len(frame):
            return True
        if written:
            self.outbox.push_front(memoryview(frame)[written:])
            self._tail_queued = True
            self._start_writer()
            return True
        return False

    def _send(self, frame: bytes) -> Verdict:
        """A frame that must not be dropped (reply, ping, pong): now, or queued in order."""
        if self._write_now(frame):
            return Verdict.QUEUED
        verdict = self.outbox.offer_reply(frame)
        self._start_writer()
        return verdict

    def _start_writer(self) -> None:
        if self._writer_running or self._ending:
            return  # the goodbye sends what is left, if anything is owed
        nursery = self._nursery
        if nursery is not None:
            self._writer_running = True
            nursery.start_soon(self._write)

    async def _write(self) -> None:
        config = self._host.config
        write_timeout = config.heartbeat_interval + config.heartbeat_timeout
        try:
            # Not once the connection is ending: a new write would be cut at its first
            # checkpoint, and the goodbye sends what is still owed.
            while self.outbox and not self._ending and not _cancelled():
                with trio.CancelScope(deadline=trio.current_time() + write_timeout) as scope:
                    self._send_scope = scope
                    try:
                        await self._write_batch(WRITE_BATCH)
                    except Closed:
                        self._peer_left(ABNORMAL, "")
                        self._end()
                        return
                    finally:
                        self._send_scope = None
                if scope.cancelled_caught:
                    if self.close_code is None:
                        self._host.fanout.slow_consumer(self, "Slow consumer: write timed out")
                    return
                if self._room is not None and self.outbox.has_room:
                    self._room.set()
                    self._room = None
        finally:
            self._writer_running = False

    async def _write_batch(self, max_bytes: int) -> None:
        """Send queued frames, oldest first, as one write (``max_bytes=0``: just the first)."""
        frames = self.outbox.take(max_bytes)
        self._tail_queued = False
        await self.ws.write(frames[0] if len(frames) == 1 else b"".join(frames))
        self.outbox.written(frames)

    def queue_reply(self, frame: dict[str, object] | bytes) -> bool:
        """Queue a reply (or a ready frame) without waiting; never dropped.

        Returns True when the outbox went over capacity: the caller must then
        ``await self.settle()`` before serving the next request.
        """
        if self.close_code is not None:
            return False
        self.frames_out += 1
        self._traffic.sent += 1
        data = frame if isinstance(frame, bytes) else text_frame(protocol.encode(frame))
        return self._send(data) is Verdict.OVER

    def _reply(self, frame: dict[str, object] | bytes) -> Wait | None:
        return self.settle if self.queue_reply(frame) else None

    async def settle(self) -> None:
        """Wait (boundedly) for the outbox to be below capacity again."""
        with trio.move_on_after(self._host.config.block_timeout) as scope:
            await self.wait_for_room()
        if scope.cancelled_caught:
            self._close_not_reading()

    def _close_not_reading(self) -> None:
        self._host.fanout.slow_consumer(self, "Slow consumer: replies are not being read")

    def reply_nowait(self, frame: dict[str, object]) -> None:
        """A reply that cannot wait; a client that lets its replies pile up beyond its outbox
        while sending more is not reading and is closed with 1013."""
        if self.queue_reply(frame):
            self._close_not_reading()

    async def wait_for_room(self) -> None:
        while not self.outbox.has_room and self.close_code is None:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()
