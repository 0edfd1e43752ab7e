"""Which address a request came from, behind trusted reverse proxies (``--trusted-proxy``).

``X-Forwarded-For`` is a list each proxy appends its peer to, so only its right end can be
believed, and only as far as the proxies that wrote it are ours. The client is therefore the
rightmost address that is not a trusted proxy, read from the right, and only when the TCP peer
itself is trusted: anyone else could write the header to spoof an address (and escape the
per-address connection limit). A malformed entry stops the walk at the last good address.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Addresses whose keys :func:`address_key` remembers (a few hundred KiB at most).
ADDRESS_KEYS_CACHED = 4096


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """``10.0.0.0/8``, ``127.0.0.1`` (one host) or ``::1``; ValueError naming a bad one."""
    networks: list[Network] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"trusted proxy must be an address or a CIDR network such as 10.0.0.0/8, "
                f"got {cidr!r}"
            ) from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    parsed = _address(address)
    return parsed is not None and any(parsed in network for network in networks)


def client_address(peer: str, forwarded_for: str | None, networks: tuple[Network, ...]) -> str:
    """The client's address: ``peer`` itself unless it is a trusted proxy that forwarded one."""
    if not networks or not forwarded_for or not is_trusted(peer, networks):
        return peer
    client = peer
    for hop in reversed(forwarded_for.split(",")):
        parsed = _address(hop)
        if parsed is None:
            break
        client = str(parsed)
        if not any(parsed in network for network in networks):
            break
    return client


@functools.lru_cache(maxsize=ADDRESS_KEYS_CACHED)
def address_key(address: str) -> str:
    """What per-address limits count ``address`` under: an IPv4 address itself, an IPv6
    address's /64 network (one subscriber line gets a whole /64, so a per-address limit on
    full IPv6 addresses would be no limit), anything else (a test stream's name) as is.

    Remembered for the last addresses seen: every stream asks twice (its pending place, then
    its connection's), many streams come from one address, and parsing is most of a
    handshake's address work; connections from one address then share one key string."""
    parsed = _address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address if parsed is None else str(parsed)
