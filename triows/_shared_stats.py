"""Figures shared by the processes of one ``--workers`` server, through files.

A scrape of ``/metrics`` or ``/stats`` reaches one worker (the kernel spreads connections), yet
must show the whole server. Each worker's monitor writes its figures once per sample to
``<dir>/<pid>.json`` (written to a temporary name and renamed: a reader never sees half a
file); whoever is asked reads every file, its own figures fresh. Files older than
:data:`STALE_AFTER` samples belong to workers that are gone (the supervisor also removes a
worker's file when it exits) and are skipped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

#: Samples after which a worker's file is taken for a dead worker's.
STALE_AFTER = 5


def path_of(directory: str, pid: int) -> Path:
    return Path(directory) / f"{pid}.json"


def write(directory: str, families: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    target = path_of(directory, os.getpid())
    temporary = target.with_suffix(".tmp")
    record = {"pid": os.getpid(), "written": time.time(), "families": families, "summary": summary}
    temporary.write_text(json.dumps(record, separators=(",", ":")))
    temporary.replace(target)


def read_others(directory: str, interval: float) -> list[dict[str, Any]]:
    """The other workers' latest records (``families`` and ``summary``)."""
    records: list[dict[str, Any]] = []
    oldest = time.time() - STALE_AFTER * max(interval, 1.0)
    own = os.getpid()
    try:
        files = sorted(Path(directory).glob("*.json"))
    except OSError:
        return records
    for file in files:
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError):
            continue  # gone between glob and read, or not ours
        if (
            isinstance(record, dict)
            and record.get("pid") != own
            and record.get("written", 0) >= oldest
        ):
            records.append(record)
    return records


def remove(directory: str, pid: int) -> None:
    """A worker exited: its figures stop counting (the supervisor calls this)."""
    for suffix in (".json", ".tmp"):
        try:
            path_of(directory, pid).with_suffix(suffix).unlink()
        except FileNotFoundError:
            pass
