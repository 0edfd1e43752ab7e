"""The broker seam: who numbers a channel's messages, keeps their history and spreads them.

The server and its connections only talk to a :class:`Broker`:

- ``MemoryBroker`` (``triows._brokers.memory``, the default) numbers, dedupes and keeps
  history in this process, and hands each message to the local subscribers in the same
  synchronous step.
- ``RedisBroker`` (``triows._brokers.redis``, chosen by ``Config.redis_url``) lets Redis number
  and keep them, so that every node of a cluster agrees on a message's seq and any node can
  resume a client.

Both keep local membership in a :class:`~triows._core.hub.Hub` and fan out through the
:class:`~triows._brokers.fanout.FanOut` they are built with; neither knows the server or its
connections (``tests/test_architecture.py`` checks the imports). They differ in when a
publication is numbered. The contract a publisher relies on: ``Publication.numbered(seq)`` is
called exactly once (or ``failed(exc)``), and before any later message of that channel reaches
the publishing connection, which is what lets a client tell its own publications from gaps.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import attrs
import trio
import trio_util

from .._core import protocol
from .._core.hub import Hub, Resume
from .._core.latency import LatencyHistogram
from .fanout import Subscriber

#: The wall clock in milliseconds (message timestamps, history ttl against stream times).
WallClockMs = Callable[[], int]


class BrokerUnavailableError(Exception):
    """The broker cannot take this request now (Redis down and its buffer full, or a channel
    that cannot be joined while Redis is away). Clients get error 503."""


class DataTooLargeError(ValueError):
    """Published data that would make a ``message`` frame over ``max_message_size``."""


class OutcomeUnknownError(BrokerUnavailableError):
    """The broker stopped before it learnt whether Redis took a publication it had sent: it
    may have been published. A retry with the same idempotency key (or publish id) tells,
    without publishing it twice. The HTTP API answers 202 ``"outcome": "unknown"``."""


@attrs.define(slots=True, eq=False)
class Publication:
    channel: str
    data_json: bytes
    #: The publishing client (shown as ``from``; it does not get its own message back).
    sender_id: str | None
    timestamp_ms: int
    #: ``(principal key, request id)`` when the publisher asked for an ack; the dedupe key.
    dedupe: tuple[object, protocol.RequestId] | None = None
    numbered: Callable[[int], None] | None = None
    failed: Callable[[Exception], None] | None = None
    #: The channel's epoch when it was numbered (set by the broker before ``numbered``).
    epoch: str = ""
    #: The publisher asked to receive its own message too (``"echo": true``).
    echo: bool = False
    #: Its number, set before ``publish`` returns by a broker that numbers at once
    #: (``Broker.numbers_at_once``): such a publisher reads it here, with no callback.
    seq: int = 0

    @property
    def excluded(self) -> str | None:
        """Who does not get this message: its sender, unless it asked for an echo."""
        return None if self.echo else self.sender_id

    def payload(self, seq: int, message_id: str) -> bytes:
        return protocol.message_payload(
            channel=self.channel,
            data_json=self.data_json,
            sender=self.sender_id,
            timestamp_ms=self.timestamp_ms,
            seq=seq,
            message_id=message_id,
        )


@attrs.frozen
class Published:
    """Where a message published by the server (``Server.publish_message``, the HTTP API)
    went: its channel, number and the channel's epoch."""

    channel: str
    seq: int
    epoch: str


@attrs.frozen
class Subscribed:
    """What a subscribe learned: the reply's ``seq``/``epoch`` and, with ``since``, the resume."""

    seq: int
    epoch: str
    resume: Resume | None = None
    #: With ``rewind`` (and no ``since``): how many messages of history follow the reply.
    rewound: int | None = None


@attrs.frozen
class HistoryPage:
    """A page of a channel's history (``triows._core.history.page``): each message's payload
    exactly as it was delivered, and the channel's numbering when it was read (``epoch``
    None: the channel has none yet)."""

    epoch: str | None
    seq: int
    payloads: list[bytes]


#: A node's answer to a control request (``Broker.control``): a JSON object.
ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@attrs.frozen(kw_only=True)
class BrokerStatistics:
    kind: str
    #: ``up`` or ``down`` (Redis unreachable, or refusing writes); the in-process broker is
    #: always up.
    state: str = "up"
    #: Why it is down, in a few words ("Redis unreachable", "Redis refuses writes (out of
    #: memory)"); None while up.
    reason: str | None = None
    #: When ``state`` last changed (``trio.current_time()``), None if it never did.
    since: float | None = None
    #: Publications waiting for Redis (while it is down, or in the batch being sent).
    buffered: int = 0
    #: Publications refused with 503 because that buffer was full.
    refused: int = 0
    #: Times the link to Redis came back after being down.
    reconnects: int = 0
    #: Times the pub/sub link was found silent while Redis answered, and reconnected.
    repairs: int = 0
    #: Messages read back from Redis streams to fill what pub/sub missed.
    filled: int = 0
    #: Pub/sub messages on triows' channels that could not be parsed, skipped.
    malformed: int = 0
    #: Background tasks of the broker that failed unexpectedly and were started again.
    task_failures: int = 0


class Broker(abc.ABC):
    hub: Hub[Subscriber]
    #: True while the broker can take publications and new channels (Redis reachable).
    up: trio_util.AsyncBool
    #: Messages published through this broker (each once, even when Redis sent it back).
    published = 0
    #: Publications answered from the dedupe window instead of being published again.
    deduplicated = 0
    #: From a message's timestamp to its fan-out here (with Redis; in process it is the same
    #: step, so nothing is observed), and Redis commands' round trips.
    delivery_lag: LatencyHistogram
    round_trips: LatencyHistogram
    #: Whether ``publish`` numbers a publication (and calls ``numbered``) before it returns.
    numbers_at_once = False
    #: Whether ``publish`` can return ``block`` subscribers for the publisher to wait for (in
    #: process; with Redis the channel's feed waits for them, not the publisher).
    hands_back_blocked = True

    @abc.abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Background work, run by the server's supervisor nursery."""

    @abc.abstractmethod
    def publish(self, pub: Publication) -> list[Subscriber]:
        """Take a publication without waiting; returns ``block`` subscribers to wait for.

        Raises :class:`BrokerUnavailableError` when it cannot be taken.
        """

    def publish_at_once(
        self,
        channel: str,
        data_json: bytes,
        sender_id: str | None,
        timestamp_ms: int,
        echo: bool,
        principal: Hashable,
        publish_id: protocol.RequestId | None,
        now: float | None = None,
    ) -> tuple[int, str, list[Subscriber]]:
        """:meth:`publish` by a broker that numbers at once (``numbers_at_once``), without a
        :class:`Publication`: the fields as arguments (``principal``/``publish_id``: the
        dedupe key, or ``publish_id`` None for none; ``now``: the monotonic clock, if the
        caller read it in this step), ``(seq, epoch, block subscribers)`` back. The same
        rules as :meth:`publish`; a client's publish takes this path."""
        raise NotImplementedError

    @abc.abstractmethod
    def publish_nowait(self, pub: Publication) -> int:
        """Number and hand over at once, or raise ``trio.WouldBlock`` (publishing nothing)."""

    @abc.abstractmethod
    async def subscribe(
        self,
        member: Subscriber,
        channel: str,
        since: int | None,
        epoch: str | None,
        rewind: int | None = None,
    ) -> Subscribed:
        """Make ``member`` a subscriber; it receives everything after the returned ``seq``.

        The membership is added in the last synchronous step before returning, so the caller
        can queue its reply and replay before any live message. ``rewind`` (without
        ``since``): the channel's last ``rewind`` messages history holds are replayed, read
        as a resume from ``triows._core.history.rewind_since`` (one rule, both brokers).
        """

    #: Whether :meth:`subscribe_nowait` can serve every subscribe (no network round trip).
    subscribes_at_once = False

    #: The server's handler of control requests (set by the server): what this node does,
    #: and answers, for a request of :meth:`control`.
    on_control: ControlHandler | None = None

    @abc.abstractmethod
    async def history(
        self, channel: str, *, since: int | None, limit: int, reverse: bool, max_bytes: int
    ) -> HistoryPage:
        """A page of the channel's history, by the one rule (``triows._core.history.page``)."""

    @abc.abstractmethod
    async def numbering(self, channel: str) -> tuple[int, str | None]:
        """The channel's ``(seq, epoch)`` where it is numbered (epoch None: not numbered)."""

    @abc.abstractmethod
    async def control(self, request: dict[str, Any], answer_within: float) -> list[dict[str, Any]]:
        """Have every node (this one included) serve ``request`` with its :attr:`on_control`,
        and return their answers; nodes that did not answer within ``answer_within`` seconds
        are missing. In process that is this node alone; with Redis, every node connected to
        it."""

    async def share_revocation(self, user: str, before: float, ttl: float) -> None:
        """Keep a revocation where nodes started later find it (:meth:`shared_revocations`);
        in process there are none."""
        return None

    async def shared_revocations(self) -> list[tuple[str, float]]:
        """The revocations kept by :meth:`share_revocation` that have not expired."""
        return []

    def subscribe_nowait(
        self,
        member: Subscriber,
        channel: str,
        since: int | None,
        epoch: str | None,
        rewind: int | None = None,
    ) -> Subscribed:
        """:meth:`subscribe` in one synchronous step, where :meth:`subscribes_now` said so."""
        raise NotImplementedError

    def subscribes_now(self, channel: str, since: int | None, rewind: int | None = None) -> bool:
        """Whether a subscribe to ``channel`` from ``since`` can be served now, in one
        synchronous step (:meth:`subscribe_nowait`): always with ``subscribes_at_once``; for a
        broker over the network, when it needs nothing from it (a channel it follows already)."""
        return self.subscribes_at_once

    def unsubscribe(self, member: Subscriber, channel: str) -> bool:
        return self.hub.unsubscribe(member, channel)

    def remove_member(self, member: Subscriber) -> None:
        self.hub.remove_member(member)

    @abc.abstractmethod
    def expire(self, now: float) -> bool:
        """Called once a second: forget what outlived its ttl. True: it stopped after a
        slice of that work with more due; it is called again with the same ``now`` once
        every other task has had its turn (no step of the expiry stalls the others)."""

    def forget_publisher(self, key: object) -> None:
        """The publisher behind dedupe ``key`` can publish no more (an anonymous connection
        that closed): its dedupe window may go now instead of at its ttl. Redis keeps its
        dedupe keys with their own ttl and nothing else bounds them: nothing to do there."""
        return None

    @abc.abstractmethod
    def statistics(self) -> BrokerStatistics: ...

    @property
    def dedupe_entries(self) -> int:
        """Dedupe entries held in this process (Redis keeps its own, with a ttl)."""
        return 0

    @property
    def dedupe_principals(self) -> int:
        return 0
