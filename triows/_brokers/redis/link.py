"""The state of this node's link to Redis: which parts are down and why, and the retrying call.

Three parts fail on their own: ``pubsub`` (the listener thread's connection), ``commands``
(joins, stream reads, pings) and ``publish`` (the publisher's batches, which Redis may also
refuse for now: out of memory, a read-only replica, ...). The link is up only while no part is
down. Every part reports here, whichever noticed, so that ``up`` (what health checks and
subscribes wait on), ``since``, ``reconnects`` and the log lines that say "unreachable" and
"reachable again" are kept in one place and said once per outage.

The same state decides when this node's publications may trim streams: not while the link is
down, nor for ``redis_retention`` after it is back, since other nodes may still have to catch
up from what was written before the outage (``docs/design.md``, stream retention).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import redis
import trio
import trio_util

from ..._config import Config
from .bridge import LINK_ERRORS, RedisBridge, backoff

log = logging.getLogger("triows.redis")

T = TypeVar("T")


class NotWanted(Exception):
    """A retried call's work is no longer wanted (its channel is no longer followed)."""


class Link:
    def __init__(
        self,
        config: Config,
        bridge: RedisBridge,
        *,
        connections: Callable[[], int],
        held_publications: Callable[[], int],
        followed_channels: Callable[[], int],
    ) -> None:
        self._config = config
        self._bridge = bridge
        # What the log lines of an outage report (connections kept, publications held,
        # channels to catch up): counted by the parts that hold them.
        self._connections = connections
        self._held_publications = held_publications
        self._followed_channels = followed_channels
        #: The parts that are down, each with its latest reason (for the logs).
        self.down: dict[str, str] = {"pubsub": "not connected yet"}
        self.up = trio_util.AsyncBool(False)
        #: When ``up`` last changed (``trio.current_time()``), None until it first did.
        self.since: float | None = None
        self._ever_up = False
        #: Times the link came back after being down.
        self.reconnects = 0
        #: Whether this node's publications trim streams now (the publisher reads it when it
        #: sends a batch), and from when they may again (:meth:`permit_trimming_when_settled`).
        self.may_trim = False
        self.trim_after = 0.0

    def part_down(self, part: str, reason: str) -> None:
        self.may_trim = False
        if not self.down:
            self.since = trio.current_time()
            self.up.value = False
            log.warning(
                "Redis unreachable (%s: %s); keeping %d connection(s), holding publications "
                "(up to %d)",
                part,
                reason,
                self._connections(),
                self._config.redis_buffer_size,
            )
        self.down[part] = reason  # the latest reason, for the logs

    def part_up(self, part: str) -> None:
        if self.down.pop(part, None) is None or self.down:
            return
        now = trio.current_time()
        if self._ever_up:
            self.reconnects += 1
            log.warning(
                "Redis reachable again after %.1fs; sending %d held publication(s), "
                "catching up %d channel(s) from their streams",
                now - (self.since or now),
                self._held_publications(),
                self._followed_channels(),
            )
        else:
            log.info("connected to Redis")
        self._ever_up = True
        self.since = now
        # The other nodes may still have to catch up from what was written before the outage.
        self.trim_after = now + self._config.redis_retention
        self.up.value = True

    def permit_trimming_when_settled(self) -> None:
        """Let publications trim streams again once the whole link has been up for
        ``redis_retention``; the watchdog asks after each ping that worked."""
        if not self.down and trio.current_time() >= self.trim_after:
            self.may_trim = True

    async def call_with_retries(
        self,
        part: str,
        fn: Callable[[redis.Redis], T],
        wanted: Callable[[], bool] = lambda: True,
        *,
        mark_up: bool = True,
    ) -> T:
        """Run ``fn`` in a thread until it works, with backoff. ``part`` of the link is down
        while it fails and up once it works (unless ``mark_up`` is false: the caller judges
        the answer first). Raises :class:`NotWanted` once ``wanted()`` is false."""
        attempt = 0
        while wanted():
            try:
                result = await self._bridge.call(fn)
            except LINK_ERRORS as exc:
                self.part_down(part, describe(exc))
                await trio.sleep(backoff(attempt))
                attempt += 1
                continue
            if mark_up:
                self.part_up(part)
            return result
        raise NotWanted


def describe(exc: BaseException) -> str:
    """An error as the logs and the link state show it."""
    return f"{type(exc).__name__}: {exc}"
