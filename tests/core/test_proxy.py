"""X-Forwarded-For, believed only as far as the proxies that wrote it are trusted."""

from __future__ import annotations

import pytest

from triows._core.proxy import client_address, parse_networks

TRUSTED = parse_networks(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),
        # A client may send its own header: only the hop our proxy appended counts.
        ("10.0.0.5", "1.2.3.4, 203.0.113.9", "203.0.113.9"),
        # Two proxies of ours in a row: the first address that is not ours.
        ("10.0.0.5", "203.0.113.9, 10.1.1.1", "203.0.113.9"),
        # Not a trusted peer: the header is anyone's to write.
        ("192.0.2.1", "203.0.113.9", "192.0.2.1"),
        ("10.0.0.5", None, "10.0.0.5"),
        # Garbage stops the walk at the last good address.
        ("10.0.0.5", "nonsense, 10.2.2.2", "10.2.2.2"),
        ("::1", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.5", "203.0.113.9:5555", "203.0.113.9"),
        ("::ffff:10.0.0.5", "203.0.113.9", "203.0.113.9"),
    ],
)
def test_client_address(peer: str, header: str | None, client: str) -> None:
    assert client_address(peer, header, TRUSTED) == client


def test_nothing_is_trusted_by_default() -> None:
    assert client_address("10.0.0.5", "203.0.113.9", ()) == "10.0.0.5"


def test_a_bad_network_is_named() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        parse_networks(["10.0.0.0/33"])


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2::7", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("<MemoryStream at 0x1>", "<MemoryStream at 0x1>"),
    ],
)
def test_per_address_limits_count_an_ipv6_client_by_its_64(address: str, key: str) -> None:
    from triows._core.proxy import address_key

    assert address_key(address) == key


def test_streams_from_one_address_share_its_key() -> None:
    """Every stream asks for its address's key twice, and many streams come from one address:
    the key is parsed once and one string is shared (an idle connection holds it)."""
    from triows._core.proxy import address_key

    first = address_key("".join(["198.51.100.", "23"]))  # a new string object each time
    second = address_key("".join(["198.51.100.", "23"]))
    assert first == "198.51.100.23"
    assert first is second
    assert address_key("".join(["2001:db8::", "1"])) is address_key("2001:db8::1")
