"""The hub's order of channels (recency for the total history cap, idle ones for eviction)
is the same whether or not a channel published to again is moved to where it is already.

:meth:`Hub.record` skips the move of the channel it put last (``_recency_last``,
``_idle_last``); a reference hub moves it every time, as ``record`` did before. The same
operations on both must leave the same orders, histories and counters.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from triows._core.history import Unframed
from triows._core.hub import ChannelState, Hub
from triows._core.outbox import SlowConsumerPolicy


class ReferenceHub(Hub[str]):
    """``record`` as it was: every publication moves its channel to the end."""

    def record(
        self,
        state: ChannelState[str],
        seq: int,
        frame: bytes | Unframed,
        now: float,
        size: int = -1,
    ) -> None:
        history = state.history
        name = state.name
        if history.enabled:
            before = history.nbytes
            pushed_out = history.append(seq, now, frame, len(frame) if size < 0 else size)
            self._history_bytes += history.nbytes - before
            self._history_messages += 1 - pushed_out
            recency = self._recency
            recency.pop(name, None)
            if history.nbytes or len(history):
                recency[name] = state
                if state.expiry_deadline is None:
                    self._schedule(state)
            if self._history_bytes > self._max_history_bytes:
                self._enforce_total()
        if not state.members:
            idle = self._idle
            idle.pop(name, None)
            idle[name] = state
            if len(idle) > self._max_idle:
                self._discard_if_unused(state)


def make(kind: type[Hub[str]], max_idle: int, total: int) -> Hub[str]:
    return kind(
        epoch_prefix="E",
        max_subscriptions=3,
        policy_for=lambda name: SlowConsumerPolicy.DISCONNECT,
        history_for=lambda name: (0, 0.0) if name == "d" else (3, 10.0),
        max_idle_channels=max_idle,
        channel_history_bytes=40,
        max_history_bytes=total,
    )


def snapshot(hub: Hub[str]) -> object:
    return (
        list(hub._recency),
        list(hub._idle),
        list(hub._channels),
        [(s.name, s.epoch, s.seq, s.history.after(0)) for s in hub.channels()],
        hub.history_bytes,
        hub.history_messages,
        sorted(hub._deadlines),
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["subscribe", "unsubscribe", "remove", "publish", "publish", "expire"]),
            st.sampled_from(["m1", "m2"]),
            st.sampled_from(["a", "b", "c", "d"]),
            st.floats(0, 6),
            st.integers(1, 30),
        ),
        max_size=120,
    ),
    st.sampled_from([0, 1, 2, 10]),
    st.sampled_from([30, 100, 1 << 62]),
)
def test_the_hub_keeps_the_order_a_move_every_time_keeps(
    ops: list[tuple[str, str, str, float, int]], max_idle: int, total: int
) -> None:
    hub, reference = make(Hub, max_idle, total), make(ReferenceHub, max_idle, total)
    now = 0.0
    for op, member, channel, step, size in ops:
        now += step
        for each in (hub, reference):
            if op == "subscribe":
                each.subscribe(member, channel) if each.subscriptions(member) < 3 else None
            elif op == "unsubscribe":
                each.unsubscribe(member, channel)
            elif op == "remove":
                each.remove_member(member)
            elif op == "publish":
                state, seq = each.publish(channel)
                each.record(state, seq, b"f" * size, now)
            else:
                each.expire(now)
        assert snapshot(hub) == snapshot(reference)


def test_a_channel_gone_idle_since_goes_before_the_one_published_to_again() -> None:
    """``b`` goes idle (its last member leaves) between two publications to idle ``a``: the
    second moves ``a`` after ``b`` again, so ``b`` is evicted first."""
    hub, reference = make(Hub, 10, 1 << 62), make(ReferenceHub, 10, 1 << 62)
    for each in (hub, reference):
        each.subscribe("m1", "b")
        for step in ("publish", "leave", "publish"):
            if step == "leave":
                each.unsubscribe("m1", "b")
            else:
                state, seq = each.publish("a")
                each.record(state, seq, b"f", 0.0)
    assert list(hub._idle) == list(reference._idle) == ["b", "a"]
    assert snapshot(hub) == snapshot(reference)
