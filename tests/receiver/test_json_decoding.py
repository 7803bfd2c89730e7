"""load_json reads with orjson when it can and the standard library otherwise; which decoder
ran must never change what is accepted or what it reads as (property-tested)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.errors import PayloadInvalid
from receiver.normalising import encode
from receiver.providers.common import load_json

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)


def same(a: Any, b: Any) -> bool:
    """Equal with types: 1 and 1.0 differ (an int must not come back as a float)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


@settings(max_examples=300)
@given(documents, st.booleans())
def test_reads_exactly_what_the_standard_library_reads(doc: Any, ascii_only: bool) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        return  # a lone surrogate from st.text(): covered below
    expected = json.loads(text)
    assert same(load_json(raw), expected)


@pytest.mark.parametrize(
    "body",
    [
        b"[18446744073709551616]",
        b"[-9223372036854775809]",
        b'{"id": 123456789012345678901234567890}',
        b'\xef\xbb\xbf{"a": 1}',  # a BOM: orjson refuses, the standard library reads it
        '{"a": "é"}'.encode("utf-16"),
        b"[NaN, Infinity]",
        b"[1e400]",
    ],
)
def test_bodies_orjson_refuses_or_misreads_are_read_as_before(body: bytes) -> None:
    text = body.decode(json.detect_encoding(body))
    assert same(load_json(body), json.loads(text))


@pytest.mark.parametrize(
    "body", [b'"\\ud800"', b'{"a": "\\udc00x"}', b"\xed\xa0\x80", b"{", b"   ", b"[1,]"]
)
def test_what_neither_can_carry_is_refused(body: bytes) -> None:
    with pytest.raises(PayloadInvalid):
        load_json(body)


@given(documents)
def test_envelope_encoding_matches_the_standard_library(doc: Any) -> None:
    envelope = {"id": "x", "payload": doc}
    try:
        expected = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        with pytest.raises(PayloadInvalid):
            encode(envelope, None)
        return
    assert same(json.loads(encode(envelope, None)), json.loads(expected))
