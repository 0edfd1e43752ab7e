"""What the operations surface sees of a running server: :class:`ServerView`, and the frozen
snapshots it returns (public as ``triows.ServerStatistics`` and friends: safe to keep and
compare).

HTTP, metrics and the monitor read the server through this protocol only, so that they never
import the server (which builds them). What they may do besides reading is publish (the HTTP
API) and start a task the server owns (the API waits for ``block`` subscribers after it has
answered).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs

from .._brokers.fanout import FanOut, Subscriber
from .._brokers.seam import Broker, BrokerStatistics, Published
from .._config import Config
from .._core.auth import Principal
from .._core.hub import ChannelState, Hub
from .._core.latency import LatencyHistogram
from .._core.memory_guard import MemoryGuard


class Connected(Protocol):
    """A connection as the operations surface sees it (the dashboard's lookup)."""

    client_id: str
    principal: Principal

    def statistics(self, now: float) -> ConnectionStatistics: ...


class ServerView(Protocol):
    config: Config
    server_id: str
    wall_clock: Callable[[], float]
    broker: Broker
    hub: Hub[Subscriber]
    fanout: FanOut
    memory_guard: MemoryGuard
    #: Publish→ack latencies.
    ack_latency: LatencyHistogram
    #: Plain HTTP requests answered, by status (the HTTP endpoints count them here).
    http_requests: Counter[int]

    @property
    def closing(self) -> bool: ...

    def statistics(self) -> ServerStatistics: ...

    def channel_statistics(self) -> tuple[ChannelStatistics, ...]: ...

    def frame_totals(self) -> tuple[int, int]: ...

    def not_ready(self) -> list[str]: ...

    async def publish_numbered(
        self,
        channel: str,
        data: Any,
        *,
        sender: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Published, list[Subscriber]]:
        """The publication's place, and the ``block`` subscribers to wait for: see
        ``Server.publish_numbered``."""
        ...

    def spawn(self, task: Callable[[], Awaitable[None]]) -> bool:
        """Run ``task`` in a nursery of the server's (False, and nothing run, once that nursery
        has ended)."""
        ...

    # The application's hands on connections and channels (``triows._server.public``): bad
    # arguments raise ValueError, and nothing is done.

    async def disconnect(
        self, *, user: str | None = None, client: str | None = None, code: int, reason: str
    ) -> int: ...

    async def unsubscribe(
        self, channel: str, *, user: str | None = None, client: str | None = None, reason: str
    ) -> int: ...

    async def subscribe(
        self, channel: str, *, user: str | None = None, client: str | None = None
    ) -> int: ...

    async def revoke(self, user: str, before: float | None = None) -> int: ...

    async def history(
        self, channel: str, *, limit: int, since: int | None = None, reverse: bool = False
    ) -> HistoryResult: ...

    async def channel(self, channel: str) -> ChannelInfo: ...

    async def channel_presence(self, channel: str) -> dict[str, Any]: ...

    async def channels(self) -> list[dict[str, Any]]: ...


@attrs.frozen(kw_only=True)
class ServerStatistics:
    server_id: str
    uptime: float
    connections: int
    connections_total: int
    #: Handshakes refused, by HTTP status (401, 403, 404, 503, ...).
    rejected: dict[int, int]
    #: Connections closed by the server, by close code (1008, 1009, 1011, 1013, ...).
    closed_by_server: dict[int, int]
    channels: int
    subscriptions: int
    #: Messages published through this server (with Redis: accepted by Redis from this node).
    published: int
    #: Frames handed to this server's subscribers.
    delivered: int
    #: Frames a slow-consumer policy discarded (drop_oldest / drop_newest).
    dropped: int
    slow_consumer_disconnects: int
    #: Frames waiting in subscriber outboxes right now, and their bytes.
    queued_frames: int
    queued_bytes: int
    #: Rates over the last sampling interval (per second).
    publish_rate: float
    delivery_rate: float
    #: Messages held in channel histories for resume, and their bytes.
    history_messages: int
    history_bytes: int
    #: Publish ids remembered for dedupe, and the principals they belong to.
    dedupe_entries: int
    dedupe_principals: int
    #: Publishes answered from the dedupe window instead of being delivered again.
    deduplicated: int
    #: The broker: ``memory``, or ``redis`` with its link state and outage buffer.
    broker: BrokerStatistics
    #: Resident memory at the last sample (bytes); whether the memory guard refuses new
    #: connections now (``memory_limit``), and how often it started to.
    #: Requests refused with 429 by a rate limit, by action (``publish``, ``subscribe``).
    rate_limited: dict[str, int] = attrs.field(factory=dict)
    #: Streams closed unanswered while waiting for their HTTP request: refused at once (their
    #: address had its share) or closed to make room for a newer one (every place taken).
    streams_refused: int = 0
    rss_bytes: int = 0
    memory_limited: bool = False
    memory_limit_trips: int = 0
    #: Supervisor tasks (monitor, expiry, idle sweeper, presence) that failed and were
    #: restarted.
    task_failures: int = 0
    #: HTTP publications to ``block`` channels in flight or whose ``block`` subscribers are
    #: waited for in the background (the HTTP API refuses more than 256 with 503).
    http_block_waits: int = 0


@attrs.frozen(kw_only=True)
class ChannelStatistics:
    name: str
    epoch: str
    seq: int
    subscribers: int
    published: int
    delivered: int
    dropped: int
    policy: str
    history: int

    @classmethod
    def of(cls, state: ChannelState[Any]) -> ChannelStatistics:
        return cls(
            name=state.name,
            epoch=state.epoch,
            seq=state.seq,
            subscribers=len(state.members),
            published=state.published,
            delivered=state.delivered,
            dropped=state.dropped,
            policy=str(state.policy),
            history=len(state.history),
        )


@attrs.frozen(kw_only=True)
class ConnectionStatistics:
    client_id: str
    user_id: str | None
    remote: str
    connected_for: float
    subscriptions: tuple[str, ...]
    frames_in: int
    frames_out: int
    queued_frames: int
    queued_bytes: int
    dropped: int
    #: The server (node, worker) that holds it.
    server_id: str = ""
    #: ``"websocket"``, or ``"sse"``: an event stream, whose channels are its URL's (the
    #: server can end it, not subscribe or unsubscribe it).
    transport: str = "websocket"


@attrs.frozen(kw_only=True)
class ChannelInfo:
    """Where a channel is now: its epoch (None: never numbered), its last seq, and how many
    connections follow it (every node's, with Redis)."""

    channel: str
    epoch: str | None
    seq: int
    subscribers: int


@attrs.frozen(kw_only=True)
class HistoryResult:
    """A page of history: the channel's ``epoch``/``seq`` when read and its ``messages``
    (each a ``message`` frame as it was delivered, decoded)."""

    channel: str
    epoch: str | None
    seq: int
    messages: list[dict[str, Any]]


class ControlFailed(Exception):
    """A node could not do what a control request asked (its revocation list is full)."""
