"""Redis refusing writes for now (``maxmemory`` with ``noeviction``): publications are held in
order, the streams are trimmed so that a Redis full of old entries recovers, and the state is
said for what it is ("refuses writes", not "unreachable"). Real Redis, real time, bounded."""

from __future__ import annotations

import pytest
import redis
import trio

from triows import Config
from triows._brokers.redis.link import Link
from triows._brokers.seam import Publication
from triows._core import redis_format as fmt

from .redisserver import RedisServer
from .test_redis_cluster import channel_name, open_node

pytestmark = pytest.mark.real_socket


async def test_a_redis_full_of_old_stream_entries_recovers(own_redis: RedisServer) -> None:
    """The streams keep what is younger than ``redis_retention``; once older, entries beyond
    the history size must go even though Redis refuses every publish script (it used to trim
    only inside that script, after its first write: never, once Redis was full)."""
    channel = channel_name("full")
    raw = redis.Redis.from_url(own_redis.url)
    options = {"history_size": 5, "redis_retention": 1.0, "redis_timeout": 0.3}
    async with open_node(own_redis.url, **options) as node:
        server = node.server
        with trio.fail_after(20):
            for n in range(150):
                await server.publish(channel, {"n": n, "pad": "x" * 5000})
            await trio.sleep(1.2)  # every entry is older than the retention now
            used = (await trio.to_thread.run_sync(raw.info, "memory"))["used_memory"]
            await trio.to_thread.run_sync(raw.config_set, "maxmemory", used - 100_000)
            seq = await server.publish(channel, "after")
        assert seq == 151
        assert await trio.to_thread.run_sync(raw.xlen, fmt.stream_key(channel)) <= 20
    await trio.to_thread.run_sync(raw.config_set, "maxmemory", 0)
    raw.close()


async def test_out_of_memory_is_said_as_a_refusal_not_an_outage(own_redis: RedisServer) -> None:
    channel = channel_name("full")
    raw = redis.Redis.from_url(own_redis.url)
    async with open_node(own_redis.url, redis_timeout=0.3) as node:
        server = node.server
        await server.publish(channel, "before")
        await trio.to_thread.run_sync(raw.config_set, "maxmemory", 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.publish, channel, "held")
            with trio.fail_after(10):
                await server.broker.up.wait_value(False)
            reason = "Redis refuses writes (out of memory)"
            assert server.broker.statistics().reason == reason
            assert server.not_ready() == [f"broker down: {reason}"]
            await trio.to_thread.run_sync(raw.config_set, "maxmemory", 0)
        assert server.broker.statistics().reason is None
    raw.close()


#: Test only: the publish script refuses the first publication whose data says so, as Redis
#: refuses a script at ``maxmemory``, while the next one in the same pipeline runs.
REFUSE_ONCE = """
if string.find(ARGV[1], 'refuse-once', 1, true)
    and redis.call('SET', 'test:refused:' .. KEYS[2], 1, 'NX') then
  return redis.error_reply('OOM command not allowed when used memory > maxmemory.')
end
"""


async def test_a_refused_publication_keeps_its_place_before_the_next_ones(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline is not a transaction: when Redis refused the first of two publications of
    a channel and ran the second, the first, sent again, got the later seq."""
    first_line = "local done = redis.call('HGET', KEYS[4], ARGV[9])"
    monkeypatch.setattr(
        fmt, "PUBLISH_SCRIPT", fmt.PUBLISH_SCRIPT.replace(first_line, REFUSE_ONCE + first_line)
    )
    channel = channel_name("order")
    async with open_node(redis_url, redis_timeout=0.3) as node:
        server = node.server
        await server.publish(channel, "loaded")  # the script is in Redis
        seqs: dict[str, int] = {}
        done = trio.Event()

        def numbered(name: str) -> Publication:
            pub = server.publishing.publication(channel, name, None)

            def settle(result: int | Exception) -> None:
                assert isinstance(result, int), result
                seqs[name] = result
                if len(seqs) == 3:
                    done.set()

            pub.numbered = pub.failed = settle
            return pub

        # One synchronous step: the three are in the publisher's buffer, one batch.
        for name in ("refuse-once", "second", "third"):
            server.broker.publish(numbered(name))
        with trio.fail_after(10):
            await done.wait()
    assert seqs == {"refuse-once": 2, "second": 3, "third": 4}


async def test_a_refusal_does_not_hold_back_trimming_as_an_outage_does() -> None:
    """After an outage a node trims nothing for ``redis_retention`` (other nodes may catch up
    from the streams); a refusal loses no pub/sub message, and holding trimming back then kept
    a Redis near ``maxmemory`` full (each refusal restarted the wait)."""
    config = Config(redis_url="redis://127.0.0.1:1/0", redis_retention=60)
    link = Link(
        config,
        None,  # type: ignore[arg-type]  # no call goes through it here
        connections=lambda: 0,
        held_publications=lambda: 0,
        followed_channels=lambda: 0,
    )
    link.part_up("pubsub")
    link.trim_after = 0.0
    link.permit_trimming_when_settled()
    assert link.may_trim
    link.part_down("publish", "OutOfMemoryError: ...", refusing="writes (out of memory)")
    assert link.state() == "Redis refuses writes (out of memory)"
    assert link.may_trim
    link.part_up("publish")
    assert (link.may_trim, link.state(), link.reconnects) == (True, None, 0)
    link.part_down("publish", "ConnectionError: refused")
    assert link.state() == "Redis unreachable"
    assert not link.may_trim
    link.part_up("publish")
    assert link.reconnects == 1
    link.permit_trimming_when_settled()
    assert not link.may_trim  # not before redis_retention has passed
