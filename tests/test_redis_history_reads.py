"""A history page read from Redis reads only what it needs from the stream, and is the page
the in-process rule gives (``triows._core.history.page``) for every ``since``, ``limit`` and
direction (real Redis)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import redis.client
import redis.cluster

from triows._core.history import page
from triows.testing import open_test_server

from .test_redis_cluster import wait_until_up

_names = itertools.count()


class EntriesRead:
    """Counts the stream entries every pipeline of this process gets back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for kind in (redis.client.Pipeline, redis.cluster.ClusterPipeline):
            monkeypatch.setattr(kind, "execute", self._counting(kind.execute))

    def _counting(self, real: Any) -> Any:
        def execute(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            results = real(pipe, *args, **kwargs)
            self.count += sum(_stream_entries(result) for result in results)
            return results

        return execute


def _stream_entries(result: Any) -> int:
    """How many entries an XRANGE / XREVRANGE answer holds (``(id, fields)`` pairs)."""
    if isinstance(result, list) and result and isinstance(result[0], tuple | list):
        return len(result) if isinstance(result[0][0], bytes) else 0
    return 0


async def test_a_page_reads_what_it_needs_by_the_in_process_rule(
    shared_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``limit: 1`` read the whole held history (the history size) from Redis; on one
    Redis and on a Redis Cluster."""
    channel = f"reads-{time.time():.0f}-{next(_names)}"
    async with open_test_server(redis_url=shared_redis_url, history_size=200) as node:
        server = node.server
        await wait_until_up(server)
        for n in range(240):  # the stream holds all 240 (retention), history the last 200
            await server.publish(channel, n)
        held = [(seq, b"") for seq in range(41, 241)]
        reads = EntriesRead(monkeypatch)
        for since, limit, reverse in itertools.product(
            (None, 0, 20, 40, 41, 100, 239, 240, 241), (1, 3, 1000), (False, True)
        ):
            found = await server.history(channel, since=since, limit=limit, reverse=reverse)
            expected = page(held, since=since, limit=limit, reverse=reverse, max_bytes=1 << 30)
            assert [m["seq"] for m in found.messages] == [seq for seq, _ in expected], (
                since,
                limit,
                reverse,
            )
            assert [m["data"] for m in found.messages] == [seq - 1 for seq, _ in expected]
            assert found.seq == 240
        reads.count = 0
        await server.history(channel, limit=1)  # the oldest held: past 40 outside the window
        assert reads.count <= 3
        reads.count = 0
        for since in (None, 100, 241):
            await server.history(channel, since=since, limit=1, reverse=True)
        await server.history(channel, since=100, limit=1)
        assert reads.count == 4
