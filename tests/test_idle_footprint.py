"""What an idle connection holds while it waits: its two tasks' stacks, nothing of the handshake.

Memory per idle connection is mostly what its two tasks hold while they sleep: coroutine
frames, cancel scopes, the last bytes read. These tests pin that shape (which frames, which
locals), never a size in bytes: the sizes are measured by the benchmark (``tests/bench``).
"""

from __future__ import annotations

import errno
import functools
import types
from collections.abc import Iterator

import pytest
import trio

import triows
from triows._net.listen import STREAM_TASK
from triows._server.connection import HEARTBEAT_TASK, Connection
from triows.testing import MemoryListener, open_test_server

from .rawclient import RawClient
from .tasktree import all_tasks


def frames(task: trio.lowlevel.Task) -> Iterator[types.FrameType]:
    """The frames of ``task``'s coroutine stack, outermost first."""
    coro: object = task.coro
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            yield frame
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)


def names(task: trio.lowlevel.Task) -> list[str]:
    return [frame.f_code.co_name for frame in frames(task)]


def connection_tasks() -> tuple[trio.lowlevel.Task, trio.lowlevel.Task]:
    """The one connection's reader (its stream's task) and its heartbeat."""
    readers = [task for task in all_tasks() if "_read" in names(task)]
    beats = [task for task in all_tasks() if task.name == HEARTBEAT_TASK]
    assert len(readers) == 1, [names(task) for task in readers]
    assert len(beats) == 1
    return readers[0], beats[0]


async def test_an_idle_connection_holds_nothing_of_its_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(heartbeat_interval=10, heartbeat_timeout=5) as harness:
        client = await RawClient.connect(harness.listener)
        await client.subscribe("a")
        await trio.sleep(1)
        reader, heartbeat = connection_tasks()
        stack = names(reader)
        # The connection runs in the stream's own frame, once the handshake's frames (the
        # head's reading and answering, the server's handshake) have returned; the stream's
        # task is that frame (no wrapper around it), under a name given once...
        assert stack[: stack.index("_read")] == ["_serve_stream", "run"]
        assert reader.name == STREAM_TASK
        assert "_serve_head" not in stack
        assert "_handshake" not in stack
        # ...and out of the cancel scope that let the admission evict it while it waited.
        serve_stream = next(f for f in frames(reader) if f.f_code.co_name == "_serve_stream")
        assert "evictable" not in serve_stream.f_locals
        # Waiting for the next read, the reader keeps neither the last read nor its message
        # (the subscribe frame).
        read = next(f for f in frames(reader) if f.f_code.co_name == "_read")
        assert read.f_locals["data"] == b""
        assert read.f_locals["event"] is None
        # The heartbeat sleeps in its cancel scope alone: no sleep_forever frame, and a task
        # name given rather than formatted per connection.
        assert "sleep_forever" not in names(heartbeat)
        assert names(heartbeat)[0] == "_heartbeat"
        assert isinstance(harness.server.connections()[0], Connection)
        await client.abort()


class RunningOutOfDescriptors(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose first ``accept`` fails as a process out of descriptors does."""

    def __init__(self, inner: trio.abc.Listener[trio.abc.Stream]) -> None:
        self.inner = inner
        self.failures = 0

    async def accept(self) -> trio.abc.Stream:
        if not self.failures:
            self.failures += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.inner.accept()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_accept_loop_waits_out_a_lack_of_descriptors(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    listener = MemoryListener()
    flaky = RunningOutOfDescriptors(listener)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(triows.serve, listeners=[flaky]))
        client = await RawClient.connect(listener)
        await client.subscribe("a")
        assert flaky.failures == 1
        assert "accept failed with EMFILE" in caplog.text
        await client.abort()
        await server.aclose()
