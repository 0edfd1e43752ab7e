"""python -m triows: flags, environment, one-line errors, and a real run with SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from triows import SlowConsumerPolicy
from triows._cli.options import parse_config


def test_defaults() -> None:
    options = parse_config([], {})
    config = options.config
    assert (config.host, config.port, config.jwt_secret) == ("127.0.0.1", 8080, None)
    assert (options.log_level, options.log_format, options.workers) == ("info", "text", 1)
    assert (config.redis_url, config.reuse_port) == (None, False)


def test_flags_override_environment() -> None:
    env = {
        "TRIOWS_PORT": "9000",
        "TRIOWS_MAX_CONNECTIONS": "7",
        "TRIOWS_ALLOW_ORIGIN": "https://a.example, https://b.example",
        "TRIOWS_CHANNEL_POLICY": "ticker.*=drop_oldest",
        "TRIOWS_LOG_FORMAT": "json",
    }
    options = parse_config(["--port", "9001", "--slow-consumer=block"], env)
    config, fmt = options.config, options.log_format
    assert config.port == 9001
    assert config.max_connections == 7
    assert config.allow_origins == ("https://a.example", "https://b.example")
    assert config.channel_policies == (("ticker.*", SlowConsumerPolicy.DROP_OLDEST),)
    assert config.slow_consumer is SlowConsumerPolicy.BLOCK
    assert fmt == "json"


def test_history_and_dedupe_flags() -> None:
    config = parse_config(
        ["--history-size", "0", "--channel-history", "chat.*=500:3600", "--dedupe-ttl", "60"],
        {"TRIOWS_HISTORY_TTL": "30", "TRIOWS_DEDUPE_SIZE": "7"},
    ).config
    assert (config.history_size, config.history_ttl) == (0, 30)
    assert config.channel_history == (("chat.*", 500, 3600.0),)
    assert config.history_for("chat.x") == (500, 3600.0)
    assert config.history_for("other") == (0, 30)
    assert (config.dedupe_size, config.dedupe_ttl) == (7, 60)


def test_repeatable_flags() -> None:
    config = parse_config(
        [
            "--allow-origin",
            "https://a",
            "--allow-origin",
            "https://b/",
            "--channel-policy",
            "a.*=drop_newest",
            "--channel-policy",
            "*=block",
        ],
        {},
    ).config
    assert config.allow_origins == ("https://a", "https://b")
    assert [p for _, p in config.channel_policies] == ["drop_newest", "block"]


def test_unknown_variables_are_named_with_a_suggestion() -> None:
    options = parse_config(
        [], {"TRIOWS_HIST_SIZE": "3", "TRIOWS_PORT": "9000", "TRIOWS_XYZZY": "1", "HOME": "/"}
    )
    assert options.warnings == (
        "ignoring unknown environment variable TRIOWS_HIST_SIZE; did you mean TRIOWS_HISTORY_SIZE?",
        "ignoring unknown environment variable TRIOWS_XYZZY",
    )
    assert options.config.port == 9000
    internal = {
        "TRIOWS_WORKER_INDEX": "0",
        "TRIOWS_STATS_DIR": "/tmp",
        "TRIOWS_SUPERVISOR_PID": "1",
    }
    assert parse_config([], internal).warnings == ()


def test_sizes_take_units_and_levels_take_any_case() -> None:
    options = parse_config(
        ["--max-message-size", "64KiB", "--log-level", "DEBUG", "--inbox-max-bytes", "2MiB"],
        {"TRIOWS_LOG_LEVEL": "Warning"},
    )
    assert options.config.max_message_size == 64 * 1024
    assert options.config.inbox_max_bytes == 2 * 2**20
    assert options.log_level == "debug"
    assert parse_config([], {"TRIOWS_LOG_LEVEL": "Warning"}).log_level == "warning"


def test_admission_and_token_flags() -> None:
    config = parse_config(
        ["--max-pending", "10", "--max-pending-per-ip", "0", "--jwt-require-exp"],
        {"TRIOWS_MAX_HTTP_REQUESTS": "7", "TRIOWS_MAX_HTTP_REQUESTS_PER_IP": "2"},
    ).config
    assert (config.max_pending, config.max_pending_per_ip) == (10, 0)
    assert (config.max_http_requests, config.max_http_requests_per_ip) == (7, 2)
    assert config.jwt_require_exp
    assert parse_config([], {"TRIOWS_JWT_MAX_AGE": "3600"}).config.jwt_max_age == 3600


def test_operability_flags() -> None:
    config = parse_config(
        ["--api-key", "k" * 20, "--trusted-proxy", "10.0.0.0/8", "--metrics", "no"],
        {"TRIOWS_WARN_MEMORY": "1GiB", "TRIOWS_MONITOR_INTERVAL": "2"},
    ).config
    assert config.api_key == "k" * 20
    assert config.trusted_proxies == ("10.0.0.0/8",)
    assert (config.metrics, config.warn_memory, config.monitor_interval) == (False, 2**30, 2)
    from_env = parse_config(
        [], {"TRIOWS_TRUSTED_PROXY": "10.0.0.1, ::1", "TRIOWS_API_KEY": "a" * 16}
    )
    assert from_env.config.trusted_proxies == ("10.0.0.1/32", "::1/128")
    assert from_env.config.api_key == "a" * 16


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--port", "x"], {}, "--port"),
        (["--port", "70000"], {}, "at most 65535"),
        ([], {"TRIOWS_PORT": "nope"}, "TRIOWS_PORT"),
        (["--heartbeat-interval", "-1"], {}, "--heartbeat-interval"),
        (["--slow-consumer", "maybe"], {}, "invalid choice"),
        (["--channel-policy", "x=never"], {}, "policy must be one of"),
        (
            ["--jwt-secret", "short"],
            {},
            "--jwt-secret (TRIOWS_JWT_SECRET) must be at least 32 bytes",
        ),
        (["--path", "ws"], {}, "--path (TRIOWS_PATH) must start with '/'"),
        (["--max-message-size", "10"], {}, "at least 2048"),
        ([], {"TRIOWS_LOG_LEVEL": "loud"}, "TRIOWS_LOG_LEVEL"),
        (["--bogus"], {}, "unrecognized arguments"),
        (["--channel-history", "a=1"], {}, "PATTERN=SIZE:TTL"),
        (["--channel-history", "a=x:1"], {}, "must be numbers"),
        (["--history-size", "-1"], {}, "--history-size"),
        (["--workers", "0"], {}, "--workers"),
        (["--redis-url", "localhost:6379"], {}, "--redis-url (TRIOWS_REDIS_URL) must look like"),
        (["--reuse-port", "maybe"], {}, "expected yes or no"),
        (["--work", "2"], {}, "unrecognized arguments"),
        (["--api-key", "short"], {}, "--api-key (TRIOWS_API_KEY) must be at least 16 printable"),
        (["--trusted-proxy", "10.0.0.0/33"], {}, "trusted proxy must be an address or a CIDR"),
        ([], {"TRIOWS_TRUSTED_PROXY": "10.0.0.1,nope"}, "'nope'"),
        (["--metrics", "maybe"], {}, "expected yes or no"),
        (["--warn-memory", "lots"], {}, "expected a size in bytes"),
        ([], {"TRIOWS_SLOW_CONSUMER": "maybe"}, "must be one of block, drop_oldest"),
        (["--presence", "chat["], {}, "--presence (TRIOWS_PRESENCE): 'chat[': a '[' is never"),
        (["--presence-counts", "a b"], {}, "is not a channel pattern"),
        (["--channel-policy", "x]=block"], {}, "']' without"),
        (["--allow-origin", "app.example.com"], {}, "--allow-origin (TRIOWS_ALLOW_ORIGIN)"),
        (["--max-message-size", "1KiB"], {}, "at least 2048 bytes"),
        (["--jwt-max-age", "-5"], {}, "--jwt-max-age"),
        (["--inbox-max-bytes", "1e400"], {}, "expected a size in bytes"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    argv: list[str], env: dict[str, str], fragment: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "triows", *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("triows: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", [[], ["--workers", "2", "--redis-url", "redis://x"]])
def test_port_in_use_is_one_line_exit_1(workers: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "triows", "--port", str(port), *workers],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("triows: error: cannot listen")
    assert "Traceback" not in result.stderr


@pytest.mark.real_socket
async def test_real_run_and_graceful_sigterm() -> None:
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "triows",
            "--port",
            "0",
            "--jwt-secret",
            "x" * 32,
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        output = b""
        with trio.fail_after(20):
            while b"listening on" not in output:
                output += await process.stderr.receive_some()
        record = json.loads(output.decode().splitlines()[0])
        assert record["level"] == "info"
        port = int(re.search(r"ws://127\.0\.0\.1:(\d+)/", record["message"]).group(1))  # type: ignore[union-attr]
        assert "auth: jwt" in record["message"]
        import jwt

        token = jwt.encode({"sub": "cli"}, "x" * 32, algorithm="HS256")
        async with open_websocket_url(f"ws://127.0.0.1:{port}/?token={token}") as ws:
            welcome = json.loads(await ws.get_message())
            assert welcome["type"] == "welcome"
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1001
        with trio.fail_after(10):
            assert await process.wait() == 0
        with trio.fail_after(10):
            while chunk := await process.stderr.receive_some():
                output += chunk
        assert token.encode() not in output
        assert b'"stopped"' in output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_workers_auto_is_one_per_cpu() -> None:
    alone = parse_config(["--workers", "auto"], {})  # a private Redis is started for them
    assert (alone.workers, alone.config.redis_url) == (len(os.sched_getaffinity(0)), None)
    options = parse_config(["--workers", "auto", "--redis-url", "redis://r:6379/0"], {})
    assert options.workers == len(os.sched_getaffinity(0))
    assert options.config.redis_url == "redis://r:6379/0"
    from_env = parse_config([], {"TRIOWS_WORKERS": "3", "TRIOWS_REDIS_URL": "redis://r"})
    assert from_env.workers == 3


def test_the_fd_limit_is_raised_and_a_too_low_one_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import resource

    from triows._cli.main import raise_fd_limit

    calls: list[tuple[int, tuple[int, int]]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda kind, limits: calls.append((kind, limits)))
    raise_fd_limit(1000)
    assert calls == [(resource.RLIMIT_NOFILE, (4096, 4096))]
    assert "open-file limit" not in caplog.text
    raise_fd_limit(10_000)
    assert "open-file limit (4096) is below --max-connections (10000)" in caplog.text


def test_help_shows_booleans_as_the_flag_takes_them() -> None:
    from triows._cli.options import build_parser

    text = build_parser().format_help()
    assert "(default: no)" in text  # --reuse-port
    assert "(default: yes)" in text  # --metrics
    assert "False" not in text
    assert "True" not in text


def test_gc_threshold_flag_environment_and_default() -> None:
    assert parse_config([], {}).gc_threshold == 20_000
    assert parse_config(["--gc-threshold", "0"], {}).gc_threshold == 0
    assert parse_config([], {"TRIOWS_GC_THRESHOLD": "5000"}).gc_threshold == 5000
    assert parse_config(["--gc-threshold=9"], {"TRIOWS_GC_THRESHOLD": "5000"}).gc_threshold == 9
    with pytest.raises(SystemExit):
        parse_config(["--gc-threshold", "-1"], {})


@pytest.mark.parametrize("value", [str(2**31), "99999999999"])
def test_a_gc_threshold_python_cannot_take_is_refused_as_bad_input(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gc.set_threshold`` takes a C int: a larger value is the command line's error, told
    as such, not an OverflowError's traceback once the server starts."""
    assert parse_config(["--gc-threshold", str(2**31 - 1)], {}).gc_threshold == 2**31 - 1
    with pytest.raises(SystemExit):
        parse_config(["--gc-threshold", value], {})
    assert "--gc-threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config([], {"TRIOWS_GC_THRESHOLD": value})


@pytest.mark.parametrize(("argv", "expected"), [([], 20_000), (["--gc-threshold", "0"], None)])
def test_the_server_process_collects_by_its_gc_threshold(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: int | None
) -> None:
    """``main`` sets the young generation's threshold (keeping the other two) before it
    serves; 0 leaves Python's own."""
    import gc

    import triows._cli.main as cli

    set_to: list[tuple[int, int, int]] = []
    served: list[bool] = []
    monkeypatch.setattr(gc, "get_threshold", lambda: (700, 11, 12))
    monkeypatch.setattr(gc, "set_threshold", lambda *values: set_to.append(values))
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)
    monkeypatch.setattr(cli, "raise_fd_limit", lambda limit: None)
    monkeypatch.setattr(trio, "run", lambda *args: served.append(bool(set_to)))
    assert cli.main(argv) == 0
    assert set_to == ([] if expected is None else [(expected, 11, 12)])
    assert served == [expected is not None]  # set before serving
