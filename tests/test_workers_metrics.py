"""``/metrics`` under ``--workers``: counters never go down from one scrape to the next.

Prometheus reads any decrease of a counter as a reset. The kernel spreads scrapes over the
workers, each adds up every worker's figures, and a worker may die and be restarted: whoever
answers, and whoever died, every counter and histogram must be at least what the previous
scrape said (prometheus_client's multiprocess mode keeps a dead process's counters too).
"""

from __future__ import annotations

import os
import re
import signal

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from .redisserver import RedisServer
from .test_workers import two_workers_listening

pytestmark = pytest.mark.real_socket

#: Sample types whose value must never decrease.
MONOTONIC = {"counter", "histogram"}


def monotonic_samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of every counter and histogram sample."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type in MONOTONIC:
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def decreases(before: dict[str, float], after: dict[str, float]) -> list[str]:
    return [
        f"{name}: {value} -> {after.get(name)}"
        for name, value in before.items()
        if after.get(name, 0.0) < value
    ]


async def test_counters_never_decrease_across_scrapes_and_a_worker_restart(
    redis_server: RedisServer,
) -> None:
    async with two_workers_listening(redis_server.url) as (supervisor, workers):
        port = int(re.findall(r"ws://127\.0\.0\.1:(\d+)/", "\n".join(supervisor.lines))[0])
        found: list[str] = []
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_keepalive_connections=0)
        ) as http:

            async def scrape(previous: dict[str, float] | None) -> dict[str, float]:
                for _ in range(10):  # a connection queued at the killed worker is reset
                    try:
                        answer = await http.get("/metrics")
                        break
                    except httpx.TransportError:
                        await trio.sleep(0.05)
                else:
                    pytest.fail("no worker answered /metrics")
                assert answer.status_code == 200
                current = monotonic_samples(answer.text)
                if previous is not None:
                    found.extend(decreases(previous, current))
                return current

            with trio.fail_after(60):
                last = await scrape(None)
                for _ in range(40):  # both workers answer some: each serves a share
                    last = await scrape(last)
                    await trio.sleep(0.03)
                os.kill(workers[0], signal.SIGKILL)
                for _ in range(20):  # before and after the supervisor retires it
                    last = await scrape(last)
                    await trio.sleep(0.05)
                await supervisor.wait_for("triows listening", count=3)
                for _ in range(40):
                    last = await scrape(last)
                    await trio.sleep(0.03)
        assert not found, f"{len(found)} decrease(s): " + "; ".join(found[:12])
