"""A connection's ``info``: what the application says about it (a name, an avatar), shown to
others in presence (members, ``join`` and ``leave``).

A JSON object of at most :data:`MAX_INFO_BYTES` encoded, from the JWT claim ``info`` or from
the ``authenticate`` hook's ``Principal(info=...)``. It travels with every presence change
(and with Redis in every presence entry), hence the bound.
"""

from __future__ import annotations

from typing import Any, Final

from .protocol import MAX_DEPTH, depth_exceeds, encode

MAX_INFO_BYTES: Final = 1024


class InfoError(ValueError):
    """An ``info`` that is not a JSON object, or too big once encoded."""


def check_info(value: Any) -> dict[str, Any] | None:
    """``value`` when it is a JSON object of at most :data:`MAX_INFO_BYTES` (None passes);
    :class:`InfoError` otherwise."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InfoError("'info' must be a JSON object")
    try:
        size = len(encode(value))
    except (TypeError, ValueError) as exc:
        raise InfoError(f"'info' is not JSON: {exc}") from None
    if size > MAX_INFO_BYTES:
        raise InfoError(f"'info' is {size} bytes encoded; at most {MAX_INFO_BYTES}")
    if depth_exceeds(value, MAX_DEPTH):
        raise InfoError(f"'info' is nested deeper than {MAX_DEPTH} levels")
    return value
