"""The memory guard: above a resident-memory limit the server takes no new connections.

Hysteresis keeps it from flapping: it trips when memory goes over ``limit`` and clears only
when it falls below ``recover_ratio`` of it. :meth:`update` says when either happens, so the
shell logs once per crossing, never once per sample. A limit of 0 turns it off.
"""

from __future__ import annotations

import enum


class Crossing(enum.Enum):
    TRIPPED = "tripped"
    CLEARED = "cleared"


class MemoryGuard:
    __slots__ = ("limit", "over", "recover_ratio", "rss", "trips")

    def __init__(self, limit: int, recover_ratio: float = 0.9) -> None:
        self.limit = limit
        self.recover_ratio = recover_ratio
        self.over = False
        #: The last resident memory sampled (bytes), and how often the guard tripped.
        self.rss = 0
        self.trips = 0

    def update(self, rss: int) -> Crossing | None:
        self.rss = rss
        if self.limit <= 0:
            return None
        if not self.over and rss > self.limit:
            self.over = True
            self.trips += 1
            return Crossing.TRIPPED
        if self.over and rss < self.limit * self.recover_ratio:
            self.over = False
            return Crossing.CLEARED
        return None


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
