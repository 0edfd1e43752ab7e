"""What an idle connection holds: a tracemalloc diff around N idle subscribed connections.

    python tests/bench/idle_probe.py [TREE] [N]

Starts ``python -m triows`` from TREE (default: this one) with the benchmark's flags, takes a
snapshot (tracemalloc starts then, so nothing of the start-up counts), opens N connections
with the load generator's ``idle`` mode (each greeted and subscribed), waits, takes another,
and prints the Python heap per connection and its largest allocation sites (the innermost
frames of each). The Python heap is what ``tracemalloc`` sees: about 0.8 KiB below the RSS
figure of ``run.py``'s idle connections.
"""

from __future__ import annotations

import linecache
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
from tests.bench.run import BENCH_FLAGS  # noqa: E402 - the flags every benchmark server gets

#: The server side: SIGUSR1 (re)starts tracemalloc and writes a snapshot to $PROBE_OUT.<n>.
SERVER = """
import gc, os, signal, sys, tracemalloc
count = [0]
def dump(*_):
    gc.collect()
    if not tracemalloc.is_tracing():
        tracemalloc.start(12)
    count[0] += 1
    out = os.environ["PROBE_OUT"] + "." + str(count[0])
    tracemalloc.take_snapshot().dump(out)
    open(out + ".done", "w").close()
signal.signal(signal.SIGUSR1, dump)
from triows._cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def main() -> None:
    tree = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parent.parent).resolve()
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        out = f"{directory}/snapshot"
        env = {**os.environ, "PYTHONPATH": str(tree), "PROBE_OUT": out}
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, "--port", str(port), *BENCH_FLAGS], cwd=tree, env=env
        )
        try:
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)

            def snapshot(n: int) -> tracemalloc.Snapshot:
                server.send_signal(signal.SIGUSR1)
                while not os.path.exists(f"{out}.{n}.done"):
                    time.sleep(0.1)
                return tracemalloc.Snapshot.load(f"{out}.{n}")

            before = snapshot(1)
            url = f"ws://127.0.0.1:{port}/"
            generator = subprocess.Popen(
                ["node", str(HERE / "loadgen.js"), "idle", url, "triows", str(connections)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert generator.stdout is not None
            assert generator.stdin is not None
            if not generator.stdout.readline().startswith("IDLE_READY"):
                raise RuntimeError("the idle connections failed")
            time.sleep(3.0)
            after = snapshot(2)
            generator.stdin.close()
            generator.wait(timeout=60)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    stats = after.compare_to(before, "traceback")
    total = sum(stat.size_diff for stat in stats)
    print(f"{total / connections:.0f} B of Python heap per idle connection")
    for stat in stats[:40]:
        if abs(stat.size_diff) < connections * 16:
            break
        print(f"{stat.size_diff / connections:7.0f} B {stat.count_diff / connections:5.2f} blocks")
        for frame in list(stat.traceback)[-3:]:
            line = linecache.getline(frame.filename, frame.lineno).strip()
            print(f"          {Path(frame.filename).name}:{frame.lineno}  {line[:80]}")


if __name__ == "__main__":
    main()
