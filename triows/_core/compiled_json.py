"""msgspec's compiled JSON codec, for the two steps every publish takes: decoding the client's
frame and encoding the ``data`` it carries (the standard library's costs there were a tenth of
a request's CPU, see docs/design.md, "The request path, fifth pass").

Where msgspec takes a document, it answers exactly as the standard library does: the same
values (integers of any size, floats to the bit, ``-0.0``), the same key order, a field named
twice keeps its last value. It refuses some documents the standard library takes: a string
escape that is a lone surrogate (``"\\ud800"``, which Python can hold and JSON allows), and,
of course, every malformed one. A caller then takes the standard path, which answers the
first and words the errors as clients know them: msgspec only ever makes a document faster.
A differential test (tests/core/test_compiled_json.py) holds :func:`decode` to that.

Encoding differs in one way: a float with an exponent is written in its shortest form
(``1e-7`` where the standard library writes ``1e-07``), the same number to every JSON parser.
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

decode: Final[Callable[[str], Any]] = msgspec.json.Decoder().decode

#: A decoded value's compact UTF-8 JSON; ``UnicodeEncodeError`` for a string with a lone
#: surrogate (no UTF-8 form: the caller writes ASCII escapes then).
encode: Final[Callable[[Any], bytes]] = msgspec.json.Encoder().encode
