"""Benchmark: two triows nodes through one Redis against the same two nodes through a Redis
Cluster of three masters, in one run.

    flock /tmp/triows-bench.lock python tests/bench/shards.py [--repeat 3] [--channels 300]

Publishers (Node ``ws``, shards.js) on node A, one subscriber per channel on node B, so every
message crosses between the nodes through Redis: numbered by the publish script on the
channel's shard and carried by pub/sub (``PUBLISH`` on one Redis, ``SPUBLISH`` on the cluster).
Figures: publications acked per second, deliveries per second, the nodes' CPU and the Redis
processes' CPU (summed over the cluster's masters) as shares of one core. Medians over
--repeat runs, both setups alternating within each repeat. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
from tests.bench.run import BENCH_FLAGS, cpu_seconds, free_port, stop  # noqa: E402
from tests.rediscluster import RedisClusterNodes  # noqa: E402
from tests.redisserver import RedisServer  # noqa: E402


def start_node(port: int, redis_url: str) -> subprocess.Popen[bytes]:
    import socket

    command = [
        sys.executable,
        "-m",
        "triows",
        "--port",
        str(port),
        "--redis-url",
        redis_url,
        *BENCH_FLAGS,
    ]
    node = subprocess.Popen(command)
    for _ in range(200):
        if node.poll() is not None:
            raise RuntimeError(f"triows exited with {node.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return node
        except OSError:
            time.sleep(0.05)
    node.kill()
    raise RuntimeError("triows did not start listening")


def run_once(args: argparse.Namespace, redis_url: str, redis_pids: list[int]) -> dict[str, float]:
    ports = free_port(), free_port()
    nodes = [start_node(port, redis_url) for port in ports]
    try:
        time.sleep(1.0)  # both nodes connected to Redis
        generator = subprocess.Popen(
            [
                "node",
                str(HERE / "shards.js"),
                f"ws://127.0.0.1:{ports[0]}/",
                f"ws://127.0.0.1:{ports[1]}/",
                str(args.channels),
                str(args.publishers),
                str(args.window),
                str(args.warmup),
                str(args.measure),
            ],
            cwd=HERE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert generator.stdout is not None
        marks: dict[str, tuple[float, float]] = {}
        result: dict[str, Any] = {}
        for line in generator.stdout:
            line = line.strip()
            if line in ("MEASURE_START", "MEASURE_END"):
                node_cpu = sum(cpu_seconds(node.pid) for node in nodes)
                redis_cpu = sum(cpu_seconds(pid) for pid in redis_pids)
                marks[line] = (node_cpu, redis_cpu)
            elif line.startswith("{"):
                result = json.loads(line)
        if generator.wait(timeout=args.warmup + args.measure + 120) != 0 or not result:
            raise RuntimeError("the load generator failed")
    finally:
        for node in nodes:
            stop(node)
    seconds = result["seconds"]
    start, end = marks["MEASURE_START"], marks["MEASURE_END"]
    return {
        "publications_per_s": result["acks"] / seconds,
        "deliveries_per_s": result["deliveries"] / seconds,
        "nodes_cpu": (end[0] - start[0]) / seconds,
        "redis_cpu": (end[1] - start[1]) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--channels", type=int, default=300)
    parser.add_argument("--publishers", type=int, default=30)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--measure", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        single = RedisServer(Path(directory) / "single")
        single.directory.mkdir()
        cluster = RedisClusterNodes(Path(directory) / "cluster")
        single.start()
        try:
            cluster.start()
            setups = {
                "one Redis": (single.url, [single]),
                "cluster x3": (cluster.url, cluster.masters),
            }
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
            for _ in range(args.repeat):
                for name, (url, servers) in setups.items():
                    pids = [server.process.pid for server in servers if server.process]
                    runs[name].append(run_once(args, url, pids))
        finally:
            cluster.stop()
            single.stop()
    print(
        f"\n{args.channels} channels, {args.publishers} publishers x {args.window} in flight, "
        f"median of {args.repeat}"
    )
    print(
        f"{'':12} {'publications/s':>15} {'deliveries/s':>13} {'nodes CPU':>10} {'Redis CPU':>10}"
    )
    figures = {}
    for name, results in runs.items():
        median = {key: statistics.median(r[key] for r in results) for key in results[0]}
        figures[name] = median
        print(
            f"{name:12} {median['publications_per_s']:15.0f} {median['deliveries_per_s']:13.0f} "
            f"{median['nodes_cpu']:10.2f} {median['redis_cpu']:10.2f}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
