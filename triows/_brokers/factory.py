"""Choosing the broker: the one place that knows both kinds.

``Config.redis_url`` picks the Redis broker (imported only then: an in-process server never
loads redis); otherwise the in-process one. Each comes with its presence store.
"""

from __future__ import annotations

import secrets

from .._config import Config
from .fanout import FanOut
from .memory import MemoryBroker
from .presence_store import LocalPresenceStore, PresenceStore
from .seam import Broker, WallClockMs


def open_broker(
    config: Config, fanout: FanOut, wall_clock_ms: WallClockMs
) -> tuple[Broker, PresenceStore]:
    """The Redis broker when ``Config.redis_url`` is set, else the in-process one; each with
    the presence store that goes with it."""
    if config.redis_url is not None:
        # Imports redis only when it is used.
        from .redis.broker import RedisBroker
        from .redis.presence_store import RedisPresenceStore

        broker = RedisBroker(config, fanout, wall_clock_ms, config.redis_url)
        return broker, RedisPresenceStore(broker)
    return MemoryBroker(config, fanout, epoch_prefix=secrets.token_hex(4)), LocalPresenceStore()
