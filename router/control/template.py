"""Go's text/template, the subset ``report -f`` and ``GET /report?format=`` use.

Rendered against the report (``router/control/report.py``) as Weave renders its own,
so the templates of Weave's scripts and docs work unchanged::

    {{.Router.Name}}  {{$.IPAM.Range}}  {{.}}       fields from dot / the root, dot
    {{"\\n"}}  {{`raw`}}  {{3}}  {{true}}           literals (Go string escapes)
    {{.A | printf "%-10s"}}                         pipelines: the value is the last argument
    {{$x := .A}}  {{$x = .B}}  {{$x.C}}             variables (scoped to their block)
    {{if eq .State "established"}}..{{else if ..}}..{{else}}..{{end}}
    {{with .IPAM}}..{{else}}..{{end}}               dot rebound when true
    {{range $i, $e := .Router.Peers}}..{{else}}..{{end}}   maps: by sorted key
    and or not eq ne lt le gt ge len index printf print println json   functions
    {{- ... -}}  {{/* comment */}}

Truth is Go's: false, 0, nil, "" and empty slices and maps are false, a struct is true.
Values print as Go prints them (``router/control/govalues.py``): structs ``{a b}``,
maps ``map[k:v]``, nil slices ``[]``, a missing map key ``<no value>``. A template that
does not parse, or does not fit the data (unknown field, ``len`` of a number, range
over a struct, ...), is a :class:`TemplateError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from router.control.govalues import (
    NO_VALUE,
    GoMap,
    go_format,
    go_json,
    go_sprint,
    go_sprintf,
    go_type,
)
from router.control.template_parse import (
    FUNCTIONS,
    Block,
    Chain,
    Const,
    Field,
    Func,
    Node,
    Operand,
    Output,
    Parser,
    Pipe,
    Sub,
    TemplateError,
    Text,
    Var,
)

__all__ = ["FUNCTIONS", "Template", "TemplateError", "render", "truth"]

MAX_OUTPUT_CHARS = 16 * 1024 * 1024
MAX_STEPS = 1_000_000  # nodes and range iterations executed, bounding the work of one render
_MISSING = object()  # no piped-in value


def truth(value: object) -> bool:
    """Go's ``if``: false, 0, nil, "" and empty slices and maps are false."""
    if value is None or value is NO_VALUE:
        return False
    if isinstance(value, bool | int | float | str | list | GoMap):
        return bool(value)
    return True  # a struct


def _kind(value: object, source: str) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "nil"
    raise TemplateError(f"non-comparable type {go_type(value)}: {go_format(value)} "
                        f"in {{{{{source}}}}}")


def _eq(args: Sequence[object], source: str) -> bool:
    if len(args) < 2:
        raise TemplateError(f"eq wants at least 2 arguments, got {len(args)} in {{{{{source}}}}}")
    first = args[0]
    for other in args[1:]:
        if _kind(first, source) != _kind(other, source) and None not in (first, other):
            raise TemplateError(f"incompatible types for comparison: {go_format(first)} and "
                                f"{go_format(other)} in {{{{{source}}}}}")
        if first == other:
            return True
    return False


def _order(name: str, args: Sequence[object], source: str) -> bool:
    if len(args) != 2:
        raise TemplateError(f"{name} wants 2 arguments, got {len(args)} in {{{{{source}}}}}")
    a, b = args
    if _kind(a, source) != _kind(b, source) or _kind(a, source) not in ("number", "string"):
        raise TemplateError(f"incompatible types for comparison: {go_format(a)} and "
                            f"{go_format(b)} in {{{{{source}}}}}")
    ops: dict[str, Callable[[], bool]] = {"lt": lambda: a < b, "le": lambda: a <= b,  # type: ignore[operator]
                                          "gt": lambda: a > b, "ge": lambda: a >= b}  # type: ignore[operator]
    return ops[name]()


def _length(value: object, source: str) -> int:
    if isinstance(value, str):
        return len(value.encode())  # Go counts bytes
    if isinstance(value, list | GoMap):
        return len(value)
    raise TemplateError(f"len of {go_format(value)!r} (type {go_type(value)}) in {{{{{source}}}}}")


def _index(args: Sequence[object], source: str) -> object:
    if not args:
        raise TemplateError(f"index wants at least 1 argument in {{{{{source}}}}}")
    value = args[0]
    for key in args[1:]:
        if isinstance(value, list | str) and isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(value):
                raise TemplateError(f"index out of range: {key} in {{{{{source}}}}}")
            value = value[key] if isinstance(value, list) else value.encode()[key]
        elif isinstance(value, GoMap) and isinstance(key, str):
            value = value.get(key)
        else:
            raise TemplateError(f"can't index item of type {go_type(value)} with "
                                f"{go_format(key)} in {{{{{source}}}}}")
    return value


def _fixed_arity(name: str, args: Sequence[object], count: int, source: str) -> None:
    if len(args) != count:
        raise TemplateError(f"{name} wants {count} argument{'s' if count > 1 else ''}, "
                            f"got {len(args)} in {{{{{source}}}}}")


def _call(name: str, args: Sequence[object], source: str) -> object:
    """A function other than ``and``/``or`` (those take their arguments lazily)."""
    if name in ("len", "json", "not"):
        _fixed_arity(name, args, 1, source)
        if name == "not":
            return not truth(args[0])
        return _length(args[0], source) if name == "len" else go_json(args[0])
    if name == "eq":
        return _eq(args, source)
    if name == "ne":
        _fixed_arity(name, args, 2, source)
        return not _eq(args, source)
    if name in ("lt", "le", "gt", "ge"):
        return _order(name, args, source)
    if name == "index":
        return _index(args, source)
    if name == "printf":
        if not args or not isinstance(args[0], str):
            raise TemplateError(f"printf wants a format string first in {{{{{source}}}}}")
        return go_sprintf(args[0], args[1:])
    return go_sprint(args, line=name == "println")  # print, println


class _Renderer:
    def __init__(self, root: object) -> None:
        self.vars: list[tuple[str, object]] = [("$", root)]
        self.out: list[str] = []
        self.size = 0
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateError(f"template ran more than {MAX_STEPS} steps")

    def emit(self, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT_CHARS:
            raise TemplateError(f"output larger than {MAX_OUTPUT_CHARS} characters")
        self.out.append(text)

    def var(self, name: str, source: str) -> object:
        for known, value in reversed(self.vars):
            if known == name:
                return value
        raise TemplateError(f'undefined variable "{name}" in {{{{{source}}}}}')

    def fields(self, value: object, names: Sequence[str], source: str) -> object:
        for name in names:
            if isinstance(value, GoMap):
                value = value.get(name, NO_VALUE)
            elif isinstance(value, dict):
                if name not in value:
                    raise TemplateError(f"can't evaluate field {name} in {{{{{source}}}}}")
                value = value[name]
            elif value is None:
                raise TemplateError(f"nil pointer evaluating .{name} in {{{{{source}}}}}")
            else:
                raise TemplateError(f"can't evaluate field {name} of {go_format(value)!r} "
                                    f"(type {go_type(value)}) in {{{{{source}}}}}")
        return value

    def operand(self, arg: Operand, dot: object, source: str) -> object:
        if isinstance(arg, Field):
            return self.fields(dot, arg.names, source)
        if isinstance(arg, Var):
            return self.fields(self.var(arg.name, source), arg.names, source)
        if isinstance(arg, Const):
            return arg.value
        if isinstance(arg, Sub):
            return self.pipe(arg.pipe, dot, declare=False)
        if isinstance(arg, Chain):
            return self.fields(self.pipe(arg.operand.pipe, dot, declare=False), arg.names,
                               source)
        return self.command((arg,), dot, _MISSING, source)  # a function without arguments

    def command(self, cmd: Sequence[Operand], dot: object, piped: object,
                source: str) -> object:
        head = cmd[0]
        if not isinstance(head, Func):
            if len(cmd) > 1 or piped is not _MISSING:
                raise TemplateError(f"can't give argument to non-function "
                                    f"{go_format(self.operand(head, dot, source))!r} "
                                    f"in {{{{{source}}}}}")
            return self.operand(head, dot, source)
        lazy: list[Callable[[], object]] = [
            (lambda a=a: self.operand(a, dot, source)) for a in cmd[1:]]  # type: ignore[misc]
        if piped is not _MISSING:
            lazy.append(lambda: piped)
        if head.name in ("and", "or"):
            if not lazy:
                raise TemplateError(f"{head.name} wants at least 1 argument in {{{{{source}}}}}")
            value: object = None
            for get in lazy:
                value = get()
                if truth(value) != (head.name == "and"):
                    return value
            return value
        return _call(head.name, [get() for get in lazy], source)

    def pipe(self, pipe: Pipe, dot: object, *, declare: bool = True) -> object:
        value: object = _MISSING
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value, pipe.source)
        if declare and pipe.decl:
            self.bind(pipe, value)
        return value

    def bind(self, pipe: Pipe, value: object) -> None:
        name = pipe.decl[0]
        if not pipe.assign:
            self.vars.append((name, value))
            return
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise TemplateError(f'undefined variable "{name}" in {{{{{pipe.source}}}}}')

    def run(self, nodes: Sequence[Node], dot: object) -> None:
        mark = len(self.vars)
        for node in nodes:
            self.step()
            if isinstance(node, Text):
                self.emit(node.text)
            elif isinstance(node, Output):
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.emit(value if type(value) is str else go_format(value))
            else:
                self.block(node, dot)
        del self.vars[mark:]

    def block(self, node: Block, dot: object) -> None:
        if node.kind != "range":
            mark = len(self.vars)
            value = self.pipe(node.pipe, dot)
            if truth(value):
                self.run(node.body, value if node.kind == "with" else dot)
            else:
                self.run(node.orelse, dot)
            del self.vars[mark:]
            return
        value = self.pipe(node.pipe, dot, declare=False)
        items = self.items(value, node.pipe.source)
        for key, item in items:
            self.step()
            mark = len(self.vars)
            if len(node.pipe.decl) == 2:
                self.vars += [(node.pipe.decl[0], key), (node.pipe.decl[1], item)]
            elif node.pipe.decl:
                self.vars.append((node.pipe.decl[0], item))
            self.run(node.body, item)
            del self.vars[mark:]
        if not items:
            self.run(node.orelse, dot)

    @staticmethod
    def items(value: object, source: str) -> list[tuple[object, object]]:
        if isinstance(value, GoMap):
            return [(key, value[key]) for key in sorted(value)]
        if isinstance(value, list):
            return list(enumerate(value))
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return [(i, i) for i in range(value)]
        raise TemplateError(f"range can't iterate over {go_format(value)} in {{{{{source}}}}}")


class Template:
    """A parsed template; :meth:`render` it against the report."""

    def __init__(self, source: str) -> None:
        """Parse ``source``; TemplateError if it is malformed."""
        self.nodes, _, _ = Parser(source).nodes(0, ())

    def render(self, data: object) -> str:
        """The text for ``data``; TemplateError if the template does not fit it."""
        renderer = _Renderer(data)
        renderer.run(self.nodes, data)
        return "".join(renderer.out)


def render(source: str, data: object) -> str:
    """Parse ``source`` and render it against ``data``."""
    return Template(source).render(data)
