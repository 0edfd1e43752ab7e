"""The supervisor nursery: background duties that belong to the server, not to a connection.

- idle sweeper: closes connections that hold no subscription and have sent nothing for
  ``idle_timeout`` seconds (1000 "Idle timeout"). Subscribers that only listen are not idle:
  they are what the server is for.
- statistics sampler: turns the counters into per-second rates once a second and logs a
  one-line summary every minute while clients are connected; on the same tick it expires old
  history and dedupe entries, so their memory follows their ttl even without traffic.

- the broker's background work: with Redis, the bridge (publisher, pub/sub listener thread,
  watchdog); nothing for the in-process broker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ._core import memory_guard
from ._core.memory_guard import Crossing

if TYPE_CHECKING:
    from ._server import Server

log = logging.getLogger("triows.supervisor")

SAMPLE_INTERVAL = 1.0
SUMMARY_EVERY = 60


async def run_supervisor(server: Server, *, task_status: trio.TaskStatus[None]) -> None:
    async with trio.open_nursery() as nursery:
        if server.config.idle_timeout > 0:
            nursery.start_soon(sweep_idle, server)
        nursery.start_soon(sample_statistics, server)
        await nursery.start(server.broker.run)
        task_status.started()


async def sweep_idle(server: Server) -> None:
    timeout = server.config.idle_timeout
    period = max(timeout / 4, 0.5)
    while True:
        await trio.sleep(period)
        cutoff = trio.current_time() - timeout
        for conn in server.connections():
            if conn.last_activity < cutoff and not server.hub.subscriptions(conn):
                conn.close(1000, "Idle timeout")


async def sample_statistics(server: Server) -> None:
    broker, fanout = server.broker, server.fanout
    published, delivered = broker.published, fanout.delivered
    ticks = 0
    while True:
        await trio.sleep(SAMPLE_INTERVAL)
        server.publish_rate = (broker.published - published) / SAMPLE_INTERVAL
        server.delivery_rate = (fanout.delivered - delivered) / SAMPLE_INTERVAL
        published, delivered = broker.published, fanout.delivered
        now = trio.current_time()
        server.broker.expire(now)
        check_memory(server)
        ticks += 1
        if ticks % SUMMARY_EVERY == 0 and server.connections():
            stats = server.statistics()
            log.info(
                "connections=%d channels=%d subscriptions=%d published/s=%.0f delivered/s=%.0f "
                "queued=%d dropped=%d slow_disconnects=%d broker=%s/%s buffered=%d",
                stats.connections,
                stats.channels,
                stats.subscriptions,
                stats.publish_rate,
                stats.delivery_rate,
                stats.queued_frames,
                stats.dropped,
                stats.slow_consumer_disconnects,
                stats.broker.kind,
                stats.broker.state,
                stats.broker.buffered,
            )


def check_memory(server: Server) -> None:
    """Sample resident memory into the server's guard; log each crossing once."""
    guard = server.memory_guard
    crossing = guard.update(memory_guard.read_rss())
    if crossing is Crossing.TRIPPED:
        log.warning(
            "memory %.0f MiB is over the limit of %.0f MiB: refusing new connections (503) "
            "until it is below %.0f MiB",
            guard.rss / 2**20,
            guard.limit / 2**20,
            guard.limit * guard.recover_ratio / 2**20,
        )
    elif crossing is Crossing.CLEARED:
        log.warning("memory %.0f MiB is below the limit again: accepting", guard.rss / 2**20)
