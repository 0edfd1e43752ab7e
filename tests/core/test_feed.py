"""The Feed puts a node's pub/sub messages in order and asks for fills from the stream."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from triows._core.feed import Action, Deliver, Entry, Feed, Fill, Restart


def entry(seq: int, epoch: str = "e1") -> Entry:
    return Entry(seq=seq, epoch=epoch, payload=b"%d" % seq)


def delivered(actions: list[Action]) -> list[int]:
    return [a.entry.seq for a in actions if isinstance(a, Deliver)]


def test_messages_before_the_baseline_are_held_then_the_old_ones_dropped() -> None:
    feed = Feed()
    assert feed.receive(entry(5)) == []
    assert feed.receive(entry(6)) == []
    assert not feed.ready
    assert delivered(feed.baseline(5, "e1")) == [6]
    assert (feed.seq, feed.epoch) == (6, "e1")


def test_live_messages_in_order_and_duplicates_dropped() -> None:
    feed = Feed()
    feed.baseline(0, "e1")
    assert delivered(feed.receive(entry(1))) == [1]
    assert feed.receive(entry(1)) == []
    assert delivered(feed.receive(entry(2))) == [2]


def test_a_jump_asks_for_a_fill_and_holds_what_follows() -> None:
    feed = Feed()
    feed.baseline(0, "e1")
    assert feed.receive(entry(3)) == [Fill(0, 2)]
    assert feed.receive(entry(4)) == []
    assert delivered(feed.filled([entry(1), entry(2), entry(3)])) == [1, 2, 3, 4]
    assert feed.held == 0


def test_what_the_stream_lost_is_skipped_after_a_fill() -> None:
    feed = Feed()
    feed.baseline(0, "e1")
    feed.receive(entry(5))
    assert delivered(feed.filled([entry(3)])) == [3, 5]


def test_resync_fills_what_the_outage_missed() -> None:
    feed = Feed()
    feed.baseline(2, "e1")
    feed.resync()
    assert feed.receive(entry(9)) == []
    assert feed.baseline(8, "e1") == [Fill(2, 8)]
    assert delivered(feed.filled([entry(n) for n in range(3, 9)])) == [3, 4, 5, 6, 7, 8, 9]


def test_a_new_epoch_restarts_numbering() -> None:
    feed = Feed()
    feed.baseline(7, "e1")
    actions = feed.receive(entry(1, "e2"))
    assert actions[0] == Restart("e2")
    assert delivered(actions) == [1]
    feed.resync()
    feed.receive(entry(9, "e2"))
    actions = feed.baseline(2, "e3")
    assert actions == [Restart("e3"), Fill(0, 2)]  # the held e2 message cannot be placed


@given(
    st.lists(st.integers(min_value=1, max_value=30), max_size=60),
    st.integers(min_value=0, max_value=5),
)
def test_any_arrival_order_delivers_each_seq_once_in_order(arrivals: list[int], base: int) -> None:
    """With a complete stream, every seq after the baseline is delivered once, ascending."""
    feed = Feed()
    out: list[int] = []
    pending: list[Action] = list(feed.receive(entry(arrivals[0]))) if arrivals else []
    pending += feed.baseline(base, "e1")
    queue = arrivals[1:]
    while pending or queue:
        if pending:
            action = pending.pop(0)
            if isinstance(action, Deliver):
                out.append(action.entry.seq)
            elif isinstance(action, Fill):
                span = range(action.after + 1, action.upto + 1)
                pending += feed.filled([entry(n) for n in span])
        else:
            pending += feed.receive(entry(queue.pop(0)))
    assert out == sorted(set(out))
    top = max([base, *arrivals])
    assert out == list(range(base + 1, top + 1))


def test_a_baseline_during_a_fill_is_filled_next_not_skipped() -> None:
    feed = Feed()
    feed.baseline(0, "e1")
    assert feed.receive(entry(6)) == [Fill(0, 5)]
    feed.resync()  # the link was rebuilt while the fill was running
    assert feed.baseline(20, "e1") == []  # one fill at a time
    feed.receive(entry(21))
    actions = feed.filled([entry(n) for n in range(1, 6)])
    assert delivered(actions) == [1, 2, 3, 4, 5, 6]
    assert actions[-1] == Fill(6, 20)
    assert delivered(feed.filled([entry(n) for n in range(7, 21)])) == [*range(7, 21), 21]


def test_what_a_baseline_promised_is_filled_even_without_new_messages() -> None:
    feed = Feed()
    feed.baseline(0, "e1")
    feed.receive(entry(3))
    feed.resync()
    feed.baseline(9, "e1")
    actions = feed.filled([entry(1), entry(2)])
    assert delivered(actions) == [1, 2, 3]
    assert actions[-1] == Fill(3, 9)


@given(
    st.lists(
        st.tuples(
            st.booleans(),  # the pub/sub link is up for this message
            st.booleans(),  # the stream kept it
            st.booleans(),  # pending fills are answered before the next message
        ),
        min_size=1,
        max_size=40,
    )
)
def test_outages_and_lost_entries_never_reorder_duplicate_or_lose_what_the_stream_has(
    steps: list[tuple[bool, bool, bool]],
) -> None:
    """A node's life: messages published one by one, the link going down and coming back
    (resync, then a baseline), fills answered late, the stream missing some entries."""
    feed = Feed()
    stream: dict[int, Entry] = {}
    fills: list[Fill] = []
    out: list[int] = []

    def act(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                out.append(action.entry.seq)
            elif isinstance(action, Fill):
                fills.append(action)

    def answer_fills() -> None:
        while fills:
            fill = fills.pop(0)
            span = range(fill.after + 1, fill.upto + 1)
            act(feed.filled([stream[n] for n in span if n in stream]))

    act(feed.baseline(0, "e1"))
    link_was_up = True
    for seq, (link_up, kept, answer_now) in enumerate(steps, start=1):
        if kept:
            stream[seq] = entry(seq)
        if link_up and not link_was_up:
            feed.resync()
            act(feed.baseline(seq - 1, "e1"))
        if link_up:
            act(feed.receive(entry(seq)))
        link_was_up = link_up
        if answer_now:
            answer_fills()
    feed.resync()
    act(feed.baseline(len(steps), "e1"))
    answer_fills()
    assert out == sorted(set(out))  # in order, once
    assert set(stream) <= set(out)  # whatever the stream holds is delivered


def test_a_long_fill_is_answered_in_parts() -> None:
    feed = Feed()
    feed.baseline(0, "e1")
    feed.resync()
    feed.receive(entry(10))
    (fill,) = feed.baseline(9, "e1")
    assert isinstance(fill, Fill)
    assert fill == Fill(0, 9)
    assert delivered(feed.filled([entry(1), entry(2)], fill=fill, through=4)) == [1, 2]
    assert feed.filling is fill  # entries 3 and 4 are gone: skipped, the fill goes on
    assert delivered(feed.filled([entry(n) for n in range(5, 10)], fill=fill)) == [*range(5, 11)]
    assert feed.filling is None


def test_the_answer_of_a_fill_superseded_by_a_restart_is_ignored() -> None:
    """Redis lost the channel while a fill was read: the numbering restarted, so the old
    fill's range now names other messages. Its answer must not be delivered, nor move the
    new numbering forward."""
    feed = Feed()
    feed.baseline(0, "e1")
    (old,) = feed.receive(entry(5))
    assert isinstance(old, Fill)
    feed.resync()
    actions = feed.baseline(3, "e2")
    assert actions == [Restart("e2"), Fill(0, 3)]
    new = actions[1]
    assert isinstance(new, Fill)
    assert feed.filled([entry(n, "e2") for n in range(1, 5)], fill=old) == []
    assert feed.seq == 0
    assert delivered(feed.filled([entry(n, "e2") for n in range(1, 4)], fill=new)) == [1, 2, 3]
