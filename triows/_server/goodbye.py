"""A connection's goodbye: what is owed, then the close frame, whatever ended it.

Whatever ends the connection, :meth:`Goodbye._say_goodbye` finishes a half-written frame,
sends the close frame (after draining the outbox on a graceful shutdown) and waits a bounded
time for the peer's, shielded from cancellation: a cancelled server still owes its clients a
close frame. Frames deferred to the flusher and never attempted are owed whatever the close,
before anything else. The last layer of the write path (:mod:`triows._server.outbound`),
shared by WebSocket connections and event streams (their own close frame and last wait:
``_close_frame``, ``_after_close_frame``).
"""

from __future__ import annotations

import trio

from .._core.close_codes import GOING_AWAY
from .._core.frame_parser import NO_STATUS
from .._core.frames import close_frame
from .._net.websocket import Closed, wait_for_peer_close
from .outbound import CANCELLED_GOODBYE, WRITE_BATCH, Outbound


class Goodbye(Outbound):
    __slots__ = ()

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
        owed = b""
        deferred = self._deferred
        if deferred is not None:
            # Frames that would have been written at once are owed whatever the close, before
            # anything else (nothing is queued or being written before them).
            self._deferred = None
            self._deferred_bytes = 0
            owed = b"".join([d[0] for d in deferred])
        if (
            goodbye
            and self._peer_closed
            and not owed
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
                    if owed:
                        await ws.write(owed)
                    if self._drain:
                        while self.outbox:
                            await self._write_batch(WRITE_BATCH)
                    elif self._tail_queued:  # a frame is half on the wire: finish it first
                        await self._write_batch(0)
                    if goodbye:
                        await ws.write(goodbye)
                    await self._after_close_frame()
                except Closed:
                    pass
        self.outbox.clear()
        if self._room is not None:
            self._room.set()
        ws.close_now()

    async def _after_close_frame(self) -> None:  # the goodbye's last wait, when we closed first
        if self.closed_by_server and not self._peer_closed:
            await wait_for_peer_close(self.ws)

    def _close_frame(self) -> bytes:
        """Our close frame: with our code when we closed, else the peer's echoed (none when
        the connection ended without the peer's close frame)."""
        if self.closed_by_server:
            return close_frame(self.close_code, self.close_reason)
        if self._peer_closed:  # the peer's close: answer it
            return close_frame(None if self.close_code == NO_STATUS else self.close_code)
        return b""
