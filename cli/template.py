"""The subset of Go's text/template that ``weave-router report -f`` understands.

Rendered against the JSON report (so ``{{.Router.Name}}`` works as with Weave)::

    literal text                   copied as is
    {{.}}  {{.A.B}}  {{$.A}}       the current value, a field path from it, from the root
    {{len .X}}                     length of a list, object or string
    {{json .X}}                    compact JSON, Go's escaping of <, >, &
    {{.X | json}}                  pipelines: the value becomes the last argument
    {{range .X}}...{{end}}         once per element (of an object: values by sorted key),
    {{range .X}}...{{else}}...{{end}}   with ``.`` rebound; else-part when empty
    {{if .X}}...{{else}}...{{end}} Go's truth: false, 0, null, "", [] and {} are false
    {{- ... -}}                    trim whitespace before / after the action
    {{/* comment */}}              nothing

Values print as Go prints them: strings as is, ``true``/``false``, ``<nil>``, lists as
``[a b]``, objects as ``{v1 v2}`` (values in order, like a Go struct). Anything else
(unknown field, unknown function, ``{{end}}`` without a block, an unclosed ``{{``) is a
:class:`TemplateError` with a one-line message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from router.errors import RouterError

MAX_TEMPLATE_CHARS = 64 * 1024
MAX_OUTPUT_CHARS = 16 * 1024 * 1024
MAX_NESTING = 32

_ARG = re.compile(r"^(\.|\$|(\$)?(\.[A-Za-z_][A-Za-z0-9_]*)+)$")
FUNCTIONS = ("len", "json")


class TemplateError(RouterError):
    """The template is malformed, or does not fit the data. The message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Output:
    pipeline: tuple[tuple[str, ...], ...]
    source: str


@dataclass(frozen=True)
class _Block:
    kind: str  # "range" or "if"
    pipeline: tuple[tuple[str, ...], ...]
    source: str
    body: tuple[_Node, ...]
    orelse: tuple[_Node, ...]


_Node = _Text | _Output | _Block


def _tokens(source: str) -> list[tuple[bool, str]]:
    """Split into (is_action, text) pieces, applying the ``{{-``/``-}}`` trim markers."""
    pieces: list[tuple[bool, str]] = []
    pos = 0
    while True:
        start = source.find("{{", pos)
        if start < 0:
            pieces.append((False, source[pos:]))
            return pieces
        end = source.find("}}", start + 2)
        if end < 0:
            raise TemplateError(f"unclosed action: {source[start:start + 20]!r}")
        text, inner = source[pos:start], source[start + 2:end]
        if inner[:1] == "-" and inner[1:2].isspace():
            text, inner = text.rstrip(), inner[1:]
        pos = end + 2
        if inner[-1:] == "-" and inner[-2:-1].isspace():
            inner = inner[:-1]
            while pos < len(source) and source[pos].isspace():
                pos += 1
        pieces.append((False, text))
        pieces.append((True, inner.strip()))


def _pipeline(text: str) -> tuple[tuple[str, ...], ...]:
    if not text:
        raise TemplateError("empty action {{}}")
    commands: list[tuple[str, ...]] = []
    for part in text.split("|"):
        words = tuple(part.split())
        if not words:
            raise TemplateError(f"missing command in {{{{{text}}}}}")
        for i, word in enumerate(words):
            if not (_ARG.match(word) or (i == 0 and word in FUNCTIONS)):
                raise TemplateError(f"unsupported {word!r} in {{{{{text}}}}}")
        if words[0] not in FUNCTIONS and len(words) > 1:
            raise TemplateError(f"{words[0]} is not a function in {{{{{text}}}}}")
        if commands and words[0] not in FUNCTIONS:
            raise TemplateError(f"cannot pipe into {words[0]} in {{{{{text}}}}}")
        commands.append(words)
    return tuple(commands)


class _Parser:
    def __init__(self, source: str) -> None:
        self.pieces = _tokens(source)
        self.pos = 0

    def nodes(self, depth: int, ends: tuple[str, ...]) -> tuple[tuple[_Node, ...], str]:
        """Parse until one of ``ends`` (returned) or the end of input (returns "")."""
        if depth > MAX_NESTING:
            raise TemplateError(f"blocks nested deeper than {MAX_NESTING}")
        out: list[_Node] = []
        while self.pos < len(self.pieces):
            is_action, text = self.pieces[self.pos]
            self.pos += 1
            if not is_action:
                if text:
                    out.append(_Text(text))
                continue
            if text.startswith("/*") and text.endswith("*/"):
                continue
            keyword, rest = (*text.split(None, 1), "", "")[:2]
            if keyword in ("end", "else"):
                if keyword not in ends or rest:
                    raise TemplateError(f"unexpected {{{{{text}}}}}")
                return tuple(out), keyword
            if keyword in ("range", "if"):
                out.append(self.block(keyword, rest, text, depth))
            else:
                out.append(_Output(_pipeline(text), text))
        if ends:
            raise TemplateError("missing {{end}}")
        return tuple(out), ""

    def block(self, kind: str, rest: str, source: str, depth: int) -> _Block:
        pipeline = _pipeline(rest)
        body, end = self.nodes(depth + 1, ("end", "else"))
        orelse: tuple[_Node, ...] = ()
        if end == "else":
            orelse, _ = self.nodes(depth + 1, ("end",))
        return _Block(kind, pipeline, source, body, orelse)


def go_format(value: object) -> str:
    """``value`` as Go's ``%v`` prints the matching Go value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, list):
        return "[" + " ".join(go_format(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + " ".join(go_format(item) for item in value.values()) + "}"
    return str(value)


def go_json(value: object) -> str:
    """Compact JSON as Go's json.Marshal writes it (HTML-safe escapes)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _length(value: object, source: str) -> int:
    if isinstance(value, str | list | dict):
        return len(value)
    raise TemplateError(f"len of {go_format(value)!r} (not a list, object or string) in {source}")


class _Renderer:
    def __init__(self, root: object) -> None:
        self.root = root
        self.out: list[str] = []
        self.size = 0

    def emit(self, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT_CHARS:
            raise TemplateError(f"output larger than {MAX_OUTPUT_CHARS} characters")
        self.out.append(text)

    def arg(self, word: str, dot: object, source: str) -> object:
        value, path = (self.root, word[1:]) if word.startswith("$") else (dot, word)
        for name in path.split(".")[1:] if path not in ("", ".") else []:
            if not isinstance(value, dict):
                raise TemplateError(f"can't evaluate field {name} of {go_format(value)!r} "
                                    f"in {{{{{source}}}}}")
            if name not in value:
                raise TemplateError(f"no field {name} in {{{{{source}}}}}")
            value = value[name]
        return value

    def pipeline(self, commands: tuple[tuple[str, ...], ...], dot: object, source: str) -> object:
        result: object = None
        for index, words in enumerate(commands):
            if words[0] not in FUNCTIONS:
                result = self.arg(words[0], dot, source)
                continue
            args = [self.arg(word, dot, source) for word in words[1:]]
            if index > 0:
                args.append(result)
            if len(args) != 1:
                raise TemplateError(f"{words[0]} wants 1 argument, got {len(args)} "
                                    f"in {{{{{source}}}}}")
            result = _length(args[0], source) if words[0] == "len" else go_json(args[0])
        return result

    def run(self, nodes: tuple[_Node, ...], dot: object) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.emit(node.text)
            elif isinstance(node, _Output):
                value = self.pipeline(node.pipeline, dot, node.source)
                self.emit(value if isinstance(value, str) else go_format(value))
            else:
                self.block(node, dot)

    def block(self, node: _Block, dot: object) -> None:
        value = self.pipeline(node.pipeline, dot, node.source)
        if node.kind == "if":
            self.run(node.body if value else node.orelse, dot)
            return
        if isinstance(value, dict):
            items = [value[key] for key in sorted(value)]
        elif isinstance(value, list):
            items = value
        elif value is None:
            items = []
        else:
            raise TemplateError(f"range can't iterate over {go_format(value)!r} "
                                f"in {{{{{node.source}}}}}")
        for item in items:
            self.run(node.body, item)
        if not items:
            self.run(node.orelse, dot)


class Template:
    """A parsed template; :meth:`render` it against JSON-like data."""

    def __init__(self, source: str) -> None:
        """Parse ``source``; TemplateError if it is malformed."""
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"template longer than {MAX_TEMPLATE_CHARS} characters")
        self.nodes, _ = _Parser(source).nodes(0, ())

    def render(self, data: object) -> str:
        """The text for ``data``; TemplateError if the template does not fit it."""
        renderer = _Renderer(data)
        renderer.run(self.nodes, data)
        return "".join(renderer.out)


def render(source: str, data: object) -> str:
    """Parse ``source`` and render it against ``data``."""
    return Template(source).render(data)
