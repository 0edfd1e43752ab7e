"""One dedupe rule for both brokers (:class:`triows._core.dedupe.DedupeRule`).

An idempotency key (or a client's publish id) is remembered for ``dedupe_ttl``, in process as
in Redis. The server's own keys (application code and the HTTP API: every backend caller
shares one principal) are not bounded by ``dedupe_size``: a retry must still be found after
other callers published more than that many keyed messages.

Real clock: the Redis broker talks to a real server from threads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from triows.testing import TestServer, open_test_server

from .rediscluster import RedisClusterNodes
from .test_redis_cluster import channel_name, open_node

pytestmark = pytest.mark.real_socket


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def broker(request: pytest.FixtureRequest) -> str | None:
    """None for the in-process broker, else a Redis URL: one Redis, or a Redis Cluster's."""
    if request.param == "memory":
        return None
    if request.param == "redis-cluster":
        cluster: RedisClusterNodes = request.getfixturevalue("redis_cluster")
        return cluster.url
    url: str = request.getfixturevalue("redis_url")
    return url


@asynccontextmanager
async def server_on(redis_url: str | None, **options: Any) -> AsyncIterator[TestServer]:
    if redis_url is None:
        async with open_test_server(**options) as node:
            yield node
    else:
        async with open_node(redis_url, **options) as node:
            yield node


async def test_a_retried_key_is_found_after_other_callers_keys(broker: str | None) -> None:
    channel = channel_name("orders")
    async with server_on(broker, dedupe_size=10) as node:
        server = node.server
        with trio.fail_after(20):
            first = await server.publish(channel, {"order": "A"}, idempotency_key="order-A")
            for n in range(11):  # other backend callers, more than dedupe_size
                await server.publish(channel, {"n": n}, idempotency_key=f"other-{n}")
            again = await server.publish(channel, {"order": "A"}, idempotency_key="order-A")
        assert again == first
        assert server.statistics().published == 12
        assert server.statistics().deduplicated == 1


async def test_a_key_is_remembered_for_the_whole_ttl(broker: str | None) -> None:
    """``dedupe_ttl`` to the millisecond, not rounded down to whole seconds in Redis."""
    channel = channel_name("orders")
    async with server_on(broker, dedupe_ttl=1.6) as node:
        server = node.server
        with trio.fail_after(20):
            first = await server.publish(channel, 1, idempotency_key="k")
            await trio.sleep(1.2)
            assert await server.publish(channel, 1, idempotency_key="k") == first
            await trio.sleep(0.6)  # now it is over
            assert await server.publish(channel, 1, idempotency_key="k") == first + 1
