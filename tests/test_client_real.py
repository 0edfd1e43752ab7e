"""triows.client against `python -m triows` in a subprocess, over real TCP (real clock)."""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from triows import client as wsclient

pytestmark = pytest.mark.real_socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(self, port: int) -> None:
        self.port = port
        self.process: trio.Process | None = None

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "triows", "--port", str(self.port), "--log-level", "warning"]
        )
        with trio.fail_after(20):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await self.process.wait()
            if self.process.returncode is None:
                await self.kill()


@asynccontextmanager
async def running_server() -> AsyncIterator[ServerProcess]:
    server = ServerProcess(free_port())
    await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()


class TcpCutter:
    def __init__(self, port: int) -> None:
        self.port = port
        self.current: trio.SocketStream | None = None

    async def open(self) -> trio.abc.Stream:
        self.current = await trio.open_tcp_stream("127.0.0.1", self.port)
        return self.current

    async def cut(self) -> None:
        if self.current is not None:
            await trio.aclose_forcefully(self.current)


async def gather(subscription: wsclient.Subscription, until: Any, limit: float) -> list[Any]:
    events: list[Any] = []
    with trio.fail_after(limit):
        async for event in subscription:
            events.append(event)
            if until(events):
                return events
    raise AssertionError(f"subscription ended: {events[-3:]}")


async def test_stream_survives_connection_cuts() -> None:
    async with running_server() as server:
        url = f"ws://127.0.0.1:{server.port}/"
        cutter = TcpCutter(server.port)
        async with (
            wsclient.connect(
                url, open_stream=cutter.open, backoff_base=0.05, backoff_cap=0.2
            ) as reader,
            wsclient.connect(url) as writer,
        ):
            await reader.wait_open()
            await writer.wait_open()
            subscription = await reader.subscribe("feed")
            async with trio.open_nursery() as nursery:

                async def publish() -> None:
                    for n in range(300):
                        await writer.publish("feed", n)
                        if n % 60 == 30:
                            await cutter.cut()
                        await trio.sleep(0.002)

                nursery.start_soon(publish)
                events = await gather(
                    subscription,
                    lambda e: isinstance(e[-1], wsclient.Message) and e[-1].seq == 300,
                    60,
                )
            assert [e.seq for e in events] == list(range(1, 301))
            assert [e.data for e in events] == list(range(300))
            assert reader.connects >= 5


async def test_server_restart_is_reported_as_an_epoch_gap() -> None:
    async with running_server() as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with wsclient.connect(url, backoff_base=0.05, backoff_cap=0.3) as reader:
            await reader.wait_open()
            subscription = await reader.subscribe("feed")
            async with wsclient.connect(url) as writer:
                await writer.wait_open()
                for n in range(5):
                    await writer.publish("feed", n)
            events = await gather(subscription, lambda e: len(e) == 5, 20)
            assert [e.seq for e in events] == [1, 2, 3, 4, 5]

            await server.kill()  # SIGKILL: no goodbye, history gone
            with trio.fail_after(20):
                await reader.state.wait_value(wsclient.ClientState.RECONNECTING)
            await server.start()
            async with wsclient.connect(url) as writer:
                await writer.wait_open()
                with trio.fail_after(20):
                    await reader.wait_open()
                await trio.sleep(0.2)  # let the resubscribe land before publishing
                await writer.publish("feed", "after")
            events = await gather(subscription, lambda e: isinstance(e[-1], wsclient.Message), 20)
            gap, message = events[0], events[-1]
            assert isinstance(gap, wsclient.Gap)
            assert (gap.first, gap.last, gap.reason) == (None, None, "epoch changed")
            assert message.data == "after"
