"""A reconnect storm: many subscribes with ``since`` to a channel the node follows read Redis
together (one pipeline per hop, one read per channel), and each still gets exactly its own
replay or its exact gap."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import trio

from triows._brokers.redis.reads import Request, ResumeReads, read_many
from triows._brokers.seam import BrokerUnavailableError
from triows._core.feed import Entry
from triows.testing import TestClient

from .test_redis_cluster import channel_name, open_node, publish


async def resume(client: TestClient, channel: str, since: int, epoch: str) -> list[Any]:
    """Subscribe from ``since``: the reply, then every replayed message."""
    reply = await client.request(
        {"type": "subscribe", "channel": channel, "since": since, "epoch": epoch, "id": "r"}
    )
    # Recovered: everything after since; a gap: what the history still holds (10 here).
    count = reply["seq"] - since if reply.get("recovered") else 10
    return [reply, *[await client.receive_type("message") for _ in range(count)]]


@pytest.mark.real_socket
async def test_concurrent_resumes_share_reads_and_each_gets_its_own_replay(
    redis_url: str,
) -> None:
    channel = channel_name()
    async with open_node(redis_url, history_size=10) as node:
        broker: Any = node.server.broker
        async with node.connect() as writer:
            first = await writer.request({"type": "subscribe", "channel": channel, "id": 0})
            epoch = first["epoch"]
            last = 0
            for n in range(30):
                last = await publish(writer, channel, n, n)
            reads_before = broker.resume_reads.pipelines
            answers: dict[int, list[Any]] = {}
            connected, go = trio.Semaphore(0), trio.Event()

            async def one(index: int) -> None:
                # since from last-9 (all in history) down to last-14 (5 beyond it: a gap)
                since = last - 9 - index % 6
                async with node.connect() as client:
                    connected.release()
                    await go.wait()  # all at once: a reconnect storm
                    answers[index] = await resume(client, channel, since, epoch)

            async with trio.open_nursery() as nursery:
                for index in range(60):
                    nursery.start_soon(one, index)
                for _ in range(60):
                    await connected.acquire()
                go.set()
        pipelines = broker.resume_reads.pipelines - reads_before
        for index, frames in answers.items():
            since = last - 9 - index % 6
            reply = frames[0]
            assert reply["seq"] == last
            if last - since <= 10:
                assert reply["recovered"] is True
                assert [m["seq"] for m in frames[1:]] == list(range(since + 1, last + 1))
                assert [m["data"] for m in frames[1:]] == list(range(since, last))
            else:
                assert reply["recovered"] is False
                assert reply["gap"] == [since + 1, last - 10]
                assert [m["seq"] for m in frames[1:]] == list(range(last - 9, last + 1))
        assert len(answers) == 60
        # One read per pipeline would be 60; together they take a few.
        assert pipelines <= 10, pipelines


class ScriptedBridge:
    """Answers each pipeline from ``answer(requests, pipeline number)``; counts them."""

    def __init__(self, answer: Callable[[list[Request], int], list[Any]]) -> None:
        self.answer = answer
        self.sent: list[list[Request]] = []
        self.release = trio.Event()

    async def call(self, fn: functools.partial[Any]) -> Any:
        requests = list(fn.args[0])
        self.sent.append(requests)
        await self.release.wait()
        return self.answer(requests, len(self.sent))


def entry(seq: int) -> tuple[Entry, int]:
    return Entry(seq=seq, epoch="e", payload=b"%d" % seq), 0


def slices(requests: list[Request], epoch: str = "e") -> list[Any]:
    return [
        ((([entry(s) for s in range(after + 1, upto + 1)]), epoch), (upto, epoch))
        for _, after, upto, _, _ in requests
    ]


async def test_reads_of_one_channel_queued_together_are_one_read() -> None:
    bridge = ScriptedBridge(lambda requests, _: slices(requests))
    reads = ResumeReads(bridge, timeout=5)  # type: ignore[arg-type]
    got: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reads.run)

        async def ask(key: str, after: int, upto: int) -> None:
            got[key] = await reads.stream("a", after, upto)

        nursery.start_soon(ask, "x", 3, 8)
        nursery.start_soon(ask, "y", 5, 9)
        nursery.start_soon(ask, "z", 1, 4)
        await trio.testing.wait_all_tasks_blocked()
        bridge.release.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert bridge.sent == [[("a", 1, 9, True, False)]]  # one read: lowest after, highest upto
    assert [e.seq for e, _ in got["x"][0]] == [4, 5, 6, 7, 8]  # each takes its own slice
    assert [e.seq for e, _ in got["y"][0]] == [6, 7, 8, 9]
    assert [e.seq for e, _ in got["z"][0]] == [2, 3, 4]


async def test_a_read_never_joins_one_already_sent() -> None:
    bridge = ScriptedBridge(lambda requests, _: slices(requests))
    reads = ResumeReads(bridge, timeout=5)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reads.run)
        nursery.start_soon(reads.stream, "a", 0, 5)
        await trio.testing.wait_all_tasks_blocked()  # that read is out now
        nursery.start_soon(reads.stream, "a", 0, 7)
        nursery.start_soon(reads.numbering, "a")
        await trio.testing.wait_all_tasks_blocked()
        bridge.release.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    # The second read went in a pipeline of its own, sent after it was asked for.
    assert bridge.sent == [[("a", 0, 5, True, False)], [("a", 0, 7, True, True)]]


async def test_a_slice_read_across_a_restart_of_the_numbering_is_read_again() -> None:
    def answer(requests: list[Request], pipeline: int) -> list[Any]:
        if pipeline == 1:
            return [None]  # the epoch changed between the two reads of it
        return slices(requests, epoch="f")

    bridge = ScriptedBridge(answer)
    bridge.release.set()
    reads = ResumeReads(bridge, timeout=5)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reads.run)
        entries, epoch = await reads.stream("a", 2, 4)
        nursery.cancel_scope.cancel()
    assert (epoch, [e.seq for e, _ in entries]) == ("f", [3, 4])
    assert len(bridge.sent) == 2


async def test_a_link_error_answers_every_waiter_unavailable() -> None:
    import redis

    def answer(requests: list[Request], pipeline: int) -> list[Any]:
        raise redis.ConnectionError("gone")

    bridge = ScriptedBridge(answer)
    bridge.release.set()
    reads = ResumeReads(bridge, timeout=5)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reads.run)
        with pytest.raises(BrokerUnavailableError):
            await reads.stream("a", 2, 4)
        with pytest.raises(BrokerUnavailableError):
            await reads.numbering("b")
        nursery.cancel_scope.cancel()


@pytest.mark.real_socket
def test_read_many_against_redis(redis_url: str) -> None:
    import redis

    from triows._core import redis_format as fmt

    client = redis.Redis.from_url(redis_url)
    name = f"rm-{id(client)}"
    client.hset(fmt.numbering_key(name), mapping={"seq": 3, "epoch": "ep"})
    for seq in (1, 2, 3):
        client.xadd(fmt.stream_key(name), {"o": "tok -", "p": str(seq), "t": 7}, id=f"{seq}-0")
    try:
        answer = read_many([(name, 1, 3, True, True)], client)[0]
        assert answer is not None
        sliced, numbering = answer
        assert numbering == (3, "ep")
        assert sliced[1] == "ep"
        assert [e.seq for e, _ in sliced[0]] == [2, 3]
        assert read_many([(f"{name}-none", 0, 3, True, True)], client) == [(([], None), (0, None))]
    finally:
        client.delete(fmt.numbering_key(name), fmt.stream_key(name))


@pytest.mark.real_socket
async def test_a_subscribe_to_a_followed_channel_is_served_inline(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No requests task, no wait, no Redis: the reader answers it (the subscription limit
    still holds)."""
    from triows._server.requests import Requests

    waited: list[object] = []
    serve_in_task = Requests._serve_in_task

    def counting(self: Requests, first: Any) -> None:
        waited.append(first)
        serve_in_task(self, first)

    monkeypatch.setattr(Requests, "_serve_in_task", counting)
    channel, other = channel_name(), channel_name()
    async with open_node(redis_url, max_subscriptions=1) as node:
        async with node.connect() as first, node.connect() as third, node.connect() as second:
            await first.request({"type": "subscribe", "channel": channel, "id": 1})
            await third.request({"type": "subscribe", "channel": other, "id": 1})
            assert len(waited) == 2  # a subscribe to a channel not followed yet waits for Redis
            reply = await second.request({"type": "subscribe", "channel": channel, "id": 1})
            assert reply["type"] == "subscribed"
            refused = await second.request({"type": "subscribe", "channel": other, "id": 2})
            assert refused["type"] == "error"  # the subscription limit, inline too
            assert len(waited) == 2  # both served inline
            reply = await second.request(
                {"type": "subscribe", "channel": channel, "id": 3, "since": 0, "epoch": "x"}
            )
            assert reply["recovered"] is False
            assert len(waited) == 3  # a resume goes through the task (it may read Redis)
