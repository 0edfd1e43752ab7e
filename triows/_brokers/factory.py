"""Choosing the broker: the one place that knows both kinds.

``Config.redis_url`` picks the Redis broker (imported only then: an in-process server never
loads redis); otherwise the in-process one.
"""

from __future__ import annotations

import secrets

from .._config import Config
from .fanout import FanOut
from .memory import MemoryBroker
from .seam import Broker, WallClockMs


def open_broker(config: Config, fanout: FanOut, wall_clock_ms: WallClockMs) -> Broker:
    """The Redis broker when ``Config.redis_url`` is set, else the in-process one."""
    if config.redis_url is not None:
        from .redis.broker import RedisBroker  # imports redis only when it is used

        return RedisBroker(config, fanout, wall_clock_ms, config.redis_url)
    return MemoryBroker(config, fanout, epoch_prefix=secrets.token_hex(4))
