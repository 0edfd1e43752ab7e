"""The test kit must not fail on when a heartbeat fell: sleeps against heartbeat intervals."""

from __future__ import annotations

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
