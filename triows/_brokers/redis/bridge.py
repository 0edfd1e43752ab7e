"""The bridge between trio and redis-py's synchronous client: threads, batching, pub/sub.

redis-py's asyncio client does not run under trio; its sync client does, from worker threads.
A thread hop costs ~100 µs, so callers batch (one pipeline per hop). Two kinds of threads:

- :meth:`RedisBridge.call` runs one function with a client from the connection pool in a
  worker thread (publish batches, joins, stream reads, pings). Thread calls cannot be
  cancelled, so every command has ``socket_timeout``; a cancelled caller abandons the thread,
  which ends within that timeout.
- :class:`PubSubListener` is one dedicated thread that owns the ``PubSub`` object (it is not
  thread-safe). It applies (un)subscribe requests queued by trio code between reads, hands each
  batch of events to trio with ``trio.from_thread.run`` (that blocking call is the
  backpressure), and on any connection error reconnects with backoff and subscribes to its whole
  channel set again: a subscribe sent during an outage is otherwise lost.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..._core.backoff import retry_delay
from ..._core.latency import LatencyHistogram

log = logging.getLogger("triows.redis")

T = TypeVar("T")

#: Errors that mean "Redis cannot serve us now": unreachable, loading, or refusing commands
#: (out of memory, read-only replica, ...). Background work retries them with backoff and
#: reports the link down; requests get 503.
LINK_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

#: How long one pub/sub read waits before the thread looks at its requests again.
READ_SLICE = 0.1
#: Events handed to trio in one hop at most.
MAX_BATCH = 1000


def open_client(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast: no retries inside redis-py (it would retry for ~4 s by
    default); the broker decides what to retry and reports the outage."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


#: Before retry ``attempt`` of a Redis call: the one rule of background retries.
backoff = retry_delay


class RedisBridge:
    def __init__(self, url: str, timeout: float, round_trips: LatencyHistogram) -> None:
        self.url = url
        self.timeout = timeout
        self.client = open_client(url, timeout)
        # Few threads suffice: each carries a whole batch.
        self._limiter = trio.CapacityLimiter(4)
        #: Every call that got an answer, thread hop included: what a publish waits for.
        self.round_trips = round_trips

    async def call(self, fn: Callable[[redis.Redis], T]) -> T:
        started = trio.current_time()
        result = await trio.to_thread.run_sync(
            fn, self.client, limiter=self._limiter, abandon_on_cancel=True
        )
        self.round_trips.observe(trio.current_time() - started)
        return result

    def close(self) -> None:
        self.client.close()


@attrs.frozen
class Message:
    channel: str
    data: bytes


@attrs.frozen
class Confirmed:
    """Redis confirmed a subscription: everything published later arrives here."""

    channel: str


@attrs.frozen
class LinkDown:
    reason: str


Event = Message | Confirmed | LinkDown


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
            pubsub = self._bridge.client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
            try:
                pubsub.subscribe(self._control, *self._held)
                attempt = 0
                self._serve(pubsub)
            except _Reset:
                pass
            except Exception as exc:  # never let the listener die: log, start over
                if not isinstance(exc, LINK_ERRORS):
                    log.exception("pub/sub listener failed; reconnecting")
                self._hand_over([LinkDown(f"{type(exc).__name__}: {exc}")])
            finally:
                _close_quietly(pubsub)
            # Wait before reconnecting, still answering cancellation.
            until = time.monotonic() + backoff(attempt)
            attempt += 1
            while time.monotonic() < until:
                trio.from_thread.check_cancelled()
                time.sleep(min(READ_SLICE, max(0.0, until - time.monotonic())))

    def _serve(self, pubsub: Any) -> None:
        while True:
            trio.from_thread.check_cancelled()
            self._apply_requests(pubsub)
            events: list[Event] = []
            message = pubsub.get_message(timeout=READ_SLICE)
            while message is not None:
                event = self._event(message)
                if event is not None:
                    events.append(event)
                if len(events) >= MAX_BATCH:
                    break
                message = pubsub.get_message(timeout=0)
            if events:
                self._hand_over(events)

    def _apply_requests(self, pubsub: Any) -> None:
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
        # A later request for the same channel wins. (No arguments would mean "all channels".)
        leaving = [c for c in unsubscribe if c not in self._held]
        joining = [c for c in subscribe if c in self._held]
        if leaving:
            pubsub.unsubscribe(*leaving)
        if joining:
            pubsub.subscribe(*joining)

    def _event(self, message: dict[str, Any]) -> Event | None:
        kind = message["type"]
        channel = message["channel"].decode()
        if kind == "message":
            return Message(channel, message["data"])
        if kind == "subscribe":
            return Confirmed(channel)
        return None

    def _hand_over(self, events: list[Event]) -> None:
        trio.from_thread.run(self._dispatch, events)


class _Reset(Exception):
    pass


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception:
        log.debug("closing a broken pub/sub connection failed", exc_info=True)
