"""msgspec (``compiled_json``) against the standard library's decoder, on the same text.

``decode_json`` and ``read_request`` take msgspec's answer where it gives one. That is only
right if msgspec answers every document it takes exactly as the standard path would (values
to the bit, integers of any size, key order, a repeated field's last value), and refuses the
rest (which the standard path then answers). These tests hold it to that.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triows._core import compiled_json, protocol
from triows._core.protocol import ProtocolError, decode_json, parse_request, read_request

from .test_envelopes import floats, typed

leaves = st.one_of(
    st.none(),
    st.booleans(),
    # Past 64 bits: orjson turns these into floats, msgspec must keep them exact.
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    # Lone surrogates: JSON may escape them, Python holds them, msgspec refuses them.
    st.sampled_from(["\ud800", "a\udfffb", "\ud83d\ude00", "\u2028", "\x00", "\x7f"]),
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=16,
)
spellings = st.sampled_from(
    [
        {"separators": (",", ":"), "ensure_ascii": False},
        {"separators": (",", ":"), "ensure_ascii": True},
        {"indent": 1},
        {"separators": (" , ", " : ")},
    ]
)


def standard(text: str) -> Any:
    """The standard path alone: what ``decode_json`` answered before msgspec."""
    return protocol._decoder.decode(text)


def assert_same_answer(text: str) -> None:
    """``decode_json`` answers ``text`` as the standard path did: the same value, bit for
    bit, or the same error."""
    try:
        expected: Any = typed(standard(text))
    except RecursionError:
        expected = "not valid JSON: nested too deeply"
    except ValueError as exc:
        expected = f"not valid JSON: {protocol._short(exc)}"
    try:
        got: Any = typed(decode_json(text))
    except ProtocolError as exc:
        got = exc.message
    assert got == expected


@settings(max_examples=500)
@given(values, spellings)
def test_a_document_decodes_as_the_standard_library_decodes_it(
    value: Any, spelling: dict[str, Any]
) -> None:
    assert_same_answer(json.dumps(value, **spelling))


@settings(max_examples=1000)
@given(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["{!r}", "{:.17g}", "{:.3e}", "{:.20f}", "{:E}", "{:.1f}"]),
)
def test_a_float_decodes_to_the_same_bits(number: float, spelling: str) -> None:
    assert_same_answer("[" + spelling.format(number).replace("inf", "1e999") + "]")


@given(
    st.from_regex(r"-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)
)
def test_a_number_as_written_decodes_to_the_same_value(text: str) -> None:
    """Any number JSON allows, however many digits: the same value, or the same refusal
    (a float past the largest, which neither path may hand on)."""
    assert_same_answer(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"b":2,"a":3}',  # the last value, in the first one's place
        '{"a":{"x":1},"a":[2]}',
        ' \t\n{"a":1}\r\n ',
        '"\\ud800"',  # a lone surrogate escape: msgspec refuses, the standard path answers
        '["\\udfff", 1]',
        '"\\ud83d\\ude00"',
        '"\\u0000\\u001f\\"\\\\\\/"',
        "[-0, -0.0, 0e0, 1E2, 1e-2]",
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890",
    ],
)
def test_edge_documents_decode_as_the_standard_library_decodes_them(text: str) -> None:
    assert_same_answer(text)


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "[Infinity]",
        "-Infinity",
        "1e999",
        "[1,]",
        "{'a': 1}",
        "01",
        "\ufeff{}",
        '"a\x01"',
        "{} {}",
        "[" * 100_000,
        "",
    ],
)
def test_a_refused_document_is_refused_in_the_standard_paths_words(text: str) -> None:
    """msgspec refuses it too; the error is the one clients knew before (``decode_json``
    without msgspec)."""
    with pytest.raises(ProtocolError):
        decode_json(text)
    assert_same_answer(text)


@given(values)
def test_a_decoded_value_encodes_to_the_same_value(value: Any) -> None:
    """msgspec's encoding of a decoded value reads back as that value, bit for bit; it is
    the standard library's bytes but for a float with an exponent (``1e-7``, not ``1e-07``;
    between 1e-5 and 1e-4 msgspec writes it without one)."""
    parsed = decode_json(json.dumps(value))
    encoded = protocol.encode_parsed(parsed)
    assert typed(json.loads(encoded)) == typed(parsed)
    if not any("e" in repr(leaf) for leaf in floats(parsed)):
        assert encoded == protocol.encode(parsed)


def test_msgspec_refuses_what_only_the_standard_path_takes() -> None:
    """The fall back is needed: without it a lone surrogate would be an error."""
    with pytest.raises(compiled_json.REFUSED):
        compiled_json.decode('"\\ud800"')
    with pytest.raises(UnicodeEncodeError):
        compiled_json.encode("\ud800")


@pytest.mark.parametrize("depth", [1, 31, 127, 128, 129, 300, 1000, 5000])
@pytest.mark.parametrize("kind", ["ping", "publish", "bare"])
def test_msgspec_only_sees_documents_with_few_brackets(
    depth: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where one decoder's nesting limit takes a document and the other's does not (a few
    levels near 1,000, where the standard one's depends on the Python stack), only one may
    decide: msgspec is given a document only with at most ``MAX_BRACKETS`` brackets, which
    both decoders take at any nesting; the standard path decides the rest."""
    parse_request('{"type":"publish","channel":"room","data":0}')
    heads = {
        "ping": '{"type":"ping","id":7,"x":',
        "publish": '{"type":"publish","channel":"room","id":7,"data":',
        "bare": "",
    }
    raw = heads[kind] + "[" * depth + "]" * depth + ("}" if heads[kind] else "")
    seen: list[int] = []
    decode = compiled_json.decode

    def spy(text: str) -> Any:
        count = compiled_json.brackets(text)
        assert count <= compiled_json.MAX_BRACKETS, f"msgspec given {count} brackets"
        seen.append(count)
        return decode(text)

    monkeypatch.setattr(compiled_json, "decode", spy)
    for read in (read_request, decode_json, lambda t: compiled_json.loads(t, json.loads)):
        try:
            read(raw)
        except (ProtocolError, RecursionError):
            pass
    # Up to the bound, msgspec is asked (by each of the three); past it, never.
    assert bool(seen) == (compiled_json.brackets(raw) <= compiled_json.MAX_BRACKETS)


client_values = st.recursive(
    leaves | st.sampled_from([math.nan, math.inf, -math.inf, 1e308 * 10]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=16,
)


@settings(max_examples=500)
@given(client_values, spellings)
def test_the_clients_decode_is_json_loads(value: Any, spelling: dict[str, Any]) -> None:
    """triows.client reads a server's frames with ``compiled_json.loads(raw, json.loads)``:
    what ``json.loads`` answered before, ``NaN`` and ``Infinity`` included (msgspec refuses
    them, ``json.loads`` takes them)."""
    text = json.dumps(value, **spelling)
    assert repr(typed(compiled_json.loads(text, json.loads))) == repr(typed(json.loads(text)))


@pytest.mark.parametrize("depth", [255, 256, 257, 600, 1500, 5000])
def test_the_clients_decode_of_a_deep_document_is_json_loads(depth: int) -> None:
    text = "[" * depth + "]" * depth

    def answer(decode: Any) -> Any:
        try:
            return typed(decode(text))
        except RecursionError:
            return "too deep"

    assert answer(lambda t: compiled_json.loads(t, json.loads)) == answer(json.loads)
