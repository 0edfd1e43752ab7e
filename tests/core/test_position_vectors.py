"""The subscribe-position rule as data (tests/vectors/positions.json) against
triows/_core/tracking.py's check_position, and against the server's parser: every position a
client sends is one the server takes.

The same file runs against triows.js's checkPosition (tests/js/position.test.mjs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from triows._core.protocol import Subscribe, parse_request
from triows._core.tracking import check_position

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "positions.json").read_text()
)["vectors"]


@pytest.mark.parametrize("case", CASES, ids=[case["rule"] for case in CASES])
def test_vector(case: dict[str, Any]) -> None:
    args = (case.get("since"), case.get("epoch"), case.get("rewind"))
    if case["error"] is None:
        check_position(*args)
    else:
        with pytest.raises(ValueError, match=f"^{re.escape(case['error'])}$"):
            check_position(*args)


@pytest.mark.parametrize(
    "case", [case for case in CASES if case["error"] is None], ids=lambda case: case["rule"]
)
def test_what_a_client_sends_the_server_takes(case: dict[str, Any]) -> None:
    frame = {"type": "subscribe", "channel": "c", "id": 1}
    frame.update({key: case[key] for key in ("since", "epoch", "rewind") if key in case})
    request = parse_request(json.dumps(frame))
    assert isinstance(request, Subscribe)
    assert (request.since, request.epoch, request.rewind) == (
        case.get("since"),
        case.get("epoch"),
        case.get("rewind"),
    )
