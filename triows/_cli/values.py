"""The types of the CLI's flags: a flag's (or its variable's) text -> a value, or a message.

Each one raises ``argparse.ArgumentTypeError`` naming what was expected and what was given,
so that a bad value ends the process with one line an operator can act on.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

from .._core.outbox import SlowConsumerPolicy


def number(kind: str, minimum: float, *, integer: bool) -> Callable[[str], float]:
    """A finite number of at least ``minimum``, described as ``kind`` in messages."""

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected {kind} of at least {minimum:g}, got {text!r}"
            )
        return value

    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def port(text: str) -> int:
    value = int(number("an integer", 0, integer=True)(text))
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port must be at most 65535, got {text!r}")
    return value


#: The largest young-generation threshold ``gc.set_threshold`` takes (a C int).
MAX_GC_THRESHOLD = 2**31 - 1


def gc_threshold(text: str) -> int:
    """``--gc-threshold``: a count Python's collector can take (a larger one would be an
    OverflowError when the server starts, not a command-line error)."""
    value = int(number("an integer", 0, integer=True)(text))
    if value > MAX_GC_THRESHOLD:
        raise argparse.ArgumentTypeError(
            f"the threshold must be at most {MAX_GC_THRESHOLD}, got {text!r}"
        )
    return value


def channel_policy(text: str) -> tuple[str, SlowConsumerPolicy]:
    pattern, sep, policy = text.rpartition("=")
    choices = ", ".join(p.value for p in SlowConsumerPolicy)
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=POLICY, got {text!r}")
    try:
        return pattern, SlowConsumerPolicy(policy)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"policy must be one of {choices}, got {policy!r}"
        ) from None


def slow_consumer(text: str) -> SlowConsumerPolicy:
    try:
        return SlowConsumerPolicy(text)
    except ValueError:
        choices = ", ".join(p.value for p in SlowConsumerPolicy)
        raise argparse.ArgumentTypeError(f"must be one of {choices}, got {text!r}") from None


def message_size(text: str) -> int:
    value = byte_size(text)
    if value < 2048:
        raise argparse.ArgumentTypeError(f"expected at least 2048 bytes (2KiB), got {text!r}")
    return value


def worker_count(text: str) -> int:
    if text == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    return int(number("an integer or 'auto'", 1, integer=True)(text))


def yes_no(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("yes", "true", "1", "on"):
        return True
    if lowered in ("no", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def path_or_off(text: str) -> str:
    """A URL path, or ``off`` for none (``--sse-path off``): ``""``."""
    if text.lower() in ("off", "no", "none"):
        return ""
    if not text.startswith("/") or "?" in text:
        raise argparse.ArgumentTypeError(f"expected a path starting with '/' or off, got {text!r}")
    return text


def channel_history(text: str) -> tuple[str, int, float]:
    pattern, sep, bounds = text.rpartition("=")
    size, colon, ttl = bounds.partition(":")
    if not sep or not pattern or not colon:
        raise argparse.ArgumentTypeError(f"expected PATTERN=SIZE:TTL, got {text!r}")
    try:
        return pattern, int(size), float(ttl)
    except ValueError:
        raise argparse.ArgumentTypeError(f"SIZE and TTL must be numbers, got {bounds!r}") from None


UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def byte_size(text: str) -> int:
    """``1048576``, ``512KiB``, ``64M``, ``2GiB`` (binary units)."""
    written = text.strip()
    digits = written.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ")
    unit = written[len(digits) :].strip().lower().removesuffix("b").removesuffix("i")
    if not digits or unit not in UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size in bytes such as 1048576, 512KiB, 64MiB or 2GiB, got {text!r}"
        )
    try:
        value = float(digits) * UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in bytes, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a size in bytes, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative, got {text!r}")
    return int(value)


#: The common kinds of the option table.
POSITIVE_INT = number("an integer", 1, integer=True)
COUNT = number("an integer", 0, integer=True)
SECONDS = number("a number of seconds", 0, integer=False)
RATE = number("a number per second", 0, integer=False)
POSITIVE_SECONDS = number("a positive number of seconds", 1e-3, integer=False)


def pem_file(text: str) -> str:
    """A file's text (``--jwt-public-key FILE``): read at start, so a wrong path stops the
    process at once rather than refusing every token later."""
    try:
        with open(os.path.expanduser(text), encoding="ascii") as file:
            return file.read(1 << 20)
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc}") from None
