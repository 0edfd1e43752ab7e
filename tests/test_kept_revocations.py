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


async def test_a_revoke_whose_store_timed_out_is_unknown_not_nothing_revoked(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the store but its answer timed out: the revocation is kept there, and every
    node takes it at its next link-up (or start). It was answered "nothing was revoked"."""
    from triows._brokers.redis import broker as redis_broker

    def slow_store(user: str, before: float, ttl: float, client: redis.Redis) -> None:
        store_revocation(user, before, ttl, client)
        raise redis.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(redis_broker, "store_revocation", slow_store)
    user = f"trudy-{time.time_ns()}"
    config = triows.Config(port=0, redis_url=redis_url, jwt_secret="s" * 32)
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, config)
        with pytest.raises(triows.OutcomeUnknownError) as caught:
            await server.revoke(user)
        assert "nothing was revoked" not in str(caught.value)
        await server.aclose()
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists("triows:revoked:" + user)  # kept after all
        client.delete("triows:revoked:" + user)
    finally:
        client.close()
