"""The supervisor nursery: background duties that belong to the server, not to a connection.

- idle sweeper: closes connections that hold no subscription and have sent nothing for
  ``idle_timeout`` seconds (1000 "Idle timeout"). Subscribers that only listen are not idle:
  they are what the server is for.
- the monitor (:mod:`triows._ops.monitor`): samples loop lag, CPU, memory, rates and latency
  percentiles into a bounded history, warns on crossings, turns counters into rates, and logs
  a one-line summary every minute.
- expiry: once a second the broker forgets history and dedupe entries past their ttl, so
  their memory follows their ttl without traffic.

- presence (:mod:`triows._brokers.presence`): with Redis, writes joins and leaves, refreshes this
  node's members and sweeps a crashed node's; nothing in process.

- token keys (:mod:`triows._server.token_keys`): with ``jwt_jwks_url``, fetches the
  identity provider's key set at start, when it is old and when a token asks for a new key.

- the flusher (:mod:`triows._server.flusher`): writes, at the start of each scheduler batch,
  the frames connections deferred during the last one. Connections write at once while it is
  not running (before it starts, between a crash and its restart, once it stopped).

- the broker's background work: with Redis, the bridge (publisher, pub/sub listener thread,
  watchdog); nothing for the in-process broker.

Each runs behind :func:`triows._restart.restarting`: a bug in one is logged, counted
(``task_failures``) and the task started again with backoff; it never ends the server.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import trio

from .._brokers.fanout import Subscriber
from .._brokers.presence import Presence
from .._brokers.seam import Broker
from .._core.hub import Hub
from .._ops.monitor import Monitor
from .._restart import restarting

log = logging.getLogger("triows.supervisor")

#: Connections the idle sweeper looks at in one step before it lets others run.
SWEEP_BATCH = 1000
#: Seconds between two expiries of history and dedupe entries.
EXPIRE_EVERY = 1.0


class Idle(Subscriber, Protocol):
    """What the idle sweeper reads of a connection."""

    last_activity: float


async def run_supervisor(
    *,
    broker: Broker,
    monitor: Monitor,
    presence: Presence,
    hub: Hub[Subscriber],
    idle_timeout: float,
    connections: Callable[[], Iterable[Idle]],
    failed: Callable[[], None],
    token_keys: Callable[[], Awaitable[None]],
    flusher: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[None],
) -> None:
    keep = functools.partial(restarting, log=log, failed=failed)
    tasks: dict[str, Callable[[], Awaitable[None]]] = {
        "monitor": monitor.run,
        "expiry": functools.partial(expire, broker),
        "presence": presence.run,
        "token keys": token_keys,
    }
    if flusher is not None:
        tasks["flusher"] = flusher
    if idle_timeout > 0:
        tasks["idle sweeper"] = functools.partial(sweep_idle, idle_timeout, hub, connections)
    async with trio.open_nursery() as nursery:
        for name, task in tasks.items():
            nursery.start_soon(keep, name, task)
        await nursery.start(broker.run)
        task_status.started()


async def expire(broker: Broker) -> None:
    while True:
        await trio.sleep(EXPIRE_EVERY)
        now = trio.current_time()
        while broker.expire(now):  # a slice done, more due: the rest after the others ran
            await trio.lowlevel.checkpoint()


async def sweep_idle(
    idle_timeout: float, hub: Hub[Subscriber], connections: Callable[[], Iterable[Idle]]
) -> None:
    period = max(idle_timeout / 4, 0.5)
    while True:
        await trio.sleep(period)
        cutoff = trio.current_time() - idle_timeout
        for index, conn in enumerate(connections()):
            if index % SWEEP_BATCH == SWEEP_BATCH - 1:
                await trio.lowlevel.checkpoint()  # a scan of 100,000 must not stall them all
            if conn.last_activity < cutoff and not hub.subscriptions(conn):
                conn.close(1000, "Idle timeout")
