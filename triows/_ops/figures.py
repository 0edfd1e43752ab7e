"""The figures endpoints: ``/metrics`` (Prometheus) and ``/stats`` (JSON), whole-server
under ``--workers`` (every worker's figures, through :mod:`triows._ops.shared_stats`)."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import attrs
import trio

from .._core.handshake import HttpRequest
from . import metrics as _metrics
from . import shared_stats as _shared_stats
from .answers import Response, int_parameter
from .monitor import Monitor, Sample
from .view import ServerView

log = logging.getLogger("triows.http")

#: Samples ``/stats`` returns unless ``?history=N`` asks for another number.
DEFAULT_HISTORY = 60
#: Samples encoded between two checkpoints (about 2 ms of work).
SAMPLES_PER_STEP = 300
#: The checkpoint between two steps.
_step = trio.lowlevel.checkpoint


class Figures:
    def __init__(self, view: ServerView, monitor: Monitor) -> None:
        self._view = view
        self._monitor = monitor

    async def metrics(self, request: HttpRequest, body: bytes) -> Response:
        view = self._view
        directory = view.config.shared_stats_dir
        if directory is None:
            families = [_metrics.collect(view, self._monitor.loop_lag)]
        else:
            # Under --workers: what this answer says of this worker goes to its file first,
            # so that no later scrape, on any worker, reads less (triows._ops.shared_stats).
            own = await self._monitor.share()
            families = [own.families]
            families += await trio.to_thread.run_sync(
                _shared_stats.read_other_families, directory, view.config.monitor_interval
            )
        text, content_type = _metrics.render(_metrics.merge(families))
        return Response(200, text, content_type)

    async def _workers(self) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Every live worker's summary, this one's first, and the counters of workers gone
        (under ``--workers``; this process's summary alone otherwise)."""
        view = self._view
        directory = view.config.shared_stats_dir
        if directory is None:
            return [self._monitor.summary()], {}
        own = await self._monitor.share()  # as for /metrics: written before it is shown
        others, gone = await trio.to_thread.run_sync(
            _shared_stats.read_other_summaries, directory, view.config.monitor_interval
        )
        return [own.summary, *others], gone

    async def stats(self, request: HttpRequest, body: bytes) -> Response:
        view, monitor = self._view, self._monitor
        wanted = int_parameter(request, "history", DEFAULT_HISTORY)
        samples = list(monitor.samples)[-wanted:] if wanted else []
        workers, gone = await self._workers()
        # The samples are encoded apart, in steps (an hour of them is about 1 MB of JSON: the
        # dashboard asks for it when it opens), and put in place of a marker of this answer's.
        marker = secrets.token_hex(16)
        document = json.dumps(
            {
                "server": attrs.asdict(view.statistics()),
                "monitor": {"interval": monitor.interval, "samples": marker},
                "workers": sorted(workers, key=lambda w: str(w.get("worker"))),
                "total": total(workers, gone),
            },
            separators=(",", ":"),
        )
        encoded = await _encoded(samples)
        body = document.replace(f'"{marker}"', encoded, 1).encode() + b"\n"
        return Response(200, body)


async def _encoded(samples: list[Sample]) -> str:
    """``samples`` as a JSON list, :data:`SAMPLES_PER_STEP` at a time with a checkpoint
    between: a long history never holds the event loop for more than a step."""
    parts: list[str] = []
    for start in range(0, len(samples), SAMPLES_PER_STEP):
        if start:
            await _step()
        chunk = samples[start : start + SAMPLES_PER_STEP]
        parts.append(
            ",".join(
                json.dumps(attrs.asdict(sample, recurse=False), separators=(",", ":"))
                for sample in chunk
            )
        )
    return "[" + ",".join(parts) + "]"


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


def total(workers: list[dict[str, Any]], gone: dict[str, float] | None = None) -> dict[str, Any]:
    """One summary for all workers: sums, the worst latencies, channels added up by name.
    ``gone``: the counters of workers that exited or stopped writing, still counted
    (``published`` and the like never go down because a worker died)."""
    result: dict[str, Any] = {"workers": len(workers)}
    for name in _SUMMED:
        result[name] = sum(w.get(name) or 0 for w in workers) + (gone or {}).get(name, 0)
    for name in _WORST:
        values = [w[name] for w in workers if w.get(name) is not None]
        result[name] = max(values) if values else None
    states = {w.get("broker_state") for w in workers}
    result["broker"] = workers[0].get("broker") if workers else None
    result["broker_state"] = "up" if states == {"up"} else "down"
    result["memory_limited"] = any(w.get("memory_limited") for w in workers)
    channels: dict[str, list[int]] = {}
    for worker in workers:
        for name, subscribers, published in worker.get("top_channels", []):
            entry = channels.setdefault(name, [0, 0])
            entry[0] += subscribers
            entry[1] = max(entry[1], published)
    ranked = sorted(channels.items(), key=lambda item: (-item[1][0], item[0]))
    result["top_channels"] = [[name, s, p] for name, (s, p) in ranked[:10]]
    return result
