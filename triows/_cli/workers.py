"""``--workers N``: one supervisor process, N worker processes sharing the port.

Python runs one core per process, so a machine is used by several ``python -m triows``
processes. The supervisor:

- reserves the port (``SO_REUSEPORT``, bound but not listening, so ``--port 0`` picks one port
  for all and a port taken by another program fails at once with exit 1); with a private
  Redis it claims the address too: a second such supervisor on it fails as well, instead of
  sharing the port with workers whose channels it does not share;
- starts each worker as ``python -m triows`` with the same flags (``--port`` fixed,
  ``--reuse-port yes``, ``--workers 1``); the kernel spreads connections across them, and
  they share channels through Redis: ``--redis-url``, or without it a private server that
  the supervisor starts, owns and stops (:mod:`triows._cli.private_redis`);
- restarts a worker that exits without being asked to, after a backoff that grows with
  repeated quick failures, and logs each exit and restart;
- forwards SIGINT/SIGTERM: the first asks every worker to shut down gracefully; a second one
  kills them (SIGKILL) at once; it exits when all workers have. Workers run in their own
  session, so a terminal's Ctrl-C reaches only the supervisor, and a worker treats any number
  of signals as one graceful drain (systemd signals every process of the unit, and the
  supervisor forwards its own): one stop is always one drain. A worker whose supervisor dies
  sees it go (a pidfd, see ``_cli.main.watch_supervisor``) and drains too.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence

import attrs
import trio

from .._config import Config
from .._core.backoff import exponential
from .._net.listen import reserve_port
from .._ops import shared_stats as _shared_stats
from .env import STATS_DIR_ENV, SUPERVISOR_ENV, WORKER_ENV
from .errors import cannot_listen
from .private_redis import CannotStart, NoServer, PrivateRedis, find_server

log = logging.getLogger("triows.workers")

#: A worker that ran at least this long before dying starts again without delay.
HEALTHY_AFTER = 30.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
#: Flags the supervisor sets itself, with and without a value.
_OWN_FLAGS = ("--port", "--workers", "--reuse-port")
#: Flags whose values are secrets: a worker gets them through its environment, never on its
#: command line, which every user of the machine can read (``ps``, ``/proc/<pid>/cmdline``).
SECRET_FLAGS = {
    "--api-key": ("api_key", "TRIOWS_API_KEY"),
    "--jwt-secret": ("jwt_secret", "TRIOWS_JWT_SECRET"),
    "--redis-url": ("redis_url", "TRIOWS_REDIS_URL"),  # may carry a password
}


def worker_arguments(argv: Sequence[str]) -> list[str]:
    """``argv`` without the flags the supervisor decides for its workers, and without
    secrets (see :func:`secret_environment`)."""
    dropped = (*_OWN_FLAGS, *SECRET_FLAGS)
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in dropped:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in dropped)):
            kept.append(arg)
    return kept


def secret_environment(config: Config) -> dict[str, str]:
    """The secrets a worker needs, as ``TRIOWS_*`` variables (from flags or variables alike:
    the supervisor's resolved configuration)."""
    found = {}
    for field, variable in SECRET_FLAGS.values():
        value = getattr(config, field)
        if value is not None:
            found[variable] = str(value)
    return found


def supervise_workers(
    argv: Sequence[str],
    count: int,
    config: Config,
    environ: Mapping[str, str] | None = None,
    asked: str | None = None,
) -> int:
    binary = None
    if config.redis_url is None:  # the workers share a private server (private_redis)
        try:
            binary = find_server(os.environ if environ is None else environ, asked or str(count))
        except NoServer as exc:
            print(f"triows: error: {exc}", file=sys.stderr)
            return 2
    try:
        # Claimed when the workers share a private Redis: a second such supervisor on this
        # address would split clients between two servers that share nothing.
        reserved, port = reserve_port(config.host, config.port, claim=binary is not None)
    except OSError as exc:
        print(cannot_listen(config, exc), file=sys.stderr)
        return 1
    private = None
    try:
        command = [sys.executable, "-m", "triows", *worker_arguments(argv)]
        private = None if binary is None else PrivateRedis(binary)
        # Where workers share their figures, so that /metrics and /stats on any of them show
        # the whole server (triows._ops.shared_stats).
        with tempfile.TemporaryDirectory(prefix="triows-stats-") as stats_dir:
            supervisor = _Supervisor(command, count, port, config, stats_dir, private)
            failure: BaseException | None = None
            try:
                return trio.run(supervisor.run)
            except* CannotStart as group:
                failure = group.exceptions[0]
            print(f"triows: error: {failure}", file=sys.stderr)
            return 1
    finally:
        for sock in reserved:
            sock.close()
        if private is not None:
            private.stop()  # already stopped, unless trio.run failed before it could


class _Supervisor:
    def __init__(
        self,
        command: list[str],
        count: int,
        port: int,
        config: Config,
        stats_dir: str,
        private: PrivateRedis | None = None,
    ) -> None:
        self.private = private
        if private is not None:  # the workers get its URL like any --redis-url: by variable
            config = attrs.evolve(config, redis_url=private.url)
        self.command = command
        self.stats_dir = stats_dir
        self.count = count
        self.port = port
        self.config = config
        self.stopping = False
        self.processes: dict[int, trio.Process] = {}

    def environment(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(secret_environment(self.config))
        env.update(
            {
                "TRIOWS_PORT": str(self.port),
                "TRIOWS_REUSE_PORT": "yes",
                "TRIOWS_WORKERS": "1",
                WORKER_ENV: str(index),
                SUPERVISOR_ENV: str(os.getpid()),
                STATS_DIR_ENV: self.stats_dir,
            }
        )
        return env

    async def run(self) -> int:
        log.info(
            "supervisor (pid %d) starting %d workers on %s:%d",
            os.getpid(),
            self.count,
            self.config.host,
            self.port,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as outer:
                if self.private is not None:  # before the workers, stopped after them
                    await outer.start(self.private.run)
                async with trio.open_nursery() as workers:
                    outer.start_soon(self.forward_signals, signals, workers.cancel_scope)
                    for index in range(self.count):
                        workers.start_soon(self.keep_running, index)
                outer.cancel_scope.cancel()  # every worker is done: stop listening for signals
        log.info("all workers stopped")
        return 0

    async def forward_signals(self, signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
        grace = self.config.shutdown_timeout + 5
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self.stopping:
                log.info("received %s: stopping %d workers gracefully", name, len(self.processes))
                self.stopping = True
                # Bounded: a worker that does not stop in time is killed by cancellation.
                scope.deadline = trio.current_time() + grace
                for process in self.processes.values():
                    if process.returncode is None:
                        process.send_signal(signum)
            else:
                log.warning("received %s again: killing the workers", name)
                for process in self.processes.values():
                    if process.returncode is None:
                        process.kill()

    async def keep_running(self, index: int) -> None:
        failures = 0
        while not self.stopping:
            started = trio.current_time()
            # Own session: signals meant for the supervisor's process group (a terminal's
            # Ctrl-C) reach the workers only through the supervisor, once.
            process = await trio.lowlevel.open_process(
                self.command, env=self.environment(index), start_new_session=True
            )
            self.processes[index] = process
            log.info("worker %d started (pid %d)", index, process.pid)
            try:
                code = await process.wait()
            finally:
                if process.returncode is None:  # the supervisor is being cancelled
                    process.kill()
                    with trio.CancelScope(shield=True):
                        await process.wait()
                del self.processes[index]
                # File work in a thread: a slow disk must not stall the supervisor's loop
                # (it forwards signals); shielded, so that a stopping supervisor still folds
                # the worker's counters into the retired counters.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_shared_stats.remove, self.stats_dir, process.pid)
            if self.stopping:
                log.info("worker %d (pid %d) stopped with exit code %d", index, process.pid, code)
                return
            failures = 0 if trio.current_time() - started >= HEALTHY_AFTER else failures + 1
            delay = restart_delay(failures)
            log.warning(
                "worker %d (pid %d) exited unexpectedly (%s); restarting in %.1fs",
                index,
                process.pid,
                _describe_exit(code),
                delay,
            )
            await trio.sleep(delay)


def restart_delay(quick_failures: int) -> float:
    """No delay after a worker that ran a while; then 0.5 s, doubling up to 30 s while it keeps
    dying within ``HEALTHY_AFTER`` (a crash loop must not spin)."""
    if quick_failures == 0:
        return 0.0
    return exponential(quick_failures - 1, BACKOFF_BASE, BACKOFF_CAP)


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
