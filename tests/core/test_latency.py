"""Latency histograms: plain counts on the hot path, percentiles per monitor interval."""

from __future__ import annotations

from triows._core.latency import LatencyHistogram, NullHistogram, histogram, percentile


def test_observations_land_in_their_bucket() -> None:
    h = LatencyHistogram((0.01, 0.1))
    for value in (0.0, 0.01, 0.05, 0.5, 3.0):
        h.observe(value)
    assert h.counts() == (2, 1, 2)  # <= 0.01 (bounds are inclusive), <= 0.1, above
    assert h.cumulative() == [(0.01, 2), (0.1, 3), (float("inf"), 5)]
    assert h.count == 5
    assert h.total == 3.56


def test_percentiles_cover_only_the_interval() -> None:
    h = LatencyHistogram((0.001, 0.01, 0.1))
    for _ in range(100):
        h.observe(0.05)
    before = h.counts()
    for _ in range(98):
        h.observe(0.0005)
    h.observe(0.005)
    h.observe(0.5)  # above every bound: reported as the last bound
    now = h.counts()
    assert percentile(h.bounds, now, before, 0.5) == 0.001
    assert percentile(h.bounds, now, before, 0.99) == 0.01
    assert percentile(h.bounds, now, before, 1.0) == 0.1
    assert percentile(h.bounds, now, now, 0.5) is None


def test_a_null_histogram_observes_nothing() -> None:
    h = histogram(enabled=False)
    assert isinstance(h, NullHistogram)
    h.observe(1.0)
    assert h.count == 0
    assert isinstance(histogram(enabled=True), LatencyHistogram)


def test_observing_zero_is_observing_0_seconds() -> None:
    searched, added = LatencyHistogram(), LatencyHistogram()
    for value in (0.0, 0.003, 0.0, 20.0, 0.0):
        searched.observe(value)
        if value:
            added.observe(value)
        else:
            added.zeros += 1  # the hot path's form
    for h in (added,):
        assert h.counts() == searched.counts()
        assert h.cumulative() == searched.cumulative()
        assert h.count == searched.count == 5
        assert h.total == searched.total


def test_a_null_histogram_counts_no_zeros_either() -> None:
    h = histogram(enabled=False)
    h.zeros += 1  # the hot path does not ask whether metrics are on
    assert (h.count, h.counts(), h.cumulative()[-1][1]) == (0, (0,) * (len(h.bounds) + 1), 0)
