"""What a connection needs from the server it runs in, and nothing more.

A connection reads its configuration and identity, asks :class:`~triows._server.access.Access`
what its principal may do, hands publications to
:class:`~triows._server.publishing.Publishing`, subscribes through the broker, tells presence
of joins and leaves, and counts what it sends, queues and closes. The server is one such host;
a test or another shell could be another. Written as a protocol so that connections do not
import the server (which imports them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .._brokers.fanout import FanOut
from .._brokers.presence import Presence
from .._brokers.seam import Broker
from .._config import Config
from .._core.latency import LatencyHistogram
from .._core.outbox import OutboxTotals
from .access import Access
from .flusher import Flusher
from .publishing import Publishing
from .traffic import Traffic


class ReadClock:
    """The clocks of the read a connection's reader is serving, read once per read for every
    request it holds (rates, history, dedupe, timestamps): the monotonic ``at`` and the wall
    clock's ``ms``. ``at`` is None outside a reader's step: the reader clears it before each
    checkpoint and at the end of its step, so no other task, and no later part of the read,
    can use a stale time. One per server, not one per connection: only one task runs at a
    time, and an idle connection holds nothing for it."""

    __slots__ = ("at", "ms")

    def __init__(self) -> None:
        self.at: float | None = None
        self.ms = 0


class ConnectionHost(Protocol):
    config: Config
    server_id: str
    wall_clock: Callable[[], float]
    access: Access
    publishing: Publishing
    broker: Broker
    presence: Presence
    fanout: FanOut
    #: Publish→ack latencies of every connection.
    ack_latency: LatencyHistogram
    #: What every connection's outbox holds, and the messages of every connection.
    outbox_totals: OutboxTotals
    traffic: Traffic
    #: Writes the frames connections deferred during a scheduler batch (triows._server.flusher).
    flusher: Flusher
    #: The clocks of the read being served (see :class:`ReadClock`).
    read_clock: ReadClock

    def now_ms(self) -> int:
        """Wall-clock milliseconds (message timestamps, ``welcome``, ``pong``)."""
        ...

    def loop_lag(self) -> float:
        """The largest event-loop lag measured over the last ``heartbeat_timeout`` seconds:
        heartbeats give peers that much more."""
        ...

    def count_close(self, code: int) -> None:
        """A connection the server closed, by close code (statistics)."""
        ...

    def forget(self, conn: Any) -> None:
        """The connection has ended and said its goodbye: the last thing its ``run()`` does."""
        ...
