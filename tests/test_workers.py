"""``python -m triows --workers 2``: shared port, restart of a killed worker, no loss."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

from triows import client as wsclient

from .conftest import SECRET, make_token
from .redisserver import RedisServer, free_port
from .test_client_real import gather

pytestmark = pytest.mark.real_socket

LISTENING = re.compile(r"\[worker (\d+)\].*server id: (\w+), pid: (\d+)")


async def kill_if_running(process: trio.Process) -> None:
    """A test that failed half-way must not leave its supervisor (and workers) behind."""
    if process.returncode is None:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


class Supervisor:
    """The supervisor process and what its workers logged."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.changed = trio.Event()

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        buffered = b""
        async for chunk in self.process.stderr:
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            self.lines += [line.decode(errors="replace") for line in lines]
            self.changed.set()

    async def wait_for(self, pattern: str, count: int = 1, timeout: float = 30) -> list[str]:
        with trio.fail_after(timeout):
            while True:
                found = [line for line in self.lines if re.search(pattern, line)]
                if len(found) >= count:
                    return found
                self.changed = trio.Event()
                await self.changed.wait()

    def workers(self) -> dict[str, int]:
        """server id -> pid of every worker that said it is listening."""
        return {
            match[2]: int(match[3])
            for match in map(LISTENING.search, self.lines)
            if match is not None
        }


async def test_a_killed_worker_is_restarted_and_its_clients_resume(
    redis_server: RedisServer,
) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "triows", "--workers", "2", "--port", str(port)]
    command += ["--redis-url", redis_server.url, "--jwt-secret", SECRET]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    supervisor = Supervisor(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.read_log)
            await supervisor.wait_for("triows listening", count=2)
            assert len(supervisor.workers()) == 2
            channel = f"feed-{os.getpid()}-{port}"
            events: list[Any] = []
            async with (
                wsclient.connect(
                    url, token=make_token("reader"), backoff_base=0.05, backoff_cap=0.3
                ) as reader,
                wsclient.connect(
                    url, token=make_token("writer"), backoff_base=0.05, backoff_cap=0.3
                ) as writer,
            ):
                await reader.wait_open()
                await writer.wait_open()
                subscription = await reader.subscribe(channel)
                victim = supervisor.workers()[reader.server_id or ""]

                async def publish() -> None:
                    for n in range(200):
                        await writer.publish(channel, n)
                        if n == 60:
                            os.kill(victim, signal.SIGKILL)
                        await trio.sleep(0.005)

                nursery.start_soon(publish)
                events = await gather(
                    subscription,
                    lambda e: isinstance(e[-1], wsclient.Message) and e[-1].data == 199,
                    60,
                )
            # The events that are not messages themselves (a Gap says which seqs and why),
            # not a repr of 200 events that pytest cuts before them.
            others = [(i, e) for i, e in enumerate(events) if not isinstance(e, wsclient.Message)]
            assert not others, f"{others} among {len(events)} events ({reader.connects} connects)"
            assert [e.data for e in events] == list(range(200))  # once each, in order
            assert [e.seq for e in events] == list(range(1, 201))
            assert reader.connects >= 2
            await supervisor.wait_for("exited unexpectedly .killed by SIGKILL.; restarting")
            await supervisor.wait_for("triows listening", count=3)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await process.wait() == 0
            await supervisor.wait_for("all workers stopped")
            nursery.cancel_scope.cancel()
    finally:
        await kill_if_running(process)


def test_supervisor_rewrites_only_its_own_flags() -> None:
    from triows._cli.workers import worker_arguments

    argv = ["--port", "0", "--workers=2", "--history-size", "5", "--reuse-port", "no", "-h"]
    assert worker_arguments(argv) == ["--history-size", "5", "-h"]


def test_secrets_reach_workers_through_their_environment_not_their_command_line() -> None:
    from triows._cli.options import parse_config
    from triows._cli.workers import _Supervisor, worker_arguments

    key, secret = "k" * 20, "s" * 40
    redis = "redis://:hunter2@127.0.0.1:6379/0"
    argv = ["--workers", "2", "--api-key", key, f"--jwt-secret={secret}", "--redis-url", redis]
    options = parse_config(argv, {})
    kept = worker_arguments(argv)
    assert not any(secret_part in " ".join(kept) for secret_part in (key, secret, "hunter2"))
    supervisor = _Supervisor(
        [sys.executable, "-m", "triows", *kept], 2, 9999, options.config, "/tmp/stats"
    )
    env = supervisor.environment(0)
    assert (env["TRIOWS_API_KEY"], env["TRIOWS_JWT_SECRET"], env["TRIOWS_REDIS_URL"]) == (
        key,
        secret,
        redis,
    )
    # What the worker then reads is exactly the supervisor's configuration.
    assert parse_config([*kept, "--workers", "1"], env).config == attrs.evolve(
        options.config, port=9999, reuse_port=True
    )


def test_restart_backoff_grows_while_a_worker_keeps_dying() -> None:
    from triows._cli.workers import restart_delay

    assert [restart_delay(n) for n in range(9)] == [0, 0.5, 1, 2, 4, 8, 16, 30, 30]


async def open_supervisor(redis_url: str, port: int) -> Supervisor:
    """``--workers 2`` in a process group of its own, as a shell starts a foreground job."""
    command = [sys.executable, "-m", "triows", "--workers", "2", "--port", str(port)]
    command += ["--redis-url", redis_url]
    process = await trio.lowlevel.open_process(
        command, stderr=subprocess.PIPE, start_new_session=True
    )
    return Supervisor(process)


async def closed_with(url: str) -> int | None:
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.get_message()  # welcome
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason.code if closed.reason is not None else None


@pytest.mark.parametrize("how", ["terminal", "systemd"])
async def test_one_stop_signal_is_one_graceful_drain(redis_server: RedisServer, how: str) -> None:
    """Ctrl-C signals the whole foreground process group; systemd signals every process of
    the unit. Either way each client gets 1001, not a dropped connection."""
    port = free_port()
    supervisor = await open_supervisor(redis_server.url, port)
    process = supervisor.process
    codes: list[int | None] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.read_log)
            await supervisor.wait_for("triows listening", count=2)

            async def client() -> None:
                codes.append(await closed_with(f"ws://127.0.0.1:{port}/"))

            for _ in range(6):  # the kernel spreads them over both workers
                nursery.start_soon(client)
            await trio.sleep(0.5)
            if how == "terminal":
                os.killpg(process.pid, signal.SIGINT)
            else:
                for pid in [process.pid, *supervisor.workers().values()]:
                    os.kill(pid, signal.SIGTERM)
            with trio.fail_after(30):
                assert await process.wait() == 0
            nursery.cancel_scope.cancel()
    finally:
        await kill_if_running(process)
    assert codes == [1001] * 6
    assert not [line for line in supervisor.lines if "stopping now" in line]


@asynccontextmanager
async def two_workers_listening(redis_url: str) -> AsyncIterator[tuple[Supervisor, list[int]]]:
    """A supervisor whose two workers listen; yields it and the workers' pids."""
    supervisor = await open_supervisor(redis_url, free_port())
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.read_log)
            await supervisor.wait_for("triows listening", count=2)
            yield supervisor, list(supervisor.workers().values())
            nursery.cancel_scope.cancel()
    finally:
        await kill_if_running(supervisor.process)


async def test_workers_do_not_outlive_a_killed_supervisor(redis_server: RedisServer) -> None:
    async with two_workers_listening(redis_server.url) as (supervisor, workers):
        supervisor.process.kill()
        await supervisor.process.wait()
        with trio.fail_after(20):
            # Not our children: their exit cannot be awaited, only polled.
            while any(_alive(pid) for pid in workers):  # noqa: ASYNC110
                await trio.sleep(0.1)


async def test_workers_outlive_the_thread_that_started_them(redis_server: RedisServer) -> None:
    """trio starts processes from a worker thread that ends after 10 idle seconds; a worker
    must not take that for its supervisor's death (PR_SET_PDEATHSIG did: it is per thread)."""
    from trio._core._thread_cache import IDLE_TIMEOUT

    async with two_workers_listening(redis_server.url) as (supervisor, workers):
        await trio.sleep(IDLE_TIMEOUT + 3)
        assert all(_alive(pid) for pid in workers)
        assert not [line for line in supervisor.lines if "exited unexpectedly" in line]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_one_scrape_shows_every_worker(redis_server: RedisServer) -> None:
    """The kernel spreads connections and scrapes over the workers; any scrape adds them all."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    async with two_workers_listening(redis_server.url) as (supervisor, _):
        port = int(re.findall(r"ws://127\.0\.0\.1:(\d+)/", "\n".join(supervisor.lines))[0])
        url = f"ws://127.0.0.1:{port}/"
        async with trio.open_nursery() as nursery:
            opened = trio.Semaphore(0)

            async def hold() -> None:
                async with trio_websocket.open_websocket_url(url) as ws:
                    await ws.get_message()
                    opened.release()
                    await trio.sleep_forever()

            for _ in range(8):
                nursery.start_soon(hold)
            for _ in range(8):
                await opened.acquire()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                with trio.fail_after(20):
                    while True:
                        text = (await http.get("/metrics")).text
                        families = {f.name: f for f in text_string_to_metric_families(text)}
                        stats = (await http.get("/stats")).json()
                        if (
                            families["triows_connections"].samples[0].value == 8
                            and stats["total"]["workers"] == 2
                        ):
                            break
                        await trio.sleep(0.2)
            assert stats["total"]["connections"] == 8
            assert {w["worker"] for w in stats["workers"]} == {"0", "1"}
            assert families["triows_broker_up"].samples[0].value == 1
            nursery.cancel_scope.cancel()
