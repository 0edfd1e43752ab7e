"""The supervisor nursery: background duties that belong to the server, not to a connection.

- idle sweeper: closes connections that hold no subscription and have sent nothing for
  ``idle_timeout`` seconds (1000 "Idle timeout"). Subscribers that only listen are not idle:
  they are what the server is for.
- the monitor (:mod:`triows._ops.monitor`): samples loop lag, CPU, memory, rates and latency
  percentiles into a bounded history, warns on crossings, turns counters into rates, expires
  history and dedupe entries, and logs a one-line summary every minute.

- presence (:mod:`triows._brokers.presence`): with Redis, writes joins and leaves, refreshes this
  node's members and sweeps a crashed node's; nothing in process.

- the broker's background work: with Redis, the bridge (publisher, pub/sub listener thread,
  watchdog); nothing for the in-process broker.

Each runs behind :func:`triows._restart.restarting`: a bug in one is logged, counted
(``task_failures``) and the task started again with backoff; it never ends the server.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import trio

from .._restart import restarting

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("triows.supervisor")


#: Connections the idle sweeper looks at in one step before it lets others run.
SWEEP_BATCH = 1000


async def run_supervisor(server: Server, *, task_status: trio.TaskStatus[None]) -> None:
    def failed() -> None:
        server.task_failures += 1

    keep = functools.partial(restarting, log=log, failed=failed)
    async with trio.open_nursery() as nursery:
        if server.config.idle_timeout > 0:
            nursery.start_soon(keep, "idle sweeper", functools.partial(sweep_idle, server))
        nursery.start_soon(keep, "monitor", server.monitor.run)
        nursery.start_soon(keep, "presence", server.presence.run)
        await nursery.start(server.broker.run)
        task_status.started()


async def sweep_idle(server: Server) -> None:
    timeout = server.config.idle_timeout
    period = max(timeout / 4, 0.5)
    while True:
        await trio.sleep(period)
        cutoff = trio.current_time() - timeout
        for index, conn in enumerate(server.connections()):
            if index % SWEEP_BATCH == SWEEP_BATCH - 1:
                await trio.lowlevel.checkpoint()  # a scan of 100,000 must not stall them all
            if conn.last_activity < cutoff and not server.hub.subscriptions(conn):
                conn.close(1000, "Idle timeout")
