"""``python -m triows``: flags (or ``TRIOWS_*`` variables) -> Config -> serve until a signal.

Every bad value ends the process with one line on stderr and exit code 2: an operator reading
a service log should see what to fix, not a traceback. The first SIGINT/SIGTERM shuts down
gracefully within ``--shutdown-timeout``; a second one stops at once.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import attrs
import trio

from .._config import Config
from .._core.names import ChannelNameError
from .._core.outbox import SlowConsumerPolicy
from .._server.server import Server, serve
from .env import INTERNAL_ENV, STATS_DIR_ENV, SUPERVISOR_ENV, WORKER_ENV, env_name
from .errors import cannot_listen

log = logging.getLogger("triows")

LOG_LEVELS = ("debug", "info", "warning", "error")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: str, minimum: float, *, integer: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected {kind} of at least {minimum:g}, got {text!r}"
            )
        return value

    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def _port(text: str) -> int:
    value = int(_number("an integer", 0, integer=True)(text))
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port must be at most 65535, got {text!r}")
    return value


def _channel_policy(text: str) -> tuple[str, SlowConsumerPolicy]:
    pattern, sep, policy = text.rpartition("=")
    choices = ", ".join(p.value for p in SlowConsumerPolicy)
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=POLICY, got {text!r}")
    try:
        return pattern, SlowConsumerPolicy(policy)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"policy must be one of {choices}, got {policy!r}"
        ) from None


def _slow_consumer(text: str) -> SlowConsumerPolicy:
    try:
        return SlowConsumerPolicy(text)
    except ValueError:
        choices = ", ".join(p.value for p in SlowConsumerPolicy)
        raise argparse.ArgumentTypeError(f"must be one of {choices}, got {text!r}") from None


def _message_size(text: str) -> int:
    value = _bytes(text)
    if value < 2048:
        raise argparse.ArgumentTypeError(f"expected at least 2048 bytes (2KiB), got {text!r}")
    return value


def _workers(text: str) -> int:
    if text == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    return int(_number("an integer or 'auto'", 1, integer=True)(text))


def _yes_no(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("yes", "true", "1", "on"):
        return True
    if lowered in ("no", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def _channel_history(text: str) -> tuple[str, int, float]:
    pattern, sep, bounds = text.rpartition("=")
    size, colon, ttl = bounds.partition(":")
    if not sep or not pattern or not colon:
        raise argparse.ArgumentTypeError(f"expected PATTERN=SIZE:TTL, got {text!r}")
    try:
        return pattern, int(size), float(ttl)
    except ValueError:
        raise argparse.ArgumentTypeError(f"SIZE and TTL must be numbers, got {bounds!r}") from None


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _bytes(text: str) -> int:
    """``1048576``, ``512KiB``, ``64M``, ``2GiB`` (binary units)."""
    number = text.strip()
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ")
    unit = number[len(digits) :].strip().lower().removesuffix("b").removesuffix("i")
    if not digits or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size in bytes such as 1048576, 512KiB, 64MiB or 2GiB, got {text!r}"
        )
    try:
        value = float(digits) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in bytes, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative, got {text!r}")
    return int(value)


_INT = _number("an integer", 1, integer=True)
_COUNT = _number("an integer", 0, integer=True)
_SECONDS = _number("a number of seconds", 0, integer=False)
_RATE = _number("a number per second", 0, integer=False)
_POSITIVE_SECONDS = _number("a positive number of seconds", 1e-3, integer=False)

#: (flag, type, config field or None, help). Defaults come from Config, so they cannot drift.
_OPTIONS: tuple[tuple[str, Callable[[str], Any] | None, str | None, str], ...] = (
    ("--host", str, "host", "address to listen on"),
    ("--port", _port, "port", "TCP port (0 picks a free one)"),
    ("--path", str, "path", "serve only this URL path (default: any path)"),
    (
        "--jwt-secret",
        str,
        "jwt_secret",
        "HS256 secret; when set, clients need a token (Authorization: Bearer or ?token=)",
    ),
    ("--jwt-audience", str, "jwt_audience", "tokens must carry this 'aud' claim"),
    ("--jwt-issuer", str, "jwt_issuer", "tokens must carry this 'iss' claim"),
    ("--jwt-leeway", _SECONDS, "jwt_leeway", "seconds of clock skew tolerated on exp, nbf, iat"),
    (
        "--jwt-require-exp",
        _yes_no,
        "jwt_require_exp",
        "yes: refuse tokens without an 'exp' claim (otherwise valid forever)",
    ),
    (
        "--jwt-max-age",
        _SECONDS,
        "jwt_max_age",
        "refuse tokens issued ('iat') longer ago than this many seconds, or without 'iat' "
        "(0: no limit)",
    ),
    (
        "--allow-origin",
        str,
        "allow_origins",
        "allowed browser Origin, repeatable (env: comma-separated); default: any",
    ),
    ("--max-connections", _INT, "max_connections", "connections beyond this get HTTP 503"),
    (
        "--max-connections-per-ip",
        _COUNT,
        "max_connections_per_ip",
        "connections from one address (more: HTTP 429; 0: no limit)",
    ),
    (
        "--max-connections-per-user",
        _COUNT,
        "max_connections_per_user",
        "connections of one authenticated user (more: HTTP 429; 0: no limit)",
    ),
    ("--publish-rate", _RATE, "publish_rate", "publishes/s per connection (0: no limit)"),
    ("--user-publish-rate", _RATE, "user_publish_rate", "publishes/s per user (0: none)"),
    ("--subscribe-rate", _RATE, "subscribe_rate", "subscribes/s per connection (0: none)"),
    (
        "--user-subscribe-rate",
        _RATE,
        "user_subscribe_rate",
        "subscribes/s per user (0: no limit)",
    ),
    (
        "--max-pending",
        _INT,
        "max_pending",
        "connections accepted that have not sent their HTTP request yet (more: closed at once)",
    ),
    (
        "--max-pending-per-ip",
        _COUNT,
        "max_pending_per_ip",
        "the same, from one client address (0: no limit; a trusted proxy counts in the total only)",
    ),
    (
        "--max-http-requests",
        _INT,
        "max_http_requests",
        "plain HTTP requests answered at once (more: 503; /health and /ready are not counted)",
    ),
    (
        "--max-http-requests-per-ip",
        _COUNT,
        "max_http_requests_per_ip",
        "plain HTTP requests at once from one client address (more: 429; 0: no limit)",
    ),
    (
        "--max-message-size",
        _message_size,
        "max_message_size",
        "largest incoming message, e.g. 64KiB (bigger: close 1009; at least 2KiB)",
    ),
    (
        "--inbox-size",
        _INT,
        "inbox_size",
        "requests a connection may have queued behind one that waits (more: error 429)",
    ),
    (
        "--inbox-max-bytes",
        _bytes,
        "inbox_max_bytes",
        "bytes of requests a connection may have queued (e.g. 1MiB)",
    ),
    ("--max-subscriptions", _INT, "max_subscriptions", "channels per connection (more: 429)"),
    ("--heartbeat-interval", _POSITIVE_SECONDS, "heartbeat_interval", "seconds between pings"),
    (
        "--heartbeat-timeout",
        _POSITIVE_SECONDS,
        "heartbeat_timeout",
        "seconds to wait for a pong before closing with 1011",
    ),
    (
        "--idle-timeout",
        _SECONDS,
        "idle_timeout",
        "close connections with no subscription that sent nothing for this long (0: never)",
    ),
    (
        "--outbox-size",
        _INT,
        "outbox_size",
        "frames a subscriber may have queued before its slow-consumer policy applies",
    ),
    (
        "--outbox-max-bytes",
        _bytes,
        "outbox_max_bytes",
        "bytes a subscriber may have queued (e.g. 1MiB); full at this or --outbox-size",
    ),
    (
        "--slow-consumer",
        _slow_consumer,
        "slow_consumer",
        "what happens when a subscriber's outbox is full",
    ),
    (
        "--channel-policy",
        _channel_policy,
        "channel_policies",
        "PATTERN=POLICY giving matching channels their own policy, repeatable; first match wins",
    ),
    (
        "--history-size",
        _COUNT,
        "history_size",
        "messages kept per channel for resume (0: no history)",
    ),
    ("--history-ttl", _SECONDS, "history_ttl", "seconds a message stays in history (0: none)"),
    ("--history-max-bytes", _bytes, "history_max_bytes", "bytes of history per channel"),
    (
        "--history-total-bytes",
        _bytes,
        "history_total_bytes",
        "bytes of history of all channels together (the least recently published lose first)",
    ),
    (
        "--channel-history",
        _channel_history,
        "channel_history",
        "PATTERN=SIZE:TTL giving matching channels their own history, repeatable",
    ),
    (
        "--dedupe-size",
        _COUNT,
        "dedupe_size",
        "publish ids remembered per user for dedupe (0: no dedupe)",
    ),
    ("--dedupe-ttl", _SECONDS, "dedupe_ttl", "seconds a publish id is remembered"),
    ("--dedupe-max-entries", _INT, "dedupe_max_entries", "publish ids remembered in all"),
    (
        "--memory-limit",
        _bytes,
        "memory_limit",
        "resident memory (e.g. 2GiB) above which new connections get HTTP 503 (0: no limit)",
    ),
    (
        "--block-timeout",
        _POSITIVE_SECONDS,
        "block_timeout",
        "seconds a 'block' publisher waits for one subscriber before disconnecting it",
    ),
    (
        "--shutdown-timeout",
        _SECONDS,
        "shutdown_timeout",
        "seconds to drain and close connections on shutdown",
    ),
    (
        "--redis-url",
        str,
        "redis_url",
        "redis://host:port/db: become one node of a cluster sharing this Redis "
        "(default: in-process broker, one node)",
    ),
    (
        "--redis-buffer-size",
        _INT,
        "redis_buffer_size",
        "publications held while Redis is unreachable (more: error 503)",
    ),
    (
        "--redis-retention",
        _SECONDS,
        "redis_retention",
        "seconds a message stays in its channel's Redis stream beyond the history size, "
        "for nodes catching up after their link to Redis broke",
    ),
    (
        "--presence",
        str,
        "presence",
        "channel pattern with presence (members, join/leave), repeatable",
    ),
    (
        "--presence-counts",
        str,
        "presence_counts",
        "channel pattern with presence counts only (no member list, no join/leave), repeatable",
    ),
    (
        "--presence-max-members",
        _INT,
        "presence_max_members",
        "above this many members a presence channel answers counts only",
    ),
    (
        "--presence-ttl",
        _POSITIVE_SECONDS,
        "presence_ttl",
        "with Redis: seconds a crashed node's members stay listed",
    ),
    (
        "--demo",
        _yes_no,
        "demo",
        "yes: serve a chat demo page at /demo (try it with --presence '*')",
    ),
    (
        "--api-key",
        str,
        "api_key",
        "key of the HTTP publish API (X-API-Key header); unset: no API (404)",
    ),
    (
        "--trusted-proxy",
        str,
        "trusted_proxies",
        "reverse proxy address or CIDR whose X-Forwarded-For gives the client address, "
        "repeatable (env: comma-separated)",
    ),
    ("--metrics", _yes_no, "metrics", "latency histograms and GET /metrics"),
    (
        "--monitor-interval",
        _POSITIVE_SECONDS,
        "monitor_interval",
        "seconds between the monitor's samples (GET /stats, triows top)",
    ),
    (
        "--monitor-history",
        _POSITIVE_SECONDS,
        "monitor_history",
        "seconds of monitor samples kept",
    ),
    (
        "--warn-loop-lag",
        _SECONDS,
        "warn_loop_lag",
        "log a warning when the event loop lags by more than this (0: never)",
    ),
    (
        "--warn-memory",
        _bytes,
        "warn_memory",
        "log a warning when resident memory is over this, e.g. 1GiB (0: never)",
    ),
    (
        "--workers",
        _workers,
        None,
        "worker processes sharing the port, or 'auto' for one per CPU; more than 1 needs "
        "--redis-url",
    ),
    (
        "--reuse-port",
        _yes_no,
        "reuse_port",
        "yes: let other processes listen on the same port (SO_REUSEPORT)",
    ),
    ("--log-level", str.lower, None, "log verbosity"),
    ("--log-format", str, None, "one line of text or one JSON object per record"),
)
_REPEATABLE = {
    "--allow-origin",
    "--channel-policy",
    "--channel-history",
    "--trusted-proxy",
    "--presence",
    "--presence-counts",
}
_SWITCHES = {"--demo", "--jwt-require-exp"}
_CLI_DEFAULTS: dict[str, Any] = {"--log-level": "info", "--log-format": "text", "--workers": 1}
_CHOICES = {"--log-level": LOG_LEVELS, "--log-format": ("text", "json")}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="triows",
        allow_abbrev=False,  # a supervisor rewrites flags for its workers: no abbreviations
        description="Real-time WebSocket pub/sub server (protocol v1). Every flag can also be "
        "set with a TRIOWS_<NAME> environment variable, e.g. TRIOWS_PORT=9000.",
    )
    defaults = Config()
    for flag, kind, field, text in _OPTIONS:
        default = _CLI_DEFAULTS.get(flag) if field is None else getattr(defaults, field)
        if field == "jwt_secret":
            default = None
        if isinstance(default, SlowConsumerPolicy):
            default = default.value
        if isinstance(default, bool):  # as the flag takes it, not Python's True/False
            default = "yes" if default else "no"
        shown = "" if default in (None, ()) else f" (default: {default})"
        kwargs: dict[str, Any] = {"help": f"{text}{shown} [env {env_name(flag)}]", "type": kind}
        if flag in _CHOICES:
            kwargs["choices"] = _CHOICES[flag]
        if flag == "--slow-consumer":
            kwargs.update(type=str, choices=[p.value for p in SlowConsumerPolicy])
        if flag in _SWITCHES:  # ``--demo`` alone means yes; ``--demo no`` too is accepted
            kwargs.update(nargs="?", const=True)
        if flag in _REPEATABLE:
            kwargs.update(action="append", default=None)
        else:
            kwargs["default"] = default
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--version", action="version", version="triows 0.1.0")
    return parser


@attrs.frozen
class Options:
    config: Config
    log_level: str
    log_format: str
    workers: int
    #: One line per ``TRIOWS_*`` variable that no flag reads (logged once logging is set up).
    warnings: tuple[str, ...] = ()


def unknown_variables(environ: dict[str, str]) -> list[str]:
    """A warning for each ``TRIOWS_*`` variable no flag reads, with the closest name: a typo
    (``TRIOWS_HIST_SIZE``) must not be silently ignored."""
    known = [env_name(flag) for flag, *_ in _OPTIONS]
    warnings = []
    for name in sorted(environ):
        if name.startswith("TRIOWS_") and name not in known and name not in INTERNAL_ENV:
            # Compared without the common prefix, which would make everything look close.
            close = difflib.get_close_matches(name[7:], [k[7:] for k in known], n=1, cutoff=0.6)
            hint = f"; did you mean TRIOWS_{close[0]}?" if close else ""
            warnings.append(f"ignoring unknown environment variable {name}{hint}")
    return warnings


def parse_config(argv: Sequence[str], environ: dict[str, str]) -> Options:
    """Flags win over environment variables, which win over Config's defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for flag, kind, field, _ in _OPTIONS:
        dest = flag[2:].replace("-", "_")
        given = getattr(args, dest)
        from_flag = any(a == flag or a.startswith(flag + "=") for a in argv)
        env = environ.get(env_name(flag))
        if not from_flag and env is not None:
            given = _from_env(parser, flag, kind, env)
        if flag in _CHOICES and given not in _CHOICES[flag]:
            parser.error(f"{env_name(flag)}: must be one of {', '.join(_CHOICES[flag])}")
        values[field or dest] = given
    log_level, log_format = values.pop("log_level"), values.pop("log_format")
    workers = int(values.pop("workers"))
    config_values = {k: v for k, v in values.items() if v is not None}
    try:
        config = Config(**config_values)
    except (ValueError, TypeError, ChannelNameError) as exc:
        parser.error(_flag_names(str(exc)))
    if workers > 1 and config.redis_url is None:
        asked = "auto" if _given(argv, environ, "--workers") == "auto" else str(workers)
        count = f" ({workers} processes on this machine)" if asked == "auto" else ""
        parser.error(
            f"--workers {asked}{count} needs --redis-url: worker processes share channels, "
            "numbering and history only through Redis"
        )
    return Options(config, log_level, log_format, workers, tuple(unknown_variables(environ)))


def _given(argv: Sequence[str], environ: dict[str, str], flag: str) -> str | None:
    """What the user wrote for ``flag`` (the last flag given, else its variable)."""
    found = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            found = argv[index + 1]
        elif arg.startswith(flag + "="):
            found = arg.partition("=")[2]
    return found if found is not None else environ.get(env_name(flag))


def _flag_names(message: str) -> str:
    """``Config``'s messages name fields (``jwt_secret must be ...``); a CLI user typed a flag."""
    for flag, _, field, _ in _OPTIONS:
        if field is not None and message.startswith((f"{field} ", f"{field}:")):
            return f"{flag} ({env_name(flag)}){message[len(field) :]}"
    return message


def _from_env(
    parser: argparse.ArgumentParser, flag: str, kind: Callable[[str], Any] | None, text: str
) -> Any:
    convert = kind or str
    parts = [p.strip() for p in text.split(",") if p.strip()] if flag in _REPEATABLE else [text]
    try:
        converted = [convert(p) for p in parts]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(f"{env_name(flag)}: {exc}")
    return converted if flag in _REPEATABLE else converted[0]


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
    try:
        pidfd = os.pidfd_open(supervisor)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
    else:
        while os.getppid() == supervisor:  # noqa: ASYNC110 - a parent pid has no event
            await trio.sleep(1)
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
    if options.workers > 1:
        # Here, not at the top: a single process has no use for the supervisor.
        from .workers import supervise_workers

        return supervise_workers(args, options.workers, config)
    failure: BaseException | None = None
    try:
        trio.run(functools.partial(run, config, worker=os.environ.get(WORKER_ENV) is not None))
    except* OSError as group:
        failure = group.exceptions[0]
    if failure is not None:
        print(cannot_listen(config, failure), file=sys.stderr)
        return 1
    return 0


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
