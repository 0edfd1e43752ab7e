"""What a node's subscribers were told of a channel's members (``Announced``): events and
reads of the hash applied so that each change is heard once and a read never undoes a newer
event. Pure data: no Redis, no clock."""

from __future__ import annotations

from triows._core.presence import Announced, Member

A, B, C = Member("a", None), Member("b", "bob"), Member("c", None)


def settled(*members: Member) -> Announced:
    told = Announced()
    told.follow("room", [])
    touched = told.begin_read()
    found = {m.client_id: m for m in members}
    assert told.settle("room", found, touched, now=0, wait=10) == ([], [])  # starting point
    assert told.settle("room", found, touched, now=0, wait=10) == ([], [])
    told.end_read(touched)
    return told


def test_the_first_read_is_the_starting_point_and_says_nothing() -> None:
    told = settled(A, B)
    assert told.knows("room", "a")
    assert told.knows("room", "b")
    assert told.unsettled() == []


def test_events_in_flight_during_the_first_read_are_still_heard() -> None:
    """The first read found a member whose join was announced before it and arrives after
    it: the subscribers (who subscribed before) must hear that join."""
    told = Announced()
    told.follow("room", [])
    touched = told.begin_read()
    assert told.settle("room", {"a": A}, touched, now=0, wait=10) == ([], [])
    told.end_read(touched)
    assert told.joined("room", A)
    assert told.left("room", B)  # a leave in flight, of a member the read did not find
    touched = told.begin_read()
    assert told.settle("room", {"a": A}, touched, now=1, wait=10) == ([], [])
    told.end_read(touched)
    assert not told.joined("room", A)  # settled: news once only


def test_events_are_news_once() -> None:
    told = settled(A)
    assert not told.joined("room", A)  # told already (a node writing it back)
    assert told.joined("room", B)
    assert told.left("room", B)
    assert not told.left("room", B)  # a second leave (a sweep, then the node's own)


def test_until_settled_events_pass_as_they_come() -> None:
    told = Announced()
    told.follow("room", [])
    assert told.left("room", A)  # its subscribers' presence answer may list it
    assert told.joined("room", A)
    assert told.joined("room", A)


def test_a_read_tells_joins_at_once_and_leaves_once_missed_long_enough() -> None:
    told = settled(A, B)
    touched = told.begin_read()
    assert told.settle("room", {"a": A, "c": C}, touched, now=1, wait=10) == ([C], [])
    assert told.settle("room", {"a": A, "c": C}, touched, now=5, wait=10) == ([], [])
    assert told.settle("room", {"a": A, "c": C}, touched, now=11, wait=10) == ([], [B])
    assert told.settle("room", {"a": A, "c": C}, touched, now=30, wait=10) == ([], [])
    told.end_read(touched)


def test_a_member_missed_then_found_again_is_not_a_leave() -> None:
    told = settled(A, B)
    touched = told.begin_read()
    assert told.settle("room", {"a": A}, touched, now=1, wait=10) == ([], [])
    assert told.settle("room", {"a": A, "b": B}, touched, now=8, wait=10) == ([], [])
    assert told.settle("room", {"a": A}, touched, now=12, wait=10) == ([], [])  # anew
    assert told.knows("room", "b")
    assert told.settle("room", {"a": A}, touched, now=22, wait=10) == ([], [B])
    told.end_read(touched)


def test_a_read_leaves_alone_what_events_changed_meanwhile() -> None:
    told = settled(A)
    touched = told.begin_read()
    assert told.left("room", A)  # newer than the read, which still found it
    assert told.joined("room", B)  # newer than the read, which did not find it
    assert told.settle("room", {"a": A}, touched, now=1, wait=10) == ([], [])
    assert told.settle("room", {"a": A}, touched, now=99, wait=10) == ([], [])
    told.end_read(touched)
    assert not told.knows("room", "a")
    assert told.knows("room", "b")


def test_a_channel_followed_anew_starts_over() -> None:
    told = settled(A, B)
    told.follow("room", [])  # its first member here again
    assert told.unsettled() == ["room"]
    assert not told.knows("room", "a")
    told.forget("room")
    assert not told.follows("room")
