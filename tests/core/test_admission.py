"""Admission as plain code: every move checks and counts at once, and release gives it all back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triows._core.admission import Admission, Limits, Refused, Stage, Ticket

LIMITS = Limits(
    max_pending=4,
    max_pending_per_ip=2,
    max_http=3,
    max_http_per_ip=2,
    max_connections=5,
    max_connections_per_ip=3,
    max_connections_per_user=2,
)


def counts(admission: Admission) -> tuple[int, int, int, int]:
    return admission.pending, admission.http, admission.connections, admission.handshakes


def test_pending_per_address_and_in_all() -> None:
    admission = Admission(LIMITS)
    evicted: list[str] = []
    tickets = [admission.stream("a"), admission.stream("a")]
    with pytest.raises(Refused) as refused:
        admission.stream("a")
    assert refused.value.status == 429
    tickets += [admission.stream("b"), admission.stream("proxy", trusted=True)]
    for name, ticket in zip("aabp", tickets, strict=True):
        ticket.on_evict = lambda name=name: evicted.append(name)
    # All places taken: the oldest waiting stream makes room for the new one.
    newest = admission.stream("c")
    assert evicted == ["a"]
    assert tickets[0].stage is Stage.RELEASED
    assert admission.pending == LIMITS.max_pending
    assert admission.refused == {"pending": 1, "evicted": 1}
    for ticket in [*tickets, newest]:
        ticket.release()
        ticket.release()  # twice is harmless
    assert counts(admission) == (0, 0, 0, 0)


def test_an_answered_stream_gives_its_place_back_while_it_closes() -> None:
    admission = Admission(LIMITS)
    ticket = admission.stream("a")
    ticket.connection("a")
    ticket.user("ann")
    ticket.closing()  # refused: the 401 is being written
    assert ticket.stage is Stage.CLOSING
    assert counts(admission) == (1, 0, 0, 0)
    assert (admission.connections_from("a"), admission.connections_of("ann")) == (0, 0)
    ticket.release()
    assert counts(admission) == (0, 0, 0, 0)
    http = admission.stream("b")
    http.http("b")
    http.closing()
    assert counts(admission) == (1, 0, 0, 0)
    http.release()
    assert counts(admission) == (0, 0, 0, 0)


def test_a_move_counts_the_new_place_and_frees_the_old_one_in_one_step() -> None:
    admission = Admission(LIMITS)
    ticket = admission.stream("peer")
    ticket.connection("client")  # behind a trusted proxy the address changes
    assert counts(admission) == (0, 0, 1, 1)
    assert admission.connections_from("client") == 1
    assert admission.connections_from("peer") == 0
    ticket.user("ann")
    ticket.opened()
    assert ticket.stage is Stage.OPEN
    assert counts(admission) == (0, 0, 1, 0)
    ticket.release()
    assert counts(admission) == (0, 0, 0, 0)
    assert admission.connections_of("ann") == 0


def test_a_refused_move_leaves_the_ticket_where_it_was() -> None:
    admission = Admission(LIMITS)
    held = []
    for peer in ("p1", "p2", "p3"):
        ticket = admission.stream(peer)
        ticket.connection("x")
        held.append(ticket)
    extra = admission.stream("y")
    with pytest.raises(Refused) as refused:
        extra.connection("x")
    assert refused.value.status == 429
    assert extra.stage is Stage.PENDING
    assert admission.pending == 1
    extra.release()
    for ticket in held:
        ticket.release()
    users = []
    for _ in range(2):
        ticket = admission.stream("u")
        ticket.connection("u")
        ticket.user("bob")
        users.append(ticket)
    third = admission.stream("v")
    third.connection("v")
    with pytest.raises(Refused):
        third.user("bob")
    assert admission.connections_of("bob") == 2
    third.release()
    for ticket in users:
        ticket.release()
    assert counts(admission) == (0, 0, 0, 0)


def test_moves_happen_once_and_in_order() -> None:
    admission = Admission(LIMITS)
    ticket = admission.stream("a")
    with pytest.raises(RuntimeError):
        ticket.user("ann")  # not a connection
    ticket.http("a")
    with pytest.raises(RuntimeError):
        ticket.connection("a")
    ticket.release()
    with pytest.raises(RuntimeError):
        ticket.http("a")


ADDRESSES = st.sampled_from(["a", "b", "c"])
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["stream", "http", "connection", "user", "opened", "closing", "release"]),
        ADDRESSES,
        st.integers(0, 7),
    ),
    max_size=80,
)


@given(STEPS)
def test_no_sequence_of_moves_passes_a_limit_or_leaks(steps: list[tuple[str, str, int]]) -> None:
    admission = Admission(LIMITS)
    tickets: list[Ticket] = []
    for action, address, index in steps:
        try:
            if action == "stream":
                tickets.append(admission.stream(address, trusted=address == "c"))
                continue
            if not tickets:
                continue
            ticket = tickets[index % len(tickets)]
            if action == "http":
                ticket.http(address)
            elif action == "connection":
                ticket.connection(address)
            elif action == "user":
                ticket.user(address)
            elif action == "opened":
                ticket.opened()
            elif action == "closing":
                ticket.closing()
            else:
                ticket.release()
        except (Refused, RuntimeError):
            pass
        assert admission.pending <= LIMITS.max_pending
        assert admission.pending == sum(t.stage in (Stage.PENDING, Stage.CLOSING) for t in tickets)
        assert admission.http <= LIMITS.max_http
        assert admission.connections <= LIMITS.max_connections
        assert 0 <= admission.handshakes <= admission.connections
        for name in ("a", "b"):
            assert admission.connections_from(name) <= LIMITS.max_connections_per_ip
            assert admission.connections_of(name) <= LIMITS.max_connections_per_user
    for ticket in tickets:
        ticket.release()
    assert counts(admission) == (0, 0, 0, 0)
