"""Parsing the Go text/template subset of ``report -f`` (``router/control/template.py``).

Stages: :func:`split` cuts the source into text and actions (``{{- -}}`` trim markers,
``{{/* comments */}}``, ``}}`` inside a string literal stays in the action);
:func:`lex` cuts one action into tokens; :class:`Parser` builds the tree: text,
output actions, ``if``/``else if``/``else``, ``range``, ``with``, pipelines of commands
whose operands are fields (``.A.B``), variables (``$``, ``$x.A``), literals (Go
string escapes, raw strings, numbers, ``true``/``false``/``nil``), function names and
parenthesised pipelines (``(index .X 0).Name``).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from router.errors import RouterError

MAX_TEMPLATE_CHARS = 64 * 1024
MAX_NESTING = 32
FUNCTIONS = frozenset({"and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len",
                       "index", "printf", "print", "println", "json"})
_UNSUPPORTED = frozenset({"define", "template", "block", "break", "continue"})


class TemplateError(RouterError):
    """The template is malformed, or does not fit the data. The message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


# -- the tree --------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    names: tuple[str, ...]  # () is "."


@dataclass(frozen=True)
class Var:
    name: str  # "$" or "$x"
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Const:
    value: object


@dataclass(frozen=True)
class Func:
    name: str


@dataclass(frozen=True)
class Chain:
    operand: Sub
    names: tuple[str, ...]


@dataclass(frozen=True)
class Sub:
    pipe: Pipe


Operand = Field | Var | Const | Func | Chain | Sub


@dataclass(frozen=True)
class Pipe:
    decl: tuple[str, ...]  # variables declared (":=") or assigned ("=")
    assign: bool
    cmds: tuple[tuple[Operand, ...], ...]
    source: str


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Output:
    pipe: Pipe


@dataclass(frozen=True)
class Block:
    kind: str  # "if", "range", "with"
    pipe: Pipe
    body: tuple[Node, ...]
    orelse: tuple[Node, ...]


Node = Text | Output | Block


# -- stage 1: text and actions ----------------------------------------------------------

def split(source: str) -> list[tuple[bool, str]]:
    """(is_action, text) pieces, trim markers applied, comments dropped."""
    pieces: list[tuple[bool, str]] = []
    pos = 0
    while (start := source.find("{{", pos)) >= 0:
        text, i = source[pos:start], start + 2
        if source[i:i + 1] == "-" and source[i + 1:i + 2].isspace():
            text, i = text.rstrip(" \t\r\n"), i + 1
        end = _action_end(source, i)
        inner = source[i:end]
        pos = end + 2
        if inner[-1:] == "-" and inner[-2:-1].isspace():
            inner = inner[:-1]
            while pos < len(source) and source[pos] in " \t\r\n":
                pos += 1
        pieces.append((False, text))
        if not inner.strip().startswith("/*"):
            pieces.append((True, inner.strip()))
    pieces.append((False, source[pos:]))
    return pieces


def _action_end(source: str, i: int) -> int:
    """Where the ``}}`` closing the action that starts at ``i`` is."""
    stripped = source[i:].lstrip()
    if stripped.startswith("/*"):
        close = source.find("*/", i)
        end = source.find("}}", close + 2) if close >= 0 else -1
        if end < 0 or source[close + 2:end].strip() not in ("", "-"):
            raise TemplateError(f"unclosed comment: {source[i - 2:i + 18]!r}")
        return end
    j = i
    while j < len(source):
        char = source[j]
        if source.startswith("}}", j):
            return j
        if char in "\"`'":
            quoted = _STRING_END[char].match(source, j)
            if quoted is None:
                raise TemplateError(f"unterminated quoted string in {source[j:j + 20]!r}")
            j = quoted.end()
            continue
        j += 1
    raise TemplateError(f"unclosed action: {source[i - 2:i + 18]!r}")


_STRING_END = {'"': re.compile(r'"(?:[^"\\\n]|\\.)*"'), "`": re.compile(r"`[^`]*`"),
               "'": re.compile(r"'(?:[^'\\\n]|\\.)+'")}


# -- stage 2: tokens ---------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|`[^`]*`)
  | (?P<char>'(?:[^'\\\n]|\\.)+')
  | (?P<declare>:=)
  | (?P<punct>[()|,=])
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][-+]?\d+)?))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)


def lex(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens of one action; a field right after ``)`` is kind "chain"."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise TemplateError(f"unexpected {text[pos:pos + 10]!r} in {{{{{text}}}}}")
        kind = match.lastgroup or ""
        if kind == "field" and tokens and tokens[-1] == ("punct", ")") and pos == match.start():
            kind = "chain" if text[pos - 1] == ")" else kind
        if kind != "space":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def _literal(kind: str, text: str, source: str) -> object:
    try:
        if kind == "string" and text.startswith("`"):
            return text[1:-1]
        if kind in ("string", "char"):
            value = ast.literal_eval(text if kind == "string" else '"' + text[1:-1] + '"')
            return value if kind == "string" else ord(value)
        cleaned = text.replace("_", "")
        if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", cleaned):
            return int(cleaned, 16)
        if re.fullmatch(r"[-+]?\d+", cleaned):
            return int(cleaned)
        return float(cleaned)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise TemplateError(f"bad literal {text} in {{{{{source}}}}}") from exc


# -- stage 3: the tree -------------------------------------------------------------------

class _Tokens:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items = lex(source)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def take(self) -> tuple[str, str]:
        token = self.items[self.pos]
        self.pos += 1
        return token

    def fail(self, what: str) -> TemplateError:
        return TemplateError(f"{what} in {{{{{self.source}}}}}")


def parse_pipe(tokens: _Tokens, *, decl_ok: bool, nested: bool = False) -> Pipe:
    """A pipeline (``$x := a | b c``); stops at ``)`` when ``nested``."""
    decl: list[str] = []
    assign = False
    rest = tokens.items[tokens.pos:]
    kinds = [k for k, _ in rest]
    if decl_ok and kinds[:2] in (["var", "declare"], ["var", "punct"]) and (
            kinds[1] == "declare" or rest[1][1] in ("=", ",")):
        decl.append(tokens.take()[1])
        if tokens.peek() == ("punct", ","):
            tokens.take()
            if (tokens.peek() or ("", ""))[0] != "var":
                raise tokens.fail("expected a variable after ','")
            decl.append(tokens.take()[1])
        kind, text = tokens.take() if tokens.peek() else ("", "")
        if kind != "declare" and text != "=":
            raise tokens.fail("expected := or =")
        assign = text == "="
        if any("." in name for name in decl):
            raise tokens.fail("cannot declare a field")
    cmds: list[tuple[Operand, ...]] = []
    while True:
        args: list[Operand] = []
        while (token := tokens.peek()) is not None and token not in (("punct", "|"),
                                                                       ("punct", ")")):
            args.append(_operand(tokens))
        if not args:
            raise tokens.fail("missing command" if cmds or decl else "empty pipeline")
        cmds.append(tuple(args))
        token = tokens.peek()
        if token == ("punct", "|"):
            tokens.take()
            continue
        if token == ("punct", ")") and not nested:
            raise tokens.fail("unexpected )")
        break
    return Pipe(tuple(decl), assign, tuple(cmds), tokens.source)


def _operand(tokens: _Tokens) -> Operand:
    kind, text = tokens.take()
    operand: Operand
    if kind == "punct" and text == "(":
        sub = Sub(parse_pipe(tokens, decl_ok=True, nested=True))
        if tokens.peek() != ("punct", ")"):
            raise tokens.fail("unclosed (")
        tokens.take()
        if (tokens.peek() or ("", ""))[0] == "chain":
            return Chain(sub, tuple(tokens.take()[1].split(".")[1:]))
        return sub
    if kind == "field":
        operand = Field(tuple(text.split(".")[1:]) if text != "." else ())
    elif kind == "var":
        name, *names = text.split(".")
        operand = Var(name, tuple(names))
    elif kind in ("string", "char", "number"):
        operand = Const(_literal(kind, text, tokens.source))
    elif kind == "ident" and text in ("true", "false", "nil"):
        operand = Const({"true": True, "false": False, "nil": None}[text])
    elif kind == "ident" and text in FUNCTIONS:
        operand = Func(text)
    elif kind == "ident":
        raise tokens.fail(f'function "{text}" not defined')
    else:
        raise tokens.fail(f"unexpected {text!r}")
    return operand


class Parser:
    """The whole template as a tree of :data:`Node`."""

    def __init__(self, source: str) -> None:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"template longer than {MAX_TEMPLATE_CHARS} characters")
        self.pieces = split(source)
        self.pos = 0

    def nodes(self, depth: int, ends: tuple[str, ...]) -> tuple[tuple[Node, ...], str, str]:
        """Nodes until one of ``ends`` (returned with the rest of its action)."""
        if depth > MAX_NESTING:
            raise TemplateError(f"blocks nested deeper than {MAX_NESTING}")
        out: list[Node] = []
        while self.pos < len(self.pieces):
            is_action, text = self.pieces[self.pos]
            self.pos += 1
            if not is_action:
                if text:
                    out.append(Text(text))
                continue
            keyword, rest = (*text.split(None, 1), "", "")[:2]
            if keyword in ("end", "else"):
                if keyword not in ends or (keyword == "end" and rest):
                    raise TemplateError(f"unexpected {{{{{text}}}}}")
                return tuple(out), keyword, rest
            if keyword in _UNSUPPORTED:
                raise TemplateError(f"{{{{{keyword}}}}} is not supported, in {{{{{text}}}}}")
            if keyword in ("if", "range", "with"):
                out.append(self.block(keyword, rest or "", depth))
            else:
                out.append(Output(self.pipe(text, decl_ok=True)))
        if ends:
            raise TemplateError("missing {{end}}")
        return tuple(out), "", ""

    def pipe(self, text: str, *, decl_ok: bool) -> Pipe:
        tokens = _Tokens(text)
        if not tokens.items:
            raise TemplateError("missing value for command in {{}}" if not text else
                                f"empty pipeline in {{{{{text}}}}}")
        pipe = parse_pipe(tokens, decl_ok=decl_ok)
        if tokens.peek() is not None:
            raise tokens.fail(f"unexpected {tokens.peek()[1]!r}")  # type: ignore[index]
        return pipe

    def block(self, kind: str, rest: str, depth: int) -> Block:
        if not rest:
            raise TemplateError(f"missing value for {kind}")
        pipe = self.pipe(rest, decl_ok=True)
        if kind != "range" and len(pipe.decl) > 1:
            raise TemplateError(f"too many declarations in {{{{{kind} {rest}}}}}")
        body, end, tail = self.nodes(depth + 1, ("end", "else"))
        orelse: tuple[Node, ...] = ()
        if end == "else":
            chained = tail.split(None, 1)
            if chained and chained[0] in ("if", "with") and kind != "range":
                orelse = (self.block(chained[0], [*chained, ""][1], depth + 1),)
            elif tail:
                raise TemplateError(f"unexpected {{{{else {tail}}}}}")
            else:
                orelse, _, _ = self.nodes(depth + 1, ("end",))
        return Block(kind, pipe, body, orelse)
