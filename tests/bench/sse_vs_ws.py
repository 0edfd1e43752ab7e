"""SSE streams against WebSocket connections: idle memory per subscriber and server CPU per
delivery (the figures in docs/design.md, "Server-Sent Events: one more way in").

    flock /tmp/triows-bench.lock .venv/bin/python tests/bench/sse_vs_ws.py

For each transport, three times: ``python -m triows`` in a process of its own; 1000 idle
subscribers of one channel (resident memory before and after, per subscriber); then 900 of
them leave and 300 publishes of ~1 KB JSON through ``/api/publish`` reach the other 100
(server CPU time, HTTP publishes included). Medians of 3; both transports in the same run.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

KEY = "k" * 16
SUBSCRIBERS = 1000
RECEIVERS = 100
PUBLISHES = 300


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # Limits and timers out of the way: what is measured is the delivery path.
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "triows", "--port", str(port), "--api-key", KEY),
            *("--log-level", "warning", "--max-connections-per-ip", "0"),
            *("--subscribe-rate", "0", "--user-subscribe-rate", "0"),
            *("--sse-keepalive", "600", "--heartbeat-interval", "600"),
        ]
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.3)
    return process, port


def wait_for(sock: socket.socket, marker: bytes) -> None:
    buffer = b""
    while marker not in buffer:
        buffer += sock.recv(65536)


def open_sse(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /sse?channel=bench HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(sock)
    for sock in socks:
        wait_for(sock, b"event: subscribed")
    return socks


def open_ws(port: int, count: int) -> list[socket.socket]:
    socks = []
    key = base64.b64encode(os.urandom(16)).decode()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        socks.append(sock)
    payload = json.dumps({"type": "subscribe", "channel": "bench"}).encode()
    for sock in socks:
        wait_for(sock, b"welcome")
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[n % 4] for n, byte in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    for sock in socks:
        wait_for(sock, b"subscribed")
    return socks


def publish(port: int) -> None:
    text = "x" * 1000
    for n in range(PUBLISHES):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/publish",
            data=json.dumps({"channel": "bench", "data": {"i": n, "text": text}}).encode(),
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request).read()


def drain(socks: list[socket.socket], last: bytes) -> None:
    selector = selectors.DefaultSelector()
    tails = {sock: b"" for sock in socks}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ, sock)
    done = 0
    while done < len(socks):
        for key, _ in selector.select(10):
            sock = key.data
            tails[sock] = tails[sock][-200:] + sock.recv(1 << 20)
            if last in tails[sock]:
                done += 1
                selector.unregister(sock)


def measure(opener: Callable[[int, int], list[socket.socket]]) -> tuple[float, float]:
    process, port = start()
    try:
        base = rss(process.pid)
        socks = opener(port, SUBSCRIBERS)
        time.sleep(0.5)
        per_subscriber = (rss(process.pid) - base) / SUBSCRIBERS
        for sock in socks[RECEIVERS:]:
            sock.close()
        time.sleep(0.5)
        before = cpu(process.pid)
        publish(port)
        drain(socks[:RECEIVERS], f'"i":{PUBLISHES - 1},'.encode())
        seconds = cpu(process.pid) - before
        for sock in socks[:RECEIVERS]:
            sock.close()
        return per_subscriber, seconds
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    for name, opener in (("websocket", open_ws), ("sse", open_sse)):
        runs = [measure(opener) for _ in range(3)]
        memory = sorted(run[0] for run in runs)[1]
        seconds = sorted(run[1] for run in runs)[1]
        rate = PUBLISHES * RECEIVERS / seconds
        print(
            f"{name:9}  idle RSS per subscriber {memory / 1024:5.1f} KiB   "
            f"{rate:8,.0f} deliveries per server CPU-second"
        )


if __name__ == "__main__":
    main()
