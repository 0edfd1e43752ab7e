"""The state of this node's link to Redis: which parts are down and why, and the retrying call.

Three parts fail on their own: ``pubsub`` (the listener thread's connection), ``commands``
(joins, stream reads, pings) and ``publish`` (the publisher's batches, which Redis may also
refuse for now: out of memory, a read-only replica, ...). The link is up only while no part is
down. Every part reports here, whichever noticed, so that ``up`` (what health checks and
subscribes wait on), ``since``, ``reconnects`` and the log lines that say "unreachable" and
"reachable again" are kept in one place and said once per outage. A part Redis answers but
refuses for now is down too, and said for what it is (:meth:`Link.state`: "Redis refuses
writes (out of memory)", not "unreachable").

The same state decides when this node's publications may trim streams: not while Redis is
unreachable, nor for ``redis_retention`` after it is back, since other nodes may still have to
catch up from what was written before the outage (``docs/design.md``, stream retention). A
refusal does not hold trimming back: no pub/sub message is lost to it, and trimming is what
frees a Redis at ``maxmemory``.
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
        #: Parts down because Redis answered "not now" (out of memory, a read-only replica),
        #: not because it could not be reached: part -> what it refuses, in a few words.
        self.refusing: dict[str, str] = {}
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
        #: This spell of being down had a part Redis could not be reached for (not only
        #: refusals): what holds trimming back afterwards.
        self._unreachable = True

    def part_down(self, part: str, reason: str, *, refusing: str | None = None) -> None:
        """``part`` failed; ``refusing``: Redis answered, refusing it for now (what, in a few
        words: "writes (out of memory)"), rather than not being reachable.

        Only a part that cannot reach Redis stops trimming: then other nodes may have to
        catch up from the streams afterwards. A refusal loses no pub/sub message, so the
        streams go on being trimmed (and trimming is what frees a full Redis)."""
        if refusing is None:
            self.may_trim = False
        if not self.down:
            self._unreachable = False
            self.since = trio.current_time()
            self.up.value = False
            log.warning(
                "%s (%s: %s); keeping %d connection(s), holding publications (up to %d)",
                "Redis unreachable" if refusing is None else f"Redis refuses {refusing}",
                part,
                reason,
                self._connections(),
                self._config.redis_buffer_size,
            )
        self.down[part] = reason  # the latest reason, for the logs
        if refusing is None:
            self._unreachable = True
            self.refusing.pop(part, None)
        else:
            self.refusing[part] = refusing

    def state(self) -> str | None:
        """Why the link is down, in a few words for clients and probes (no addresses, no
        Redis text): None while it is up."""
        if not self.down:
            return None
        if all(part in self.refusing for part in self.down):
            return "Redis refuses " + ", ".join(sorted(set(self.refusing.values())))
        return "Redis unreachable"

    def part_up(self, part: str) -> None:
        self.refusing.pop(part, None)
        if self.down.pop(part, None) is None or self.down:
            return
        now = trio.current_time()
        if not self._ever_up:
            log.info("connected to Redis")
        elif self._unreachable:
            self.reconnects += 1
            log.warning(
                "Redis reachable again after %.1fs; sending %d held publication(s), "
                "catching up %d channel(s) from their streams",
                now - (self.since or now),
                self._held_publications(),
                self._followed_channels(),
            )
        else:
            log.warning(
                "Redis takes publications again after %.1fs; sending %d held publication(s)",
                now - (self.since or now),
                self._held_publications(),
            )
        self._ever_up = True
        self.since = now
        if self._unreachable:
            # The other nodes may still have to catch up from what was written before.
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
