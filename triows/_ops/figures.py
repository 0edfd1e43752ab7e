"""The figures endpoints: ``/metrics`` (Prometheus) and ``/stats`` (JSON), whole-server
under ``--workers`` (every worker's figures, through :mod:`triows._ops.shared_stats`)."""

from __future__ import annotations

import functools
import logging
from typing import Any

import attrs
import trio

from .._core.handshake import HttpRequest
from . import metrics as _metrics
from . import shared_stats as _shared_stats
from .answers import Response, int_parameter, json_response
from .monitor import Monitor
from .view import ServerView

log = logging.getLogger("triows.http")

#: Samples ``/stats`` returns unless ``?history=N`` asks for another number.
DEFAULT_HISTORY = 60


class Figures:
    def __init__(self, view: ServerView, monitor: Monitor) -> None:
        self._view = view
        self._monitor = monitor

    async def metrics(self, request: HttpRequest, body: bytes) -> Response:
        view = self._view
        own = _metrics.collect(view, self._monitor.loop_lag)
        families = [own]
        directory = view.config.shared_stats_dir
        if directory is not None:
            # Under --workers: what this answer says of this worker goes to its file first,
            # so that no later scrape, on any worker, reads less (triows._ops.shared_stats).
            write = functools.partial(_shared_stats.write, directory, own, self._monitor.summary())
            try:
                await trio.to_thread.run_sync(write)
            except OSError as exc:
                log.warning("cannot write shared statistics to %s: %s", directory, exc)
            families += await trio.to_thread.run_sync(
                _shared_stats.read_other_families, directory, view.config.monitor_interval
            )
        text, content_type = _metrics.render(_metrics.merge(families))
        return Response(200, text, content_type)

    async def _other_workers(self) -> list[dict[str, Any]]:
        """Under ``--workers``: the other workers' latest figures (none otherwise)."""
        config = self._view.config
        if config.shared_stats_dir is None:
            return []
        return await trio.to_thread.run_sync(
            _shared_stats.read_others, config.shared_stats_dir, config.monitor_interval
        )

    async def stats(self, request: HttpRequest, body: bytes) -> Response:
        view, monitor = self._view, self._monitor
        wanted = int_parameter(request, "history", DEFAULT_HISTORY)
        samples = list(monitor.samples)[-wanted:] if wanted else []
        workers = [self._monitor.summary()]
        workers += [record["summary"] for record in await self._other_workers()]
        return json_response(
            200,
            {
                "server": attrs.asdict(view.statistics()),
                "monitor": {
                    "interval": monitor.interval,
                    "samples": [attrs.asdict(sample) for sample in samples],
                },
                "workers": sorted(workers, key=lambda w: str(w.get("worker"))),
                "total": total(workers),
            },
        )


#: Summary fields where the whole server's figure is the worst worker's, not the sum.
_WORST = ("loop_lag", "ack_p50", "ack_p95", "ack_p99", "lag_p50", "lag_p95", "lag_p99", "time")
_SUMMED = (
    "cpu",
    "rss",
    "connections",
    "subscriptions",
    "publish_rate",
    "delivery_rate",
    "published",
    "delivered",
    "dropped",
    "slow_consumer_disconnects",
    "queued_bytes",
    "broker_buffered",
)


def total(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for all workers: sums, the worst latencies, channels added up by name."""
    result: dict[str, Any] = {"workers": len(workers)}
    for name in _SUMMED:
        result[name] = sum(w.get(name) or 0 for w in workers)
    for name in _WORST:
        values = [w[name] for w in workers if w.get(name) is not None]
        result[name] = max(values) if values else None
    states = {w.get("broker_state") for w in workers}
    result["broker"] = workers[0].get("broker") if workers else None
    result["broker_state"] = "up" if states == {"up"} else "down"
    channels: dict[str, list[int]] = {}
    for worker in workers:
        for name, subscribers, published in worker.get("top_channels", []):
            entry = channels.setdefault(name, [0, 0])
            entry[0] += subscribers
            entry[1] = max(entry[1], published)
    ranked = sorted(channels.items(), key=lambda item: (-item[1][0], item[0]))
    result["top_channels"] = [[name, s, p] for name, (s, p) in ranked[:10]]
    return result
