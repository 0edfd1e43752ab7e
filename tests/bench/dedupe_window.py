"""The dedupe window alone, in process: µs per publish with an id (a lookup that misses, then
the record), in the steady state of full windows.

    python tests/bench/dedupe_window.py [--principals 50] [--size 1000] [--records 200000]
        [--cold 2000] [--baseline <tree>]

Principals are shaped like the server's (``("connection", client id)``), publish to one
channel with increasing integer ids, round robin (as 50 closed-loop clients do), each window
full (``size`` ids). ``--cold N`` also times N records with a 32 MiB buffer read between two
of them, so that the window's memory is out of the caches as it is live, where the kernel,
trio and the load generator evict it (docs/design.md, "The dedupe window, live"). With
``--baseline`` the window of that tree (its ``triows/_core/dedupe.py``) is timed too, in
alternation.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import time
from pathlib import Path
from typing import Any

import triows._core.dedupe


def load(tree: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"dedupe_{abs(hash(tree))}", Path(tree) / "triows/_core/dedupe.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DedupeWindow


def filled(cls: Any, principals: list[object], size: int) -> tuple[Any, int]:
    window = cls(size=size, ttl=300.0, max_principals=100_000, max_entries=1_000_000)
    n = 0
    for _ in range(size):
        for principal in principals:
            window.record(principal, "rpc", n, n, 1.0 + n * 1e-6)
            n += 1
    return window, n


def hot(cls: Any, principals: list[object], size: int, records: int) -> float:
    window, n = filled(cls, principals, size)
    lookup, record = window.lookup, window.record
    count = len(principals)
    gc.disable()
    start = time.perf_counter()
    for k in range(n, n + records):
        principal = principals[k % count]
        now = 1.0 + k * 1e-6
        if lookup(principal, "rpc", k, now) is None:
            record(principal, "rpc", k, k, now)
    elapsed = time.perf_counter() - start
    gc.enable()
    assert window.entries == count * size
    return elapsed / records * 1e6


def cold(cls: Any, principals: list[object], size: int, records: int, mib: int) -> float:
    window, n = filled(cls, principals, size)
    lookup, record = window.lookup, window.record
    count = len(principals)
    buffer = bytearray(mib << 20)
    clock = time.perf_counter
    spent = 0.0
    gc.disable()
    for k in range(n, n + records):
        buffer[::64]  # every cache line of the buffer: the window's memory leaves the caches
        principal = principals[k % count]
        now = 1.0 + k * 1e-6
        start = clock()
        if lookup(principal, "rpc", k, now) is None:
            record(principal, "rpc", k, k, now)
        spent += clock() - start
    empty = 0.0
    for _ in range(records):  # the timer's own cost, subtracted
        start = clock()
        empty += clock() - start
    gc.enable()
    return (spent - empty) / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--principals", type=int, default=50)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--cold", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mib", type=int, default=32, help="the buffer read between records")
    parser.add_argument("--baseline")
    args = parser.parse_args()
    principals: list[object] = [("connection", f"c{i:08x}") for i in range(args.principals)]
    kinds = [("this tree", triows._core.dedupe.DedupeWindow)]
    if args.baseline:
        kinds.append(("baseline", load(args.baseline)))
    for _ in range(args.repeat):
        for label, cls in kinds:
            warm = hot(cls, principals, args.size, args.records)
            line = f"{label:10s} hot {warm:5.2f} µs"
            if args.cold:
                line += f"  cold {cold(cls, principals, args.size, args.cold, args.mib):5.2f} µs"
            print(line, flush=True)


if __name__ == "__main__":
    main()
