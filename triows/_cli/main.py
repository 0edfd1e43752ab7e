"""``python -m triows``: flags (or ``TRIOWS_*`` variables) -> Config -> serve until a signal.

Every bad value ends the process with one line on stderr and exit code 2 (``options``): an
operator reading a service log should see what to fix, not a traceback. The first
SIGINT/SIGTERM shuts down gracefully within ``--shutdown-timeout``; a second one stops at
once. ``--workers N`` hands over to the supervisor (``workers``), imported only then.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from .._config import Config
from .._server.server import Server, serve
from .env import STATS_DIR_ENV, SUPERVISOR_ENV, WORKER_ENV
from .errors import cannot_listen
from .options import given, parse_config
from .process_exit import wait_exit

log = logging.getLogger("triows")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


async def watch_supervisor(supervisor: int) -> None:
    """In a worker: SIGTERM ourselves (hence a graceful drain) once the supervisor is gone,
    however it died, so that no worker outlives it.

    Not ``PR_SET_PDEATHSIG``: Linux sends that signal when the *thread* that forked the
    child exits, and trio starts processes from its worker threads, which end when idle, so
    every worker would be stopped some seconds after it started. A pidfd (Linux 5.3) becomes
    readable when the process exits; elsewhere the parent pid is checked once a second.
    """
    await wait_exit(supervisor, lambda: os.getppid() != supervisor, every=1.0)
    log.warning("the supervisor (pid %d) is gone: draining", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


def configure_logging(level: str, fmt: str, worker: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        where = f" [worker {worker}]" if worker is not None else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def run(config: Config, *, worker: bool = False) -> None:
    """Serve until SIGINT/SIGTERM, then drain gracefully; a second signal stops at once.

    A ``--workers`` worker drains on every signal and never stops at once: systemd sends
    SIGTERM to every process of the unit and the supervisor forwards its own, so a worker
    gets two for one stop. The supervisor kills workers itself when it must stop at once.
    """
    supervisor = os.environ.get(SUPERVISOR_ENV)
    stats_dir = os.environ.get(STATS_DIR_ENV)
    if worker and stats_dir is not None:
        config = attrs.evolve(config, shared_stats_dir=stats_dir)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            if worker and supervisor is not None:
                nursery.start_soon(watch_supervisor, int(supervisor))
            server: Server = await nursery.start(serve, config)
            async for signum in signals:
                log.info(
                    "received %s: shutting down (again to stop at once)",
                    signal.Signals(signum).name,
                )
                break

            async def stop_on_second_signal() -> None:
                async for signum in signals:
                    if worker:
                        log.info("received %s again: still draining", signal.Signals(signum).name)
                        continue
                    log.warning("second signal: stopping now")
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_second_signal)
            await server.aclose()
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["top"]:
        from .._ops.top import main as top

        return top(args[1:])
    options = parse_config(args, dict(os.environ))
    config = options.config
    configure_logging(options.log_level, options.log_format, os.environ.get(WORKER_ENV))
    if os.environ.get(WORKER_ENV) is None:  # the supervisor said it already
        for warning in options.warnings:
            log.warning("%s", warning)
    raise_fd_limit(config.max_connections)
    tune_gc(options.gc_threshold)
    if options.workers > 1:
        # Here, not at the top: a single process has no use for the supervisor.
        from .workers import supervise_workers

        asked = given(args, dict(os.environ), "--workers") or str(options.workers)
        return supervise_workers(args, options.workers, config, asked=asked)
    failure: BaseException | None = None
    try:
        trio.run(functools.partial(run, config, worker=os.environ.get(WORKER_ENV) is not None))
    except* OSError as group:
        failure = group.exceptions[0]
    if failure is not None:
        print(cannot_listen(config, failure), file=sys.stderr)
        return 1
    return 0


def tune_gc(threshold: int) -> None:
    """Let the young generation grow to ``threshold`` objects before a collection (0: leave
    Python's 700).

    Every waiting reader holds a few new objects (its coroutines, trio's wait record and
    abort closure) for as long as its client is quiet. With thousands of connections each
    publishing a few times a second, Python's default collected the young generation a
    hundred times a second, found those waits still alive, promoted them, and so ran a full
    collection of the whole heap (every connection's tasks, scopes and frames: 60-90 ms) about
    once a second, for nothing: those objects die by reference counting when the wait ends.
    A larger threshold collects the young generation when most of them have already gone.
    Cyclic garbage is still collected, a little later (docs/design.md, "Small rooms: the
    delivery path, live")."""
    if threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(threshold, middle, old)


#: File descriptors a process needs besides its connections (listeners, epoll, Redis, logs).
FD_MARGIN = 64


def raise_fd_limit(max_connections: int) -> None:
    """Take the soft open-file limit up to the hard one (every connection is a descriptor;
    distributions often start processes at 1024), and say so when even that cannot hold
    ``max_connections``: the kernel would then refuse accepts long before the server does."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < max_connections + FD_MARGIN:
        log.warning(
            "the open-file limit (%d) is below --max-connections (%d): raise it "
            "(ulimit -n, LimitNOFILE= in systemd) or run --workers, each worker has its own",
            soft,
            max_connections,
        )
