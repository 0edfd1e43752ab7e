"""The tracker rules as data (tests/vectors/tracking.json) against triows/_core/tracking.py.

The same file runs against triows.js (tests/js/tracking.test.mjs): one contract, two trackers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from triows._core.backlog import Backlog
from triows._core.tracking import Gap, Message, Recovered, Tracked, Tracker

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "tracking.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text())["vectors"]


def as_dict(event: Tracked) -> dict[str, Any]:
    """An event as the vectors write it."""
    if isinstance(event, Message):
        return {
            "type": "message",
            "channel": event.channel,
            "seq": event.seq,
            "id": event.id,
            "data": event.data,
            "from": event.sender,
        }
    if isinstance(event, Gap):
        return {
            "type": "gap",
            "channel": event.channel,
            "first": event.first,
            "last": event.last,
            "reason": event.reason,
        }
    assert isinstance(event, Recovered)
    return {"type": "recovered", "channel": event.channel, "epoch": event.epoch, "seq": event.seq}


def check_events(got: list[dict[str, Any]], expected: list[dict[str, Any]], where: str) -> None:
    """Same events in the same order, compared on the keys the vector gives."""
    assert len(got) == len(expected), f"{where}: got {got}"
    shown = [
        {key: event.get(key) for key in want} for event, want in zip(got, expected, strict=True)
    ]
    assert shown == expected, f"{where}: got {got}"


def run(case: dict[str, Any]) -> None:
    tracker = Tracker()
    buffers: dict[str, Backlog] = {}
    capacity: int | None = None
    for number, step in enumerate(case["steps"]):
        where = f"step {number} {json.dumps(step)}"
        if "track" in step:
            tracker.track(step["track"])
        elif "untrack" in step:
            tracker.untrack(step["untrack"])
        elif "welcome" in step:
            tracker.add_client_id(step["welcome"])
        elif "sent" in step:
            tracker.expect_ack(step["sent"]["id"], step["sent"]["channel"])
        elif "frame" in step:
            got = tracker.receive(step["frame"])
            check_events([as_dict(e) for e in got], step["events"], where)
            if capacity is not None:
                for event in got:
                    assert not isinstance(event, Recovered)
                    backlog = buffers.setdefault(event.channel, Backlog(event.channel, capacity))
                    backlog.put(event)
        elif "resume" in step:
            for channel, expected in step["resume"].items():
                resume = tracker.resume_from(channel)
                got_resume = None if resume is None else {"since": resume[0], "epoch": resume[1]}
                assert got_resume == expected, f"{where}: got {got_resume}"
        elif "buffer" in step:
            capacity = step["buffer"]
        elif "read" in step:
            backlog = buffers[step["read"]]
            read: list[dict[str, Any]] = []
            while (taken := backlog.take()) is not None:
                assert isinstance(taken, Message | Gap)
                read.append(as_dict(taken))
            check_events(read, step["events"], where)
        else:
            raise AssertionError(f"unknown step {step}")


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any]) -> None:
    if "python" not in case.get("only", ["python"]):
        pytest.skip(case["why"])
    run(case)


def test_every_rule_has_vectors_for_both_trackers() -> None:
    rules = {case["rule"] for case in CASES}
    assert rules == {
        "first subscription",
        "recovered",
        "exact gap",
        "epoch changed",
        "lagging node",
        "already followed",
        "own publications",
        "subscription refused",
        "subscription overflow",
        "jumps and late arrivals",
        "malformed frames",
        "rewind",
    }
    for case in CASES:
        assert case["rule"], case["name"]
        assert case["steps"], case["name"]
        assert "only" not in case or case.get("why"), f"{case['name']}: say why it is not shared"
