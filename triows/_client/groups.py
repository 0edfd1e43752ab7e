"""Exception groups taken apart: the client's task groups end with several failures at once.

The supervisor judges and logs every failure of a connection, not only the first, and
``connect()`` lets the block's own exception out by itself, as trio's context managers do.
"""

from __future__ import annotations

from typing import Any


def leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions in ``group``, however deeply nested, in order."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def raise_single(group: BaseExceptionGroup[Any]) -> None:
    """Raise the one exception inside ``group`` (however nested) by itself, with its own
    context (not the group as its context); else the group."""
    found = leaves(group)
    if len(found) != 1:
        raise group
    exc = found[0]
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context
