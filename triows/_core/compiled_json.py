"""msgspec's compiled JSON codec, for the two steps every publish takes: decoding the client's
frame and encoding the ``data`` it carries (the standard library's costs there were a tenth of
a request's CPU, see docs/design.md, "The request path, fifth pass").

Where msgspec takes a document, it answers exactly as the standard library does: the same
values (integers of any size, floats to the bit, ``-0.0``), the same key order, a field named
twice keeps its last value. It refuses some documents the standard library takes: a string
escape that is a lone surrogate (``"\\ud800"``, which Python can hold and JSON allows), and,
of course, every malformed one. A caller then takes the standard path, which answers the
first and words the errors as clients know them: msgspec only ever makes a document faster.
A differential test (tests/core/test_compiled_json.py) holds :func:`decode` to that. Only a
document with few brackets is given to msgspec (:data:`MAX_BRACKETS`).

Encoding differs in one way: some floats are spelt otherwise (``1e-7``, ``1e16``, ``0.000015``
where the standard library writes ``1e-07``, ``1e+16``, ``1.5e-05``), the same number to every
JSON parser; the data size limit counts the bytes as written.
Only values decoded from JSON are encoded here (finite numbers, str keys, no other types):
what the application publishes keeps the standard library's rules (``NaN`` refused, a
``TypeError`` for what JSON cannot say), which msgspec does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

#: What :func:`decode` raises for a document the standard path must answer instead (a str
#: holding a lone surrogate itself, not escaped, has no UTF-8 form for msgspec to read).
REFUSED: Final = (msgspec.DecodeError, RecursionError, UnicodeEncodeError)

#: The most brackets (``{`` and ``[``, strings included) a document :func:`decode` is given
#: may hold; one with more goes to the standard path. How deep a nesting each decoder takes
#: differs (msgspec's own limit; the standard one's depends on the Python stack the call is
#: made from, ~985 levels in a reader), and a depth only one of them takes would be answered
#: differently: below this bound both take any nesting.
MAX_BRACKETS: Final = 256

decode: Final[Callable[[str], Any]] = msgspec.json.Decoder().decode


def brackets(text: str) -> int:
    """How many ``{`` and ``[`` ``text`` holds (strings included): a bound on how deep its
    JSON nests, read without decoding it."""
    return text.count("{") + text.count("[")


def loads(text: str, standard: Callable[[str], Any]) -> Any:
    """``standard(text)``, by msgspec where it answers the same: a document with few brackets
    (:data:`MAX_BRACKETS`) that msgspec takes. (``protocol.read_request`` applies the same
    rule to its own count, which its depth check needs too.)"""
    if brackets(text) <= MAX_BRACKETS:
        try:
            return decode(text)
        except REFUSED:
            pass
    return standard(text)


#: A decoded value's compact UTF-8 JSON; ``UnicodeEncodeError`` for a string with a lone
#: surrogate (no UTF-8 form: the caller writes ASCII escapes then).
encode: Final[Callable[[Any], bytes]] = msgspec.json.Encoder().encode
