"""The CLI's options: one table of flags, each also a ``TRIOWS_*`` variable, -> ``Options``.

The table is the one place a flag is declared: its type, the ``Config`` field it sets (whose
default it shows, so help cannot drift from the code) and its help. Flags win over variables,
which win over ``Config``'s defaults; every bad value ends the process with one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import attrs

from .._config import Config
from .._core.names import ChannelNameError
from .._core.outbox import SlowConsumerPolicy
from .env import INTERNAL_ENV, env_name
from .values import (
    COUNT,
    POSITIVE_INT,
    POSITIVE_SECONDS,
    RATE,
    SECONDS,
    byte_size,
    channel_history,
    channel_policy,
    gc_threshold,
    message_size,
    path_or_off,
    pem_file,
    port,
    slow_consumer,
    worker_count,
    yes_no,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
#: The server process's young-generation threshold (``gc.set_threshold``'s first value);
#: why not Python's 700: docs/design.md, "Small rooms: the delivery path, live".
GC_THRESHOLD = 20_000


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


#: (flag, type, config field or None, help). Defaults come from Config, so they cannot drift.
_OPTIONS: tuple[tuple[str, Callable[[str], Any] | None, str | None, str], ...] = (
    ("--host", str, "host", "address to listen on"),
    ("--port", port, "port", "TCP port (0 picks a free one)"),
    ("--path", str, "path", "serve only this URL path (default: any path)"),
    (
        "--jwt-secret",
        str,
        "jwt_secret",
        "HS256 secret; when set, clients need a token (Authorization: Bearer or ?token=)",
    ),
    ("--jwt-audience", str, "jwt_audience", "tokens must carry this 'aud' claim"),
    ("--jwt-issuer", str, "jwt_issuer", "tokens must carry this 'iss' claim"),
    ("--jwt-leeway", SECONDS, "jwt_leeway", "seconds of clock skew tolerated on exp, nbf, iat"),
    (
        "--jwt-require-exp",
        yes_no,
        "jwt_require_exp",
        "yes: refuse tokens without an 'exp' claim (otherwise valid forever)",
    ),
    (
        "--jwt-max-age",
        SECONDS,
        "jwt_max_age",
        "refuse tokens issued ('iat') longer ago than this many seconds, or without 'iat' "
        "(0: no limit)",
    ),
    (
        "--jwt-public-key",
        pem_file,
        "jwt_public_key",
        "FILE with an identity provider's PEM public key (or certificate): accept the tokens "
        "it signs (RS256, ES256, ...); instead of --jwt-secret",
    ),
    (
        "--jwt-jwks-url",
        str,
        "jwt_jwks_url",
        "an identity provider's key set (JWKS) URL: check each token with the key its 'kid' "
        "names; instead of --jwt-secret or --jwt-public-key",
    ),
    (
        "--jwt-jwks-min-interval",
        POSITIVE_SECONDS,
        "jwt_jwks_min_interval",
        "at most one fetch of the key set per this many seconds (an unknown 'kid' asks for one)",
    ),
    (
        "--jwt-jwks-ttl",
        POSITIVE_SECONDS,
        "jwt_jwks_ttl",
        "seconds the key set is used before it is fetched again",
    ),
    (
        "--jwt-jwks-timeout",
        POSITIVE_SECONDS,
        "jwt_jwks_timeout",
        "seconds one fetch of the key set may take",
    ),
    (
        "--allow-origin",
        str,
        "allow_origins",
        "allowed browser Origin, repeatable (env: comma-separated); default: any",
    ),
    ("--max-connections", POSITIVE_INT, "max_connections", "connections beyond this get HTTP 503"),
    (
        "--max-connections-per-ip",
        COUNT,
        "max_connections_per_ip",
        "connections from one address (more: HTTP 429; 0: no limit)",
    ),
    (
        "--max-connections-per-user",
        COUNT,
        "max_connections_per_user",
        "connections of one authenticated user (more: HTTP 429; 0: no limit)",
    ),
    ("--publish-rate", RATE, "publish_rate", "publishes/s per connection (0: no limit)"),
    ("--user-publish-rate", RATE, "user_publish_rate", "publishes/s per user (0: none)"),
    ("--subscribe-rate", RATE, "subscribe_rate", "subscribes/s per connection (0: none)"),
    (
        "--user-subscribe-rate",
        RATE,
        "user_subscribe_rate",
        "subscribes/s per user (0: no limit)",
    ),
    (
        "--max-pending",
        POSITIVE_INT,
        "max_pending",
        "connections accepted that have not sent their HTTP request yet (more: closed at once)",
    ),
    (
        "--max-pending-per-ip",
        COUNT,
        "max_pending_per_ip",
        "the same, from one client address (0: no limit; a trusted proxy counts in the total only)",
    ),
    (
        "--max-http-requests",
        POSITIVE_INT,
        "max_http_requests",
        "plain HTTP requests answered at once (more: 503; /health and /ready are not counted)",
    ),
    (
        "--max-http-requests-per-ip",
        COUNT,
        "max_http_requests_per_ip",
        "plain HTTP requests at once from one client address (more: 429; 0: no limit)",
    ),
    (
        "--max-message-size",
        message_size,
        "max_message_size",
        "largest incoming message, e.g. 64KiB (bigger: close 1009; at least 2KiB)",
    ),
    (
        "--compression",
        yes_no,
        "compression",
        "on|off: accept permessage-deflate when a client offers it (a broadcast is compressed "
        "once for all its subscribers)",
    ),
    (
        "--compression-threshold",
        byte_size,
        "compression_threshold",
        "broadcast payloads of at most this many bytes go uncompressed, e.g. 256",
    ),
    (
        "--inbox-size",
        POSITIVE_INT,
        "inbox_size",
        "requests a connection may have queued behind one that waits (more: error 429)",
    ),
    (
        "--inbox-max-bytes",
        byte_size,
        "inbox_max_bytes",
        "bytes of requests a connection may have queued (e.g. 1MiB)",
    ),
    (
        "--max-subscriptions",
        POSITIVE_INT,
        "max_subscriptions",
        "channels per connection (more: 429)",
    ),
    ("--heartbeat-interval", POSITIVE_SECONDS, "heartbeat_interval", "seconds between pings"),
    (
        "--heartbeat-timeout",
        POSITIVE_SECONDS,
        "heartbeat_timeout",
        "seconds to wait for a pong before closing with 1011",
    ),
    (
        "--idle-timeout",
        SECONDS,
        "idle_timeout",
        "close connections with no subscription that sent nothing for this long (0: never)",
    ),
    (
        "--outbox-size",
        POSITIVE_INT,
        "outbox_size",
        "frames a subscriber may have queued before its slow-consumer policy applies",
    ),
    (
        "--outbox-max-bytes",
        byte_size,
        "outbox_max_bytes",
        "bytes a subscriber may have queued (e.g. 1MiB); full at this or --outbox-size",
    ),
    (
        "--slow-consumer",
        slow_consumer,
        "slow_consumer",
        "what happens when a subscriber's outbox is full",
    ),
    (
        "--channel-policy",
        channel_policy,
        "channel_policies",
        "PATTERN=POLICY giving matching channels their own policy, repeatable; first match wins",
    ),
    (
        "--history-size",
        COUNT,
        "history_size",
        "messages kept per channel for resume (0: no history)",
    ),
    ("--history-ttl", SECONDS, "history_ttl", "seconds a message stays in history (0: none)"),
    ("--history-max-bytes", byte_size, "history_max_bytes", "bytes of history per channel"),
    (
        "--history-total-bytes",
        byte_size,
        "history_total_bytes",
        "bytes of history of all channels together (the least recently published lose first)",
    ),
    (
        "--channel-history",
        channel_history,
        "channel_history",
        "PATTERN=SIZE:TTL giving matching channels their own history, repeatable",
    ),
    (
        "--dedupe-size",
        COUNT,
        "dedupe_size",
        "publish ids remembered per user for dedupe (0: no dedupe)",
    ),
    ("--dedupe-ttl", SECONDS, "dedupe_ttl", "seconds a publish id is remembered"),
    ("--dedupe-max-entries", POSITIVE_INT, "dedupe_max_entries", "publish ids remembered in all"),
    (
        "--memory-limit",
        byte_size,
        "memory_limit",
        "resident memory (e.g. 2GiB) above which new connections get HTTP 503 (0: no limit)",
    ),
    (
        "--block-timeout",
        POSITIVE_SECONDS,
        "block_timeout",
        "seconds a 'block' publisher waits for one subscriber before disconnecting it",
    ),
    (
        "--shutdown-timeout",
        SECONDS,
        "shutdown_timeout",
        "seconds to drain and close connections on shutdown",
    ),
    (
        "--redis-url",
        str,
        "redis_url",
        "redis://host:port/db: become one node of a cluster sharing this Redis "
        "(a Redis Cluster node is found to be one; several seeds: "
        "redis+cluster://host1:port1,host2:port2) (default: in-process broker, one node)",
    ),
    (
        "--redis-buffer-size",
        POSITIVE_INT,
        "redis_buffer_size",
        "publications held while Redis is unreachable (more: error 503)",
    ),
    (
        "--redis-retention",
        SECONDS,
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
        POSITIVE_INT,
        "presence_max_members",
        "above this many members a presence channel answers counts only",
    ),
    (
        "--presence-ttl",
        POSITIVE_SECONDS,
        "presence_ttl",
        "with Redis: seconds a crashed node's members stay listed",
    ),
    (
        "--demo",
        yes_no,
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
    (
        "--sse-path",
        path_or_off,
        "sse_path",
        "URL path of Server-Sent Events streams (GET ?channel=...); off: none (404)",
    ),
    (
        "--sse-keepalive",
        POSITIVE_SECONDS,
        "sse_keepalive",
        "seconds between keep-alive comments on an SSE stream",
    ),
    (
        "--sse-retry",
        POSITIVE_SECONDS,
        "sse_retry",
        "retry: hint of SSE streams in seconds (each gets it within +-50%%)",
    ),
    ("--metrics", yes_no, "metrics", "latency histograms and GET /metrics"),
    (
        "--monitor-interval",
        POSITIVE_SECONDS,
        "monitor_interval",
        "seconds between the monitor's samples (GET /stats, triows top)",
    ),
    (
        "--monitor-history",
        POSITIVE_SECONDS,
        "monitor_history",
        "seconds of monitor samples kept",
    ),
    (
        "--warn-loop-lag",
        SECONDS,
        "warn_loop_lag",
        "log a warning when the event loop lags by more than this (0: never)",
    ),
    (
        "--warn-memory",
        byte_size,
        "warn_memory",
        "log a warning when resident memory is over this, e.g. 1GiB (0: never)",
    ),
    (
        "--workers",
        worker_count,
        None,
        "worker processes sharing the port, or 'auto' for one per CPU; more than 1 share "
        "channels through --redis-url, or without it a private valkey/redis server",
    ),
    (
        "--reuse-port",
        yes_no,
        "reuse_port",
        "yes: let other processes listen on the same port (SO_REUSEPORT)",
    ),
    (
        "--gc-threshold",
        gc_threshold,
        None,
        "objects the garbage collector lets accumulate before a young collection "
        "(Python's threshold0; 0: Python's own, 700)",
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
_CLI_DEFAULTS: dict[str, Any] = {
    "--log-level": "info",
    "--log-format": "text",
    "--workers": 1,
    "--gc-threshold": GC_THRESHOLD,
}
_CHOICES = {"--log-level": LOG_LEVELS, "--log-format": ("text", "json")}


def build_parser() -> argparse.ArgumentParser:
    """The parser, made from the table: ``--help`` shows each flag's variable and default."""
    parser = _Parser(
        prog="triows",
        allow_abbrev=False,  # a supervisor rewrites flags for its workers: no abbreviations
        description="Real-time WebSocket pub/sub server (protocol v1). Every flag can also be "
        "set with a TRIOWS_<NAME> environment variable, e.g. TRIOWS_PORT=9000.",
    )
    defaults = Config()
    for flag, kind, field, text in _OPTIONS:
        default = _CLI_DEFAULTS.get(flag) if field is None else getattr(defaults, field)
        if field in ("jwt_secret", "jwt_public_key"):
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
    """What the command line asks for: the server's ``Config``, and what only the process
    uses (its logging, how many worker processes, its garbage collector's threshold)."""

    config: Config
    log_level: str
    log_format: str
    workers: int
    #: One line per ``TRIOWS_*`` variable that no flag reads (logged once logging is set up).
    warnings: tuple[str, ...] = ()
    gc_threshold: int = GC_THRESHOLD


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
    gc_threshold = int(values.pop("gc_threshold"))
    config_values = {k: v for k, v in values.items() if v is not None}
    try:
        config = Config(**config_values)
    except (ValueError, TypeError, ChannelNameError) as exc:
        parser.error(_flag_names(str(exc)))
    return Options(
        config,
        log_level,
        log_format,
        workers,
        tuple(unknown_variables(environ)),
        gc_threshold,
    )


def given(argv: Sequence[str], environ: dict[str, str], flag: str) -> str | None:
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
            return _other_flags(f"{flag} ({env_name(flag)}){message[len(field) :]}")
    return message


def _other_flags(message: str) -> str:
    """Fields named further in a message (``jwt_secret and jwt_jwks_url cannot ...``), as
    flags; only names with an underscore, which plain words never have."""
    for flag, _, field, _ in _OPTIONS:
        if field is not None and "_" in field:
            message = re.sub(rf"\b{field}\b", flag, message)
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
