"""No client, and no channel, can stall the event loop for the others.

Fairness is measured in work per task step, not in seconds: a trio instrument counts the
deliveries and requests done between two checkpoints of the same task. That is exact and
deterministic in virtual time, where a stall shows no elapsed time at all.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import trio
from wsproto.events import TextMessage

from triows import Server, SlowConsumerPolicy
from triows._brokers.fanout import DELIVERIES_PER_STEP, ITEMS_PER_STEP
from triows.testing import open_test_server

from .rawclient import RawClient


class WorkPerStep(trio.abc.Instrument):
    """The most deliveries and inbound messages any single task step did."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._before = (0, 0)
        self.deliveries = 0
        self.messages = 0

    def _now(self) -> tuple[int, int]:
        received, _ = self._server.frame_totals()
        return self._server.fanout.delivered, received

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._before = self._now()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        delivered, received = self._now()
        self.deliveries = max(self.deliveries, delivered - self._before[0])
        self.messages = max(self.messages, received - self._before[1])


async def test_a_burst_of_publishes_is_served_in_bounded_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscribers, publishes = 50, 240
    async with open_test_server(publish_rate=0, outbox_size=1000) as harness:
        readers = [await RawClient.connect(harness.listener) for _ in range(subscribers)]
        for reader in readers:
            await reader.subscribe("burst")
        publisher = await RawClient.connect(harness.listener)
        # Every publish in one write, so the server reads them all at once.
        burst = b"".join(
            publisher.ws.send(
                TextMessage(data=json.dumps({"type": "publish", "channel": "burst", "data": n}))
            )
            for n in range(publishes)
        )
        assert len(burst) < 16 * 1024  # one read
        instrument = WorkPerStep(harness.server)
        trio.lowlevel.add_instrument(instrument)
        try:
            await publisher.stream.send_all(burst)
            with trio.fail_after(10):
                while harness.server.fanout.delivered < subscribers * publishes:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # no event to wait on: the counter is the signal
        finally:
            trio.lowlevel.remove_instrument(instrument)
        # Served inline, all of it would be one step: 12,000 deliveries, 240 requests.
        assert instrument.deliveries <= DELIVERIES_PER_STEP + subscribers
        assert instrument.messages <= ITEMS_PER_STEP
        for reader in [*readers, publisher]:
            await reader.abort()


_names = itertools.count()


@pytest.mark.real_socket
async def test_a_blocked_channel_does_not_stall_the_other_channels_of_a_redis_node(
    redis_url: str,
) -> None:
    n = next(_names)
    blocked, free = f"block-{n}-{trio.current_time():.0f}", f"free-{n}"
    options: dict[str, Any] = {
        "redis_url": redis_url,
        "buffer_size": 2048,
        "outbox_size": 4,
        "block_timeout": 5.0,
        "channel_policies": [("block-*", SlowConsumerPolicy.BLOCK)],
    }
    async with open_test_server(**options) as harness:
        with trio.fail_after(10):
            await harness.server.broker.up.wait_value(True)
        stalled = await RawClient.connect(harness.listener)
        await stalled.subscribe(blocked)  # then never reads again
        async with harness.connect() as reader, harness.connect() as publisher:
            await reader.request({"type": "subscribe", "channel": free})
            for i in range(30):  # far more than the stalled socket and outbox hold
                ack = await publisher.request(
                    {"type": "publish", "channel": blocked, "data": "x" * 300, "id": i}
                )
                assert ack["type"] == "ack"
            await publisher.request({"type": "publish", "channel": free, "data": "hi", "id": "f"})
            # The blocked channel may wait up to block_timeout (5 s); this one must not.
            with trio.fail_after(2):
                message = await reader.receive_type("message")
            assert message["data"] == "hi"
        assert await stalled.read_until_closed(timeout=20) == 1013


async def test_requests_queued_behind_a_hook_are_served_in_bounded_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A hook that answers without awaiting (a plain function, or a cache hit) never yields:
    the queued requests' task counts its work like the reader does."""
    subscribers, publishes = 50, 240

    def authorize(*_: object) -> bool:
        return True

    async with open_test_server(publish_rate=0, outbox_size=1000, authorize=authorize) as harness:
        readers = [await RawClient.connect(harness.listener) for _ in range(subscribers)]
        for reader in readers:
            await reader.subscribe("burst")
        publisher = await RawClient.connect(harness.listener)
        burst = b"".join(
            publisher.ws.send(
                TextMessage(data=json.dumps({"type": "publish", "channel": "burst", "data": n}))
            )
            for n in range(publishes)
        )
        instrument = WorkPerStep(harness.server)
        trio.lowlevel.add_instrument(instrument)
        try:
            await publisher.stream.send_all(burst)
            with trio.fail_after(10):
                while harness.server.fanout.delivered < subscribers * publishes:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # no event to wait on: the counter is the signal
        finally:
            trio.lowlevel.remove_instrument(instrument)
        assert instrument.deliveries <= DELIVERIES_PER_STEP + subscribers
        for reader in [*readers, publisher]:
            await reader.abort()


@pytest.mark.real_socket
async def test_a_redis_node_delivers_a_burst_in_bounded_steps(redis_url: str) -> None:
    subscribers, publishes = 100, 300
    channel = f"burst-{next(_names)}-{trio.current_time():.0f}"
    async with open_test_server(redis_url=redis_url, outbox_size=1000) as harness:
        with trio.fail_after(10):
            await harness.server.broker.up.wait_value(True)
        readers = [await RawClient.connect(harness.listener) for _ in range(subscribers)]
        for reader in readers:
            await reader.subscribe(channel)
        instrument = WorkPerStep(harness.server)
        trio.lowlevel.add_instrument(instrument)
        try:
            for n in range(publishes):  # handed to Redis at once; they come back in batches
                harness.server.broker.publish(
                    harness.server.publishing.publication(channel, n, None)
                )
            with trio.fail_after(20):
                while harness.server.fanout.delivered < subscribers * publishes:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # no event to wait on: the counter is the signal
        finally:
            trio.lowlevel.remove_instrument(instrument)
        assert instrument.deliveries <= DELIVERIES_PER_STEP + subscribers
        for reader in readers:
            await reader.abort()


@pytest.mark.real_socket
async def test_what_a_blocked_redis_channel_holds_is_bounded_in_bytes(redis_url: str) -> None:
    n = next(_names)
    blocked = f"block-{n}-{trio.current_time():.0f}"
    options: dict[str, Any] = {
        "redis_url": redis_url,
        "buffer_size": 2048,
        "outbox_size": 1000,
        "outbox_max_bytes": 64 * 1024,
        "block_timeout": 30.0,
        "channel_policies": [("block-*", SlowConsumerPolicy.BLOCK)],
    }
    async with open_test_server(**options) as harness:
        with trio.fail_after(10):
            await harness.server.broker.up.wait_value(True)
        stalled = await RawClient.connect(harness.listener)
        await stalled.subscribe(blocked)  # then never reads again
        big = "x" * 20_000
        for _ in range(20):  # 400 KB: far over what one outbox may hold
            await harness.server.publish_numbered(blocked, big)
        # Not after block_timeout (30 s): as soon as what is held is over the bound.
        assert await stalled.read_until_closed(timeout=10) == 1013


class ReadClocks(trio.abc.Instrument):
    """Whether a read's clock (the server's ``read_clock``) was held when a task step ended:
    the clock of a read is for the requests served in that step, never for another task's."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self.steps = 0
        self.held: list[float] = []

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        at = self._server.read_clock.at
        if at is not None:
            self.held.append(at)


async def test_a_read_s_clock_is_not_held_across_its_checkpoints(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A read of more publishes than one step serves checkpoints in the middle: its clock
    (read once per read) is dropped before and read again after, so that the next part and
    every other task see the time of their own step."""
    async with open_test_server(publish_rate=0) as harness:
        publisher = await RawClient.connect(harness.listener)
        burst = b"".join(
            publisher.ws.send(
                TextMessage(
                    data=json.dumps({"type": "publish", "channel": "clock", "data": n, "id": n})
                )
            )
            for n in range(3 * ITEMS_PER_STEP)
        )
        instrument = ReadClocks(harness.server)
        trio.lowlevel.add_instrument(instrument)
        try:
            await publisher.stream.send_all(burst)
            with trio.fail_after(10):
                while harness.server.broker.published < 3 * ITEMS_PER_STEP:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # no event to wait on: the counter is the signal
        finally:
            trio.lowlevel.remove_instrument(instrument)
        assert instrument.steps
        assert instrument.held == []
        await publisher.abort()
