"""The pacing and retry rules as data (tests/vectors/retry.json) against triows/_core/retry.py
and triows/_core/close_codes.py.

The same file runs against triows.js (tests/js/retry.test.mjs): one contract, two clients.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from triows._core.close_codes import (
    DO_NOT_RECONNECT,
    RECONNECT_ALLOWED,
    is_disconnect,
    refusal_close_code,
    refusal_status,
)
from triows._core.retry import Attempts, Ending, Pacer

VECTORS = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "retry.json").read_text()
)
CASES: list[dict[str, Any]] = VECTORS["vectors"]


def run_pacer(config: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    random = config["random"]
    pacer = Pacer[str](config["window"], config["base"], config["cap"], lambda: random)
    for number, step in enumerate(steps):
        where = f"step {number} {json.dumps(step)}"
        if "add" in step:
            for key in step["add"]:
                pacer.add(key)
        elif "take" in step:
            assert pacer.take() == step["take"], where
        elif "answered" in step:
            assert pacer.answered(step["answered"]) == step.get("result", True), where
        elif "refused" in step:
            assert pacer.refused(step["refused"]) == step["wait"], where
        elif "resume" in step:
            pacer.resume()
        elif "discard" in step:
            assert pacer.discard(step["discard"]) == step["result"], where
        elif "restart" in step:
            pacer.restart()
        elif "size" in step:
            assert len(pacer) == step["size"], where
        else:
            raise AssertionError(f"unknown step {where}")


def run_attempts(config: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    def new() -> Attempts:
        random = config["random"]
        return Attempts(
            base=config["base"],
            cap=config["cap"],
            max_attempts=config["max_attempts"],
            token_function=config["token"] == "function",
            connect_timeout=config["connect_timeout"],
            now=0.0,
            rand=lambda: random,
        )

    attempts = new()
    for number, step in enumerate(steps):
        where = f"step {number} {json.dumps(step)}"
        if step.get("new"):
            attempts = new()
            continue
        verdict = attempts.ended(Ending(**step["ended"]), step["at"])
        got = {
            "stop": None if verdict.stop is None else verdict.stop.value,
            "wait": verdict.wait,
            "failures": verdict.failures,
            "status": verdict.status,
        }
        expected = step["verdict"]
        assert {key: got[key] for key in expected} == expected, f"{where}: got {got}"


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any]) -> None:
    if "pacer" in case:
        run_pacer(case["pacer"], case["steps"])
    else:
        run_attempts(case["attempts"], case["steps"])


@pytest.mark.parametrize("row", VECTORS["refusals"], ids=lambda row: str(row["status"]))
def test_refusals_as_close_codes(row: dict[str, Any]) -> None:
    assert refusal_close_code(row["status"]) == row["code"]
    assert refusal_status(row["code"]) == row["status"]
    assert (row["code"] in RECONNECT_ALLOWED) == row["reconnect"]
    assert (row["code"] in DO_NOT_RECONNECT) != row["reconnect"]


@pytest.mark.parametrize(
    "row", VECTORS["disconnects"], ids=lambda row: f"{row['code']}-{row['welcomed']}"
)
def test_which_server_closes_are_disconnects(row: dict[str, Any]) -> None:
    assert is_disconnect(row["code"]) == row["reported"]
    assert (row["code"] is None or row["code"] not in DO_NOT_RECONNECT) == row["reconnect"]


def test_every_rule_has_vectors() -> None:
    assert {case["rule"] for case in CASES} == {
        "window",
        "not now",
        "reconnect",
        "refusals",
        "token function",
        "first connection",
    }
