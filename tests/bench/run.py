"""Benchmark: triows against its peers, all in one run, as ratios measured together.

    nox -s bench                      # or: python tests/bench/run.py [--repeat 3]

Peers: a bare trio-websocket server as a tutorial writes it (bare_server.py), the
`websockets` library on asyncio (websockets_server.py) and its Trio implementation
(websockets_trio_server.py), and for the chat scenarios Node `ws` running the same room logic
(room_server.js). Each server runs as a subprocess pinned to one core, and the Node `ws` load
generator (loadgen.js) to the other. Figures:

- request→reply: 50 closed-loop clients; triows answers a publish with its ack, the peers
  echo the frame, and so does triows' own engine (tests/conformance/echo_server.py: the same
  reader and write path without the protocol), which shows the protocol's share. Small
  (64-byte pad) and 1 KB payloads. Replies/s, replies per server CPU-second, p50/p99.
- chat: one room of 200 clients and 200 rooms of 10 (2,000 clients), every client
  publishing 5 messages a second to its room; publications and deliveries per server
  CPU-second, publish→delivery p50/p99.
- handshakes per server CPU-second: 5,000 connections opened and closed, 100 at a time.
- KiB per idle connection: 5,000 held open for a while, heartbeats on where the server has
  them (triows every 25 s, websockets every 20 s; bare trio-websocket has none).
- fan-out: 100 and 1000 subscribers on one channel: deliveries/s, deliveries per server
  CPU-second (the server's user+system time read from /proc over the measured window), and
  p50/p99 latency from publish to delivery.

Compression (permessage-deflate): the same fan-out to 100 and 1000 subscribers with ~1 KiB of
realistic JSON per message, triows with ``--compression off`` and ``on`` (clients offering
deflate as browsers do) and `websockets` with its default compression, in the same run:
deliveries per server CPU-second and the bytes subscribers read per delivery.

The cluster part starts a Redis (as the tests do) and measures the same fan-out through it:
one triows process with ``--redis-url`` against ``--workers 2`` (a supervisor and two worker
processes sharing the port); CPU is summed over the workers, Redis's own CPU shown apart.
Then a subscribe storm (``--only subscribes`` alone): 5,000 connections subscribe to a
channel the node already follows, 100 at a time, in process and with ``--redis-url``.

Figures are medians over --repeat runs. Everything stays on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.js"
TICKS = os.sysconf("SC_CLK_TCK")
SERVERS = ("bare", "wstrio", "websockets", "triows")
#: request→reply adds triows' engine answering an echo (the protocol's share is the difference).
ECHO_SERVERS = ("bare", "wstrio", "websockets", "engine", "triows")
#: Handshakes and idle connections add Node `ws` (room_server.js; it sends no heartbeats).
CONNECTION_SERVERS = (*SERVERS, "node")
#: The chat scenarios: the same room logic on Node ws, websockets (asyncio) and triows.
CHAT_SERVERS = ("node", "websockets", "triows")
#: (name, clients, rooms, publications per client per second)
CHAT_SCENARIOS = (("one room", 200, 1, 5), ("small rooms", 2000, 200, 5))
#: request→reply payload pads: small, and 1 KB.
PADS = (64, 1024)
#: The source tree of the "baseline" server (--baseline), when given.
BASELINE: list[str] = []
PEER_SCRIPTS = {
    "bare": "bare_server.py",
    "websockets": "websockets_server.py",
    "wstrio": "websockets_trio_server.py",
}
#: The generator on core 0, servers on core 1 (when there are two).
GENERATOR_CPU, SERVER_CPU = 0, 1
#: Messages in flight in the cluster scenarios: each one takes a Redis round trip.
CLUSTER_WINDOW = 16
#: The flags every benchmarked triows server gets (shards.py and idle_probe.py too): one load
#: generator on one address, publishing as fast as it can.
BENCH_FLAGS = (
    *("--max-connections", "19000"),
    *("--max-connections-per-ip", "0", "--max-pending-per-ip", "0"),
    *("--publish-rate", "0"),
    *("--log-level", "warning"),
)

sys.path.insert(0, str(HERE.parent.parent))
from tests.redisserver import RedisServer  # noqa: E402 - the tests' Redis launcher


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (a ``--workers`` supervisor and its workers), whichever of its
    threads started them."""
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    return [pid, *children]


def tree_cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pinned(cpu: int) -> Any:
    def pin() -> None:
        if (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {cpu})

    return pin


def start_server(
    kind: str, port: int, extra: list[str] | None = None, *, mode: str = "broadcast"
) -> subprocess.Popen[bytes]:
    if kind in ("triows", "baseline"):
        command = [
            sys.executable,
            "-m",
            "triows",
            "--port",
            str(port),
            *BENCH_FLAGS,
            *(extra or []),
        ]
    elif kind == "engine":
        command = [sys.executable, "-m", "tests.conformance.echo_server", str(port)]
    elif kind == "node":
        command = ["node", str(HERE / "room_server.js"), str(port)]
    else:
        command = [sys.executable, str(HERE / PEER_SCRIPTS[kind]), str(port), mode, *(extra or [])]
    workers = extra is not None and "--workers" in extra
    env = None
    if kind == "baseline":  # another version's source tree (--baseline), same options
        env = {**os.environ, "PYTHONPATH": BASELINE[0]}
    server = subprocess.Popen(
        command,
        preexec_fn=None if workers else pinned(SERVER_CPU),
        # `python -m` puts the working directory first on the path: the baseline runs in its own.
        cwd=BASELINE[0] if kind == "baseline" else HERE.parent.parent,
        env=env,
    )
    for _ in range(200):  # up to 10 s for the port to accept
        if server.poll() is not None:
            raise RuntimeError(f"{kind} server exited with {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError(f"{kind} server did not start listening")


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fanout(
    kind: str,
    subscribers: int,
    warmup: float,
    measure: float,
    *,
    extra: list[str] | None = None,
    window: int = 16,
    redis_pid: int | None = None,
    scrape: bool = False,
    dashboard: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    port = free_port()
    server = start_server(kind, port, extra)
    if extra and "--workers" in extra:
        time.sleep(1.0)  # every worker listening, not only the first
    pids = process_tree(server.pid)
    try:
        with scraping(port, scrape), dashboard_open(port, dashboard):
            result, cpu, redis_cpu = drive(
                [
                    "fanout",
                    f"ws://127.0.0.1:{port}/",
                    protocol_of(kind),
                    str(subscribers),
                    str(warmup),
                    str(measure),
                    str(window),
                ],
                pids,
                redis_pid=redis_pid,
                timeout=warmup + measure + 120,
                env=env,
            )
    finally:
        stop(server)
    return {
        "deliveries_per_s": result["deliveries"] / result["seconds"],
        "per_cpu_second": result["deliveries"] / cpu,
        "server_cpu_share": cpu / result["seconds"],
        "redis_cpu_share": redis_cpu / result["seconds"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "bytes_per_delivery": result["bytes"] / max(result["deliveries"], 1),
    }


@contextlib.contextmanager
def scraping(port: int, enabled: bool) -> Iterator[None]:
    """While enabled: what Prometheus and ``triows top`` do, GET /metrics and /stats every
    second, in a thread of this process (its CPU is the server's, as a scrape's is)."""
    if not enabled:
        yield
        return
    done = threading.Event()
    failures: list[BaseException] = []

    def scrape() -> None:
        while not done.wait(1.0):
            try:
                for path in ("/metrics", "/stats"):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                        r.read()
            except OSError as exc:
                failures.append(exc)
                return

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    if failures:
        raise RuntimeError(f"scraping failed: {failures[0]}")


#: The key the dashboard cost runs give the server (the dashboard is on only with a key).
DASHBOARD_KEY = "bench-dashboard-key-0123456789"


@contextlib.contextmanager
def dashboard_open(port: int, enabled: bool) -> Iterator[None]:
    """While enabled: what an open dashboard page asks, in a thread of this process: the
    monitor's last hour once, then ``/stats?history=5`` every second and ``/api/channels``
    every other second, with the API key."""
    if not enabled:
        yield
        return
    done = threading.Event()
    failures: list[BaseException] = []
    headers = {"X-API-Key": DASHBOARD_KEY}

    def get(path: str) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()

    def poll() -> None:
        try:
            get("/stats?history=3600")
            tick = 0
            while not done.wait(1.0):
                tick += 1
                get("/stats?history=5")
                if tick % 2 == 0:
                    get("/api/channels?limit=20")
        except OSError as exc:
            failures.append(exc)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    if failures:
        raise RuntimeError(f"the dashboard's polling failed: {failures[0]}")


def dashboard_cost(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """triows with a dashboard open against none, interleaved runs in one invocation (both
    with the API key set): fan-out to 1000 subscribers, and publish→ack (request→reply)."""
    runs = max(args.repeat, 3)
    rows: dict[str, dict[str, list[float]]] = {"closed": {}, "open": {}}
    extra = ["--api-key", DASHBOARD_KEY]
    for _ in range(runs):
        for setting in ("closed", "open"):
            on = setting == "open"
            fan = fanout("triows", 1000, args.warmup, args.measure, extra=extra, dashboard=on)
            rpc = request_reply("triows", 50, args.warmup, args.measure, extra=extra, dashboard=on)
            row = rows[setting]
            row.setdefault("fanout_deliveries_per_s", []).append(fan["deliveries_per_s"])
            row.setdefault("fanout_per_cpu_second", []).append(fan["per_cpu_second"])
            row.setdefault("fanout_p99_ms", []).append(fan["p99_ms"])
            row.setdefault("replies_per_s", []).append(rpc["replies_per_s"])
            row.setdefault("replies_per_cpu_second", []).append(rpc["per_cpu_second"])
            row.setdefault("ack_p50_ms", []).append(rpc["p50_ms"])
            row.setdefault("ack_p99_ms", []).append(rpc["p99_ms"])
    section = figures["dashboard"] = {
        setting: {name: statistics.median(values) for name, values in row.items()}
        for setting, row in rows.items()
    }
    print(f"\ndashboard open / closed, medians of {runs} (spread: (max - min) / median):")
    for name in rows["closed"]:
        ratio = section["open"][name] / section["closed"][name]
        section[f"ratio_{name}"] = ratio
        spread = {
            setting: (max(row[name]) - min(row[name])) / statistics.median(row[name])
            for setting, row in rows.items()
        }
        section[f"spread_{name}"] = spread
        print(
            f"  {name:24} closed {section['closed'][name]:>10,.2f} ±{spread['closed']:4.0%}  "
            f"open {section['open'][name]:>10,.2f} ±{spread['open']:4.0%}  {ratio:.3f}x",
            flush=True,
        )


def metrics_cost(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """triows with metrics on (and scraped every second) against metrics off, interleaved
    runs in one invocation: fan-out to 1000 subscribers, and publish→ack (request→reply)."""
    runs = max(args.repeat, 3)
    rows: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    for _ in range(runs):
        for setting in ("off", "on"):
            extra = ["--metrics", "yes" if setting == "on" else "no"]
            on = setting == "on"
            fan = fanout("triows", 1000, args.warmup, args.measure, extra=extra, scrape=on)
            rpc = request_reply("triows", 50, args.warmup, args.measure, extra=extra, scrape=on)
            row = rows[setting]
            row.setdefault("fanout_per_cpu_second", []).append(fan["per_cpu_second"])
            row.setdefault("replies_per_cpu_second", []).append(rpc["per_cpu_second"])
            row.setdefault("replies_per_s", []).append(rpc["replies_per_s"])
    section = figures["metrics"] = {
        setting: {name: statistics.median(values) for name, values in row.items()}
        for setting, row in rows.items()
    }
    print(f"\nmetrics on (scraped every second) / off, medians of {runs}:", flush=True)
    for name in ("fanout_per_cpu_second", "replies_per_cpu_second", "replies_per_s"):
        ratio = section["on"][name] / section["off"][name]
        section[f"ratio_{name}"] = ratio
        print(
            f"  {name:24} off {section['off'][name]:>10,.0f}  on {section['on'][name]:>10,.0f}"
            f"  {ratio:.3f}x",
            flush=True,
        )


def drive(
    arguments: list[str],
    pids: list[int],
    *,
    redis_pid: int | None = None,
    timeout: float,
    env: dict[str, str] | None = None,
) -> tuple[dict[str, Any], float, float]:
    """Run the load generator; returns its JSON result, the server's CPU seconds between its
    MEASURE_START and MEASURE_END lines, and Redis's."""
    generator = subprocess.Popen(
        ["node", str(LOADGEN), *arguments],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(GENERATOR_CPU),
        env={**os.environ, **(env or {})},
    )
    assert generator.stdout is not None
    cpu_start = cpu_end = redis_start = redis_end = 0.0
    result: dict[str, Any] = {}
    for line in generator.stdout:
        if line.startswith("MEASURE_START"):
            cpu_start = tree_cpu_seconds(pids)
            redis_start = cpu_seconds(redis_pid) if redis_pid else 0.0
        elif line.startswith("MEASURE_END"):
            cpu_end = tree_cpu_seconds(pids)
            redis_end = cpu_seconds(redis_pid) if redis_pid else 0.0
        elif line.startswith("{"):
            result = json.loads(line)
    if generator.wait(timeout=timeout) != 0 or not result:
        raise RuntimeError(f"load generator failed: {' '.join(arguments[:3])}")
    return result, max(cpu_end - cpu_start, 1e-9), redis_end - redis_start


def protocol_of(kind: str) -> str:
    """What the load generator speaks to ``kind``: triows' protocol, or raw messages."""
    return "triows" if kind == "baseline" else kind


def against(
    kind: str,
    generator_mode: str,
    arguments: list[str],
    *,
    mode: str = "broadcast",
    timeout: float,
    extra: list[str] | None = None,
    scrape: bool = False,
    dashboard: bool = False,
) -> tuple[dict[str, Any], float]:
    """Start one ``kind`` server, run the generator in ``generator_mode`` against it; returns
    the generator's result and the server's CPU seconds over the measured window."""
    port = free_port()
    server = start_server(kind, port, extra, mode=mode)
    try:
        with scraping(port, scrape), dashboard_open(port, dashboard):
            result, cpu, _ = drive(
                [generator_mode, f"ws://127.0.0.1:{port}/", protocol_of(kind), *arguments],
                process_tree(server.pid),
                timeout=timeout,
            )
    finally:
        stop(server)
    return result, cpu


def request_reply(
    kind: str,
    clients: int,
    warmup: float,
    measure: float,
    *,
    extra: list[str] | None = None,
    scrape: bool = False,
    dashboard: bool = False,
    pad: int = 64,
) -> dict[str, float]:
    result, cpu = against(
        kind,
        "rpc",
        [str(clients), str(warmup), str(measure), str(pad)],
        mode="echo",
        timeout=warmup + measure + 120,
        extra=extra,
        scrape=scrape,
        dashboard=dashboard,
    )
    return {
        "replies_per_s": result["replies"] / result["seconds"],
        "per_cpu_second": result["replies"] / cpu,
        "server_cpu_share": cpu / result["seconds"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
    }


def chat(
    kind: str, clients: int, rooms: int, per_second: int, warmup: float, measure: float
) -> dict[str, float]:
    result, cpu = against(
        kind,
        "chat",
        [str(clients), str(warmup), str(measure), "0", str(rooms), str(per_second)],
        mode="rooms",
        timeout=warmup + measure + 180,
    )
    return {
        "publications_per_s": result["publications"] / result["seconds"],
        "publications_per_cpu_second": result["publications"] / cpu,
        "deliveries_per_cpu_second": result["deliveries"] / cpu,
        "server_cpu_share": cpu / result["seconds"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
    }


def chat_scenarios(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    print(
        f"\n{'chat':24} {'pubs/s':>8} {'pubs/CPU-s':>11} {'deliv/CPU-s':>12} {'CPU':>5} "
        f"{'p50 ms':>7} {'p99 ms':>7}",
        flush=True,
    )
    for name, clients, rooms, per_second in CHAT_SCENARIOS:
        section: dict[str, Any] = {}
        figures["chat"][name] = section
        for kind in CHAT_SERVERS + (("baseline",) if BASELINE else ()):
            runs = [
                chat(kind, clients, rooms, per_second, args.warmup, args.measure)
                for _ in range(args.repeat)
            ]
            row = section[kind] = median_of(runs)
            print(
                f"{name + ' ' + kind:24} {row['publications_per_s']:>8,.0f} "
                f"{row['publications_per_cpu_second']:>11,.0f} "
                f"{row['deliveries_per_cpu_second']:>12,.0f} {row['server_cpu_share']:>5.2f} "
                f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f}",
                flush=True,
            )
        for peer in ("node", "websockets", *(("baseline",) if BASELINE else ())):
            ratio = (
                section["triows"]["publications_per_cpu_second"]
                / section[peer]["publications_per_cpu_second"]
            )
            section[f"ratio_{peer}"] = ratio
            print(f"  {name}: triows / {peer}, publications per CPU-s: {ratio:.2f}x", flush=True)


def request_replies(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    print(
        f"{'request→reply':14} {'pad':>5} {'replies/s':>10} {'per CPU-s':>10} "
        f"{'CPU':>5} {'p50 ms':>7} {'p99 ms':>7}",
        flush=True,
    )
    kinds = tuple(args.kinds or ECHO_SERVERS) + (("baseline",) if BASELINE else ())
    for pad in args.pads or PADS:
        section: dict[str, Any] = {}
        figures["request_reply"][f"pad {pad}"] = section
        for kind in kinds:
            runs = [
                request_reply(kind, args.clients, args.warmup, args.measure, pad=pad)
                for _ in range(args.repeat)
            ]
            row = section[kind] = median_of(runs)
            print(
                f"{kind:14} {pad:>5} {row['replies_per_s']:>10,.0f} "
                f"{row['per_cpu_second']:>10,.0f} {row['server_cpu_share']:>5.2f} "
                f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f}",
                flush=True,
            )
        ratios(section, "replies_per_s", f"request→reply throughput, pad {pad}", kinds)


def handshakes(kind: str, connections: int) -> dict[str, float]:
    result, cpu = against(kind, "handshakes", [str(connections), "100"], timeout=300)
    if result["failed"]:
        raise RuntimeError(f"{result['failed']} handshakes to {kind} failed")
    return {
        "per_cpu_second": result["connections"] / cpu,
        "per_second": result["connections"] / result["seconds"],
    }


def subscribe_latency(redis_url: str, channels: int = 200) -> tuple[float, float]:
    """p50 and p99 ms of a subscribe to a channel the node does not follow yet: the node's
    Redis subscription, its confirmation and the channel's (seq, epoch), end to end."""
    import trio

    from triows.testing import open_test_server

    async def measure() -> list[float]:
        async with open_test_server(redis_url=redis_url) as node:
            await node.server.broker.up.wait_value(True)
            async with node.connect() as client:
                times = []
                for n in range(channels):
                    start = trio.current_time()
                    reply = await client.request({"type": "subscribe", "channel": f"lat-{n}"})
                    times.append((trio.current_time() - start) * 1000)
                    assert reply["type"] == "subscribed", reply
                    await client.request({"type": "unsubscribe", "channel": f"lat-{n}"})
                return sorted(times)

    times = trio.run(measure)
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def cluster(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """One process against ``--workers 2``, both through the same Redis, same load."""
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(Path(directory))
        redis.start()
        try:
            assert redis.process is not None
            setups = {
                "redis x1": ["--redis-url", redis.url],
                "redis x2": ["--redis-url", redis.url, "--workers", "2"],
            }
            print(
                f"\n{'cluster':8} {'subs':>5} {'deliveries/s':>13} {'per CPU-s':>11} "
                f"{'CPU':>5} {'redis':>5} {'p50 ms':>8} {'p99 ms':>8}",
                flush=True,
            )
            for subscribers in args.subscribers:
                for name, extra in setups.items():
                    runs = [
                        fanout(
                            "triows",
                            subscribers,
                            args.warmup,
                            args.measure,
                            extra=extra,
                            window=CLUSTER_WINDOW,
                            redis_pid=redis.process.pid,
                        )
                        for _ in range(args.repeat)
                    ]
                    record(figures["cluster"], name, subscribers, runs, with_redis=True)
                compare(
                    figures["cluster"],
                    ("redis x2", "redis x1"),
                    subscribers,
                    "deliveries_per_s",
                    "--workers 2 / one process, deliveries/s",
                    key="speedup",
                )
            p50, p99 = subscribe_latency(redis.url)
            figures["cluster"]["subscribe_new_channel_ms"] = {"p50": p50, "p99": p99}
            print(f"subscribe to a new channel: p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
            if args.storm:
                figures["subscribe_storm"] = subscribe_storm(
                    args.storm, args.repeat, redis.url, redis.process.pid
                )
        finally:
            redis.stop()


def subscribe_storm(
    connections: int, repeat: int, redis_url: str, redis_pid: int
) -> dict[str, Any]:
    """``connections`` connect and subscribe to one channel the node already follows, 100 at
    a time: in process and through Redis, one process each, same run. A subscribe to a
    followed channel must not wait on Redis round trips in series."""
    setups = {
        "in process": ([], "plain"),
        "redis": (["--redis-url", redis_url], "plain"),
        "in process, resume": ([], "resume"),
        "redis, resume": (["--redis-url", redis_url], "resume"),
    }
    print(
        f"\n{'subscribe storm':20} {'conns':>6} {'seconds':>8} {'per CPU-s':>10} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}",
        flush=True,
    )
    section: dict[str, Any] = {}
    for name, (extra, how) in setups.items():
        runs = []
        for _ in range(repeat):
            port = free_port()
            server = start_server("triows", port, extra)
            try:
                result, cpu, _ = drive(
                    [
                        "subscribes",
                        f"ws://127.0.0.1:{port}/",
                        "triows",
                        str(connections),
                        "100",
                        how,
                    ],
                    process_tree(server.pid),
                    redis_pid=redis_pid if extra else None,
                    timeout=600,
                )
            finally:
                stop(server)
            runs.append(
                {
                    "seconds": result["seconds"],
                    "per_cpu_second": connections / cpu,
                    "p50_ms": result["p50_ms"],
                    "p99_ms": result["p99_ms"],
                    "max_ms": result["max_ms"],
                }
            )
        row = section[name] = median_of(runs)
        print(
            f"{name:20} {connections:>6} {row['seconds']:>8.2f} {row['per_cpu_second']:>10,.0f} "
            f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['max_ms']:>7.1f}",
            flush=True,
        )
    for how in ("", ", resume"):
        ratio = section[f"redis{how}"]["seconds"] / section[f"in process{how}"]["seconds"]
        section["redis_over_in_process" + how.replace(", ", "_")] = ratio
        print(f"  redis / in process{how}, time: {ratio:.2f}x", flush=True)
    return section


def subscribes(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(Path(directory))
        redis.start()
        try:
            assert redis.process is not None
            figures["subscribe_storm"] = subscribe_storm(
                args.storm, args.repeat, redis.url, redis.process.pid
            )
        finally:
            redis.stop()


def idle_memory(
    kind: str,
    connections: int,
    *,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> float:
    port = free_port()
    server = start_server(kind, port, extra)
    try:
        time.sleep(0.5)
        before = rss_kib(server.pid)
        generator = subprocess.Popen(
            # protocol_of: a --baseline tree's connections subscribe as triows' do.
            [
                "node",
                str(LOADGEN),
                "idle",
                f"ws://127.0.0.1:{port}/",
                protocol_of(kind),
                str(connections),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pinned(GENERATOR_CPU),
            env={**os.environ, **(env or {})},
        )
        assert generator.stdout is not None
        assert generator.stdin is not None
        line = generator.stdout.readline()
        if not line.startswith("IDLE_READY"):
            raise RuntimeError(f"idle connections to {kind} failed")
        time.sleep(3.0)  # let the server settle (and a round of pings for those that have them)
        after = rss_kib(server.pid)
        generator.stdin.close()
        generator.wait(timeout=60)
    finally:
        stop(server)
    return (after - before) / connections


def record(
    section: dict[str, Any],
    name: str,
    subscribers: int,
    runs: list[dict[str, float]],
    *,
    with_redis: bool,
) -> None:
    """Keep the median of ``runs`` under ``name/subscribers`` and print it as a table row."""
    row = median_of(runs)
    section[f"{name}/{subscribers}"] = row
    redis = f" {row['redis_cpu_share']:>5.2f}" if with_redis else ""
    print(
        f"{name:10} {subscribers:>5} {row['deliveries_per_s']:>13,.0f} "
        f"{row['per_cpu_second']:>11,.0f} {row['server_cpu_share']:>5.2f}{redis} "
        f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}",
        flush=True,
    )


def compare(
    section: dict[str, Any],
    names: tuple[str, str],
    subscribers: int,
    field: str,
    text: str,
    *,
    key: str,
) -> None:
    """Keep and print ``names[0] / names[1]`` of one figure, both measured in this run."""
    top, bottom = (section[f"{name}/{subscribers}"][field] for name in names)
    ratio = top / bottom
    section[f"{key}/{subscribers}"] = ratio
    print(f"  {text} at {subscribers}: {ratio:.2f}x", flush=True)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def scale(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """Hold ``--scale-connections`` connections (heartbeats on), each subscribed to one of
    ``--scale-channels`` channels, against ``--workers`` with no ``--redis-url`` (the
    supervisor's private Redis, counted with the server), then publish once to every channel.

    The fd limit is per process, so the load is spread over generator processes of at most
    10,000 connections each, bound to 127.0.0.2-127.0.0.6 (each source address has its own
    ~28k ephemeral ports), and the server over enough workers to stay under it too.
    """
    total, workers, hold = args.scale_connections, args.scale_workers, args.scale_hold
    channels = args.scale_channels
    per_generator = 10_000
    generators_needed = -(-total // per_generator)
    port = free_port()
    server = start_server(
        "triows",
        port,
        ["--workers", str(workers), "--max-connections", "19000"],
    )
    generators: list[subprocess.Popen[str]] = []
    try:
        time.sleep(2.0)  # every worker listening
        pids = process_tree(server.pid)
        started = time.monotonic()
        for index in range(generators_needed):
            count = min(per_generator, total - index * per_generator)
            address = f"127.0.0.{2 + index % 5}"
            command = ["node", str(LOADGEN), "hold", f"ws://127.0.0.1:{port}/", "triows"]
            # At most 50 handshakes in flight per generator: ten generators and six workers
            # share two cores.
            command += [str(count), address, "50", str(channels), str(index * per_generator)]
            generators.append(
                subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
        held = closed_connecting = 0
        for generator in generators:
            assert generator.stdout is not None
            line = generator.stdout.readline()
            if not line.startswith("HOLD_READY"):
                raise RuntimeError(f"a generator failed to open its connections: {line!r}")
            held += int(line.split()[1])
            closed_connecting += int(line.split()[2])
            print(f"  {held:,} connections open ({time.monotonic() - started:.0f} s)", flush=True)
        connect_seconds = time.monotonic() - started
        time.sleep(5.0)  # the last handshakes settle
        rtt_start = sample_rtt(generators)
        # Idle CPU over the first three quarters of the hold; then one publication to every
        # channel, which every connection must have received by the end of the hold.
        cpu_start = tree_cpu_seconds(pids)
        hold_start = time.monotonic()
        time.sleep(hold * 0.75)
        idle_cpu = (tree_cpu_seconds(pids) - cpu_start) / (time.monotonic() - hold_start)
        rss_mib = sum(rss_kib(pid) for pid in process_tree(server.pid)) / 1024
        publish_seconds = publish_to_every_channel(port, channels)
        time.sleep(max(0.0, hold - (time.monotonic() - hold_start)))
        deliveries = ask_generators(generators, "deliveries")
        rtt_end = sample_rtt(generators)
        closed = held - rtt_end["open"]  # every connection not open now was dropped
    finally:
        for generator in generators:
            if generator.stdin is not None:
                generator.stdin.close()
        for generator in generators:
            try:
                generator.wait(timeout=60)
            except subprocess.TimeoutExpired:
                generator.kill()
        stop(server)
    with_message = sum(d["with_message"] for d in deliveries)
    row = {
        "connections_held": held - closed,
        "closed_while_connecting": closed_connecting,
        "dropped": closed,
        "channels": channels,
        "connect_seconds": connect_seconds,
        "hold_seconds": hold,
        "rss_mib_total": rss_mib,
        "kib_per_connection": rss_mib * 1024 / max(held, 1),
        "idle_cpu_cores": idle_cpu,
        "publish_seconds": publish_seconds,
        "connections_with_the_publication": with_message,
        "messages_received": sum(d["messages"] for d in deliveries),
        "rtt_start": rtt_start,
        "rtt_end": rtt_end,
    }
    figures["scale"] = row
    print(
        f"scale: {row['connections_held']:,} of {total:,} connections held for {hold:.0f} s "
        f"(closed while connecting {closed_connecting}, dropped in all {closed}) by {workers} "
        f"workers, each subscribed to one of {channels:,} channels; opened in "
        f"{connect_seconds:.0f} s\n"
        f"  one publication to every channel ({publish_seconds:.1f} s to publish): received by "
        f"{with_message:,} connections ({row['messages_received']:,} messages)\n"
        f"  server RSS {rss_mib:,.0f} MiB in total, private Redis included "
        f"({row['kib_per_connection']:.1f} KiB per connection, processes included); idle CPU "
        f"{idle_cpu:.2f} cores (heartbeats on)\n"
        f"  live round trips (ping request on {rtt_end['sampled']} connections): "
        f"p50 {rtt_end['p50_ms']:.1f} ms, max {rtt_end['max_ms']:.1f} ms, "
        f"{rtt_end['answered']} answered; close codes {rtt_end['close_codes']}",
        flush=True,
    )


def publish_to_every_channel(port: int, channels: int) -> float:
    """One publication to each ``scale-<n>`` channel, acks awaited (at most 100 in flight);
    returns the seconds it took."""
    from websockets.sync.client import connect

    started = time.monotonic()
    with connect(f"ws://127.0.0.1:{port}/", open_timeout=60, max_size=None) as ws:
        json.loads(ws.recv(timeout=60))  # welcome
        acked = sent = 0
        while acked < channels:
            while sent < channels and sent - acked < 100:
                frame = {"type": "publish", "channel": f"scale-{sent}", "data": sent, "id": sent}
                ws.send(json.dumps(frame))
                sent += 1
            reply = json.loads(ws.recv(timeout=60))
            if reply["type"] != "ack":
                raise RuntimeError(f"publish refused: {reply}")
            acked += 1
    return time.monotonic() - started


def ask_generators(generators: list[subprocess.Popen[str]], what: str) -> list[dict[str, Any]]:
    for generator in generators:
        assert generator.stdin is not None
        generator.stdin.write(what + "\n")
        generator.stdin.flush()
    answers = []
    for generator in generators:
        assert generator.stdout is not None
        answers.append(json.loads(generator.stdout.readline()))
    return answers


def sample_rtt(generators: list[subprocess.Popen[str]]) -> dict[str, Any]:
    """Ask every generator for round trips on a sample of its connections; merged."""
    results = []
    for generator in generators:
        assert generator.stdin is not None
        generator.stdin.write("rtt\n")
        generator.stdin.flush()
    for generator in generators:
        assert generator.stdout is not None
        results.append(json.loads(generator.stdout.readline()))
    answered = sum(r["answered"] for r in results)
    return {
        "sampled": sum(r["sampled"] for r in results),
        "answered": answered,
        "p50_ms": statistics.median(r["p50_ms"] for r in results if r["p50_ms"] is not None),
        "max_ms": max((r["max_ms"] for r in results if r["max_ms"] is not None), default=0.0),
        "closed": sum(r["closed"] for r in results),
        "answered_per_generator": [r["answered"] for r in results],
        "open": sum(r["open"] for r in results),
        "close_codes": dict(sum((Counter(r["close_codes"]) for r in results), Counter[str]())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure (median)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--measure", type=float, default=5.0)
    parser.add_argument(
        "--subscribers", type=int, nargs="*", default=[100, 1000], help="fan-out sizes (none: skip)"
    )
    parser.add_argument("--idle", type=int, default=5000, help="idle connections (0: skip)")
    parser.add_argument("--clients", type=int, default=50, help="request→reply clients (0: skip)")
    parser.add_argument(
        "--handshakes", type=int, default=5000, help="connections opened and closed (0: skip)"
    )
    parser.add_argument(
        "--paced", type=int, default=5000, help="deliveries/s for the paced latency (0: skip)"
    )
    parser.add_argument(
        "--kinds",
        nargs="*",
        choices=ECHO_SERVERS,
        help="request→reply: only these servers (default: all of them)",
    )
    parser.add_argument(
        "--connection-kinds",
        nargs="*",
        choices=CONNECTION_SERVERS,
        help="handshakes and idle connections: only these servers (default: all of them)",
    )
    parser.add_argument(
        "--pads", type=int, nargs="*", help="request→reply: only these pads (default: 64 1024)"
    )
    parser.add_argument(
        "--chat", type=int, default=1, help="run the chat scenarios (0: skip)", choices=(0, 1)
    )
    parser.add_argument(
        "--baseline",
        help="a source tree of another triows version (the folder holding its triows/), run "
        "beside this one in request→reply, the chat scenarios and fan-out",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument(
        "--only",
        choices=(
            "single",
            "cluster",
            "metrics",
            "dashboard",
            "inbound",
            "subscribes",
            "compression",
            "connections",
        ),
        help="run one part (default: single, compression and cluster; metrics: the cost of "
        "metrics; dashboard: the cost of an open dashboard; inbound: request→reply and the chat "
        "scenarios only; subscribes: the subscribe storm alone; connections: handshakes and idle "
        "memory alone)",
    )
    parser.add_argument(
        "--storm", type=int, default=5000, help="connections in the subscribe storm (0: skip)"
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="only the scale mode: subscribed connections at scale, held with none dropped",
    )
    parser.add_argument("--scale-connections", type=int, default=100_000)
    parser.add_argument("--scale-workers", type=int, default=6)
    parser.add_argument("--scale-hold", type=float, default=60.0, help="seconds to hold them")
    parser.add_argument(
        "--scale-channels", type=int, default=1000, help="channels the connections subscribe to"
    )
    args = parser.parse_args()
    if args.baseline:
        BASELINE.append(str(Path(args.baseline).resolve()))

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it

    figures: dict[str, Any] = {
        "request_reply": {},
        "chat": {},
        "handshakes": {},
        "idle_kib_per_connection": {},
        "fanout": {},
        "paced": {},
        "cluster": {},
        "metrics": {},
        "dashboard": {},
        "compression": {},
    }
    if args.scale:
        scale(args, figures)
    elif args.only == "metrics":
        metrics_cost(args, figures)
    elif args.only == "dashboard":
        dashboard_cost(args, figures)
    elif args.only == "subscribes":
        subscribes(args, figures)
    elif args.only == "compression":
        compression(args, figures)
    elif args.only == "connections":
        connections(args, figures)
    else:
        if args.only != "cluster":
            single(args, figures)
            if args.only != "inbound":
                metrics_cost(args, figures)
                compression(args, figures)
        if args.only not in ("single", "inbound"):
            cluster(args, figures)
    if args.json:
        print(json.dumps(figures, indent=2))


def single(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    if args.clients:
        request_replies(args, figures)
    if args.chat:
        chat_scenarios(args, figures)
    if args.only == "inbound":
        return
    connections(args, figures)
    print(
        f"\n{'fan-out':10} {'subs':>5} {'deliveries/s':>13} {'per CPU-s':>11} {'CPU':>5} "
        f"{'p50 ms':>8} {'p99 ms':>8}",
        flush=True,
    )
    baseline = ("baseline",) if BASELINE else ()
    for subscribers in args.subscribers:
        for kind in SERVERS + baseline:
            runs = [
                fanout(kind, subscribers, args.warmup, args.measure) for _ in range(args.repeat)
            ]
            record(figures["fanout"], kind, subscribers, runs, with_redis=False)
        for peer in ("bare", "wstrio", "websockets", *baseline):
            compare(
                figures["fanout"],
                ("triows", peer),
                subscribers,
                "per_cpu_second",
                f"triows / {peer}, deliveries per server CPU-second",
                key=f"ratio_{peer}",
            )
    if args.paced:
        paced_latency(args, figures)


def connections(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """Handshakes per server CPU-second and KiB per idle connection (``--only connections``
    runs these alone)."""
    # Node `ws` (no heartbeats) and the --baseline tree beside the others; --connection-kinds
    # narrows the two figures to a few servers.
    connection_kinds = tuple(args.connection_kinds or CONNECTION_SERVERS) + (
        ("baseline",) if BASELINE else ()
    )
    # Runs alternate between the servers (not all of one server's runs in a row): the
    # machine's state drifts, and a ratio should compare runs made side by side.
    if args.handshakes:
        section = figures["handshakes"]
        shake_runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in connection_kinds}
        for _ in range(args.repeat):
            for kind in connection_kinds:
                shake_runs[kind].append(handshakes(kind, args.handshakes))
        for kind in connection_kinds:
            row = section[kind] = median_of(shake_runs[kind])
            print(
                f"{kind:14} {args.handshakes} handshakes: {row['per_cpu_second']:,.0f} per "
                f"server CPU-second ({row['per_second']:,.0f}/s)",
                flush=True,
            )
        ratios(section, "per_cpu_second", "handshakes per server CPU-second", connection_kinds)
    if args.idle:
        section = figures["idle_kib_per_connection"]
        idle_runs: dict[str, list[float]] = {kind: [] for kind in connection_kinds}
        for _ in range(args.repeat):
            for kind in connection_kinds:
                idle_runs[kind].append(idle_memory(kind, args.idle))
        for kind in connection_kinds:
            kib = section[kind] = statistics.median(idle_runs[kind])
            print(f"{kind:14} {args.idle} idle connections: {kib:.1f} KiB each", flush=True)
        ratios(section, "", "KiB per idle connection", connection_kinds)


def paced_latency(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """Latency at a set rate (``--paced`` deliveries/s to 1000 subscribers), not saturated."""
    subscribers = 1000
    per_second = max(1, args.paced // subscribers)
    print(
        f"\npaced: {subscribers} subscribers, {per_second} messages/s "
        f"({per_second * subscribers:,} deliveries/s)",
        flush=True,
    )
    for kind in SERVERS:
        runs = [
            fanout(kind, subscribers, args.warmup, args.measure, window=-per_second)
            for _ in range(args.repeat)
        ]
        row = figures["paced"][kind] = median_of(runs)
        print(
            f"{kind:14} p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
            f"server CPU {row['server_cpu_share']:.2f}",
            flush=True,
        )


#: (row name, server kind, server flags, the generator's environment), for compression().
COMPRESSION_RUNS: tuple[tuple[str, str, list[str], dict[str, str]], ...] = (
    ("triows off", "triows", ["--compression", "off"], {"LOADGEN_DEFLATE": "1"}),
    ("triows on", "triows", ["--compression", "on"], {"LOADGEN_DEFLATE": "1"}),
    ("websockets", "websockets", ["deflate"], {"LOADGEN_DEFLATE": "1"}),
)


def compression(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    """permessage-deflate: triows without and with it against websockets' default compression,
    ~1 KiB of realistic JSON per message, clients offering deflate as browsers do."""
    section = figures["compression"]
    print(
        f"\n{'compression':12} {'subs':>5} {'deliveries/s':>13} {'per CPU-s':>11} {'CPU':>5} "
        f"{'B/delivery':>10} {'p50 ms':>8} {'p99 ms':>8}",
        flush=True,
    )
    for subscribers in args.subscribers:
        for name, kind, flags, env in COMPRESSION_RUNS:
            runs = [
                fanout(
                    kind,
                    subscribers,
                    args.warmup,
                    args.measure,
                    extra=flags,
                    env={**env, "LOADGEN_PAYLOAD": "json"},
                )
                for _ in range(args.repeat)
            ]
            row = section[f"{name}/{subscribers}"] = median_of(runs)
            print(
                f"{name:12} {subscribers:>5} {row['deliveries_per_s']:>13,.0f} "
                f"{row['per_cpu_second']:>11,.0f} {row['server_cpu_share']:>5.2f} "
                f"{row['bytes_per_delivery']:>10,.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}",
                flush=True,
            )
        on, off, peer = (
            section[f"{n}/{subscribers}"] for n in ("triows on", "triows off", "websockets")
        )
        figures_now = {
            "on_vs_off_cpu": on["per_cpu_second"] / off["per_cpu_second"],
            "on_vs_websockets_cpu": on["per_cpu_second"] / peer["per_cpu_second"],
            "on_vs_off_bytes": on["bytes_per_delivery"] / off["bytes_per_delivery"],
        }
        section[f"ratios/{subscribers}"] = figures_now
        print(
            f"  at {subscribers}: deliveries per CPU-second, on / off "
            f"{figures_now['on_vs_off_cpu']:.2f}x (target >= 0.8x at 1000), on / websockets "
            f"{figures_now['on_vs_websockets_cpu']:.2f}x (target >= 3x); bytes per delivery, "
            f"on / off {figures_now['on_vs_off_bytes']:.0%} (target <= 45%)",
            flush=True,
        )
    if args.idle:
        # Idle memory with deflate negotiated: no zlib context is kept, so the same figure.
        for name, kind, flags, env in COMPRESSION_RUNS:
            kib = statistics.median(
                idle_memory(kind, args.idle, extra=flags, env=env) for _ in range(args.repeat)
            )
            section[f"idle_kib/{name}"] = kib
            print(f"{name:12} {args.idle} idle connections: {kib:.1f} KiB each", flush=True)


def ratios(
    section: dict[str, Any], field: str, text: str, kinds: tuple[str, ...] = SERVERS
) -> None:
    for peer in kinds:
        if peer == "triows" or "triows" not in section:
            continue
        top, bottom = section["triows"], section[peer]
        ratio = top[field] / bottom[field] if field else top / bottom
        section[f"ratio_{peer}"] = ratio
        print(f"  triows / {peer}, {text}: {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
