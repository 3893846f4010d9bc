"""Go's view of the report's values: which objects are maps, nil slices, and how Go's fmt
prints them (``%v``, ``printf`` verbs) and encoding/json writes them.

The report is plain JSON-ready data in which a ``dict`` is a Go *struct* (fields in
declaration order) unless it is a :class:`GoMap` (a Go ``map``: printed with sorted
keys, a missing key is ``<no value>`` instead of an error), and a :class:`NilSlice`
is a Go nil slice (JSON ``null``, but printed ``[]`` and ranged over as empty, as Go
does). ``None`` is a nil pointer or interface (``<nil>``). :func:`to_json` turns the
typed tree into what :mod:`json` writes; the template engine
(``router/control/template.py``) reads the typed tree itself.

Printed as Go's fmt prints them::

    "abc"            abc            True/False     true/false
    GoPointer(A=1)   &{1} on top, an address inside another value
    GoStringer, GoTime  what the Go type's String() says
    None             <nil>          [1, "a"]       [1 a]          NilSlice()   []
    {"A": 1, "B": 2} {1 2}          GoMap(b=2, a=1)  map[a:1 b:2]
    1.5              1.5            1e21           1e+21
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal


class GoMap(dict[str, object]):
    """A Go map in the report (e.g. a connection's ``Attrs``)."""


class NilMap(GoMap):
    """A Go nil map: JSON ``null``, printed ``map[]``; always empty."""


class NilSlice(list[object]):
    """A Go nil slice: JSON ``null``, printed ``[]``; always empty."""


class GoPointer(dict[str, object]):
    """A pointer to a struct (``Router``, ``IPAM``, ``IPAM.Paxos``): Go prints ``&{...}``
    on top and, inside another value, an address (here always :data:`POINTER_TEXT`)."""


POINTER_TEXT = "0xc000010000"  # Go prints the pointer's (arbitrary) address


class GoStringer(dict[str, object]):
    """A struct with a ``String()`` method, which fmt prints instead of its fields."""

    def __init__(self, fields: Mapping[str, object], text: str) -> None:
        super().__init__(fields)
        self.text = text


class GoTime(str):
    """A ``time.Time``: JSON writes it as RFC 3339 (this str), fmt as Go's ``String()``."""

    text: str

    def __new__(cls, rfc3339: str, text: str) -> GoTime:
        value = super().__new__(cls, rfc3339)
        value.text = text
        return value


class _NoValue:
    """What a missing map key evaluates to (Go prints ``<no value>``)."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE = _NoValue()


def nil_if_empty(items: Sequence[object]) -> list[object]:
    """A slice Go builds by appending to nil: nil when nothing was appended."""
    return list(items) if items else NilSlice()


def to_json(value: object) -> object:
    """The typed tree as :func:`json.dumps` input (nil slices become ``null``)."""
    if isinstance(value, NilSlice | NilMap):
        return None
    if isinstance(value, GoMap):  # encoding/json writes a map's keys sorted
        return {key: to_json(value[key]) for key in sorted(value)}
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_json(item) for item in value]
    return value


def go_json(value: object) -> str:
    """Compact JSON as Go's json.Marshal writes it (HTML-safe escapes)."""
    text = json.dumps(to_json(value), separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def go_float(value: float, verb: str = "v", precision: int | None = None) -> str:
    """A float as Go's ``%v`` / ``%g`` / ``%f`` / ``%e`` writes it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if verb == "f":
        return f"{value:.{6 if precision is None else precision}f}"
    if verb == "e":
        return _go_exponent(f"{value:.{6 if precision is None else precision}e}")
    if precision is not None:  # %.Ng: Python's g has Go's rule for an explicit precision
        return _go_exponent(f"{value:.{precision}g}")
    exact = Decimal(repr(value))  # the shortest digits that round-trip, as Go's -1
    digits = "".join(map(str, exact.as_tuple().digits)).rstrip("0") or "0"
    exponent = exact.adjusted()
    limit = 21  # %v: exponent form from 1e21 on
    if verb == "g":  # %g: Go's shortest-precision rule
        limit = len(digits) if 6 > len(digits) >= exponent + 1 else 6
    if exponent < -4 or exponent >= limit:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        sign = "-" if value < 0 else ""
        return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    return f"{exact.normalize():f}"


def _go_exponent(text: str) -> str:
    """Python writes e+21 / e-07 as Go does; keep at least two exponent digits."""
    return re.sub(r"e([+-])(\d+)$", lambda m: f"e{m.group(1)}{int(m.group(2)):02d}", text)


def go_format(value: object, depth: int = 0) -> str:
    """``value`` as Go's ``%v`` prints the matching Go value (``depth``: how deep inside
    the value being printed; Go prints a pointer to a struct as ``&{...}`` only on top)."""
    if isinstance(value, GoStringer | GoTime):
        return value.text
    if isinstance(value, GoPointer) and depth > 0:
        return POINTER_TEXT
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if value is NO_VALUE:
        return "<no value>"
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, list):
        return "[" + " ".join(go_format(item, depth + 1) for item in value) + "]"
    if isinstance(value, GoMap):
        return "map[" + " ".join(f"{go_format(k, depth + 1)}:{go_format(value[k], depth + 1)}"
                                 for k in sorted(value)) + "]"
    if isinstance(value, Mapping):
        text = "{" + " ".join(go_format(item, depth + 1) for item in value.values()) + "}"
        return "&" + text if isinstance(value, GoPointer) else text
    return str(value)


def go_quote(text: str) -> str:
    """``strconv.Quote``: a double-quoted Go string literal."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif char in _ESCAPES_OUT:
            out.append(_ESCAPES_OUT[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not char.isprintable():
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


_ESCAPES_OUT = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                "\t": "\\t", "\v": "\\v"}


def go_type(value: object) -> str:
    """The Go type name fmt shows in ``%!d(string=abc)``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, GoMap):
        return "map[string]interface {}"
    return "struct"


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?([a-zA-Z%])")


def go_sprintf(fmt: str, args: Sequence[object]) -> str:
    """Go's ``fmt.Sprintf`` for the verbs templates use: %v %s %d %q %t %f %e %g %x %c
    %%, flags ``-+ 0``, width and precision (``%-10s``, ``%5.1f``, ``%04.1f``,
    ``%12.12v``); a wrong or missing argument prints as Go prints it (``%!d(string=x)``,
    ``%!d(MISSING)``, ``%!(EXTRA ...)``)."""
    out: list[str] = []
    pos = used = 0
    for match in _VERB.finditer(fmt):
        out.append(fmt[pos:match.start()])
        pos = match.end()
        flags, width, precision, verb = match.groups()
        if verb == "%":
            out.append("%")
            continue
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        value = args[used]
        used += 1
        prec = None if precision is None else int(precision or 0)
        out.append(_pad(_verb(verb, value, flags, prec), flags, int(width or 0), value, verb))
    out.append(fmt[pos:])
    if used < len(args):
        extra = ", ".join(f"{go_type(a)}={go_format(a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _verb(verb: str, value: object, flags: str, prec: int | None) -> str:
    """One conversion, before padding."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    sign = "+" if "+" in flags else " " if " " in flags else ""
    if verb == "v" or (verb == "s" and not number and not isinstance(value, bool)):
        if isinstance(value, float):
            return _signed(go_float(value, "g", prec), value, sign)
        text = go_format(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return _signed(text, value, sign)
        return text[:prec] if prec is not None and isinstance(value, str) else text
    if verb == "q" and isinstance(value, str):
        return go_quote(value[:prec] if prec is not None else value)
    if verb == "t" and isinstance(value, bool):
        return "true" if value else "false"
    if verb in "dxXobc" and isinstance(value, int) and not isinstance(value, bool):
        if verb == "c":
            return chr(value)
        text = format(abs(value), {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb])
        if prec is not None:
            text = text.zfill(prec)
        return ("-" if value < 0 else sign) + text
    if verb in "xX" and isinstance(value, str):
        text = value.encode().hex()
        return text.upper() if verb == "X" else text
    if verb in "feEgG" and isinstance(value, int | float) and not isinstance(value, bool):
        text = go_float(float(value), verb.lower(), prec)
        return _signed(text.upper() if verb in "EG" else text, value, sign)
    shown = "<nil>" if value is None else f"{go_type(value)}={go_format(value)}"
    return f"%!{verb}({shown})"


def _signed(text: str, value: float, sign: str) -> str:
    return sign + text if sign and value >= 0 and not text.startswith("-") else text


def _pad(text: str, flags: str, width: int, value: object, verb: str) -> str:
    if len(text) >= width:
        return text
    if "-" in flags:
        return text.ljust(width)
    zero = "0" in flags and isinstance(value, int | float) and not isinstance(value, bool)
    if zero:
        sign = text[0] if text[:1] in "+- " else ""
        return sign + text[len(sign):].rjust(width - len(sign), "0")
    return text.rjust(width)


def go_sprint(args: Sequence[object], *, line: bool = False) -> str:
    """``fmt.Sprint`` (a space between operands when neither is a string) or, with
    ``line``, ``fmt.Sprintln`` (spaces always, and a newline)."""
    parts: list[str] = []
    for i, arg in enumerate(args):
        text = arg if isinstance(arg, str) else go_format(arg)
        if i and (line or not (isinstance(arg, str) or isinstance(args[i - 1], str))):
            parts.append(" ")
        parts.append(text)
    return "".join(parts) + ("\n" if line else "")
