"""Thresholds with hysteresis: the memory guard, and the monitor's warnings.

Above a resident-memory limit the server takes no new connections; above the monitor's
loop-lag or memory warning levels it logs a warning. Hysteresis keeps either from flapping: a
:class:`Threshold` trips when its value goes over ``limit`` and clears only when it falls below
``recover_ratio`` of it. :meth:`Threshold.update` says when either happens, so the shell logs
once per crossing, never once per sample. A limit of 0 turns it off.
"""

from __future__ import annotations

import enum


class Crossing(enum.Enum):
    TRIPPED = "tripped"
    CLEARED = "cleared"


class Threshold:
    __slots__ = ("limit", "over", "recover_ratio", "trips", "value")

    def __init__(self, limit: float, recover_ratio: float = 0.9) -> None:
        self.limit = limit
        self.recover_ratio = recover_ratio
        self.over = False
        #: The last value sampled, and how often the threshold tripped.
        self.value: float = 0
        self.trips = 0

    def update(self, value: float) -> Crossing | None:
        self.value = value
        if self.limit <= 0:
            return None
        if not self.over and value > self.limit:
            self.over = True
            self.trips += 1
            return Crossing.TRIPPED
        if self.over and value < self.limit * self.recover_ratio:
            self.over = False
            return Crossing.CLEARED
        return None


class MemoryGuard(Threshold):
    """Resident memory (bytes) against ``memory_limit``."""

    __slots__ = ()

    @property
    def rss(self) -> int:
        """The last resident memory sampled (bytes)."""
        return int(self.value)


def read_rss() -> int:
    """This process's resident memory in bytes (Linux ``/proc``; else the peak, from
    ``getrusage``, which only ever grows)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")
