"""Latency histograms fed on the hot path, read by the monitor and by ``/metrics``.

Why not ``prometheus_client.Histogram``: its ``observe`` takes a lock and walks every bucket,
and in multiprocess mode it writes to a memory-mapped file; a publish→ack sample would cost
more than the ack. Here an observation is one ``bisect`` and two additions into plain lists,
and the exposition (``triows._ops.metrics``) hands the whole batch of counts to
``prometheus_client`` at scrape time. The monitor takes percentiles of what was observed
between two of its samples from the difference of two :meth:`LatencyHistogram.counts`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Final

#: Upper bounds (seconds) of the buckets; a last, implicit bucket holds everything above.
BOUNDS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    __slots__ = ("_counts", "bounds", "total", "zeros")

    def __init__(self, bounds: Sequence[float] = BOUNDS) -> None:
        self.bounds = tuple(bounds)
        # One count per bucket (not cumulative), the last for values above every bound.
        self._counts = [0] * (len(self.bounds) + 1)
        #: Sum of every observed value (seconds).
        self.total = 0.0
        #: Observations of 0 s, part of the first bucket: an outcome known in the same step
        #: (an in-process ack) is counted by the hot path with one addition, ``zeros += 1``.
        self.zeros = 0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self._counts) + self.zeros

    def counts(self) -> tuple[int, ...]:
        """A copy of the per-bucket counts (not cumulative), for :func:`percentile`."""
        counts = self._counts
        return (counts[0] + self.zeros, *counts[1:])

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` for every bucket and ``+Inf``."""
        result: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts(), strict=True):
            running += count
            result.append((bound, running))
        return result


class NullHistogram(LatencyHistogram):
    """Observes nothing: what every histogram is with ``Config.metrics`` off."""

    __slots__ = ()

    def observe(self, seconds: float) -> None:
        pass

    @property
    def count(self) -> int:
        return 0  # ``zeros`` too is what nobody observes here

    def counts(self) -> tuple[int, ...]:
        return tuple(self._counts)


def histogram(enabled: bool) -> LatencyHistogram:
    return LatencyHistogram() if enabled else NullHistogram()


def percentile(
    bounds: Sequence[float], now: Sequence[int], before: Sequence[int], q: float
) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of what was observed between two :meth:`counts`, as the
    upper bound of the bucket it falls in (the last bound for the overflow bucket); None when
    nothing was observed. Bucket resolution is what Prometheus' ``histogram_quantile`` gives
    too, without its linear interpolation."""
    deltas = [a - b for a, b in zip(now, before, strict=True)]
    observed = sum(deltas)
    if observed <= 0:
        return None
    rank = q * observed
    running = 0
    for index, delta in enumerate(deltas):
        running += delta
        if running >= rank and delta:
            return float(bounds[min(index, len(bounds) - 1)])
    return float(bounds[-1])
