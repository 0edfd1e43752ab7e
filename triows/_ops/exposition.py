"""The Prometheus text exposition of plain metric families, written by ``prometheus_client``.

Apart from :mod:`triows._ops.metrics` so that the library is loaded by the first scrape, not
by ``import triows``.

A family is the plain dict :mod:`triows._ops.metrics` builds (``name``, ``type``, ``help``,
``labels`` and ``samples``, or ``buckets``, ``sum`` and ``count``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

Family = dict[str, Any]


class _Families:
    """What ``generate_latest`` asks of a registry: ``collect()``."""

    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            name, text = family["name"], family["help"]
            metric: Metric
            if family["type"] == "histogram":
                metric = HistogramMetricFamily(
                    name,
                    text,
                    buckets=[(str(le), count) for le, count in family["buckets"]],
                    sum_value=family["sum"],
                )
            else:
                cls = CounterMetricFamily if family["type"] == "counter" else GaugeMetricFamily
                metric = cls(name, text, labels=family["labels"])
                for labels, value in family["samples"]:
                    metric.add_metric(labels, float(value))
            yield metric


def render(families: list[Family]) -> tuple[bytes, str]:
    return generate_latest(_Families(families)), CONTENT_TYPE_LATEST
