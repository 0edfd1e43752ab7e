"""Figures shared by the processes of one ``--workers`` server, through files.

A scrape of ``/metrics`` or ``/stats`` reaches one worker (the kernel spreads connections), yet
must show the whole server. Each worker writes its figures to ``<dir>/<pid>.json`` (written to
a temporary name and renamed: a reader never sees half a file) once per monitor sample, and
also right before it answers ``/metrics``; whoever is asked reads every file.

Counters must never go down from one scrape to the next (Prometheus reads that as a reset),
whichever worker answers and whichever workers died meanwhile. Two rules make the sums
monotonic:

- Whatever a scrape reports for a worker was in that worker's file first: a scrape writes
  its own worker's fresh figures before answering with them, and reads the others' from their
  files. A file only ever grows (one writer, counters that only grow), so the next scrape, on
  any worker, reads at least as much for every worker.
- A worker that exited keeps counting: the supervisor folds its last counters and histograms
  into ``<dir>/retired-counters`` (:func:`remove`), and names the worker there in the same
  atomic write, so a reader that still finds the worker's own file skips it instead of
  counting it twice. As in ``prometheus_client``'s multiprocess mode, gauges of dead workers
  stop counting; so do the gauges of a file older than :data:`STALE_AFTER` samples.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from .metrics import Family, merge

#: Samples after which a worker's file is taken for a dead worker's (its gauges stop counting).
STALE_AFTER = 5
#: Family types whose values only grow: kept when their worker is gone.
MONOTONIC = frozenset({"counter", "histogram"})
#: This process among all that ever wrote to the directory (a pid can be reused).
INSTANCE = f"{os.getpid()}-{secrets.token_hex(4)}"
RETIRED = "retired-counters"


def path_of(directory: str, pid: int) -> Path:
    return Path(directory) / f"{pid}.json"


def write(directory: str, families: list[Family], summary: dict[str, Any]) -> None:
    target = path_of(directory, os.getpid())
    record = {
        "pid": os.getpid(),
        "instance": INSTANCE,
        "written": time.time(),
        "families": families,
        "summary": summary,
    }
    _replace(target, record)


def _replace(target: Path, value: Any) -> None:
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, separators=(",", ":")))
    temporary.replace(target)


def _records(directory: str) -> list[dict[str, Any]]:
    """Every worker's latest record but this process's own."""
    records: list[dict[str, Any]] = []
    try:
        files = sorted(Path(directory).glob("*.json"))
    except OSError:
        return records
    own = os.getpid()
    for file in files:
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError):
            continue  # gone between glob and read, or not ours
        if isinstance(record, dict) and record.get("pid") != own:
            records.append(record)
    return records


def read_others(directory: str, interval: float) -> list[dict[str, Any]]:
    """The other live workers' latest records (``families`` and ``summary``)."""
    oldest = time.time() - STALE_AFTER * max(interval, 1.0)
    return [record for record in _records(directory) if record.get("written", 0) >= oldest]


def read_other_families(directory: str, interval: float) -> list[list[Family]]:
    """What ``/metrics`` adds to this worker's own figures: the other workers' families and
    the retired counters of workers gone. The workers' files are read first, the retired
    counters last: a worker retired in between is then named there and skipped, never
    counted twice nor missed."""
    oldest = time.time() - STALE_AFTER * max(interval, 1.0)
    records = _records(directory)
    retired = _read_retired(directory)
    absorbed = set(retired["absorbed"])
    found: list[list[Family]] = []
    for record in records:
        if record.get("instance") in absorbed:
            continue  # exited: counted in the retired counters
        families = record.get("families") or []
        if record.get("written", 0) < oldest:
            families = [f for f in families if f.get("type") in MONOTONIC]
        found.append(families)
    if retired["families"]:
        found.append(retired["families"])
    return found


def _read_retired(directory: str) -> dict[str, Any]:
    try:
        retired = json.loads((Path(directory) / RETIRED).read_text())
    except (OSError, ValueError):
        retired = None
    if not isinstance(retired, dict):
        return {"absorbed": [], "families": []}
    return retired


def remove(directory: str, pid: int) -> None:
    """A worker exited (the supervisor calls this): its gauges stop counting, its counters and
    histograms are kept in the retired counters."""
    path = path_of(directory, pid)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("families"):
        retired = _read_retired(directory)
        instance = record.get("instance") or f"{pid}-unnamed"
        if instance not in retired["absorbed"]:
            kept = [f for f in record["families"] if f.get("type") in MONOTONIC]
            retired["families"] = merge([retired["families"], kept])
            retired["absorbed"].append(instance)
            try:
                _replace(Path(directory) / RETIRED, retired)
            except OSError:
                pass  # the directory is going away (the supervisor stops)
    for suffix in (".json", ".tmp"):
        try:
            path.with_suffix(suffix).unlink()
        except FileNotFoundError:
            pass
