"""Issue 22's sans-I/O rules: the history page, rewind's start, revocations, connection info,
presence entries and events that carry it, the close codes an application may choose."""

from __future__ import annotations

import pytest

from triows._core import presence
from triows._core.close_codes import check_disconnect_code, refusal_status
from triows._core.conninfo import MAX_INFO_BYTES, InfoError, check_info
from triows._core.frames import text_frame, text_payload
from triows._core.history import page, rewind_since
from triows._core.history_frames import history_reply
from triows._core.protocol import decode_json
from triows._core.revocations import Revocations, RevocationsFull

HELD = [(seq, b'{"seq":%d}' % seq) for seq in range(5, 11)]  # 5..10


@pytest.mark.parametrize(
    ("since", "limit", "reverse", "expected"),
    [
        (None, 3, False, [5, 6, 7]),
        (7, 3, False, [8, 9, 10]),
        (9, 3, False, [10]),
        (10, 3, False, []),
        (2, 2, False, [5, 6]),  # before what is held: from the oldest held
        (None, 3, True, [10, 9, 8]),
        (8, 3, True, [7, 6, 5]),
        (5, 3, True, []),
        (99, 2, True, [10, 9]),
    ],
)
def test_a_page_of_history(
    since: int | None, limit: int, reverse: bool, expected: list[int]
) -> None:
    found = page(HELD, since=since, limit=limit, reverse=reverse, max_bytes=1 << 20)
    assert [seq for seq, _ in found] == expected


def test_a_page_is_bounded_in_bytes_but_holds_one_message() -> None:
    size = len(HELD[0][1]) + 1
    assert len(page(HELD, since=None, limit=6, reverse=False, max_bytes=2 * size)) == 2
    assert len(page(HELD, since=None, limit=6, reverse=False, max_bytes=1)) == 1


def test_rewind_starts_where_a_resume_of_the_last_n_would() -> None:
    assert rewind_since(10, 3) == 7
    assert rewind_since(10, 30) == 0
    assert rewind_since(0, 5) == 0


def test_the_history_reply_splices_payloads_as_delivered() -> None:
    payloads = [b'{"type":"message","seq":1}', b'{"type":"message","seq":2}']
    reply = decode_json(history_reply("c", "e.1", 2, payloads, "h").decode())
    assert reply == {
        "type": "history",
        "channel": "c",
        "epoch": "e.1",
        "seq": 2,
        "messages": [{"type": "message", "seq": 1}, {"type": "message", "seq": 2}],
        "id": "h",
    }
    assert decode_json(history_reply("c", None, 0, [], None).decode())["messages"] == []
    for size in (10, 200, 70_000):
        assert text_payload(text_frame(b"x" * size)) == b"x" * size


def test_revocations_refuse_older_tokens_expire_and_are_bounded() -> None:
    revoked = Revocations(ttl=100, max_entries=2)
    revoked.revoke("u", before=1000, now=1000)
    assert revoked.revoked("u", {"iat": 999}, now=1001)
    assert revoked.revoked("u", {}, now=1001)  # no iat: counts as issued before
    assert not revoked.revoked("u", {"iat": 1000}, now=1001)
    assert not revoked.revoked("v", {"iat": 1}, now=1001)
    assert not revoked.revoked(None, {}, now=1001)
    revoked.revoke("u", before=900, now=1002)  # reaches less far: the first one stands
    assert revoked.revoked("u", {"iat": 950}, now=1003)
    revoked.revoke("v", before=1000, now=1003)
    with pytest.raises(RevocationsFull):
        revoked.revoke("w", before=1000, now=1004)
    assert len(revoked) == 2
    assert not revoked.revoked("u", {"iat": 999}, now=1100)  # expired at before + ttl
    revoked.revoke("w", before=1100, now=1101)  # the expired ones made room
    assert len(revoked) == 1
    revoked.revoke("x", before=0, now=1101)  # every such token is too old anyway
    assert len(revoked) == 1


def test_a_revocation_lasts_at_most_its_ttl_from_now() -> None:
    """A ``before`` ahead of now (another node's clock, a kept one) expired ttl after it:
    a revocation could outlive its ttl by as far as ``before`` reached."""
    revoked = Revocations(ttl=100)
    revoked.revoke("u", before=5000, now=1000)
    assert revoked.revoked("u", {"iat": 4000}, now=1099)
    assert not revoked.revoked("u", {"iat": 4000}, now=1100)
    revoked.expire(1100)
    assert len(revoked) == 0


def test_connection_info_is_a_small_json_object() -> None:
    assert check_info(None) is None
    assert check_info({"name": "Ann"}) == {"name": "Ann"}
    for bad in ("Ann", ["Ann"], 3):
        with pytest.raises(InfoError, match="JSON object"):
            check_info(bad)
    with pytest.raises(InfoError, match=str(MAX_INFO_BYTES)):
        check_info({"name": "x" * MAX_INFO_BYTES})
    deep: dict[str, object] = {}
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(InfoError, match="deeper"):
        check_info(deep)


def test_presence_entries_and_events_carry_info() -> None:
    member = presence.Member("c1", "ann", {"name": "Ann"})
    entry = presence.encode_entry(2000, "node1", "ann", {"name": "Ann"})
    plain = presence.encode_entry(2000, "node1", "bob")
    found = presence.live_entries({b"c1": entry.encode(), b"c2": plain.encode()}, 1000)
    assert [(m.client_id, m.user_id, m.info, node) for m, node in found] == [
        ("c1", "ann", {"name": "Ann"}, "node1"),
        ("c2", "bob", None, "node1"),
    ]
    assert presence.live_entries({b"c3": b"2000 node1+ not json"}, 1000) == []
    assert [m.info for m in presence.expired({b"c1": entry}, 3000)] == [{"name": "Ann"}]
    kind, channel, decoded, node = presence.decode_event(
        presence.encode_event("join", "room", member, "node1").encode()
    )
    assert (kind, channel, decoded.info, node) == ("join", "room", {"name": "Ann"}, "node1")
    assert presence.frame("join", "room", member)["info"] == {"name": "Ann"}
    assert "info" not in presence.frame("leave", "room", presence.Member("c2", None))


def test_an_application_chooses_close_codes_outside_the_refusal_ones() -> None:
    for code in (4000, 4399, 4550, 4600, 4999):
        assert check_disconnect_code(code) == code
        assert refusal_status(code) is None  # never read as a refusal
    for code in (1000, 3999, 4400, 4429, 4501, 4549, 5000, True):
        with pytest.raises(ValueError, match="4000-4399"):
            check_disconnect_code(code)


@pytest.mark.parametrize("stored", [b"5", b"null", b"true", b'"u"', b"{}"])
def test_a_stored_presence_entry_with_info_that_is_not_a_pair_is_skipped(stored: bytes) -> None:
    # ``user, info = json.loads(...)`` raised TypeError for a number or null: a presence
    # answer failed on one bad entry instead of skipping it.
    entries = {b"a": b"99999999999999 node+ " + stored, b"b": b"99999999999999 node bob"}
    assert presence.live_members(entries, 0) == [presence.Member("b", "bob")]
    assert [(m.client_id, node) for m, node in presence.live_entries(entries, 0)] == [("b", "node")]
    assert {m.client_id for m in presence.expired(entries, 0)} == {"a"}
