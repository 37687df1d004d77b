"""Source text → AST, with every syntax error of a file reported in one run.

The file is cut into top-level declarations (a line that starts at column 1 with a
declaration keyword or a decorator) and each piece is parsed on its own, so one broken
declaration does not hide the errors, or the meaning, of the others.
"""

from __future__ import annotations

import bisect
import inspect
import json
import math
import re
from collections.abc import Callable, Iterator
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer_NonRecursive, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.tree import Meta

from llmflow.compiler import ast
from llmflow.compiler.diagnostics import Diagnostic, quote
from llmflow.compiler.heap import gc_paused
from llmflow.stdlib.builtins import MAX_INT_DIGITS

_GRAMMAR = Path(__file__).with_name("grammar.lark")
_DECL_START = re.compile(r"(import|model|enum|record|extern|fn|flow)\b|@")
_DECL_NAME = re.compile(
    r"^(?:extern\s+)?(?:fn|flow|enum|record|model)\s+([A-Za-z_]\w*)", re.MULTILINE
)


@cache
def _parser() -> Lark:
    return Lark(
        _GRAMMAR.read_text(),
        parser="lalr",
        start=["start", "placeholder"],
        propagate_positions=True,
        maybe_placeholders=True,
    )


def parse_module(source: str, file: str) -> tuple[ast.Module, list[Diagnostic]]:
    with gc_paused():  # a big file is many small objects and no cycles
        return _parse_module(source, file)


def _parse_module(source: str, file: str) -> tuple[ast.Module, list[Diagnostic]]:
    decls: list[ast.Decl] = []
    diags: list[Diagnostic] = []
    broken: list[str] = []
    for first_line, chunk in _split_declarations(source):
        try:
            tree = _parser().parse(chunk, start="start")
        except UnexpectedInput as err:
            diags.append(_shifted(_syntax_error(err, file, chunk), first_line + 1, 1))
            broken.extend(_DECL_NAME.findall(chunk)[:1])
            continue
        builder = _Builder(file, line=first_line + 1)
        for decl in builder.transform(tree).children:
            too_deep = _too_deep(decl)
            if too_deep is None:
                decls.append(decl)
                continue
            diags.append(too_deep)
            if hasattr(decl, "name"):
                broken.append(decl.name.name)
        diags.extend(builder.diagnostics)
    return ast.Module(file=file, decls=decls, source=source, broken=broken), diags


def _split_declarations(source: str) -> list[tuple[int, str]]:
    """Cut the source at declaration starts that are outside strings and comments."""
    # Lines end at "\n" only, as lark counts them (str.splitlines also breaks at \v, \f,
    # \x1c-\x1e, \x85 and U+2028/9, which would shift every position after one).
    lines = re.findall(r"[^\n]*\n|[^\n]+$", source)
    starts: list[int] = []
    in_triple = False
    previous_was_decorator = False
    for number, line in enumerate(lines):
        if not in_triple and _DECL_START.match(line):
            if not previous_was_decorator:
                starts.append(number)
            previous_was_decorator = line.startswith("@")
        elif line.strip() and not line.lstrip().startswith("#"):
            previous_was_decorator = False
        in_triple = _ends_inside_triple(line, in_triple)
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    bounds = starts + [len(lines)]
    return [(a, "".join(lines[a:b])) for a, b in zip(bounds, bounds[1:], strict=False) if a < b]


def _ends_inside_triple(line: str, in_triple: bool) -> bool:
    i = 0
    while i < len(line):
        if in_triple:
            end = line.find('"""', i)
            if end < 0:
                return True
            in_triple, i = False, end + 3
        elif line.startswith('"""', i):
            in_triple, i = True, i + 3
        elif line[i] == '"':
            i += 1
            while i < len(line) and line[i] not in '"\n':
                i += 2 if line[i] == "\\" else 1
            i += 1
        elif line[i] == "#":
            return False
        else:
            i += 1
    return in_triple


# ---- limits -----------------------------------------------------------------------------

MAX_NESTING = 64
"""How deep blocks, brackets, calls and other expressions may nest (docs/language.md,
Limits). Later stages walk nested constructs recursively; chains do not nest (the left
operand of a binary operator, an `if` that is all of an `else` branch), so a long sum or
a long else-if chain has any length."""


def _too_deep(decl: ast.Decl) -> Diagnostic | None:
    """The first construct of a declaration nested more than MAX_NESTING deep, reported
    before any recursive stage meets it."""
    for node, depth in nesting(decl):
        if depth > MAX_NESTING:
            return Diagnostic(
                kind="syntax",
                message=f"nested too deeply: more than {MAX_NESTING} levels",
                span=node.span,
                hint="blocks, brackets, calls and operands each nest one level; "
                "give inner parts names (assign them to variables first)",
            )
    return None


def nesting(top: ast.Node) -> Iterator[tuple[ast.Node, int]]:
    """Every node under `top` with its nesting depth, in source order. With its own stack:
    any depth is fine."""
    stack: list[tuple[ast.Node, int]] = [(top, 0)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        children: list[tuple[ast.Node, int]] = []
        for name in type(node).model_fields:
            value = getattr(node, name)
            items = value if isinstance(value, list) else [value]
            for item in items:
                if not isinstance(item, ast.Node) or isinstance(item, ast.Ident):
                    continue
                chained = (isinstance(node, ast.BinOp) and name == "left") or (
                    name == "orelse" and len(items) == 1 and isinstance(item, ast.If)
                )
                children.append((item, depth if chained else depth + 1))
        stack.extend(reversed(children))


def _shifted(diag: Diagnostic, line: int, col: int) -> Diagnostic:
    """A diagnostic of text parsed on its own, moved to where that text starts."""
    if diag.span is not None:
        s = diag.span
        diag.span = ast.Span(
            file=s.file,
            line=s.line + line - 1,
            col=s.col + (col - 1 if s.line == 1 else 0),
            end_line=s.end_line + line - 1,
            end_col=s.end_col + (col - 1 if s.end_line == 1 else 0),
        )
    return diag


# ---- syntax errors ----------------------------------------------------------------------

_TOKEN_NAMES = {
    "NAME": "a name",
    "STRING": "a string",
    "TRIPLE": 'a """template"""',
    "INT": "an integer",
    "FLOAT": "a number",
    "COMP_OP": "a comparison",
    "MUL_OP": "an operator",
    "$END": "end of file",
}
_TOKEN_NOUNS = {
    "NAME": "name",
    "STRING": "string",
    "TRIPLE": "template",
    "INT": "number",
    "FLOAT": "number",
}


def _describe(terminal: str) -> str:
    if terminal in _TOKEN_NAMES:
        return _TOKEN_NAMES[terminal]
    for term in _parser().terminals:
        if term.name == terminal and term.pattern.type == "str":
            return f"'{term.pattern.value}'"
    return terminal.lower()


def _syntax_error(err: UnexpectedInput, file: str, text: str) -> Diagnostic:
    line, col = err.line, err.column
    width = 1
    if isinstance(err, UnexpectedToken):
        token = err.token
        if token.type == "$END":
            message = "unexpected end of file"
            line, col = _end_position(text)
        elif text.startswith('"""', token.start_pos or 0) and token.type == "STRING":
            message = 'unterminated template: no closing """'
            width = 3
        else:
            noun = _TOKEN_NOUNS.get(token.type, "")
            message = f"unexpected {noun + ' ' if noun else ''}{quote(str(token))}"
            width = max(1, len(str(token).split("\n")[0]))
        # The LALR state's lookahead set can hold tokens that fit only elsewhere; ask the
        # parser which tokens it would really accept here.
        acceptable = err.interactive_parser.accepts() if err.interactive_parser else err.expected
        expected = sorted({_describe(t) for t in acceptable if not t.startswith("__")})
    elif isinstance(err, UnexpectedCharacters):
        message = f"unexpected character {text[err.pos_in_stream]!r}"
        if text.startswith('"""', err.pos_in_stream):
            message, width = 'unterminated template: no closing """', 3
        expected = sorted({_describe(t) for t in err.allowed or ()})
    else:
        assert isinstance(err, UnexpectedEOF)
        message = "unexpected end of file"
        line, col = _end_position(text)
        expected = sorted({_describe(t) for t in err.expected})
    hint = ""
    closers = [c for c in ("')'", "']'", "'}'") if c in expected]
    if len(expected) > 6 and closers:
        hint = f"is a {' or '.join(closers)} missing?"
    if expected and len(expected) <= 6:
        hint = "expected " + (
            expected[0] if len(expected) == 1 else "one of " + ", ".join(expected)
        )
    if message.startswith("unterminated template"):
        hint = 'end the template with """ on a line of its own'
    span = ast.Span(file=file, line=line, col=col, end_line=line, end_col=col + width)
    return Diagnostic(kind="syntax", message=message, span=span, hint=hint)


def _end_position(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    lines = stripped.split("\n")
    return len(lines), len(lines[-1]) + 1


# ---- tree → AST -------------------------------------------------------------------------


class _Builder(Transformer_NonRecursive):
    """The one place that knows the parse tree's shape. Non-recursive: a long chain
    (`a + b + ...`, an else-if chain) makes a parse tree of any depth.

    The parsed text starts at `line`:`col` of the file (a declaration, a placeholder):
    positions are moved there, so nothing has to be padded to be parsed in place."""

    def __init__(self, file: str, line: int = 1, col: int = 1) -> None:
        super().__init__()
        self.file = file
        self.diagnostics: list[Diagnostic] = []
        self._line0 = line - 1
        self._col0 = col - 1

    def _call_userfunc(self, tree: Tree, new_children: list | None = None) -> Any:
        """Rules are found in a table made once: lark's own lookup wraps a `v_args`
        method anew for every node, a large part of the time to parse a big file."""
        rule = _rules().get(tree.data)
        if rule is None:
            return super()._call_userfunc(tree, new_children)
        method, takes_meta = rule
        children = tree.children if new_children is None else new_children
        return method(self, tree.meta, children) if takes_meta else method(self, children)

    # spans
    def _pos(self, line: int, col: int) -> tuple[int, int]:
        return line + self._line0, col + (self._col0 if line == 1 else 0)

    def _span(self, meta: Meta | Token) -> ast.Span:
        line, col = self._pos(meta.line, meta.column)  # type: ignore[arg-type]
        end_line, end_col = self._pos(meta.end_line, meta.end_column)  # type: ignore[arg-type]
        return ast.Span(file=self.file, line=line, col=col, end_line=end_line, end_col=end_col)

    def _unquote(self, token: Token) -> str:
        try:
            return json.loads(token)
        except json.JSONDecodeError as err:
            line, col = self._pos(token.line, token.column + err.pos)  # type: ignore[operator]
            bad = ast.Span(file=self.file, line=line, col=col, end_line=line, end_col=col + 2)
            self.diagnostics.append(
                Diagnostic(
                    kind="syntax",
                    message="invalid escape in string",
                    span=bad,
                    hint='escapes: \\n \\t \\" \\\\ \\uXXXX',
                )
            )
            return str(token)[1:-1]

    def _ident(self, token: Token) -> ast.Ident:
        return ast.Ident(name=str(token), span=self._span(token))

    # declarations
    def start(self, children: list) -> Tree:
        return Tree("decls", children)

    @v_args(meta=True)
    def import_file(self, meta: Meta, children: list) -> ast.ImportDecl:
        return ast.ImportDecl(span=self._span(meta), path=self._unquote(children[0]))

    @v_args(meta=True)
    def import_std(self, meta: Meta, children: list) -> ast.ImportDecl:
        return ast.ImportDecl(span=self._span(meta), module=".".join(str(c) for c in children))

    @v_args(meta=True)
    def model_decl(self, meta: Meta, children: list) -> ast.ModelDecl:
        name, backend, args = children
        positional, keywords = args or ([], [])
        return ast.ModelDecl(
            span=self._span(meta),
            name=self._ident(name),
            backend=self._ident(backend),
            args=positional,
            kwargs=keywords,
        )

    @v_args(meta=True)
    def enum_decl(self, meta: Meta, children: list) -> ast.EnumDecl:
        name, *members = [c for c in children if c is not None]
        return ast.EnumDecl(
            span=self._span(meta),
            name=self._ident(name),
            members=[self._ident(m) for m in members],
        )

    @v_args(meta=True)
    def record_decl(self, meta: Meta, children: list) -> ast.RecordDecl:
        name, *fields = [c for c in children if c is not None]
        return ast.RecordDecl(span=self._span(meta), name=self._ident(name), fields=fields)

    @v_args(meta=True)
    def field(self, meta: Meta, children: list) -> ast.Output:
        return ast.Output(span=self._span(meta), name=self._ident(children[0]), type=children[1])

    @v_args(meta=True)
    def output(self, meta: Meta, children: list) -> ast.Output:
        perf, name, type_ = children
        return ast.Output(span=self._span(meta), name=self._ident(name), type=type_, perf=perf)

    def perf(self, children: list) -> ast.Ident:
        return self._ident(children[0])

    def outputs(self, children: list) -> list[ast.Output]:
        return children

    def params(self, children: list) -> list[ast.Param]:
        return [c for c in children if c is not None]

    @v_args(meta=True)
    def param(self, meta: Meta, children: list) -> ast.Param:
        name, type_, default = children
        return ast.Param(span=self._span(meta), name=self._ident(name), type=type_, default=default)

    @v_args(meta=True)
    def type(self, meta: Meta, children: list) -> ast.TypeRef:
        name, *args = [c for c in children if c is not None]
        return ast.TypeRef(span=self._span(meta), name=str(name), args=args)

    @v_args(meta=True)
    def decorator(self, meta: Meta, children: list) -> ast.Decorator:
        name, args = children
        positional, keywords = args or ([], [])
        return ast.Decorator(
            span=self._span(meta), name=self._ident(name), args=positional, kwargs=keywords
        )

    @v_args(meta=True)
    def fn_decl(self, meta: Meta, children: list) -> ast.FnDecl:
        *decorators, name, params, outputs, template = children
        return ast.FnDecl(
            span=self._span(meta),
            name=self._ident(name),
            params=params or [],
            outputs=outputs,
            template=self._template(template),
            decorators=decorators,
        )

    @v_args(meta=True)
    def extern_decl(self, meta: Meta, children: list) -> ast.ExternDecl:
        *decorators, name, params, returns, target = children
        single = isinstance(returns, ast.TypeRef)
        outputs = (
            [
                ast.Output(
                    span=returns.span,
                    name=ast.Ident(name="result", span=returns.span),
                    type=returns,
                )
            ]
            if single
            else returns
        )
        return ast.ExternDecl(
            span=self._span(meta),
            name=self._ident(name),
            params=params or [],
            outputs=outputs,
            single=single,
            target=self._unquote(target),
            target_span=self._span(target),
            decorators=decorators,
        )

    @v_args(meta=True)
    def flow_decl(self, meta: Meta, children: list) -> ast.FlowDecl:
        *decorators, name, params, outputs, body = children
        return ast.FlowDecl(
            span=self._span(meta),
            name=self._ident(name),
            params=params or [],
            outputs=outputs,
            body=body,
            decorators=decorators,
        )

    # statements
    def block(self, children: list) -> list[ast.Stmt]:
        return children

    @v_args(meta=True)
    def assign(self, meta: Meta, children: list) -> ast.Assign:
        *targets, value = children
        return ast.Assign(span=self._span(meta), targets=targets, value=value)

    def target(self, children: list) -> ast.Ident:
        return self._ident(children[0])

    @v_args(meta=True)
    def if_stmt(self, meta: Meta, children: list) -> ast.If:
        cond, then, orelse = children
        if isinstance(orelse, ast.If):
            orelse = [orelse]
        return ast.If(span=self._span(meta), cond=cond, then=then, orelse=orelse or [])

    @v_args(meta=True)
    def repeat_stmt(self, meta: Meta, children: list) -> ast.Loop:
        count, carried, body, until = children
        return ast.Loop(
            span=self._span(meta),
            max_iters=self._int(count),
            carried=carried or [],
            body=body,
            until=until,
        )

    @v_args(meta=True)
    def for_stmt(self, meta: Meta, children: list) -> ast.Loop:
        var, iterable, carried, body, until = children
        return ast.Loop(
            span=self._span(meta),
            var=self._ident(var),
            iterable=iterable,
            carried=carried or [],
            body=body,
            until=until,
        )

    def carry(self, children: list) -> list[ast.Binding]:
        return children

    @v_args(meta=True)
    def binding(self, meta: Meta, children: list) -> ast.Binding:
        return ast.Binding(span=self._span(meta), name=self._ident(children[0]), value=children[1])

    def until(self, children: list) -> ast.Expr:
        return children[0]

    # expressions
    @v_args(meta=True)
    def map_expr(self, meta: Meta, children: list) -> ast.MapExpr:
        var, iterable, body = children
        return ast.MapExpr(
            span=self._span(meta), var=self._ident(var), iterable=iterable, body=body
        )

    @v_args(meta=True)
    def comprehension(self, meta: Meta, children: list) -> ast.MapExpr:
        body, var, iterable, where = children
        return ast.MapExpr(
            span=self._span(meta), var=self._ident(var), iterable=iterable, body=body, where=where
        )

    def _binary(self, meta: Meta, op: str, left: ast.Expr, right: ast.Expr) -> ast.BinOp:
        return ast.BinOp(span=self._span(meta), op=op, left=left, right=right)

    @v_args(meta=True)
    def or_op(self, meta: Meta, children: list) -> ast.BinOp:
        return self._binary(meta, "or", children[0], children[1])

    @v_args(meta=True)
    def and_op(self, meta: Meta, children: list) -> ast.BinOp:
        return self._binary(meta, "and", children[0], children[1])

    @v_args(meta=True)
    def not_op(self, meta: Meta, children: list) -> ast.UnaryOp:
        return ast.UnaryOp(span=self._span(meta), op="not", operand=children[0])

    @v_args(meta=True)
    def neg(self, meta: Meta, children: list) -> ast.UnaryOp:
        return ast.UnaryOp(span=self._span(meta), op="-", operand=children[1])

    @v_args(meta=True)
    def compare(self, meta: Meta, children: list) -> ast.BinOp:
        return self._binary(meta, str(children[1]), children[0], children[2])

    binop = compare

    @v_args(meta=True)
    def attr(self, meta: Meta, children: list) -> ast.Attr:
        return ast.Attr(span=self._span(meta), value=children[0], attr=self._ident(children[1]))

    @v_args(meta=True)
    def index(self, meta: Meta, children: list) -> ast.Index:
        return ast.Index(span=self._span(meta), value=children[0], index=children[1])

    @v_args(meta=True)
    def call(self, meta: Meta, children: list) -> ast.Call:
        func, args = children
        positional, keywords = args or ([], [])
        return ast.Call(
            span=self._span(meta), func=self._ident(func), args=positional, kwargs=keywords
        )

    def args(self, children: list) -> tuple[list[ast.Expr], list[ast.Keyword]]:
        positional = [c for c in children if c is not None and not isinstance(c, ast.Keyword)]
        keywords = [c for c in children if isinstance(c, ast.Keyword)]
        for kw in keywords:
            later = [
                p for p in positional if (p.span.line, p.span.col) > (kw.span.line, kw.span.col)
            ]
            if later:
                self.diagnostics.append(
                    Diagnostic(
                        kind="syntax",
                        message="positional argument after a keyword argument",
                        span=later[0].span,
                    )
                )
                break
        return positional, keywords

    @v_args(meta=True)
    def kwarg(self, meta: Meta, children: list) -> ast.Keyword:
        return ast.Keyword(span=self._span(meta), name=self._ident(children[0]), value=children[1])

    option = kwarg

    @v_args(meta=True)
    def pair(self, meta: Meta, children: list) -> ast.Keyword:
        return ast.Keyword(span=self._span(meta), name=self._ident(children[0]), value=children[1])

    @v_args(meta=True)
    def dict(self, meta: Meta, children: list) -> ast.DictExpr:
        pairs = [c for c in children if c is not None]
        return ast.DictExpr(
            span=self._span(meta), keys=[p.name for p in pairs], values=[p.value for p in pairs]
        )

    @v_args(meta=True)
    def list(self, meta: Meta, children: list) -> ast.ListExpr:
        return ast.ListExpr(span=self._span(meta), items=[c for c in children if c is not None])

    def name(self, children: list) -> ast.Name:
        token = children[0]
        return ast.Name(span=self._span(token), id=str(token))

    def _const(self, token: Token, value: str | bool | int | float) -> ast.Const:
        return ast.Const(span=self._span(token), value=value)

    def string(self, children: list) -> ast.Const:
        return self._const(children[0], self._unquote(children[0]))

    def triple(self, children: list) -> ast.Const:
        text = str(children[0])[3:-3]
        return self._const(children[0], text[1:] if text.startswith("\n") else text)

    def int(self, children: list) -> ast.Const:
        return self._const(children[0], self._int(children[0]))

    def float(self, children: list) -> ast.Const:
        value = float(children[0])
        if not math.isfinite(value):
            self._literal_error(children[0], "this number is too large: it overflows a float")
            value = 0.0
        return self._const(children[0], value)

    def _int(self, token: Token) -> int:
        """An integer literal's value; one too long to convert is an error (and 0)."""
        if len(token) > MAX_INT_DIGITS:
            self._literal_error(
                token, f"this integer has {len(token):,} digits; at most {MAX_INT_DIGITS:,}"
            )
            return 0
        return int(token)

    def _literal_error(self, token: Token, message: str) -> None:
        self.diagnostics.append(Diagnostic(kind="limit", message=message, span=self._span(token)))

    @v_args(meta=True)
    def true(self, meta: Meta, children: list) -> ast.Const:
        return ast.Const(span=self._span(meta), value=True)

    @v_args(meta=True)
    def false(self, meta: Meta, children: list) -> ast.Const:
        return ast.Const(span=self._span(meta), value=False)

    # templates
    def _template(self, token: Token) -> ast.Template:
        line, col = self._pos(token.line, token.column)  # type: ignore[arg-type]
        template, diags = parse_template(str(token), line, col, self.file)
        self.diagnostics.extend(diags)
        return template

    def placeholder(self, children: list) -> tuple[list[Token], list[ast.Keyword]]:
        names = [c for c in children if isinstance(c, Token)]
        options = [c for c in children if isinstance(c, ast.Keyword)]
        return names, options


@cache
def _rules() -> dict[str, tuple[Callable[..., Any], bool]]:
    """The builder's rule methods by rule name, each with whether it takes `meta`."""
    rules: dict[str, tuple[Callable[..., Any], bool]] = {}
    for name in dir(_Builder):
        attr = inspect.getattr_static(_Builder, name)
        if name.startswith("_"):
            continue
        if getattr(attr, "visit_wrapper", None) is not None:  # @v_args(meta=True)
            rules[name] = (attr.base_func, True)
        elif inspect.isfunction(attr):
            rules[name] = (attr, False)
    return rules


_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PLAIN_PATH = re.compile(r"[ \t]*[A-Za-z_]\w*(?:[ \t]*\.[ \t]*[A-Za-z_]\w*)*[ \t]*")
_WORD = re.compile(r"[A-Za-z_]\w*")


@cache
def _keywords() -> frozenset[str]:
    """Words the grammar reserves (`if`, `true`...): never a placeholder's name."""
    return frozenset(
        str(t.pattern.value)
        for t in _parser().terminals
        if t.pattern.type == "str" and _WORD.fullmatch(str(t.pattern.value))
    )


@lru_cache(maxsize=4096)
def _placeholder_tree(inner: str) -> Tree:
    """The parse tree of a placeholder's text (positions relative to it). Cached: the
    same options recur across a program (`{{out | max_tokens=100}}`), and the builder
    never changes a tree."""
    return _parser().parse(inner, start="placeholder")


def _plain_path(inner: str) -> list[tuple[int, str]] | None:
    """The names of a placeholder that is only a dotted path, with their offsets."""
    if not _PLAIN_PATH.fullmatch(inner):
        return None
    names = [(m.start(), m.group()) for m in _WORD.finditer(inner)]
    return None if any(name in _keywords() for _, name in names) else names


def _name_token(at: int, name: str) -> Token:
    """A NAME token at offset `at` of a one-line placeholder, as lark would make it."""
    return Token("NAME", name, line=1, column=at + 1, end_line=1, end_column=at + 1 + len(name))


def parse_template(
    token: str, line: int, col: int, file: str
) -> tuple[ast.Template, list[Diagnostic]]:
    """Split a `\"\"\"...\"\"\"` template into text and placeholders, keeping positions.

    One newline right after the opening quotes is dropped, so a template may start on
    the line below its declaration. Positions come from the template's line starts, found
    once: a template with many placeholders is split in linear time.
    """
    body = token[3:-3]
    offset = 3
    if body.startswith("\n"):
        body, offset = body[1:], offset + 1
    line_starts = [0] + [m.end() for m in re.finditer("\n", token)]

    def position(index: int) -> tuple[int, int]:
        at = offset + index
        row = bisect.bisect_right(line_starts, at) - 1
        if row == 0:
            return line, col + at
        return line + row, at - line_starts[row] + 1

    def span(start: int, end: int) -> ast.Span:
        (l1, c1), (l2, c2) = position(start), position(end)
        return ast.Span(file=file, line=l1, col=c1, end_line=l2, end_col=c2)

    parts: list[ast.TemplateText | ast.Placeholder] = []
    diags: list[Diagnostic] = []
    cursor = 0
    for match in _PLACEHOLDER.finditer(body):
        if match.start() > cursor:
            parts.append(
                ast.TemplateText(
                    span=span(cursor, match.start()), text=body[cursor : match.start()]
                )
            )
        inner_start = match.start(1)
        inner = match.group(1)
        l1, c1 = position(inner_start)
        builder = _Builder(file, line=l1, col=c1)
        path = _plain_path(inner)
        try:
            if path is not None:  # `{{name}}`, `{{a.b}}`: most placeholders, no parser needed
                names = [_name_token(at, name) for at, name in path]
                options = []
            else:
                names, options = builder.transform(_placeholder_tree(inner))
        except UnexpectedInput as err:
            diag = _shifted(_syntax_error(err, file, inner), l1, c1)
            if diag.message == "unexpected end of file":
                # The placeholder ended early: point at its closing braces.
                end_line, end_col = position(match.end(1))
                diag.message = "unexpected '}}'"
                diag.span = ast.Span(
                    file=file, line=end_line, col=end_col, end_line=end_line, end_col=end_col + 2
                )
            diag.message = f"malformed placeholder: {diag.message}"
            diag.hint = 'write {{name}} or {{name | max_tokens=60, stop="\\n"}}'
            diags.append(diag)
            # Keep the name so that later stages do not report it as missing too.
            names = [
                Token("NAME", m, line=1, column=1, end_line=1, end_column=1 + len(m))
                for m in re.findall(r"^\s*([A-Za-z_]\w*)", inner)
            ]
            options = []
        parts.append(
            ast.Placeholder(
                span=span(inner_start, match.end(1)),
                path=[builder._ident(n) for n in names],
                options=options,
            )
        )
        cursor = match.end()
    if cursor < len(body):
        parts.append(ast.TemplateText(span=span(cursor, len(body)), text=body[cursor:]))
    return ast.Template(span=span(0, len(body)), parts=parts), diags
