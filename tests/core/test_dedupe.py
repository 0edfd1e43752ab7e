"""The publish dedupe window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from triows._core.dedupe import DedupeWindow


def test_repeat_is_found_with_its_seq() -> None:
    window = DedupeWindow(size=10, ttl=60, max_principals=10)
    assert window.lookup("alice", "c", "k1", now=0) is None
    window.record("alice", "c", "k1", 7, now=0)
    assert window.lookup("alice", "c", "k1", now=1) == 7
    assert window.lookup("bob", "c", "k1", now=1) is None  # per principal
    assert window.lookup("alice", "d", "k1", now=1) is None  # per channel


def test_window_expires_by_time_and_count() -> None:
    window = DedupeWindow(size=2, ttl=10, max_principals=10)
    window.record("a", "c", 1, 1, now=0)
    window.record("a", "c", 2, 2, now=5)
    window.record("a", "c", 3, 3, now=6)
    assert window.lookup("a", "c", 1, now=6) is None  # pushed out by count
    assert window.lookup("a", "c", 2, now=14) == 2
    assert window.lookup("a", "c", 2, now=15) is None  # expired
    window.expire(now=100)
    assert window.principals == 0


def test_principals_are_capped() -> None:
    window = DedupeWindow(size=5, ttl=60, max_principals=2)
    for name in ("a", "b", "a", "c"):
        window.record(name, "ch", 1, 1, now=0)
    assert window.lookup("b", "ch", 1, now=0) is None  # least recently active went first
    assert window.lookup("a", "ch", 1, now=0) == 1


def test_disabled_window_records_nothing() -> None:
    window = DedupeWindow(size=0, ttl=60, max_principals=2)
    window.record("a", "c", 1, 1, now=0)
    assert window.lookup("a", "c", 1, now=0) is None


@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 20)), max_size=200))
def test_memory_stays_bounded(records: list[tuple[str, int]]) -> None:
    window = DedupeWindow(size=5, ttl=60, max_principals=1)
    for now, (principal, publish_id) in enumerate(records):
        window.record(principal, "c", publish_id, now, now=now / 10)
        assert window.entries <= 5
        assert window.principals <= 1
