"""Waiting for a process to exit without a thread: a pidfd (Linux 5.3) becomes readable when
it exits; where there is none, polling is the only way (a pid has no event)."""

from __future__ import annotations

import os
from collections.abc import Callable

import trio


async def wait_exit(pid: int, gone: Callable[[], bool], every: float) -> None:
    """Until process ``pid`` has exited and ``gone()`` says so (a child reaped, a parent
    replaced): on its pidfd where there is one, then (or else) ``gone()`` every ``every`` s."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
    while not gone():  # noqa: ASYNC110 - without a pidfd an exit has no event
        await trio.sleep(every)
