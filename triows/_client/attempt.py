"""How one connection attempt ended, judged from what its tasks raised or returned.

The supervisor (``client.Client``) runs an attempt, and this says how it went in the terms of
the reconnect rule (:class:`~triows._core.retry.Ending`), plus a line for the logs and for the
error a client that gives up raises. Every failure of the connection's tasks is judged and
logged, not only the first; a ``Cancelled`` among them (the client is closing) goes on to its
cancel scope.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from .._core.retry import Ending, Stop, Verdict
from .errors import ClientClosedError, ClientError, ConnectionLostError
from .groups import leaves
from .link import ResubscribeRefusedForNow
from .transport import CloseReason, ConnectionClosed, ConnectionRejected

log = logging.getLogger("triows.client")


@attrs.frozen
class AttemptEnding:
    """What the rule needs (``core``), whether the client itself is closing, and what went
    wrong, for the messages."""

    core: Ending
    closed: bool = False
    failure: str | None = None


async def judge_attempt(
    attempt: Callable[[], Awaitable[CloseReason | None]],
    *,
    connects: Callable[[], int],
    closing: Callable[[], bool],
    since_welcome: Callable[[], float],
) -> AttemptEnding:
    """Run ``attempt`` (it returns how the server closed the connection, if it said) and judge
    how it ended; ``connects`` counts welcomes, ``closing`` says the client is closing,
    ``since_welcome`` is the time since the last welcome."""
    before = connects()
    status = code = None
    refused_for_now = False
    failure: str | None = None
    try:
        closed = await attempt()
        code = None if closed is None else closed.code
        failure = None if closed is None else describe_close(closed)
    except* ConnectionRejected as group:
        for rejected in leaves(group):
            assert isinstance(rejected, ConnectionRejected)
            status = rejected.status_code
            log.warning("server refused the connection: HTTP %d", status)
            failure = f"refused with HTTP {status}"
    except* ConnectionClosed as group:
        for exc in leaves(group):
            assert isinstance(exc, ConnectionClosed)
            log.info("connection lost: %s", describe(exc))
            failure = describe(exc)
            code = None if exc.reason is None else exc.reason.code
    except* (OSError, trio.BrokenResourceError, trio.TooSlowError) as group:
        for exc in leaves(group):
            log.info("connection lost: %s", describe(exc))
            failure = describe(exc)
    except* ResubscribeRefusedForNow as group:
        for exc in leaves(group):
            log.warning("%s; reconnecting later", exc)
        refused_for_now = True
    except* Exception as group:
        log.error("connection failed unexpectedly; reconnecting", exc_info=group)
        failure = "; ".join(describe(exc) for exc in leaves(group))
    welcomed = connects() > before
    core = Ending(
        welcomed=welcomed,
        status=status,
        code=code,
        refused_for_now=refused_for_now,
        lasted=since_welcome() if welcomed else 0.0,
    )
    return AttemptEnding(core, closed=closing(), failure=failure)


def why_stopped(
    verdict: Verdict, ending: AttemptEnding, last_failure: str, url: str, connect_timeout: float
) -> tuple[str, type[ClientError]]:
    """Why a client stops for good, as ``verdict`` says, and the error the application gets."""
    if verdict.stop is Stop.NO_CONNECTION:
        return (
            f"no connection to {url} within {connect_timeout:g}s "
            f"(connect_timeout); the last attempt: {last_failure}",
            ConnectionLostError,
        )
    if verdict.stop is Stop.GAVE_UP:
        return f"gave up after {verdict.failures} failed attempts in a row", ClientClosedError
    if verdict.status is not None and ending.core.status is not None:
        log.error("server refused the connection: HTTP %d", verdict.status)
        return f"rejected with HTTP {verdict.status}", ClientClosedError
    why = f"closed with {verdict.code}: {ending.failure}"
    log.error("server refused the connection: %s", why)
    return f"rejected: {why}", ClientClosedError


def describe_close(reason: CloseReason) -> str:
    return f"closed {reason.code} {reason.reason or ''}".rstrip()


def describe(exc: BaseException) -> str:
    """``TypeName: detail`` (or the close code and reason), for one log line."""
    if isinstance(exc, ConnectionClosed) and exc.reason is not None:
        return describe_close(exc.reason)
    # trio's connect errors often carry the reason only in their cause (ECONNREFUSED...).
    detail = str(exc) or str(exc.__cause__ or exc.__context__ or "")
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
