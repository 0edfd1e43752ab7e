"""The files ``--workers`` share their figures through: sums that never go down."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from triows._ops import shared_stats as _shared_stats
from triows._ops.metrics import Family, merge
from triows.testing import open_test_server

from .test_http import running


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


def test_a_file_that_cannot_be_read_counts_as_last_read(tmp_path: Path) -> None:
    """A reader that meets a worker's file it cannot parse (a disk error, a torn write) keeps
    that worker's last record instead of dropping it from the sum (a decrease)."""
    worker_file(tmp_path, 101, families(7, 3))
    assert totals(tmp_path)["triows_http_requests_total"] == 7
    (tmp_path / "101.json").write_text('{"pid": 101, "fam')
    assert totals(tmp_path)["triows_http_requests_total"] == 7
    worker_file(tmp_path, 101, families(9, 3))
    assert totals(tmp_path)["triows_http_requests_total"] == 9


def test_workers_retired_long_ago_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retired counters name each retired worker only for a while (a reader needs it for
    milliseconds), not one entry per worker that ever exited."""
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    for pid in range(101, 111):
        worker_file(tmp_path, pid, families(1, 1))
        _shared_stats.remove(str(tmp_path), pid)
        clock[0] += _shared_stats.ABSORBED_KEPT / 4
    retired = json.loads((tmp_path / _shared_stats.RETIRED).read_text())
    assert len(retired["absorbed"]) == 4
    assert totals(tmp_path)["triows_http_requests_total"] == 10


async def test_a_slow_older_write_never_replaces_newer_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writes of this worker's file at once (a scrape and the monitor, or two scrapes):
    the one gathered first but written last must not put its older figures back. Real clock:
    the writes happen in threads."""
    first_started, release = threading.Event(), threading.Event()
    real_replace = _shared_stats._replace
    calls: list[Path] = []

    def replace(target: Path, value: Any) -> None:
        calls.append(target)
        if len(calls) == 1:  # the older write: stuck in a slow disk for a while
            first_started.set()
            release.wait(5)
        real_replace(target, value)

    monkeypatch.setattr(_shared_stats, "_replace", replace)
    options: dict[str, Any] = {"monitor_interval": 3600, "shared_stats_dir": str(tmp_path)}
    async with open_test_server(**options) as harness:
        server = harness.server
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.monitor.share)  # gathered with nothing published
                await trio.to_thread.run_sync(first_started.wait, 5)
                await server.publish("news", 1)
                nursery.start_soon(server.monitor.share)  # gathered after the publish
                await trio.sleep(0.3)  # the newer write ends first (or waits its turn)
                release.set()
    record = json.loads(next(iter(tmp_path.glob("*.json"))).read_text())  # noqa: ASYNC240
    published = [f for f in record["families"] if f["name"] == "triows_published_total"]
    assert published[0]["samples"][0][1] == 1


@pytest.mark.real_socket
async def test_stats_totals_keep_the_counters_of_a_worker_that_exited(tmp_path: Path) -> None:
    """``/stats`` ``total.published`` (and the other counters) must not drop when a worker
    dies: its last figures are folded into the retired counters, as ``/metrics`` does."""
    other = {"pid": 999_999, "instance": "999999-test", "written": time.time()}
    summary = {"worker": "1", "published": 5, "delivered": 7, "connections": 2}
    (tmp_path / "999999.json").write_text(json.dumps({**other, "families": [], "summary": summary}))
    async with running(shared_stats_dir=str(tmp_path)) as (server, http):
        await server.publish("news", 1)
        # A worker's summary is as of its last sample: wait (bounded) for one after the publish.
        for _ in range(100):
            before = (await http.get("/stats?history=0")).json()["total"]
            if before["published"] == 6:
                break
            await trio.sleep(0.05)
        assert (before["published"], before["delivered"], before["workers"]) == (6, 7, 2)
        await trio.to_thread.run_sync(_shared_stats.remove, str(tmp_path), 999_999)
        after = (await http.get("/stats?history=0")).json()["total"]
        assert (after["published"], after["delivered"], after["workers"]) == (6, 7, 1)
        assert after["connections"] == 0  # gauges of the dead stop counting
