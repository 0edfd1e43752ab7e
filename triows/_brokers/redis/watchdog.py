"""The watchdog, and the wake-up: what this node sends to its own control channel.

Each node has a private pub/sub channel the listener thread always holds. Publishing to it does
two things that are kept here, apart from the feeds and the publisher:

- :class:`ListenerWaker` wakes the listener thread, so that an (un)subscribe request is applied
  at once instead of at the end of its read slice (subscribe ack ~1.4 ms instead of ~20 ms).
- :class:`Watchdog` pings it every ``redis_timeout``. If Redis says nobody received the ping,
  or pings do not come back, the pub/sub link went silent while Redis is up, and it is rebuilt
  (``repairs`` in the statistics). The ping also tells whether commands work, so the link is
  marked up again even when nothing else is sent; the keys of followed channels get their ttl
  refreshed now and then; and once the link has been up long enough, publications trim streams
  again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import redis
import trio

from ..._config import Config
from ..._core import redis_format as fmt
from .bridge import LINK_ERRORS, PubSubListener, RedisBridge
from .link import Link, describe
from .tasks import BackgroundTasks

log = logging.getLogger("triows.redis")


class ListenerWaker:
    def __init__(self, bridge: RedisBridge, control: str, tasks: BackgroundTasks) -> None:
        self._bridge = bridge
        self._control = control
        self._tasks = tasks
        self._pending = False

    def wake(self) -> None:
        """Publish to the control channel, so the listener thread applies requests at once
        instead of at the end of its read slice. Wakes asked for before it was sent are one."""
        if not self._pending and self._tasks.running:
            self._pending = True
            self._tasks.start_soon(self._send)

    async def _send(self) -> None:
        self._pending = False
        try:
            await self._bridge.call(functools.partial(_publish, self._control, b"wake"))
        except LINK_ERRORS:
            pass  # the listener is reconnecting and will apply its requests then


class Watchdog:
    def __init__(
        self,
        config: Config,
        bridge: RedisBridge,
        link: Link,
        listener: PubSubListener,
        waker: ListenerWaker,
        control: str,
        *,
        followed: Callable[[], list[str]],
        dispatching: Callable[[], bool],
    ) -> None:
        self._config = config
        self._bridge = bridge
        self._link = link
        self._listener = listener
        self._waker = waker
        self._control = control
        #: The channels whose keys this node keeps alive.
        self._followed = followed
        #: Whether a batch from the listener is being delivered now: pings may wait behind it.
        self._dispatching = dispatching
        self._pings_sent = 0
        self._ping_seen = 0
        #: Times the pub/sub link was found silent while Redis answered, and rebuilt.
        self.repairs = 0

    def heard(self, data: bytes) -> None:
        """A message came on the control channel: a ping of ours came back, or a wake."""
        kind, _, number = data.partition(b":")
        if kind == b"ping":
            self._ping_seen = max(self._ping_seen, int(number))

    async def run(self) -> None:
        """Every ``redis_timeout``: ping our own control channel through Redis, which also
        tells whether commands work (the link is marked up again by the first that does, even
        when nothing else is being sent). A ping nobody receives, or pings that do not come
        back, mean the pub/sub link went silent although Redis answers: it is rebuilt. Keys of
        the channels this node follows get their ttl refreshed now and then. Once the link has
        been up for ``redis_retention``, publications trim streams again."""
        period = self._config.redis_timeout
        refresh_every = max(1, int(min(self._config.redis_key_ttl / 4, 600) / period))
        ticks = 0
        refresh_due = False
        while True:
            await trio.sleep(period)
            ticks += 1
            refresh_due = refresh_due or ticks % refresh_every == 0
            self._pings_sent += 1
            number = self._pings_sent
            try:
                ping = functools.partial(_publish, self._control, b"ping:%d" % number)
                receivers = await self._bridge.call(ping)
                if refresh_due:
                    await self._refresh_keys()
                    refresh_due = False
            except LINK_ERRORS as exc:
                self._link.part_down("commands", describe(exc))
                continue
            self._link.part_up("commands")
            self._link.permit_trimming_when_settled()
            if "pubsub" in self._link.down:
                self._ping_seen = number  # the listener is reconnecting; judge it afterwards
                continue
            silent = self._ping_seen < number - 2 and not self._dispatching()
            # On a cluster a classic PUBLISH counts the receivers of the node it reached only,
            # not the one our listener is on: there, only pings that do not return count.
            unheard = receivers == 0 and not self._bridge.cluster
            if unheard or silent:
                self.repairs += 1
                log.warning(
                    "Redis pub/sub link went silent while Redis answers (%s); rebuilding it",
                    "our ping had no receiver" if unheard else "our pings did not return",
                )
                self._ping_seen = number
                self._listener.reset()
                self._waker.wake()

    async def _refresh_keys(self) -> None:
        """Keep the numbering of channels this node serves alive in Redis (their ttl)."""
        names = self._followed()
        if names:
            await self._bridge.call(functools.partial(self._refresh_in_thread, names))

    def _refresh_in_thread(self, names: list[str], client: redis.Redis) -> None:
        ttl = int(self._config.redis_key_ttl * 1000)
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.pexpire(fmt.numbering_key(name), ttl)
            pipe.pexpire(fmt.stream_key(name), ttl)
        pipe.execute()


def _publish(channel: str, data: bytes, client: redis.Redis) -> int:
    return int(client.publish(channel, data))
