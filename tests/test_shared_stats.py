"""The files ``--workers`` share their figures through: sums that never go down."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from triows._ops import shared_stats as _shared_stats
from triows._ops.metrics import Family, merge


def families(requests: float, connections: float) -> list[Family]:
    return [
        {
            "name": "triows_http_requests_total",
            "type": "counter",
            "help": "h",
            "labels": ["status"],
            "samples": [[["200"], requests]],
        },
        {
            "name": "triows_connections",
            "type": "gauge",
            "help": "h",
            "labels": [],
            "samples": [[[], connections]],
        },
        {
            "name": "triows_publish_ack_seconds",
            "type": "histogram",
            "help": "h",
            "buckets": [["0.1", requests], ["+Inf", requests]],
            "sum": requests / 10,
            "count": requests,
        },
    ]


def worker_file(directory: Path, pid: int, figures: list[Family], age: float = 0) -> None:
    record: dict[str, Any] = {
        "pid": pid,
        "instance": f"{pid}-test",
        "written": time.time() - age,
        "families": figures,
        "summary": {},
    }
    (directory / f"{pid}.json").write_text(json.dumps(record))


def totals(directory: Path) -> dict[str, float]:
    merged = merge(_shared_stats.read_other_families(str(directory), 1.0))
    found: dict[str, float] = {}
    for family in merged:
        if family["type"] == "histogram":
            found[family["name"]] = family["count"]
        else:
            found[family["name"]] = sum(value for _, value in family["samples"])
    return found


def test_a_worker_that_exited_keeps_its_counters_and_loses_its_gauges(tmp_path: Path) -> None:
    worker_file(tmp_path, 101, families(7, 3))
    worker_file(tmp_path, 102, families(5, 2))
    before = totals(tmp_path)
    assert before == {
        "triows_http_requests_total": 12,
        "triows_connections": 5,
        "triows_publish_ack_seconds": 12,
    }
    _shared_stats.remove(str(tmp_path), 101)
    assert not (tmp_path / "101.json").exists()
    assert totals(tmp_path) == {
        "triows_http_requests_total": 12,
        "triows_connections": 2,
        "triows_publish_ack_seconds": 12,
    }
    # Its replacement starts from zero; the sum goes on from where it was.
    worker_file(tmp_path, 103, families(1, 1))
    _shared_stats.remove(str(tmp_path), 102)
    assert totals(tmp_path)["triows_http_requests_total"] == 13


def test_a_retired_worker_whose_file_is_still_read_is_counted_once(tmp_path: Path) -> None:
    """A reader that found the worker's file before the supervisor retired it."""
    worker_file(tmp_path, 101, families(7, 3))
    kept = (tmp_path / "101.json").read_text()
    _shared_stats.remove(str(tmp_path), 101)
    (tmp_path / "101.json").write_text(kept)  # as the reader saw it
    assert totals(tmp_path)["triows_http_requests_total"] == 7


def test_a_silent_worker_keeps_counting_its_counters(tmp_path: Path) -> None:
    """A worker stopped for a while (its file is stale): its gauges stop counting, its
    counters do not (they would come back later: a decrease, then an increase)."""
    worker_file(tmp_path, 101, families(7, 3), age=60)
    assert totals(tmp_path) == {
        "triows_http_requests_total": 7,
        "triows_publish_ack_seconds": 7,
    }
