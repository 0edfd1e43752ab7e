"""The bridge between trio and redis-py's synchronous client: threads, batching, pub/sub.

redis-py's asyncio client does not run under trio; its sync client does, from worker threads.
A thread hop costs ~100 µs, so callers batch (one pipeline per hop). Two kinds of threads:

- :meth:`RedisBridge.call` runs one function with a client from the connection pool in a
  worker thread (publish batches, joins, stream reads, pings). Thread calls cannot be
  cancelled, so every command has ``socket_timeout``; a cancelled caller abandons the thread,
  which ends within that timeout.
- :class:`PubSubListener` is one dedicated thread that owns a *session* (redis-py's ``PubSub``
  is not thread-safe): on one Redis a :class:`SingleSession`, one ``PubSub``; on a cluster a
  :class:`~triows._brokers.redis.shards.ShardedSession`, one per master. It applies
  (un)subscribe requests queued by trio code between reads, hands each batch of events to trio
  with ``trio.from_thread.run`` (that blocking call is the backpressure), and on any connection
  error starts a new session with backoff and subscribes to its whole channel set again: a
  subscribe sent during an outage is otherwise lost.

The command client is opened by the first call (:meth:`RedisBridge.client`): only then is it
known whether the URL names one Redis or a cluster (:mod:`.clients`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

import redis
import trio

from ..._core.backoff import retry_delay
from ..._core.latency import LatencyHistogram
from .clients import Clients
from .events import Confirmed, Event, LinkDown, Message
from .shards import MAX_BATCH, ShardedSession

__all__ = ["Confirmed", "Event", "LinkDown", "Message"]  # the events, for the other parts

log = logging.getLogger("triows.redis")

T = TypeVar("T")

#: Errors that mean "Redis cannot serve us now": unreachable, loading, or refusing commands
#: (out of memory, read-only replica, ...). Background work retries them with backoff and
#: reports the link down; requests get 503.
#: A cluster client's own errors (no node reachable, a slot not covered while a failover is
#: under way) are not ``RedisError``s: listed too.
LINK_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    OSError,
    redis.exceptions.RedisClusterException,
)

#: How long one pub/sub read waits before the thread looks at its requests again.
READ_SLICE = 0.1


#: Before retry ``attempt`` of a Redis call: the one rule of background retries.
backoff = retry_delay


class RedisBridge:
    def __init__(self, url: str, timeout: float, round_trips: LatencyHistogram) -> None:
        self.url = url
        self.timeout = timeout
        self.clients = Clients(url, timeout)
        #: The command client, opened by the first call that needs it (it finds out whether
        #: the URL names one Redis or a cluster: I/O, so in a thread, and retried like any
        #: call while Redis is away).
        self._client: redis.Redis | None = None
        self._opening = threading.Lock()
        # Few threads suffice: each carries a whole batch.
        self._limiter = trio.CapacityLimiter(4)
        #: Every call that got an answer, thread hop included: what a publish waits for.
        self.round_trips = round_trips

    @property
    def cluster(self) -> bool:
        """Whether Redis turned out to be a cluster (False until the first call answered)."""
        return self.clients.cluster

    def client(self) -> redis.Redis:
        """The command client, opened on first use. In a worker thread: it may do I/O."""
        with self._opening:
            if self._client is None:
                self._client = self.clients.open()
            return self._client

    async def call(self, fn: Callable[[redis.Redis], T]) -> T:
        started = trio.current_time()
        result = await trio.to_thread.run_sync(
            self._run, fn, limiter=self._limiter, abandon_on_cancel=True
        )
        self.round_trips.observe(trio.current_time() - started)
        return result

    def _run(self, fn: Callable[[redis.Redis], T]) -> T:
        return fn(self.client())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class Session(Protocol):
    """One connection's worth (or, on a cluster, one per shard) of subscriptions, used by the
    listener thread alone until it breaks."""

    def open(self, channels: Iterable[str]) -> None: ...
    def subscribe(self, channels: list[str]) -> None: ...
    def unsubscribe(self, channels: list[str]) -> None: ...
    def read(self, timeout: float) -> list[Event]: ...
    def close(self) -> None: ...


class SingleSession:
    """One Redis: one pub/sub connection for every channel."""

    def __init__(self, client: redis.Redis) -> None:
        self._pubsub: Any = client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]

    def open(self, channels: Iterable[str]) -> None:
        self._pubsub.subscribe(*channels)

    def subscribe(self, channels: list[str]) -> None:
        self._pubsub.subscribe(*channels)

    def unsubscribe(self, channels: list[str]) -> None:
        # (No arguments would mean "all channels": the callers never pass none.)
        self._pubsub.unsubscribe(*channels)

    def read(self, timeout: float) -> list[Event]:
        events: list[Event] = []
        message = self._pubsub.get_message(timeout=timeout)
        while message is not None:
            event = _event(message)
            if event is not None:
                events.append(event)
            if len(events) >= MAX_BATCH:
                break
            message = self._pubsub.get_message(timeout=0)
        return events

    def close(self) -> None:
        _close_quietly(self._pubsub)


def _event(message: dict[str, Any]) -> Event | None:
    kind = message["type"]
    if kind == "message":
        return Message(message["channel"].decode(), message["data"])
    if kind == "subscribe":
        return Confirmed(message["channel"].decode())
    return None


class PubSubListener:
    """The thread that owns the pub/sub connection. Thread-safe entry points: :meth:`subscribe`,
    :meth:`unsubscribe`, :meth:`reset` (then wake it by publishing to its control channel)."""

    def __init__(
        self,
        bridge: RedisBridge,
        control_channel: str,
        dispatch: Callable[[list[Event]], Awaitable[None]],
    ) -> None:
        self._bridge = bridge
        self._control = control_channel
        self._dispatch = dispatch
        self._requests: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        #: The channels this node wants; only the thread reads or writes it.
        self._held: set[str] = set()

    def subscribe(self, channel: str) -> None:
        self._requests.put(("subscribe", channel))

    def unsubscribe(self, channel: str) -> None:
        self._requests.put(("unsubscribe", channel))

    def reset(self) -> None:
        """Drop the connection and start over: used when it went silent."""
        self._requests.put(("reset", ""))

    def run(self) -> None:
        """The thread's body, until trio cancels the task waiting for it."""
        attempt = 0
        while True:
            session: Session | None = None
            try:
                client = self._bridge.client()
                session = (
                    ShardedSession(self._bridge.clients, client)
                    if self._bridge.cluster
                    else SingleSession(client)
                )
                session.open([self._control, *self._held])
                attempt = 0
                self._serve(session)
            except _Reset:
                pass
            except Exception as exc:  # never let the listener die: log, start over
                if not isinstance(exc, LINK_ERRORS):
                    log.exception("pub/sub listener failed; reconnecting")
                self._hand_over([LinkDown(f"{type(exc).__name__}: {exc}")])
            finally:
                if session is not None:
                    session.close()
            # Wait before reconnecting, still answering cancellation.
            until = time.monotonic() + backoff(attempt)
            attempt += 1
            while time.monotonic() < until:
                trio.from_thread.check_cancelled()
                time.sleep(min(READ_SLICE, max(0.0, until - time.monotonic())))

    def _serve(self, session: Session) -> None:
        while True:
            trio.from_thread.check_cancelled()
            self._apply_requests(session)
            events = session.read(READ_SLICE)
            if events:
                self._hand_over(events)

    def _apply_requests(self, session: Session) -> None:
        subscribe: list[str] = []
        unsubscribe: list[str] = []
        while True:
            try:
                op, channel = self._requests.get_nowait()
            except queue.Empty:
                break
            if op == "subscribe":
                self._held.add(channel)
                subscribe.append(channel)
            elif op == "unsubscribe":
                self._held.discard(channel)
                unsubscribe.append(channel)
            else:
                raise _Reset
        # A later request for the same channel wins.
        leaving = [c for c in unsubscribe if c not in self._held]
        joining = [c for c in subscribe if c in self._held]
        if leaving:
            session.unsubscribe(leaving)
        if joining:
            session.subscribe(joining)

    def _hand_over(self, events: list[Event]) -> None:
        trio.from_thread.run(self._dispatch, events)


class _Reset(Exception):
    pass


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception:
        log.debug("closing a broken pub/sub connection failed", exc_info=True)
