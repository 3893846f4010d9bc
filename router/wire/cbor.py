"""The one door to cbor2: deterministic encoding and bounded decoding of untrusted bytes.

Only a small subset of CBOR (RFC 8949) is ever produced or accepted:

====================  ====================================================
major type            accepted
====================  ====================================================
0, 1 (integers)       yes, 64-bit range (-2**64 .. 2**64-1), no bignums
2 (byte string)       yes, definite length
3 (text string)       yes, definite length, valid UTF-8
4 (array)             yes, definite length, <= ``max_items`` items
5 (map)               yes, definite length, <= ``max_items`` pairs, text keys
                      (integer keys only with ``allow_int_keys``), no duplicates
6 (tag)               never: no tag is part of any weave-router format
7 (simple / float)    false, true, null, and half/single/double floats only
====================  ====================================================

Indefinite lengths are refused, nesting is limited to ``max_depth`` containers, and the
input must be exactly one data item (no trailing bytes). :func:`encode` is canonical
(RFC 7049 section 3.9: shortest integer and length forms, map keys sorted), so equal
values always give equal bytes and golden vectors are stable.

:func:`decode_untrusted` first scans the item structure itself (cheap: one step per
item head, bounded by the input size) and only then hands the bytes to cbor2 with
duplicate keys, indefinite lengths and deep nesting refused again; whatever goes wrong
surfaces as :class:`~router.errors.DecodeError` and nothing else. The scan runs compiled
(``router.wire._cborscan``, built with the data plane); :func:`_scan` below is its
definition in Python, used where the extension is not built, and the two are tested
against each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import cbor2

from router.errors import DecodeError, LocalProtocolError
from router.wire.constants import MAX_CBOR_DEPTH, MAX_CONTAINER_ITEMS, MAX_FRAME_SIZE

_NativeScan = Callable[[bytes, int, int, bool], "str | None"]
_native_scan: _NativeScan | None
try:
    from router.wire._cborscan import scan as _native_scan
except ImportError:  # not built (a source checkout before `make build`): the Python scan
    _native_scan = None

__all__ = ["decode_untrusted", "encode"]

_INT_MIN = -(1 << 64)
_INT_MAX = (1 << 64) - 1
_ARG_SIZES = {24: 1, 25: 2, 26: 4, 27: 8}
_SIMPLE_OK = {20, 21, 22}  # false, true, null
_FLOAT_SIZES = {25: 2, 26: 4, 27: 8}


def encode(obj: object) -> bytes:
    """Encode ``obj`` canonically.

    Accepted: None, bool, int (64-bit range), float, str, bytes, list/tuple, and dicts
    with str or int keys, nested at most :data:`MAX_CBOR_DEPTH` deep. Anything else is
    our own bug and raises :class:`LocalProtocolError`.
    """
    _check_encodable(obj, 0)
    try:
        return bytes(cbor2.dumps(obj, canonical=True))
    except Exception as exc:  # pragma: no cover - _check_encodable admits only plain types
        raise LocalProtocolError(f"cannot encode value as CBOR: {exc}") from exc


def encode_with_array_tail(head: Mapping[str, object], items: Sequence[bytes]) -> bytes:
    """``encode(head | {last_key: [items...]})`` where ``items`` are already encoded.

    For payloads made of many records that rarely change (the topology): each record is
    encoded once and cached by its owner, and only the array around them is built here.
    ``head`` must hold exactly one key whose value is an empty list, and that key must
    sort last canonically (longest key, then bytewise), so the array is the final item.
    """
    empty = [key for key, value in head.items() if value == []]
    if len(empty) != 1 or max(head, key=lambda k: (len(k), k.encode())) != empty[0]:
        raise LocalProtocolError("the array key must be the only empty list and sort last")
    prefix = encode(head)
    assert prefix.endswith(b"\x80")
    return prefix[:-1] + _array_header(len(items)) + b"".join(items)


def _array_header(count: int) -> bytes:
    """The CBOR head of an array of ``count`` items (major type 4)."""
    if count < 24:
        return bytes([0x80 | count])
    for code, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if count < 1 << (8 * size):
            return bytes([0x80 | code]) + count.to_bytes(size, "big")
    raise LocalProtocolError(f"array of {count} items is too long for CBOR")


def _check_encodable(obj: object, depth: int) -> None:
    if obj is None or isinstance(obj, bool | float | str | bytes):
        return
    if isinstance(obj, int):
        if not _INT_MIN <= obj <= _INT_MAX:
            raise LocalProtocolError(f"integer out of the 64-bit CBOR range: {obj}")
        return
    if depth >= MAX_CBOR_DEPTH:
        raise LocalProtocolError(f"value nested deeper than {MAX_CBOR_DEPTH} containers")
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise LocalProtocolError(f"CBOR map keys must be str or int, not {key!r}")
            _check_encodable(key, depth + 1)
            _check_encodable(value, depth + 1)
        return
    if isinstance(obj, Sequence) and not isinstance(obj, bytearray | memoryview):
        for item in obj:
            _check_encodable(item, depth + 1)
        return
    raise LocalProtocolError(f"type {type(obj).__name__} cannot be encoded as CBOR")


def decode_untrusted(
    data: bytes,
    *,
    max_size: int = MAX_FRAME_SIZE,
    max_depth: int = MAX_CBOR_DEPTH,
    max_items: int = MAX_CONTAINER_ITEMS,
    allow_int_keys: bool = False,
) -> object:
    """Decode one CBOR item from untrusted ``data``; :class:`DecodeError` on any problem.

    Returns plain Python values: None, bool, int, float, str, bytes, list, dict.
    """
    if len(data) > max_size:
        raise DecodeError(f"CBOR item of {len(data)} bytes exceeds the limit of {max_size}")
    if _native_scan is None:
        _scan(data, max_depth=max_depth, max_items=max_items, allow_int_keys=allow_int_keys)
    else:
        problem = _native_scan(data if isinstance(data, bytes) else bytes(data),
                               max_depth, max_items, allow_int_keys)
        if problem is not None:
            raise DecodeError(problem)
    try:
        return cbor2.loads(
            data,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=not allow_int_keys,
        )
    except Exception as exc:  # cbor2 errors, RecursionError, MemoryError, ValueError...
        raise DecodeError(f"malformed CBOR: {exc}") from None


class _Container:
    """One open array or map during the structure scan."""

    __slots__ = ("is_map", "remaining")

    def __init__(self, remaining: int, is_map: bool) -> None:
        self.remaining = remaining
        self.is_map = is_map


def _scan(data: bytes, *, max_depth: int, max_items: int, allow_int_keys: bool) -> None:
    """Check the item structure of ``data`` without building any value."""
    if not data:
        raise DecodeError("empty CBOR input")
    size = len(data)
    pos = 0
    stack: list[_Container] = []
    while True:
        if pos >= size:
            raise DecodeError("truncated CBOR item")
        initial = data[pos]
        major, info = initial >> 5, initial & 0x1F
        if stack and stack[-1].is_map and stack[-1].remaining % 2 == 0:
            _check_key(major, allow_int_keys)
        pos, arg = _read_argument(data, pos + 1, major, info)
        if major in (2, 3):
            if arg > size - pos:
                raise DecodeError("truncated CBOR string")
            pos += arg
        elif major in (4, 5):
            if arg > max_items:
                raise DecodeError(f"CBOR container of {arg} items exceeds {max_items}")
            count = arg * 2 if major == 5 else arg
            if count > size - pos:
                raise DecodeError("truncated CBOR container")
            if len(stack) >= max_depth:
                raise DecodeError(f"CBOR nested deeper than {max_depth}")
            if count:
                stack.append(_Container(count, major == 5))
                continue
        elif major == 7:
            pos += _FLOAT_SIZES.get(info, 0)
            if pos > size:
                raise DecodeError("truncated CBOR float")
        # one item finished: pop every container it completes
        while stack:
            stack[-1].remaining -= 1
            if stack[-1].remaining:
                break
            stack.pop()
        if not stack:
            break
    if pos != size:
        raise DecodeError(f"{size - pos} trailing bytes after the CBOR item")


def _check_key(major: int, allow_int_keys: bool) -> None:
    if major == 3 or (allow_int_keys and major in (0, 1)):
        return
    raise DecodeError("CBOR map key is not a text string")


def _read_argument(data: bytes, pos: int, major: int, info: int) -> tuple[int, int]:
    """Read the argument of an item head; refuse tags, indefinite lengths, odd simples."""
    if major == 6:
        raise DecodeError("CBOR tags are not allowed")
    if major == 7:
        if info in _SIMPLE_OK or info in _FLOAT_SIZES:
            return pos, 0
        raise DecodeError(f"CBOR simple value {info} is not allowed")
    if info < 24:
        return pos, info
    width = _ARG_SIZES.get(info)
    if width is None:
        if info == 31:
            raise DecodeError("indefinite-length CBOR items are not allowed")
        raise DecodeError(f"reserved CBOR additional information {info}")
    end = pos + width
    if end > len(data):
        raise DecodeError("truncated CBOR item head")
    return end, int.from_bytes(data[pos:end], "big")
