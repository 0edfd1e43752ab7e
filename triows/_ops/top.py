"""``python -m triows top --url http://host:port``: a live terminal view of a running server.

It polls ``GET /stats`` once a second (all workers of a ``--workers`` server are in one answer)
and draws totals, per-worker rows, latency percentiles, the broker and the top channels with
``rich``. ``--once`` prints one frame and exits (scripts, tests, a quick look over ssh).
A server that does not answer is shown as such and polled again; it is not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

#: Seconds one poll may take before the view says the server does not answer.
POLL_TIMEOUT = 2.0


def fetch(url: str, api_key: str | None = None) -> dict[str, Any]:
    """The server's ``/stats`` (OSError or ValueError when it cannot be had). A server with
    an API key wants it for ``/stats`` too."""
    request = urllib.request.Request(f"{url.rstrip('/')}/stats?history=0")
    if api_key:
        request.add_header("X-API-Key", api_key)
    with urllib.request.urlopen(request, timeout=POLL_TIMEOUT) as r:
        answer: dict[str, Any] = json.load(r)
    return answer


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _size(count: float) -> str:
    return f"{count / 2**20:.0f} MiB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"


def render(stats: dict[str, Any], url: str) -> Group:
    """One frame of the view, from a ``/stats`` answer."""
    total = stats["total"]
    server = stats["server"]
    workers = stats["workers"]
    broker = f"{total['broker']} {total['broker_state']}"
    if total.get("broker_buffered"):
        broker += f" ({total['broker_buffered']} buffered)"
    header = Text.assemble(
        ("triows ", "bold"),
        f"{url}  up {_duration(server['uptime'])}  workers {total['workers']}  broker ",
        (broker, "green" if total["broker_state"] == "up" else "bold red"),
    )
    summary = Table.grid(padding=(0, 3))
    for _ in range(4):
        summary.add_column(justify="right")
    summary.add_row(
        f"connections [bold]{total['connections']:,}[/]",
        f"subscriptions {total['subscriptions']:,}",
        f"published/s [bold]{total['publish_rate']:,.0f}[/]",
        f"delivered/s [bold]{total['delivery_rate']:,.0f}[/]",
    )
    summary.add_row(
        f"cpu {total['cpu']:.2f} cores",
        f"memory {_size(total['rss'])}",
        f"loop lag {_ms(total['loop_lag'])} ms",
        f"dropped {total['dropped']:,}  slow {total['slow_consumer_disconnects']:,}",
    )
    latency = Table(title="latency (ms, worst worker)", expand=False)
    for name in ("", "p50", "p95", "p99"):
        latency.add_column(name, justify="right")
    latency.add_row("publish→ack", *(_ms(total[f"ack_p{q}"]) for q in (50, 95, 99)))
    latency.add_row("delivery lag", *(_ms(total[f"lag_p{q}"]) for q in (50, 95, 99)))
    channels = Table(title="top channels", expand=False)
    channels.add_column("channel")
    channels.add_column("subscribers", justify="right")
    channels.add_column("published", justify="right")
    for name, subscribers, published in total["top_channels"]:
        channels.add_row(name, f"{subscribers:,}", f"{published:,}")
    if not total["top_channels"]:
        channels.add_row("(none)", "", "")
    parts: list[Any] = [header, summary, latency, channels]
    if len(workers) > 1:
        per_worker = Table(title="workers", expand=False)
        for name in ("worker", "pid", "conns", "pub/s", "deliv/s", "cpu", "memory", "lag ms"):
            per_worker.add_column(name, justify="right")
        for w in workers:
            per_worker.add_row(
                str(w.get("worker")),
                str(w.get("pid")),
                f"{w.get('connections', 0):,}",
                f"{w.get('publish_rate') or 0:,.0f}",
                f"{w.get('delivery_rate') or 0:,.0f}",
                f"{w.get('cpu') or 0:.2f}",
                _size(w.get("rss") or 0),
                _ms(w.get("loop_lag")),
            )
        parts.append(per_worker)
    return Group(*parts)


def _unreachable(url: str, error: Exception) -> Panel:
    return Panel(f"[bold red]{url} does not answer[/]: {error}", title="triows top")


def frame(url: str, api_key: str | None = None) -> Group | Panel:
    try:
        return render(fetch(url, api_key), url)
    except (OSError, ValueError, KeyError) as error:
        return _unreachable(url, error)


def run(
    url: str, *, once: bool, interval: float, console: Console, api_key: str | None = None
) -> int:
    if once:
        view = frame(url, api_key)
        console.print(view)
        return 1 if isinstance(view, Panel) else 0
    with Live(frame(url, api_key), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(frame(url, api_key))
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="triows top", description="Live view of a running triows server (GET /stats)."
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:8080", help="the server (default: %(default)s)"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default: 1)"
    )
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TRIOWS_API_KEY"),
        help="the server's API key, which /stats needs when one is set (default: $TRIOWS_API_KEY)",
    )
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must start with http:// or https://, got {args.url!r}")
    if not args.interval > 0:
        parser.error("--interval must be positive")
    return run(
        args.url,
        once=args.once,
        interval=args.interval,
        console=Console(file=sys.stdout),
        api_key=args.api_key,
    )
