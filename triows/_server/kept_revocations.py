"""Revocations kept in Redis, read by a node: before it accepts, and each time its link to
Redis comes up again.

A revoke reaches the nodes connected to Redis when it is made; a node started while Redis
was away, or cut off from it while the revoke was sent, missed it. Reading the kept ones at
every link-up closes that gap: taking a revocation twice is taking it once (idempotent),
and one read is bounded by the revocations' cap (:data:`~triows._core.revocations.MAX_REVOKED`)
and a timeout.
"""

from __future__ import annotations

import logging
from typing import Final

import trio
from trio_util import AsyncBool

from .._brokers.seam import BrokerUnavailableError
from .control import Control

log = logging.getLogger("triows.server")

#: First wait before reading again after a failed read while the link is up (seconds);
#: doubled each time up to :data:`RETRY_MAX`.
RETRY: Final = 1.0
RETRY_MAX: Final = 30.0


async def load_kept(control: Control, up: AsyncBool, read_within: float) -> bool:
    """Take the revocations kept in Redis; whether they were read. Not while Redis is away:
    the node serves without them rather than wait (:func:`follow_kept` reads them later)."""
    if not up.value:
        log.warning("revocations kept in Redis are unknown for now: Redis unreachable")
        return False
    with trio.move_on_after(read_within):
        try:
            if found := await control.load_revocations():
                log.info("%d kept revocation(s) read", found)
            return True
        except BrokerUnavailableError:
            log.warning("revocations kept in Redis are unknown for now: Redis unreachable")
    return False


async def follow_kept(control: Control, up: AsyncBool, read_within: float, loaded: bool) -> None:
    """Read the kept revocations once per link-up (``loaded``: already read for the current
    one); retried with a bounded backoff while the link is up and the read fails (or fails
    with a bug: this task outlives it, as :func:`triows._restart.restarting` tasks do)."""
    delay = RETRY
    while True:
        if loaded:
            await up.wait_value(False)
            delay = RETRY
        await up.wait_value(True)
        try:
            loaded = await load_kept(control, up, read_within)
        except Exception:  # a bug: logged, tried again after the backoff, never the server's end
            log.exception("reading the kept revocations failed; trying again")
            loaded = False
        if not loaded:
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
