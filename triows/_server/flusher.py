"""Writing, at the start of the next scheduler batch, the frames deferred during this one.

A request→reply client that waits for its reply sleeps between replies; on a machine whose
idle cores halt, every ``send`` that answers one wakes that client's core, and that wake-up
costs the sender as much CPU as serving the request did (docs/design.md, "Where the live
server's extra microseconds go"). So a connection's reader does not write its replies in its
own step: it defers them (:meth:`triows._server.outbound.Outbound._write_now`) and registers
once with the server's :class:`Flusher`, which writes every registered connection's deferred
frames, in order, one non-blocking ``send`` each, in the next batch. One wake-up of the peer
then covers a whole batch of replies.

The flusher cannot leave a connection waiting: while it is not running (not started yet,
between a crash and its restart, or stopped) connections write at once as before, and when
it stops for any reason it writes what is registered before it goes (a synchronous loop,
safe under cancellation). A connection whose flush raises is closed with 1011; the others go
on.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

log = logging.getLogger("triows.connection")

#: Connections flushed in one step before the flusher lets the others run (each flush is
#: one ``send`` of at most ``outbound.DEFER_MAX`` bytes).
FLUSHES_PER_STEP = 256


class Deferring(Protocol):
    """What the flusher needs of a connection with deferred frames."""

    def flush_deferred(self) -> None:
        """Write what was deferred now; what the socket refuses goes to the outbox."""

    def flush_failed(self) -> None:
        """``flush_deferred`` raised: end the connection (1011)."""


class Flusher:
    """The server's one task that writes deferred frames; see the module's docstring."""

    __slots__ = ("_parked", "_queue", "flushed", "running")

    def __init__(self) -> None:
        self._queue: list[Deferring] = []
        self._parked: trio.lowlevel.Task | None = None
        #: Whether deferring is allowed now: True only while :meth:`run` is waiting or working.
        self.running = False
        #: Connection flushes done (statistics for benchmarks and tests).
        self.flushed = 0

    def register(self, conn: Deferring) -> None:
        """``conn`` deferred its first frame since its last flush: flush it next batch."""
        self._queue.append(conn)
        task = self._parked
        if task is not None:
            self._parked = None
            trio.lowlevel.reschedule(task)

    async def run(self) -> None:
        """Flush what is registered, batch after batch, until cancelled."""
        self.running = True
        try:
            while True:
                if not self._queue:
                    await self._wait()
                queue, self._queue = self._queue, []
                if len(queue) > FLUSHES_PER_STEP:
                    # The rest waits one step more, in order.
                    queue, rest = queue[:FLUSHES_PER_STEP], queue[FLUSHES_PER_STEP:]
                    self._queue[:0] = rest
                self._flush(queue)
                if self._queue:
                    await trio.lowlevel.checkpoint()
        finally:
            # Whatever ends this task (cancelled, or a bug), nothing registered may be left
            # waiting for a flush that will not come, and nothing new may defer.
            self.running = False
            while self._queue:
                queue, self._queue = self._queue, []
                self._flush(queue)

    def _flush(self, queue: list[Deferring]) -> None:
        """Flush ``queue`` in order. Should anything escape (a bug in closing a connection
        whose flush failed, a ``KeyboardInterrupt``), the connections not flushed yet go back
        to the front of the queue first, so that the ``finally`` of :meth:`run` (or its
        restart) still flushes them: a connection taken off the queue unflushed would keep
        its frames deferred for good, since it registers only with its first one."""
        done = 0
        try:
            for conn in queue:
                try:
                    conn.flush_deferred()
                except Exception:
                    done += 1  # its frames are settled or it is closed: not again
                    self._failed(conn)
                else:
                    done += 1
        finally:
            self.flushed += done
            if done < len(queue):
                self._queue[:0] = queue[done:]

    def _failed(self, conn: Deferring) -> None:
        log.exception("writing the deferred frames of %r failed", conn)
        conn.flush_failed()

    async def _wait(self) -> None:
        self._parked = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._parked = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
