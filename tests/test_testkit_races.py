"""The test kit must not fail on when a heartbeat fell: sleeps against heartbeat intervals."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from triows.testing import open_test_server


@settings(max_examples=40, deadline=None)
@given(
    interval=st.integers(1, 30),
    multiple=st.integers(1, 12),
    offset=st.sampled_from([0.0, 0.0, 1e-9, 0.5, -0.5]),
    clients=st.integers(1, 3),
)
def test_a_test_may_end_at_any_instant(
    interval: int, multiple: int, offset: float, clients: int
) -> None:
    """The first example of docs/testing.md failed whenever its final sleep was a multiple
    of ``heartbeat_interval``: a server ping crossed the client's close."""

    async def scenario() -> None:
        async with open_test_server(heartbeat_interval=interval) as harness:
            async with harness.connect() as first:
                await first.request({"type": "subscribe", "channel": "news", "id": 1})
                for n in range(clients - 1):
                    async with harness.connect() as other:
                        await other.request({"type": "ping", "id": n})
                await trio.sleep(max(0.0, interval * multiple + offset))

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_server_that_closes_before_its_101_fails_the_connect(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handshake that fails in the server (here a stub with the wrong signature) ends the
    stream without an answer. trio-websocket's handshake then waited for a 101 for ever (the
    autojump clock spun through the server's timers at full CPU instead of failing the test,
    until a deadline bounded it); the connect fails at once now (``open_client``), with the
    error itself, as a refusal does."""
    from triows._net.streams import PendingHandshake
    from triows.testing import ConnectionClosed

    async def wrong_signature(self: PendingHandshake) -> None:
        raise AssertionError("never called with this signature")

    monkeypatch.setattr(PendingHandshake, "accept", wrong_signature)
    async with open_test_server() as harness:
        started = trio.current_time()
        with trio.move_on_after(600) as guard:
            with pytest.raises(ConnectionClosed):
                async with harness.connect(receive_timeout=5):
                    pass  # pragma: no cover
        assert not guard.cancelled_caught
        assert trio.current_time() == started
        assert harness.server.statistics().connections == 0
        assert harness.server.admission.pending == 0
