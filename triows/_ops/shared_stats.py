"""Figures shared by the processes of one ``--workers`` server, through files.

A scrape of ``/metrics`` or ``/stats`` reaches one worker (the kernel spreads connections), yet
must show the whole server. Each worker writes its figures to ``<dir>/<pid>.json`` once per
monitor sample, and also right before it answers ``/metrics`` or ``/stats``; whoever is asked
reads every file.

Counters must never go down from one scrape to the next (Prometheus reads that as a reset),
whichever worker answers and whichever workers died meanwhile. These rules make the sums
monotonic:

- Whatever a scrape reports for a worker was in that worker's file first: a scrape writes
  its own worker's fresh figures before answering with them, and reads the others' from their
  files.
- A file only ever grows. Figures are gathered on the event loop, where each gathering takes
  the next *generation* (:func:`snapshot`), and written by worker threads, several at once when
  scrapes overlap; a write whose generation is not newer than the file's is skipped (one lock
  per process orders them), so a slow thread never puts older figures back. Each write goes to
  a temporary name of its own and is renamed into place: a reader never sees half a file, and
  two writers never mix their bytes. A reader that still fails to read a file (a disk error)
  counts that worker's last record it did read (:func:`_records`).
- A worker that exited keeps counting: the supervisor folds its last counters and histograms
  (and its summary's counters, for ``/stats``) into ``<dir>/retired-counters`` (:func:`remove`),
  and names the worker there in the same atomic write, so a reader that still finds the
  worker's own file skips it instead of counting it twice. As in ``prometheus_client``'s
  multiprocess mode, gauges of dead workers stop counting; so do the gauges of a file older
  than :data:`STALE_AFTER` samples (its counters keep counting).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from .metrics import Family, merge

#: Samples after which a worker's file is taken for a dead worker's (its gauges stop counting).
STALE_AFTER = 5
#: Family types whose values only grow: kept when their worker is gone.
MONOTONIC = frozenset({"counter", "histogram"})
#: The fields of a worker's summary (``/stats``) that only grow: kept when it is gone.
SUMMARY_COUNTERS = ("published", "delivered", "dropped", "slow_consumer_disconnects")
#: This process among all that ever wrote to the directory (a pid can be reused).
INSTANCE = f"{os.getpid()}-{secrets.token_hex(4)}"
RETIRED = "retired-counters"
#: Seconds a retired worker stays named in the retired counters. A reader reads the workers'
#: files first and the retired counters right after (milliseconds apart): a worker retired in
#: between must be named there, not for ever (one entry per worker that ever exited).
ABSORBED_KEPT = 600.0

#: Generations of the snapshots this process made, in the order it gathered them.
_generations = itertools.count(1)
#: Orders this process's writes: the generation each directory's file holds.
_write_lock = threading.Lock()
_written: dict[str, int] = {}
#: The last record each reader of this process read from each file (a failed read uses it).
_read_lock = threading.Lock()
_last_read: dict[str, dict[str, Any]] = {}


@attrs.frozen
class Snapshot:
    """This worker's figures as gathered at one moment; ``generation`` orders them."""

    generation: int
    families: list[Family]
    summary: dict[str, Any]


def snapshot(families: list[Family], summary: dict[str, Any]) -> Snapshot:
    """Figures just gathered (on the event loop, so generations follow the gathering order)."""
    return Snapshot(next(_generations), families, summary)


def path_of(directory: str, pid: int) -> Path:
    return Path(directory) / f"{pid}.json"


def write(directory: str, figures: Snapshot) -> bool:
    """Write this worker's file (in a worker thread); False when a newer snapshot is there."""
    target = path_of(directory, os.getpid())
    record = {
        "pid": os.getpid(),
        "instance": INSTANCE,
        "generation": figures.generation,
        "written": time.time(),
        "families": figures.families,
        "summary": figures.summary,
    }
    with _write_lock:
        if figures.generation <= _written.get(directory, 0):
            return False
        _replace(target, record)
        _written[directory] = figures.generation
        return True


def _replace(target: Path, value: Any) -> None:
    """Write ``value`` to ``target`` at once: a temporary file of this write's own, renamed."""
    temporary = target.with_name(f"{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        temporary.write_text(json.dumps(value, separators=(",", ":")))
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _records(directory: str) -> list[dict[str, Any]]:
    """Every worker's latest record but this process's own."""
    records: list[dict[str, Any]] = []
    try:
        files = sorted(Path(directory).glob("*.json"))
    except OSError:
        return records
    own = os.getpid()
    for file in files:
        name = str(file)
        try:
            record = json.loads(file.read_text())
        except FileNotFoundError:
            with _read_lock:
                _last_read.pop(name, None)  # retired: counted in the retired counters
            continue
        except (OSError, ValueError):
            record = None  # unreadable now: the last record read from it counts
        with _read_lock:
            record = _newer(_last_read.get(name), record)
            if record is None:
                continue  # never read: not ours
            _last_read[name] = record
        if record.get("pid") != own:
            records.append(record)
    with _read_lock:  # forget the files that are gone
        names = {str(file) for file in files}
        for name in [n for n in _last_read if Path(n).parent == Path(directory)]:
            if name not in names:
                del _last_read[name]
    return records


def _newer(known: dict[str, Any] | None, read: Any) -> dict[str, Any] | None:
    """The record to count for a file: what was read, unless unreadable or older than what
    this process read from it before (the same writer, a lower generation)."""
    if not isinstance(read, dict):
        return known
    if (
        known is not None
        and known.get("instance") == read.get("instance")
        and known.get("generation", 0) > read.get("generation", 0)
    ):
        return known
    return read


def read_other_summaries(
    directory: str, interval: float
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """What ``/stats`` adds to this worker's summary: the other live workers' summaries, and
    the counters of workers gone (retired, or silent for :data:`STALE_AFTER` samples), which
    the whole server's totals keep."""
    oldest = time.time() - STALE_AFTER * max(interval, 1.0)
    records = _records(directory)
    retired = _read_retired(directory)
    live: list[dict[str, Any]] = []
    gone = dict(retired["summary"])
    for record in records:
        if record.get("instance") in retired["absorbed"]:
            continue  # exited: counted in the retired counters
        summary = record.get("summary") or {}
        if record.get("written", 0) >= oldest:
            live.append(summary)
        else:
            _add_counters(gone, summary)
    return live, gone


def read_other_families(directory: str, interval: float) -> list[list[Family]]:
    """What ``/metrics`` adds to this worker's own figures: the other workers' families and
    the retired counters of workers gone. The workers' files are read first, the retired
    counters last: a worker retired in between is then named there and skipped, never
    counted twice nor missed."""
    oldest = time.time() - STALE_AFTER * max(interval, 1.0)
    records = _records(directory)
    retired = _read_retired(directory)
    found: list[list[Family]] = []
    for record in records:
        if record.get("instance") in retired["absorbed"]:
            continue  # exited: counted in the retired counters
        families = record.get("families") or []
        if record.get("written", 0) < oldest:
            families = [f for f in families if f.get("type") in MONOTONIC]
        found.append(families)
    if retired["families"]:
        found.append(retired["families"])
    return found


def _add_counters(into: dict[str, float], summary: dict[str, Any]) -> None:
    for name in SUMMARY_COUNTERS:
        value = summary.get(name)
        if isinstance(value, int | float):
            into[name] = into.get(name, 0) + value


def _read_retired(directory: str) -> dict[str, Any]:
    try:
        retired = json.loads((Path(directory) / RETIRED).read_text())
    except (OSError, ValueError):
        retired = None
    if not isinstance(retired, dict):
        retired = {}
    absorbed = retired.get("absorbed")
    return {
        "absorbed": absorbed if isinstance(absorbed, dict) else {},
        "families": retired.get("families") or [],
        "summary": retired.get("summary") or {},
    }


def remove(directory: str, pid: int) -> None:
    """A worker exited (the supervisor calls this, from a worker thread): its gauges stop
    counting, its counters and histograms are kept in the retired counters."""
    path = path_of(directory, pid)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and (record.get("families") or record.get("summary")):
        retired = _read_retired(directory)
        instance = record.get("instance") or f"{pid}-unnamed"
        if instance not in retired["absorbed"]:
            now = time.time()
            kept = [f for f in record.get("families") or [] if f.get("type") in MONOTONIC]
            retired["families"] = merge([retired["families"], kept])
            _add_counters(retired["summary"], record.get("summary") or {})
            retired["absorbed"] = {
                name: at
                for name, at in retired["absorbed"].items()
                if isinstance(at, int | float) and now - at < ABSORBED_KEPT
            }
            retired["absorbed"][instance] = now
            try:
                _replace(Path(directory) / RETIRED, retired)
            except OSError:
                pass  # the directory is going away (the supervisor stops)
    try:
        leftovers = list(Path(directory).glob(f"{pid}.json.*.tmp"))  # a write it never ended
    except OSError:
        leftovers = []
    for file in [path, *leftovers]:
        try:
            file.unlink()
        except FileNotFoundError:
            pass
