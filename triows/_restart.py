"""Background tasks that must outlive their own bugs.

A supervisor task (the monitor, the idle sweeper, presence, a broker's publisher) that raises
would end the server with it: the one rule for every such task is to log the failure, count
it, and start the task again after a backoff that grows while it keeps failing (fully
jittered, so that many failing together do not retry in step). ``Cancelled`` is a
``BaseException`` and passes: stopping the server stops them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from ._core.backoff import retry_delay


async def restarting(
    name: str,
    task: Callable[[], Awaitable[None]],
    *,
    log: logging.Logger,
    failed: Callable[[], None] = lambda: None,
) -> None:
    """Run ``task`` until it returns; each exception is logged, ``failed()`` called, and the
    task started again after a backoff."""
    attempt = 0
    while True:
        try:
            await task()
            return
        except Exception:
            failed()
            log.exception("background task %r failed; restarting it", name)
        await trio.sleep(retry_delay(attempt))
        attempt += 1
