"""The compiled CBOR structure scan says exactly what the Python definition says.

``router.wire._cborscan.scan`` returns the problem (or None); ``cbor._scan`` raises it as
a DecodeError. Both are fed random bytes, mutated valid encodings of random values and
hand-picked edge cases, under random limits.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.errors import DecodeError
from router.wire import cbor
from router.wire._cborscan import scan
from tests.wire.test_fuzz import VALID, mutated

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False) | st.text(max_size=30) | st.binary(max_size=30),
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=8) | st.integers(-30, 30), inner, max_size=6),
    max_leaves=40,
)
limits = st.tuples(st.integers(0, 20), st.integers(0, 70_000), st.booleans())


def python_scan(data: bytes, max_depth: int, max_items: int, allow_int_keys: bool) -> str | None:
    try:
        cbor._scan(data, max_depth=max_depth, max_items=max_items, allow_int_keys=allow_int_keys)
    except DecodeError as exc:
        return str(exc)
    return None


def test_decode_untrusted_uses_the_compiled_scan() -> None:
    assert cbor._native_scan is scan


@FUZZ
@given(st.binary(max_size=300), limits)
def test_random_bytes(data: bytes, limit: tuple[int, int, bool]) -> None:
    assert scan(data, *limit) == python_scan(data, *limit)


@FUZZ
@given(st.data(), values, limits)
def test_mutated_encodings(data: st.DataObject, value: object,
                           limit: tuple[int, int, bool]) -> None:
    encoded = cbor.encode(value)
    assert scan(encoded, 16, 65536, True) is None
    for bad in (data.draw(mutated([encoded])), data.draw(mutated(VALID))):
        assert scan(bad, *limit) == python_scan(bad, *limit)


@pytest.mark.parametrize("data", [
    b"", b"\x18", b"\x1b\xff\xff\xff\xff\xff\xff\xff", b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xc1\x00", b"\xf7", b"\xf8\x20", b"\xfb\x00", b"\x1c", b"\x5f", b"\x80\x00",
    b"\xa1\x01\x02", b"\xa1\x61a\x02", b"\x81" * 17 + b"\x00", b"\xfa\x00\x00\x00\x00",
])
@pytest.mark.parametrize("allow_int_keys", [False, True])
def test_edge_cases(data: bytes, allow_int_keys: bool) -> None:
    assert scan(data, 16, 65536, allow_int_keys) == python_scan(data, 16, 65536, allow_int_keys)
