"""permessage-deflate negotiation (RFC 7692 §7.1) from Sec-WebSocket-Extensions offers."""

from __future__ import annotations

import pytest

from triows._core.extensions import UNLIMITED, MalformedExtensions, negotiate, parse

BASE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


@pytest.mark.parametrize(
    ("offer", "response", "max_payload"),
    [
        # What browsers send, and the bare offer.
        ("permessage-deflate; client_max_window_bits", BASE, UNLIMITED),
        ("permessage-deflate", BASE, UNLIMITED),
        ("PerMessage-Deflate", BASE, UNLIMITED),
        # Context takeover asked off on either side: the answer is the same.
        ("permessage-deflate; server_no_context_takeover", BASE, UNLIMITED),
        ("permessage-deflate; client_no_context_takeover", BASE, UNLIMITED),
        ("permessage-deflate; client_max_window_bits=9", BASE, UNLIMITED),
        ('permessage-deflate; client_max_window_bits="12"', BASE, UNLIMITED),
        # A window the server must keep to: answered, and compression within it only.
        (
            "permessage-deflate; server_max_window_bits=10",
            f"{BASE}; server_max_window_bits=10",
            1024,
        ),
        ("permessage-deflate; server_max_window_bits=8", f"{BASE}; server_max_window_bits=8", 256),
        (
            "permessage-deflate; server_max_window_bits=15",
            f"{BASE}; server_max_window_bits=15",
            UNLIMITED,
        ),
        # Several offers: the first acceptable one.
        (
            "permessage-deflate; server_max_window_bits=20, "
            "permessage-deflate; server_max_window_bits=11",
            f"{BASE}; server_max_window_bits=11",
            2048,
        ),
        ("x-webkit-deflate-frame, permessage-deflate", BASE, UNLIMITED),
        ("permessage-deflate;foo, permessage-deflate", BASE, UNLIMITED),
        # Whitespace and empty list elements are allowed.
        ("  permessage-deflate ;  client_max_window_bits = 10 ,", BASE, UNLIMITED),
    ],
)
def test_accepted_offers(offer: str, response: str, max_payload: int) -> None:
    accepted = negotiate(offer)
    assert accepted is not None
    assert accepted.response == response
    assert accepted.max_payload == max_payload


@pytest.mark.parametrize(
    "offer",
    [
        None,
        "",
        "x-webkit-deflate-frame",
        # §7.1: declined for an unknown parameter, a parameter twice, or a bad value.
        "permessage-deflate; foo",
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=yes",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits=1a",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits=16",
        'permessage-deflate; client_max_window_bits="08"',
        "permessage-deflate; server_max_window_bits=7, permessage-deflate; foo",
    ],
)
def test_declined_offers(offer: str | None) -> None:
    assert negotiate(offer) is None


@pytest.mark.parametrize(
    "header",
    [
        ";",
        "permessage-deflate;",
        "permessage-deflate; =1",
        "permessage-deflate; a=",
        'permessage-deflate; a="1',
        'permessage-deflate; a=""',
        'permessage-deflate; a="1 2"',
        "permessage-deflate client_max_window_bits",
        "permessage deflate",
        "permessage-deflate; a=b c",
        "permessage-deflate, ;",
    ],
)
def test_malformed_headers(header: str) -> None:
    with pytest.raises(MalformedExtensions):
        negotiate(header)


def test_parse_keeps_order_and_unquotes() -> None:
    assert parse('a; x=1 ; y="2", b,c;z') == [
        ("a", [("x", "1"), ("y", "2")]),
        ("b", []),
        ("c", [("z", None)]),
    ]
