"""``GET /metrics``: the server's counters as Prometheus text, through ``prometheus_client``.

Nothing here runs on the hot path. Connections, fan-out and brokers keep plain integer
counters and :class:`~triows._core.latency.LatencyHistogram` buckets; a scrape reads them
(:func:`collect`) into plain families, and ``prometheus_client`` writes the exposition
(:func:`render`). Families are plain JSON-able dicts so that ``--workers`` can add up every
worker's: each worker's monitor writes its own to a shared directory once per sample
(:mod:`triows._ops.monitor`), and a scrape on any worker sums them (:func:`merge`). That is the
same idea as ``prometheus_client``'s multiprocess mode, which would instead make every
counter increment a write into a memory-mapped file.

Label sets are bounded: HTTP status codes, close codes, slow-consumer policies, rate-limited
actions. Nothing is labelled by channel, client or address.
"""

from __future__ import annotations

import resource
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._core.latency import LatencyHistogram
from .._core.memory_guard import read_rss

if TYPE_CHECKING:
    from .view import ServerView

__all__ = ["Family", "collect", "cpu_seconds", "merge", "render"]

#: ``{"name", "type", "help", "labels", "samples": [[label values, value]]}`` for counters and
#: gauges; histograms have ``"buckets": [[le, cumulative count]], "sum", "count"`` instead.
Family = dict[str, Any]

#: Gauges whose workers' values are not added up but the largest taken.
_MAX_GAUGES = frozenset({"triows_event_loop_lag_seconds"})
#: Gauges where the smallest is the honest total (one worker's broker down: not all up).
_MIN_GAUGES = frozenset({"triows_broker_up"})


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _one(kind: str, name: str, text: str, value: float) -> Family:
    return {"name": name, "type": kind, "help": text, "labels": [], "samples": [[[], value]]}


def _by(kind: str, name: str, text: str, label: str, values: dict[Any, int]) -> Family:
    samples = [[[str(key)], count] for key, count in sorted(values.items(), key=str)]
    return {"name": name, "type": kind, "help": text, "labels": [label], "samples": samples}


def _histogram(name: str, text: str, histogram: LatencyHistogram) -> Family:
    buckets = [["+Inf" if b == float("inf") else repr(b), n] for b, n in histogram.cumulative()]
    return {
        "name": name,
        "type": "histogram",
        "help": text,
        "buckets": buckets,
        "sum": histogram.total,
        "count": buckets[-1][1],
    }


def collect(view: ServerView, loop_lag: float) -> list[Family]:
    """This process's figures, read now (``loop_lag``: the monitor's last measure)."""
    stats = view.statistics()
    broker = stats.broker
    frames_in, frames_out = view.frame_totals()
    counter, gauge = "counter", "gauge"
    return [
        _one(gauge, "triows_connections", "Open WebSocket connections", stats.connections),
        _one(
            counter,
            "triows_connections_total",
            "WebSocket connections accepted",
            stats.connections_total,
        ),
        _by(
            counter,
            "triows_handshakes_rejected_total",
            "Handshakes refused, by HTTP status",
            "status",
            stats.rejected,
        ),
        _one(
            counter,
            "triows_streams_refused_total",
            "TCP streams closed at once: too many had not sent their request",
            stats.streams_refused,
        ),
        _one(
            counter,
            "triows_task_failures_total",
            "Supervisor tasks (monitor, expiry, idle sweeper, presence) failed and restarted",
            stats.task_failures,
        ),
        _by(
            counter,
            "triows_closed_by_server_total",
            "Connections the server closed, by close code",
            "code",
            stats.closed_by_server,
        ),
        _by(
            counter,
            "triows_http_requests_total",
            "Plain HTTP requests answered, by status",
            "status",
            dict(view.http_requests),
        ),
        _one(counter, "triows_frames_received_total", "WebSocket messages received", frames_in),
        _one(counter, "triows_frames_sent_total", "WebSocket messages sent", frames_out),
        _one(counter, "triows_published_total", "Messages published", stats.published),
        _one(
            counter,
            "triows_deduplicated_total",
            "Publishes answered from the dedupe window",
            stats.deduplicated,
        ),
        _one(
            counter,
            "triows_deliveries_total",
            "Messages handed to subscribers",
            stats.delivered,
        ),
        _by(
            counter,
            "triows_dropped_total",
            "Messages a slow-consumer policy discarded, by policy",
            "policy",
            {str(policy): n for policy, n in view.hub.dropped_by_policy().items()},
        ),
        _one(
            counter,
            "triows_slow_consumer_disconnects_total",
            "Subscribers closed with 1013 for not keeping up",
            stats.slow_consumer_disconnects,
        ),
        _by(
            counter,
            "triows_rate_limited_total",
            "Requests refused by a rate limit, by action",
            "action",
            stats.rate_limited,
        ),
        _histogram(
            "triows_publish_ack_seconds",
            "From a client's publish request to its ack",
            view.ack_latency,
        ),
        _histogram(
            "triows_delivery_lag_seconds",
            "From a message's timestamp to its fan-out on this node (Redis broker)",
            view.broker.delivery_lag,
        ),
        _one(
            gauge,
            "triows_http_block_waits",
            "HTTP publications to block channels in flight or waiting for block subscribers",
            stats.http_block_waits,
        ),
        _one(gauge, "triows_outbox_frames", "Frames waiting in outboxes", stats.queued_frames),
        _one(gauge, "triows_outbox_bytes", "Bytes waiting in outboxes", stats.queued_bytes),
        _one(gauge, "triows_channels", "Channels with a subscriber or history", stats.channels),
        _one(gauge, "triows_subscriptions", "Subscriptions", stats.subscriptions),
        _one(
            gauge,
            "triows_history_messages",
            "Messages held for resume",
            stats.history_messages,
        ),
        _one(gauge, "triows_history_bytes", "Bytes held for resume", stats.history_bytes),
        _one(gauge, "triows_broker_up", "1 while the broker is reachable", broker.state == "up"),
        _one(
            gauge,
            "triows_broker_buffered",
            "Publications waiting for Redis",
            broker.buffered,
        ),
        _one(
            counter,
            "triows_broker_refused_total",
            "Publications refused: the outage buffer was full",
            broker.refused,
        ),
        _one(
            counter,
            "triows_broker_reconnects_total",
            "Times the link to Redis came back after an outage",
            broker.reconnects,
        ),
        _one(
            counter,
            "triows_broker_repairs_total",
            "Times a silent pub/sub link was rebuilt",
            broker.repairs,
        ),
        _one(
            counter,
            "triows_broker_task_failures_total",
            "Broker background tasks that failed and were restarted",
            broker.task_failures,
        ),
        _histogram(
            "triows_redis_round_trip_seconds",
            "Redis commands, from the server's call to its answer",
            view.broker.round_trips,
        ),
        _one(
            gauge,
            "triows_event_loop_lag_seconds",
            "How late the monitor's last timer fired",
            loop_lag,
        ),
        _one(gauge, "triows_resident_memory_bytes", "Resident memory", read_rss()),
        _one(counter, "triows_cpu_seconds_total", "Process CPU time", cpu_seconds()),
    ]


def merge(processes: Iterable[list[Family]]) -> list[Family]:
    """Every process's families added up (loop lag: the worst; broker up: the least)."""
    merged: dict[str, Family] = {}
    for families in processes:
        for family in families:
            name = family["name"]
            into = merged.get(name)
            if into is None:
                merged[name] = _copy(family)
            elif family["type"] == "histogram":
                into["buckets"] = [
                    [le, a + b]
                    for (le, a), (_, b) in zip(into["buckets"], family["buckets"], strict=True)
                ]
                into["sum"] += family["sum"]
                into["count"] += family["count"]
            else:
                combine = max if name in _MAX_GAUGES else min if name in _MIN_GAUGES else _add
                values = {tuple(labels): value for labels, value in into["samples"]}
                for labels, value in family["samples"]:
                    key = tuple(labels)
                    values[key] = combine(values[key], value) if key in values else value
                into["samples"] = [[list(k), v] for k, v in sorted(values.items())]
    return list(merged.values())


def _add(a: float, b: float) -> float:
    return a + b


def _copy(family: Family) -> Family:
    copied = dict(family)
    for key in ("samples", "buckets"):
        if key in copied:
            copied[key] = [list(item) for item in copied[key]]
    return copied


def render(families: list[Family]) -> tuple[bytes, str]:
    """The Prometheus text of ``families``, and its content type. ``prometheus_client`` is
    imported here, at the first scrape: a server nobody scrapes never loads it."""
    from .exposition import render as write

    return write(families)
