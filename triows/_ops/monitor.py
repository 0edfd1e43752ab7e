"""The monitor: the supervisor's sampler, once every ``monitor_interval`` seconds.

Each sample records what an operator asks first when something is slow: how late trio ran a
timer (event-loop lag, as this process's own tasks feel it), CPU and resident memory,
connections, publish and delivery rates, and percentiles of publish→ack and delivery lag
over the interval. Samples are kept in a ring (``monitor_history`` seconds, an hour by
default) served by ``GET /stats``. Crossing ``warn_loop_lag`` or ``warn_memory`` logs one
warning, and recovering one more line: never a line per sample.

On the same tick it turns counters into rates, feeds the memory guard, logs a one-line
summary a minute while clients are connected, and, under ``--workers``, writes this process's
figures for the other workers to add up (:mod:`triows._ops.shared_stats`). It reads the server
through :class:`~triows._ops.view.ServerView` only.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import os
from collections import deque
from typing import Any

import attrs
import trio

from .._core import memory_guard
from .._core.latency import LatencyHistogram, percentile
from .._core.memory_guard import Crossing, Threshold
from . import metrics as _metrics
from . import shared_stats as _shared_stats
from .view import ServerView

log = logging.getLogger("triows.monitor")

#: Seconds between the summary lines in the log.
SUMMARY_EVERY = 60.0
#: Channels named in a process's summary (by subscribers).
TOP_CHANNELS = 10


@attrs.frozen(kw_only=True)
class Sample:
    #: Wall-clock time of the sample (seconds since the epoch).
    time: float
    #: How late the monitor's timer fired (seconds): what every task waits extra right now.
    loop_lag: float
    #: CPU used over the interval, in cores (1.0: one core busy all the time).
    cpu: float
    rss: int
    connections: int
    subscriptions: int
    publish_rate: float
    delivery_rate: float
    #: Percentiles (seconds, bucket upper bounds) over the interval; None without samples.
    ack_p50: float | None
    ack_p95: float | None
    ack_p99: float | None
    lag_p50: float | None
    lag_p95: float | None
    lag_p99: float | None
    #: Marks for the time axis (the dashboard): whether the broker took publications at this
    #: sample, and whether the memory guard refused new connections.
    broker_up: bool = True
    memory_limited: bool = False


class _Interval:
    """Percentiles of one histogram between two samples."""

    __slots__ = ("_before", "_histogram")

    def __init__(self, histogram: LatencyHistogram) -> None:
        self._histogram = histogram
        self._before = histogram.counts()

    def percentiles(self) -> tuple[float | None, float | None, float | None]:
        now = self._histogram.counts()
        bounds = self._histogram.bounds
        result = (
            percentile(bounds, now, self._before, 0.50),
            percentile(bounds, now, self._before, 0.95),
            percentile(bounds, now, self._before, 0.99),
        )
        self._before = now
        return result


class Monitor:
    def __init__(self, view: ServerView) -> None:
        config = view.config
        self._view = view
        self.interval = config.monitor_interval
        self.samples: deque[Sample] = deque(
            maxlen=max(1, int(config.monitor_history / config.monitor_interval))
        )
        #: The last loop lag measured (seconds).
        self.loop_lag = 0.0
        #: Publications and deliveries per second over the last interval.
        self.publish_rate = 0.0
        self.delivery_rate = 0.0
        self._lag_warning = Threshold(config.warn_loop_lag)
        self._memory_warning = Threshold(config.warn_memory)
        #: summary() as of the last sample: ``/stats`` and the shared file reuse it.
        self._summary: dict[str, Any] | None = None

    def recent_lag(self, seconds: float) -> float:
        """The largest loop lag measured over about the last ``seconds`` (the samples kept):
        a stall that just ended still says the process, and likely the machine, was behind."""
        lag = self.loop_lag
        count = int(seconds / self.interval) + 1
        for sample in itertools.islice(reversed(self.samples), count):
            lag = max(lag, sample.loop_lag)
        return lag

    async def run(self) -> None:
        view = self._view
        broker, fanout = view.broker, view.fanout
        acks, lags = _Interval(view.ack_latency), _Interval(broker.delivery_lag)
        published, delivered = broker.published, fanout.delivered
        cpu = _metrics.cpu_seconds()
        last = trio.current_time()
        deadline = last + self.interval
        next_summary = last + SUMMARY_EVERY
        while True:
            await trio.sleep_until(deadline)
            now = trio.current_time()
            self.loop_lag = max(0.0, now - deadline)
            deadline += self.interval
            if deadline <= now:  # a stall longer than an interval: no burst of catch-up ticks
                deadline = now + self.interval
            elapsed = max(now - last, 1e-9)
            last = now
            self.publish_rate = (broker.published - published) / elapsed
            self.delivery_rate = (fanout.delivered - delivered) / elapsed
            published, delivered = broker.published, fanout.delivered
            rss = memory_guard.read_rss()
            self._check_memory_guard(rss)
            used, cpu = _metrics.cpu_seconds() - cpu, _metrics.cpu_seconds()
            ack, lag = acks.percentiles(), lags.percentiles()
            sample = Sample(
                time=view.wall_clock(),
                loop_lag=self.loop_lag,
                cpu=used / elapsed,
                rss=rss,
                connections=len(fanout),
                subscriptions=view.hub.subscription_count,
                publish_rate=self.publish_rate,
                delivery_rate=self.delivery_rate,
                ack_p50=ack[0],
                ack_p95=ack[1],
                ack_p99=ack[2],
                lag_p50=lag[0],
                lag_p95=lag[1],
                lag_p99=lag[2],
                broker_up=bool(broker.up.value),
                memory_limited=view.memory_guard.over,
            )
            self.samples.append(sample)
            self._warn(sample)
            self._summary = None  # a new sample: the next summary() is made anew
            if view.config.shared_stats_dir is not None:
                await self.share()
            if now >= next_summary:
                next_summary = now + SUMMARY_EVERY
                if len(fanout):
                    self._log_summary()

    def summary(self) -> dict[str, Any]:
        """This process as of the last sample, for ``/stats``, ``triows top`` and the other
        workers: made once per sample, however often it is asked for (it ranks channels)."""
        if self._summary is None:
            self._summary = self._make_summary()
        return self._summary

    def _make_summary(self) -> dict[str, Any]:
        view = self._view
        stats = view.statistics()
        latest = attrs.asdict(self.samples[-1]) if self.samples else {}
        # Once a second under --workers: no snapshot of every channel, no full sort.
        channels = heapq.nlargest(
            TOP_CHANNELS, view.hub.channels(), key=lambda state: len(state.members)
        )
        return {
            **latest,
            "pid": os.getpid(),
            "worker": os.environ.get("TRIOWS_WORKER_INDEX"),
            "server_id": stats.server_id,
            "uptime": stats.uptime,
            "connections": stats.connections,
            "channels": stats.channels,
            "subscriptions": stats.subscriptions,
            "published": stats.published,
            "delivered": stats.delivered,
            "dropped": stats.dropped,
            "slow_consumer_disconnects": stats.slow_consumer_disconnects,
            "queued_bytes": stats.queued_bytes,
            "broker": stats.broker.kind,
            "broker_state": stats.broker.state,
            "broker_buffered": stats.broker.buffered,
            "top_channels": [[c.name, len(c.members), c.published] for c in channels],
        }

    async def share(self) -> _shared_stats.Snapshot:
        """Write this process's figures where the other workers read them, and return them:
        gathered on the event loop, written by a worker thread (a slow disk must not stall
        the loop). What an answer says of this worker must be what it wrote first
        (:mod:`triows._ops.shared_stats`): ``/metrics`` and ``/stats`` answer with this."""
        view = self._view
        directory = view.config.shared_stats_dir
        assert directory is not None
        families = _metrics.collect(view, self.loop_lag) if view.config.metrics else []
        figures = _shared_stats.snapshot(families, self.summary())
        write = functools.partial(_shared_stats.write, directory, figures)
        try:
            await trio.to_thread.run_sync(write)
        except OSError as exc:
            log.warning("cannot write shared statistics to %s: %s", directory, exc)
        return figures

    def _check_memory_guard(self, rss: int) -> None:
        guard = self._view.memory_guard
        crossing = guard.update(rss)
        if crossing is Crossing.TRIPPED:
            log.warning(
                "memory %.0f MiB is over the limit of %.0f MiB: refusing new connections (503) "
                "until it is below %.0f MiB",
                guard.rss / 2**20,
                guard.limit / 2**20,
                guard.limit * guard.recover_ratio / 2**20,
            )
        elif crossing is Crossing.CLEARED:
            log.warning("memory %.0f MiB is below the limit again: accepting", guard.rss / 2**20)

    def _warn(self, sample: Sample) -> None:
        crossing = self._lag_warning.update(sample.loop_lag)
        if crossing is Crossing.TRIPPED:
            log.warning(
                "event loop lag %.3fs is over %.3fs: the process is overloaded or something "
                "blocks it (connections=%d, cpu=%.2f cores)",
                sample.loop_lag,
                self._lag_warning.limit,
                sample.connections,
                sample.cpu,
            )
        elif crossing is Crossing.CLEARED:
            log.warning("event loop lag is back to %.3fs", sample.loop_lag)
        crossing = self._memory_warning.update(sample.rss)
        if crossing is Crossing.TRIPPED:
            log.warning(
                "memory %.0f MiB is over the warning level of %.0f MiB (connections=%d)",
                sample.rss / 2**20,
                self._memory_warning.limit / 2**20,
                sample.connections,
            )
        elif crossing is Crossing.CLEARED:
            log.warning("memory is back to %.0f MiB", sample.rss / 2**20)

    def _log_summary(self) -> None:
        stats = self._view.statistics()
        log.info(
            "connections=%d channels=%d subscriptions=%d published/s=%.0f delivered/s=%.0f "
            "queued=%d dropped=%d slow_disconnects=%d broker=%s/%s buffered=%d loop_lag=%.3fs",
            stats.connections,
            stats.channels,
            stats.subscriptions,
            stats.publish_rate,
            stats.delivery_rate,
            stats.queued_frames,
            stats.dropped,
            stats.slow_consumer_disconnects,
            stats.broker.kind,
            stats.broker.state,
            stats.broker.buffered,
            self.loop_lag,
        )
