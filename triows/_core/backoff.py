"""Delays between retries: one rule for every retry loop in triows.

``exponential`` doubles from ``base`` up to ``cap``; ``full_jitter`` draws uniformly below it,
so that many peers cut off together (clients of a restarted server, nodes of a cluster after a
Redis outage) do not all come back in the same instant. The randomness is an argument, so that
tests can pin it.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def exponential(attempt: int, base: float, cap: float) -> float:
    """``min(cap, base * 2**attempt)`` for ``attempt`` = 0, 1, 2, ... (overflow-safe)."""
    return min(cap, base * float(2 ** min(max(attempt, 0), 62)))


def full_jitter(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """A delay uniform in ``[0, exponential(attempt, base, cap)]``."""
    return rand() * exponential(attempt, base, cap)


#: A background task's retries (a Redis call, a task restarted after a bug): 50 ms doubling
#: up to 2 s.
RETRY_BASE = 0.05
RETRY_CAP = 2.0


def retry_delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Before retry ``attempt`` of a background task: :func:`full_jitter` of the retry base."""
    return full_jitter(attempt, RETRY_BASE, RETRY_CAP, rand)
