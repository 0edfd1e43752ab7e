"""A message nobody received live is kept unframed and framed only when replayed: the
replay must be byte for byte the frame a live subscriber got, and every history figure (its
bytes, against the caps too) the same as if the frame had been kept.

Two in-process brokers take the same publications: on one the channel has a member (the
frame is made for delivery and kept), on the other nobody follows it (the parts are kept).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import triows
from triows._brokers.fanout import FanOut
from triows._brokers.memory import MemoryBroker
from triows._core import envelopes
from triows._core.frames import text_payload


class Member:
    """A subscriber that takes every frame (fan-out's side of it is not under test)."""

    client_id = "member"
    close_code = None
    deflate_limit = 0

    def deliver(self, frame: bytes, policy: object, counter: object) -> bool:
        return True


def figures(publications: list[tuple[Any, str | None, int]], followed: bool, **config: Any) -> Any:
    broker = MemoryBroker(triows.Config(**config), FanOut(1.0), epoch_prefix="e")
    if followed:
        broker.hub.subscribe(Member(), "room")  # type: ignore[arg-type]
    now = 0.0
    for data, sender, timestamp_ms in publications:
        now += 0.5
        data_json = envelopes.encode_parsed(data)
        broker.publish_at_once("room", data_json, sender, timestamp_ms, False, None, None, now)
    state = broker.hub.channel("room")
    assert state is not None
    # The path under test is taken: frames kept when followed, their parts when not.
    kept = [entry[3] for entry in state.history._entries]
    assert all(isinstance(frame, bytes) is followed for frame in kept)
    held = broker.hub.held(state, now)
    resumed = broker.hub.resume(state, 3, state.epoch, now).replay
    return held, resumed, broker.hub.history_bytes, broker.hub.history_messages


publication = st.tuples(
    st.one_of(
        st.integers(),
        st.text(max_size=5),
        # around the 126-byte and 64 KiB frame header steps
        st.integers(30, 130).map(lambda n: "x" * n),
        st.integers(65_400, 65_560).map(lambda n: "y" * n),
        st.lists(st.text(max_size=3), max_size=3),
    ),
    st.sampled_from([None, "c1", 'q"x', "é", "\ud800"]),
    st.sampled_from([0, 7, 1_700_000_000_000, 10**15, -5]),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(publication, min_size=1, max_size=14),
    st.sampled_from(
        [
            {},
            {"history_size": 3},
            {"history_max_bytes": 400},
            {"history_total_bytes": 70_000},
            {"history_max_bytes": 200_000, "max_message_size": 300_000},
        ]
    ),
)
def test_an_unframed_history_replays_and_counts_as_a_framed_one(
    publications: list[tuple[Any, str | None, int]], config: dict[str, Any]
) -> None:
    config = {"max_message_size": 200_000} | config
    assert figures(publications, True, **config) == figures(publications, False, **config)


def test_many_messages_kept_unframed_replay_their_seqs_in_order() -> None:
    """Seqs of every length (1 to 3 digits) in the frames' size and in the replay."""
    publications: list[tuple[Any, str | None, int]] = [
        ({"n": n}, "c1", 1_700_000_000_000) for n in range(120)
    ]
    held, resumed, nbytes, count = figures(publications, False, history_size=200)
    assert [seq for seq, _ in held] == list(range(1, 121))
    assert nbytes == sum(len(frame) for _, frame in held)
    assert [json.loads(text_payload(f))["data"]["n"] for f in resumed] == list(range(3, 120))
    assert figures(publications, True, history_size=200) == (held, resumed, nbytes, count)


@given(
    st.binary(max_size=70_000).filter(lambda b: len(b) < 200 or len(b) > 65_300),
    st.sampled_from([b"null", b'"c1"', b'"\\u00e9"']),
    st.sampled_from([0, 9, 10, 1_700_000_000_000, -1]),
    st.integers(0, 2**53),
    st.sampled_from(["room", "r" * 120]),
    st.sampled_from([b"e.1", b""]),
)
def test_the_size_of_a_message_frame_is_its_length(
    data_json: bytes, sender: bytes, timestamp_ms: int, seq: int, channel: str, epoch: bytes
) -> None:
    head = envelopes.message_head(channel)
    args = (head, data_json, sender, timestamp_ms, seq, epoch)
    assert envelopes.framed_message_size(*args) == len(envelopes.framed_message(*args))
