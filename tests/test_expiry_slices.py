"""The expiry task lets every other task run between two slices of its work."""

from __future__ import annotations

import trio
import trio.testing

from triows._brokers.fanout import FanOut
from triows._brokers.memory import EXPIRE_SLICE, MemoryBroker
from triows._config import Config
from triows._server.supervisor import expire


class _Steps(trio.abc.Instrument):
    """Task steps run so far (a checkpoint ends one)."""

    def __init__(self) -> None:
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


class _SlicedBroker:
    """A broker whose expiry takes three slices each second."""

    def __init__(self, steps: _Steps) -> None:
        self.steps = steps
        self.calls: list[tuple[float, int]] = []

    def expire(self, now: float) -> bool:
        self.calls.append((now, self.steps.count))
        return len(self.calls) % 3 != 0


async def test_the_expiry_task_checkpoints_between_slices(
    autojump_clock: trio.testing.MockClock,
) -> None:
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    broker = _SlicedBroker(steps)
    try:
        with trio.move_on_after(1.5):
            await expire(broker)  # type: ignore[arg-type]
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert len(broker.calls) == 3  # one second: all three slices, none after
    (first, a), (second, b), (third, c) = broker.calls
    assert first == second == third  # the same tick's clock
    assert a < b < c  # a new step for each slice: the others ran between


async def test_the_memory_broker_expires_a_mass_forget_in_slices() -> None:
    """Anonymous publishers that all left: more stale tokens than a slice takes; the broker
    says so until the last slice."""
    broker = MemoryBroker(Config(), FanOut(1.0), epoch_prefix="t")
    publishers = 3 * EXPIRE_SLICE // 1000 + 1
    for publisher in range(publishers):
        for publish_id in range(1000):
            broker.publish_at_once(
                "c", b"1", None, 0, False, ("connection", publisher), publish_id, now=1.0
            )
    for publisher in range(publishers):
        broker.forget_publisher(("connection", publisher))
    assert broker.dedupe_entries == 0
    slices = 1
    while broker.expire(2.0):
        slices += 1
    assert slices == publishers * 1000 // EXPIRE_SLICE + 1
    assert not broker.expire(2.0)
