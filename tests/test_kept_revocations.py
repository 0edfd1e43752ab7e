"""Revocations kept in Redis reach a node whose link to Redis was down when they were
made or when it started: it reads them when the link comes up (real Redis, real time)."""

from __future__ import annotations

import time

import pytest
import redis
import trio

import triows
from triows._brokers.redis.control import store_revocation

from .redisserver import RedisServer

pytestmark = pytest.mark.real_socket


async def test_revocations_kept_in_redis_are_read_when_the_link_comes_up(
    own_redis: RedisServer,
) -> None:
    """A node started while Redis was away never read the revocations kept there: the
    revoked user's old tokens were accepted for the revocation's whole TTL."""
    client = redis.Redis.from_url(own_redis.url)
    try:
        store_revocation("mallory", time.time(), 3600, client)
    finally:
        client.close()
    own_redis.kill()
    config = triows.Config(port=0, redis_url=own_redis.url, jwt_secret="s" * 32)
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, config)
        revocations = server.access.revocations
        assert not server.broker.up.value
        assert not revocations.revoked("mallory", {}, time.time())
        own_redis.start()
        with trio.fail_after(20):
            await server.broker.up.wait_value(True)
            while True:  # read by the node's own task once the link is up
                if revocations.revoked("mallory", {}, time.time()):
                    break
                await trio.sleep(0.05)
        assert revocations.revoked("mallory", {"iat": time.time() - 60}, time.time())
        await server.aclose()
