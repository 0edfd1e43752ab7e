"""A connection's one ordered write path, and its goodbye.

Every byte reaches the socket through :meth:`Outbound._send` (replies, pings, pongs, the close
frame) or :meth:`Outbound.deliver` (broadcast frames): written at once when nothing is queued
before it and the socket has room, and otherwise queued in the outbox, a partly written
frame's tail first, for a writer task that runs only while the socket refuses bytes. So no
frame can land inside another, and an idle connection has no writer task.

"At once" means in the next scheduler batch on a connection that defers: a frame that would
have been written now waits in ``_deferred`` for the server's flusher
(:mod:`triows._server.flusher`, which says why), never longer than one batch and never past
``DEFER_MAX`` bytes. It is non-empty only while the outbox is empty and no write is in
progress, and every way into the write path settles it first: one more place in the same
order, not a second path.

Whatever ends the connection, its goodbye (:mod:`triows._server.goodbye`) sends what is
owed and the close frame.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from .._core import protocol
from .._core.close_codes import ABNORMAL, INTERNAL_ERROR
from .._core.frames import text_frame
from .._core.outbox import DropCounter, Outbox, SlowConsumerPolicy, Verdict
from .._net.websocket import Closed, WebSocket
from .flusher import Flusher
from .host import ConnectionHost

log = logging.getLogger("triows.connection")

#: Largest single write of queued frames; keeps one slow socket from pinning a huge buffer.
WRITE_BATCH = 64 * 1024
#: Most bytes a connection defers to the flusher; past it they are written at once. A frame
#: bigger than this alone is never deferred. At most ``WRITE_BATCH``: one flush, one write.
DEFER_MAX = 16 * 1024
#: Without ``Server.aclose()`` (plain cancellation) a connection still gets this long to say 1001.
CANCELLED_GOODBYE = 1.0

#: Something a request still has to wait for once its synchronous part is done.
Wait = Callable[[], Awaitable[None]]
#: A deferred frame: its bytes, and for a broadcast its channel's policy and drop counter
#: (applied if the socket refuses it when it is flushed; replies have none).
_Deferred = tuple[bytes, SlowConsumerPolicy | None, DropCounter | None]


def _cancelled() -> bool:
    """Whether the calling task is cancelled (from outside too): a write started now would be
    cut at its first checkpoint, leaving the stream unusable for the close frame."""
    return trio.current_effective_deadline() == float("-inf")


class Outbound:
    """The write path's state; :class:`triows._server.connection.Connection` builds on it.
    ``_nursery`` is the connection's (the writer task runs there) and ``_ending`` says its
    tasks are being cancelled."""

    #: Whether it defers writes to the server's flusher (a WebSocket does; SSE writes at once).
    DEFERS = False

    __slots__ = (
        "_close_deadline",
        "_deferred",
        "_deferred_bytes",
        "_drain",
        "_ending",
        "_flusher",
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
        #: Frames that would have been written now, waiting for the flusher (module docstring).
        self._deferred: list[_Deferred] | None = None
        self._deferred_bytes = 0
        self._flusher: Flusher | None = host.flusher if self.DEFERS and ws.writes_nowait else None

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
        if self._write_now(frame, policy, counter):
            return True
        return self._offer(frame, policy, counter)

    def _offer(self, frame: bytes, policy: SlowConsumerPolicy, counter: DropCounter | None) -> bool:
        """Queue a broadcast frame by its channel's rules (False: a ``block`` outbox is over)."""
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

    def _write_now(
        self,
        frame: bytes,
        policy: SlowConsumerPolicy | None = None,
        counter: DropCounter | None = None,
    ) -> bool:
        """Write ``frame`` straight into the socket (or defer it to the flusher) if nothing
        is queued before it.

        True when it is handled: deferred, fully written, or written in part with the tail
        queued first (a tail cannot be dropped). False when the caller must queue the whole
        frame.
        """
        deferred = self._deferred
        if deferred is not None:
            if self._deferred_bytes + len(frame) <= DEFER_MAX:
                deferred.append((frame, policy, counter))
                self._deferred_bytes += len(frame)
                return True
            closing = self.close_code is not None
            self.flush_deferred()  # too much for one batch: written now, as it would have been
            if self.close_code is not None and not closing:
                # The flush found a slow consumer and closed it: like ``deliver`` on a closed
                # connection, nothing more is offered (or counted) for it.
                return True
        if self.outbox.held:  # queued frames, or frames being written: they go first
            return False
        flusher = self._flusher
        if (
            flusher is not None
            and flusher.running
            and len(frame) <= DEFER_MAX
            and not self._ending
            and not self.ws.writing
        ):
            self._deferred = [(frame, policy, counter)]
            self._deferred_bytes = len(frame)
            flusher.register(self)
            return True
        written = self.ws.write_nowait(frame)
        if written == len(frame):
            return True
        if written:
            self.outbox.push_front(memoryview(frame)[written:])
            self._tail_queued = True
            self._start_writer()
            return True
        return False

    def flush_deferred(self) -> None:
        """Write the deferred frames now, as one ``send`` (the flusher's turn, or more than
        one batch should hold); what the socket refuses is queued as if each frame had been
        written on its own: a cut frame's tail first, then each later frame by its rules
        (replies kept, broadcasts by their channel's policy)."""
        deferred = self._deferred
        if deferred is None:
            return
        self._deferred = None
        self._deferred_bytes = 0
        data = deferred[0][0] if len(deferred) == 1 else b"".join([d[0] for d in deferred])
        written = self.ws.write_nowait(data)
        if written != len(data):
            self._requeue(deferred, written)

    def flush_failed(self) -> None:
        self._deferred = None
        self.close(INTERNAL_ERROR, "Internal error")

    def _requeue(self, deferred: list[_Deferred], written: int) -> None:
        offset = 0
        outbox = self.outbox
        closing = self.close_code is not None
        for frame, policy, counter in deferred:
            end = offset + len(frame)
            if end <= written:
                offset = end
                continue
            if offset < written:  # the frame the socket cut: its tail before anything else
                outbox.push_front(memoryview(frame)[written - offset :])
                self._tail_queued = True
            elif policy is None:
                outbox.offer_reply(frame)  # over capacity: the next reply settles or closes
            else:
                self._offer(frame, policy, counter)
                if self.close_code is not None and not closing:
                    break  # a slow consumer: closed once, sent nothing more (as deliver())
            offset = end
        self._start_writer()

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
        if type(frame) is not bytes:
            frame = text_frame(protocol.encode(frame))
        if self._write_now(frame):  # what _send does, one call fewer per reply
            return False
        over = self.outbox.offer_reply(frame) is Verdict.OVER
        self._start_writer()
        return over

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
