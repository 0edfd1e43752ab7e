"""Where the Redis broker's background tasks run, and what keeps a bug in one from stopping it.

The publisher, the watchdog, each channel's sync and catch-up, and the waits for ``block``
subscribers all run in the nursery of :meth:`RedisBroker.run`. Every part that starts one needs
the same two things: to know whether the broker is running (no nursery: it stopped, or has not
started) and to have a task that fails by a bug logged, counted (``task_failures`` in the
statistics) and started again with backoff. They live here, once, instead of in each part.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..._restart import restarting

log = logging.getLogger("triows.redis")


class BackgroundTasks:
    def __init__(self) -> None:
        #: The broker's nursery while :meth:`RedisBroker.run` runs, None before and after.
        self.nursery: trio.Nursery | None = None
        #: Background tasks that failed unexpectedly (a bug) and were started again.
        self.failures = 0

    @property
    def running(self) -> bool:
        return self.nursery is not None

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start ``fn(*args)`` in the broker's nursery; nothing once the broker stopped."""
        if self.nursery is not None:
            self.nursery.start_soon(fn, *args)

    def start_restarting(self, name: str, task: Callable[[], Awaitable[None]]) -> None:
        """Start ``task`` under :meth:`restarting`; nothing once the broker stopped."""
        if self.nursery is not None:
            self.nursery.start_soon(self.restarting, name, task)

    async def restarting(self, name: str, task: Callable[[], Awaitable[None]]) -> None:
        """Run a background task; a bug in it is logged, counted and the task started again
        with backoff (the one rule: ``triows._restart``), so that it never stops the server."""
        await restarting(f"redis {name}", task, log=log, failed=self._failed)

    def _failed(self) -> None:
        self.failures += 1
