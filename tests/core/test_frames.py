"""Our once-per-broadcast framing must equal what wsproto would send for the same message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.events import TextMessage
from wsproto.frame_protocol import FrameProtocol

from triows._core.frames import TEXT, frame, text_frame


def wsproto_frame(payload: bytes) -> bytes:
    proto = FrameProtocol(client=False, extensions=[])
    return bytes(proto.send_data(TextMessage(data=payload.decode()).data, True))


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_length_encodings_match_wsproto(size: int) -> None:
    payload = b"x" * size
    assert text_frame(payload) == wsproto_frame(payload)


@given(st.text(max_size=300))
def test_any_text_matches_wsproto(text: str) -> None:
    payload = text.encode("utf-8", "surrogatepass")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert text_frame(payload) == wsproto_frame(payload)


@pytest.mark.parametrize("size", [*range(130), 65535, 65536, 65537])
def test_the_header_table_and_the_one_call_header_are_the_generic_header(size: int) -> None:
    payload = b"y" * size
    assert text_frame(payload) == frame(TEXT, payload)
