"""Source text → AST, with every syntax error of a file reported in one run.

The file is cut into top-level declarations (a line that starts at column 1 with a
declaration keyword or a decorator) and each piece is parsed on its own, so one broken
declaration does not hide the errors, or the meaning, of the others.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import threading
import typing
from collections.abc import Callable, Iterator
from functools import cache
from operator import itemgetter
from pathlib import Path
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.grammar import Rule
from lark.lexer import UnlessCallback
from lark.parsers.lalr_analysis import Reduce
from lark.parsers.lalr_parser_state import ParseConf, ParserState

from llmflow.compiler import ast
from llmflow.compiler.branch_nexts import lift_branch_nexts
from llmflow.compiler.diagnostics import Diagnostic, did_you_mean, quote
from llmflow.compiler.heap import gc_paused
from llmflow.stdlib.builtins import MAX_INT_DIGITS

_GRAMMAR = Path(__file__).with_name("grammar.lark")
_DECL_START = re.compile(r"(import|model|enum|record|extern|fn|flow|eval|const)\b|@")
_DECL_NAME = re.compile(
    r"^(?:extern\s+)?(?:fn|flow|enum|record|model|eval|const)\s+([A-Za-z_]\w*)", re.MULTILINE
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
    chunks = _split_declarations(source)
    misplaced = _misplaced_decorators(chunks, file)
    for first_line, chunk in chunks:
        if first_line in misplaced:
            diags.extend(misplaced[first_line])
            broken.extend(_DECL_NAME.findall(chunk)[:1])
            continue
        builder = _Builder(file, line=first_line + 1)
        try:
            chunk_decls = _parse(chunk, "start", builder)
        except UnexpectedInput as err:
            diags.append(_shifted(_syntax_error(err, file, chunk), first_line + 1, 1))
            broken.extend(_DECL_NAME.findall(chunk)[:1])
            continue
        for decl in chunk_decls:
            too_deep = _too_deep(decl)
            if too_deep is None:
                if isinstance(decl, ast.FlowDecl):
                    decl = lift_branch_nexts(decl)
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


_SIGNATURE_ONLY = re.compile(r"(?:@.*\n\s*)*fn\s+(\w+)\s*\([^\"]*\)\s*->[^\"]*$")
_DECORATOR_THEN_TEMPLATE = re.compile(r"((?:@[^\n]*\n\s*)+)\"\"\"")


def _misplaced_decorators(chunks: list[tuple[int, str]], file: str) -> dict[int, list[Diagnostic]]:
    """`fn f(...) -> o: str` then `@model(m)` then its template: the decorator was
    written between the signature and the template. One error at the decorator (not an
    end of file after the signature and a stray template), keyed by both chunks' lines."""
    found: dict[int, list[Diagnostic]] = {}
    for (line, chunk), (next_line, following) in zip(chunks, chunks[1:], strict=False):
        if len(chunk) > _HABIT_LINE:  # a signature alone is one short line or two
            continue
        signature = _SIGNATURE_ONLY.match(chunk.strip())
        decorators = _DECORATOR_THEN_TEMPLATE.match(following)
        if signature is None or decorators is None:
            continue
        first = decorators.group(1).split("\n")[0].rstrip()
        span = ast.Span(
            file=file, line=next_line + 1, col=1, end_line=next_line + 1, end_col=len(first) + 1
        )
        diag = Diagnostic(
            kind="syntax",
            message="a decorator goes before the function it applies to",
            span=span,
            hint=f"move {first} to the line above `fn {signature.group(1)}`",
        )
        found[line], found[next_line] = [diag], []
    return found


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
        for name in _child_fields(type(node)):
            value = getattr(node, name)
            items = value if isinstance(value, list) else [value]
            for item in items:
                if not isinstance(item, ast.Node) or isinstance(item, ast.Ident):
                    continue
                chained = (name == "left" and isinstance(node, ast.BinOp)) or (
                    name == "orelse" and len(items) == 1 and isinstance(item, ast.If)
                )
                children.append((item, depth if chained else depth + 1))
        stack.extend(reversed(children))


@cache
def _child_fields(cls: type[ast.Node]) -> tuple[str, ...]:
    """The fields of a node class that can hold nodes other than names."""

    def holds_nodes(annotation: Any) -> bool:
        if typing.get_args(annotation):
            return any(holds_nodes(arg) for arg in typing.get_args(annotation))
        return (
            isinstance(annotation, type)
            and issubclass(annotation, ast.Node)
            and (annotation is not ast.Ident)
        )

    return tuple(n for n, f in cls.model_fields.items() if holds_nodes(f.annotation))


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
    "COALESCE": "'??'",
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
    lines = text.split("\n")
    written = lines[line - 1] if 0 < line <= len(lines) else ""
    if len(written) > _HABIT_LINE:  # a generated line: no guessing at what was meant
        written = ""
    if (
        isinstance(err, UnexpectedToken)
        and err.token.type == "COMP_OP"
        and re.search(r"[<>]|==|!=", written[: col - 1])
    ):
        hint = "comparisons do not chain: write a < b and b < c"
    habit = _python_habit(err, text, written, col)
    if habit is not None:
        message, col, width, hint = habit
    if re.match(r"\s*@model\(\s*[\w.]+-", written):
        hint = (
            "@model(...) names a declared model: declare it first, "
            'e.g. model gemma = local("gemma3-270m"), then write @model(gemma)'
        )
    span = ast.Span(file=file, line=line, col=col, end_line=line, end_col=col + width)
    return Diagnostic(kind="syntax", message=message, span=span, hint=hint)


_HABIT_LINE = 2_000
"""The longest line read for the hints that guess a habit (`_python_habit`): their
patterns backtrack, and a hand-written line is far shorter."""
_TERNARY = re.compile(r"\s*(.+?)\s*=\s*(.+?)\s+if\s+(.+?)\s+else\s+(.+?)\s*$")
_FIRST_OUTPUT = re.compile(r"->\s*([A-Za-z_]\w*)\s*:")


def _python_habit(
    err: UnexpectedInput, text: str, written: str, col: int
) -> tuple[str, int, int, str] | None:
    """A syntax error that is Python written in llmflow (`elif`, `return`, `a if c else b`,
    `+=`, 'single quotes'): the mistake named, and what to write, as (message, column,
    width, hint); None for any other syntax error."""
    before = written[: col - 1]
    if isinstance(err, UnexpectedCharacters) and text[err.pos_in_stream] == "'":
        quoted = re.match(r"'([^'\n]*)'", text[err.pos_in_stream :])
        shown = json.dumps(quoted.group(1)) if quoted else '"..."'
        width = len(quoted.group(0)) if quoted else 1
        return "strings use double quotes", col, width, f"write {shown}"
    compound = re.match(r"([-+*/%])=", written[col - 1 :])
    if compound:
        op = compound.group(1)
        target = re.search(r"(\w+)\s*$", before)
        name = target.group(1) if target else "x"
        value = written[col + 1 :].strip() or "..."
        return (
            f"llmflow has no `{op}=`",
            col,
            2,
            f"flow variables are assigned once: in a loop, carry {name} with `with` and "
            f"write {name} = {name} {op} {value}, e.g. "
            f"for x in xs with {name} = 0 {{ {name} = {name} {op} x }}",
        )
    if not isinstance(err, UnexpectedToken):
        return None
    elif_at = re.search(r"\belif\s*$", before)
    if elif_at:
        return "llmflow has no `elif`", elif_at.start() + 1, 4, "write `else if`: } else if ... {"
    return_at = re.match(r"\s*return\b", before)
    if return_at:
        output = _FIRST_OUTPUT.search(text)
        name = output.group(1) if output else "out"
        value = written[return_at.end() :].strip() or "..."
        return (
            "flows have no `return`",
            return_at.end() - 5,
            6,
            f"assign each output of the flow by name: {name} = {value}",
        )
    ternary = _TERNARY.match(written) if str(err.token) == "else" and "{" not in written else None
    if ternary:
        target, yes, cond, no = ternary.groups()
        if_col = written.index(" if ", len(target)) + 2
        return (
            "llmflow has no `x if c else y` expression",
            if_col,
            2,
            f"write an if statement: if {cond} {{ {target} = {yes} }} else {{ {target} = {no} }}",
        )
    return None


def _end_position(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    lines = stripped.split("\n")
    return len(lines), len(lines[-1]) + 1


# ---- parsing: lark's LALR tables, AST built as the parser reduces ------------------------
#
# Lark's tree builder (a parse tree, positions propagated, then a second pass to make the
# AST) was most of the time to parse a big file. Here the parser's reduce callbacks make
# the AST directly: each value on lark's stack is a token or a `(value, line, col,
# end_line, end_col)` tuple whose positions are what lark's `propagate_positions` gives a
# tree (the span of all its children, tokens dropped from the tree included). No stage
# recurses, so a long chain (`a + b + ...`, an else-if chain) has any length.
#
# Most text is cut into tokens by one regular expression over the whole grammar, as lark's
# basic lexer would. Lark's contextual lexer can cut it differently only where that token
# does not fit the parser's state; then (and for every syntax error) the text is parsed
# again by lark itself with its contextual lexer, which gives the same AST and lark's error.


class _Tok(tuple):  # type: ignore[type-arg]
    """A token: `(value, line, column, end_line, end_column, type)`, laid out like a
    reduced value so that positions are read the same way from both."""

    __slots__ = ()
    value = property(itemgetter(0))
    line = property(itemgetter(1))
    column = property(itemgetter(2))
    end_line = property(itemgetter(3))
    end_column = property(itemgetter(4))
    type = property(itemgetter(5))

    def __str__(self) -> str:
        return self[0]


def _tok(token: Token) -> _Tok:
    return _Tok(
        (token.value, token.line, token.column, token.end_line, token.end_column, token.type)
    )


class _Retry(Exception):
    """The fast path cannot tell what lark would do here: parse with lark itself."""


_local = threading.local()


def _active() -> _Builder:
    return _local.builder  # type: ignore[no-any-return]


def _parse(text: str, start: str, builder: _Builder) -> Any:
    """The value of `text` parsed from rule `start`, built by `builder`; UnexpectedInput
    for a syntax error (the builder's diagnostics are then of no use)."""
    outer = getattr(_local, "builder", None)
    _local.builder = builder
    try:
        try:
            return _fast_parse(text, start)
        except (_Retry, UnexpectedInput):
            builder.diagnostics.clear()
            value = _parser().parse(text, start=start)
            return value[0] if type(value) is tuple else value
    finally:
        _local.builder = outer


def _fast_parse(text: str, start: str) -> Any:
    table, callbacks, end = _tables()
    state = ParserState(ParseConf(table, callbacks, start), None)  # type: ignore[arg-type]
    feed = state.feed_token
    for token in _tokens(text):
        feed(token)
    value = feed(end, True)
    return value[0] if type(value) is tuple else value


@cache
def _lexer() -> tuple[re.Pattern[str], frozenset[str], frozenset[str], dict[str, dict[str, str]]]:
    """Lark's own basic lexer over all terminals: its regular expression, the ignored and
    the multi-line token types, and the keywords it retypes (`if` is not a NAME)."""
    root = _parser().parser.lexer.root_lexer
    scanner = root.scanner
    assert len(scanner._mres) == 1 and not root.use_bytes
    retype: dict[str, dict[str, str]] = {}
    for kind, callback in root.callback.items():
        assert isinstance(callback, UnlessCallback)
        words = callback.scanner.terminals
        assert all(t.pattern.type == "str" and not t.pattern.flags for t in words)
        retype[kind] = {t.pattern.value: t.name for t in words}
    return scanner._mres[0], root.ignore_types, root.newline_types, retype


def _tokens(text: str) -> list[_Tok]:
    """The tokens of `text` as lark's basic lexer makes them; _Retry where it would fail."""
    pattern, ignored, multiline, retype = _lexer()
    tokens: list[_Tok] = []
    append = tokens.append
    pos = 0
    line = 1
    line_start = 0
    for match in pattern.finditer(text):
        if match.start() != pos:
            raise _Retry
        kind = match.lastgroup
        value = match.group()
        pos = match.end()
        col = match.start() - line_start + 1
        start_line = line
        if kind in multiline:
            newlines = value.count("\n")
            if newlines:
                line += newlines
                line_start = match.start() + value.rindex("\n") + 1
        if kind in ignored:
            continue
        if kind in retype:
            kind = retype[kind].get(value, kind)
        append(_Tok((value, start_line, col, line, pos - line_start + 1, kind)))
    if pos != len(text):
        raise _Retry
    return tokens


@cache
def _tables() -> tuple[Any, dict[Any, Callable[[list], Any]], Token]:
    """Lark's LALR table, a reduce callback for each of its rules, and the end token."""
    lark = _parser()
    lalr = lark.parser.parser.parser  # lark's `_Parser`: its table and its callbacks
    rules = {a for s in lalr.parse_table.states.values() for k, a in s.values() if k is Reduce}
    assert len(rules) == len(lalr.callbacks), "lark's parser changed shape"
    fast = {rule: _callback(rule) for rule in rules}

    def exact(callback: Callable[[list], Any]) -> Callable[[list], Any]:
        return lambda raw: callback([_tok(c) if isinstance(c, Token) else c for c in raw])

    # Lark's own parser (contextual lexer) builds the same AST, with lark's tokens.
    lalr.callbacks = {rule: exact(callback) for rule, callback in fast.items()}
    return lalr.parse_table, fast, Token("$END", "")


def _callback(rule: Rule) -> Callable[[list], Any]:
    """What the reduction of `rule` pushes, given what it pops: what lark's tree builder
    would make (its child filter, `?rule` inlining, `[x]` as None, `_rule`s spliced in,
    propagated positions), with the builder's method for the rule in place of a tree."""
    name = rule.alias or rule.options.template_source or rule.origin.name
    expansion = rule.expansion
    empty = rule.options.empty_indices
    nones = [len(ones) for ones in "".join(str(int(b)) for b in empty).split("0")] if empty else []
    include: list[tuple[int, bool, int]] = []  # child, spliced, Nones before it
    pending = 0
    for i, sym in enumerate(expansion):
        pending += nones[i] if nones else 0
        if not (sym.is_term and sym.filter_out):
            include.append((i, not sym.is_term and sym.name.startswith("_"), pending))
            pending = 0
    trailing = pending + (nones[len(expansion)] if nones else 0)
    inline = rule.options.expand1 and not rule.alias
    if inline and include == [(0, False, 0)] and len(expansion) == 1 and not trailing:
        return itemgetter(0)  # `?sum: product`: the child is the value, positions and all
    # The one child an inlined rule can have here (`?atom: "(" expr ")"`): lark gives the
    # child itself, its own span kept, its extent that of the whole rule.
    kept = [i for i, splice, before in include if not splice and not before]
    single = kept[0] if inline and len(include) == 1 and kept and not trailing else None
    assert single is not None or not inline, f"inlining {rule} is not supported"
    method = getattr(_Builder, name, None) if not name.startswith("_") else None
    spanned = getattr(method, "spanned", False)

    def reduce(raw: list) -> Any:
        first = last = None
        for c in raw:
            if c[1] is not None:
                first = c
                break
        for c in reversed(raw):
            if c[1] is not None:
                last = c
                break
        children: list[Any] = []
        for i, splice, before in include:
            if before:
                children += [None] * before
            c = raw[i]
            if splice:
                if children:
                    children += c[0]
                else:  # a left-recursive list: grows in place
                    children = c[0]
            else:
                children.append(c[0] if type(c) is tuple else c)
        if trailing:
            children += [None] * trailing
        if first is None or last is None:
            where: tuple[Any, Any, Any, Any] = (None, None, None, None)
        else:
            where = (first[1], first[2], last[3], last[4])
        if single is not None:
            only = raw[single]
            return (only[0], *where) if type(only) is tuple else only
        if method is None:
            value: Any = children if name.startswith("_") else Tree(name, children)
        elif spanned:
            value = method(_active(), _active()._span(*where), children)  # type: ignore[arg-type]
        else:
            value = method(_active(), children)
        return (value, *where)

    return reduce


def _spanned(method: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a builder method that takes the span of its rule's text."""
    method.spanned = True  # type: ignore[attr-defined]
    return method


class _Builder:
    """The one place that knows the parse tree's shape: a method for each rule, called
    with the rule's children (and with its span, if `_spanned`).

    The parsed text starts at `line`:`col` of the file (a declaration, a placeholder):
    positions are moved there, so nothing has to be padded to be parsed in place."""

    def __init__(self, file: str, line: int = 1, col: int = 1) -> None:
        self.file = file
        self.diagnostics: list[Diagnostic] = []
        self._line0 = line - 1
        self._col0 = col - 1

    # spans
    def _pos(self, line: int, col: int) -> tuple[int, int]:
        return line + self._line0, col + (self._col0 if line == 1 else 0)

    def _span(self, line: int, col: int, end_line: int, end_col: int) -> ast.Span:
        col0 = self._col0
        return ast.Span(
            file=self.file,
            line=line + self._line0,
            col=col + col0 if line == 1 else col,
            end_line=end_line + self._line0,
            end_col=end_col + col0 if end_line == 1 else end_col,
        )

    def _token_span(self, token: _Tok) -> ast.Span:
        return self._span(token[1], token[2], token[3], token[4])

    def _unquote(self, token: _Tok) -> str:
        try:
            return json.loads(token[0])
        except json.JSONDecodeError as err:
            line, col = self._pos(token[1], token[2] + err.pos)
            bad = ast.Span(file=self.file, line=line, col=col, end_line=line, end_col=col + 2)
            self.diagnostics.append(
                Diagnostic(
                    kind="syntax",
                    message="invalid escape in string",
                    span=bad,
                    hint='escapes: \\n \\t \\" \\\\ \\uXXXX',
                )
            )
            return token[0][1:-1]

    def _ident(self, token: _Tok) -> ast.Ident:
        return ast.Ident(name=token[0], span=self._token_span(token))

    # declarations
    def start(self, children: list) -> list[ast.Decl]:
        return children

    @_spanned
    def import_file(self, span: ast.Span, children: list) -> ast.ImportDecl:
        return ast.ImportDecl(span=span, path=self._unquote(children[0]))

    @_spanned
    def import_std(self, span: ast.Span, children: list) -> ast.ImportDecl:
        return ast.ImportDecl(span=span, module=".".join(c[0] for c in children))

    @_spanned
    def const_decl(self, span: ast.Span, children: list) -> ast.ConstDecl:
        return ast.ConstDecl(span=span, name=self._ident(children[0]), value=children[1])

    @_spanned
    def model_decl(self, span: ast.Span, children: list) -> ast.ModelDecl:
        name, backend, args = children
        positional, keywords = args or ([], [])
        return ast.ModelDecl(
            span=span,
            name=self._ident(name),
            backend=self._ident(backend),
            args=positional,
            kwargs=keywords,
        )

    @_spanned
    def enum_decl(self, span: ast.Span, children: list) -> ast.EnumDecl:
        name, *members = [c for c in children if c is not None]
        return ast.EnumDecl(
            span=span,
            name=self._ident(name),
            members=[m for m, _ in members],
            descriptions=[d for _, d in members] if any(d for _, d in members) else [],
        )

    def member(self, children: list) -> tuple[ast.Ident, str]:
        name, doc = children
        return self._ident(name), self._unquote(doc) if doc is not None else ""

    @_spanned
    def record_decl(self, span: ast.Span, children: list) -> ast.RecordDecl:
        name, *fields = [c for c in children if c is not None]
        return ast.RecordDecl(span=span, name=self._ident(name), fields=fields)

    @_spanned
    def field(self, span: ast.Span, children: list) -> ast.Output:
        name, type_, doc = children
        description = self._unquote(doc) if doc is not None else ""
        return ast.Output(span=span, name=self._ident(name), type=type_, description=description)

    @_spanned
    def output(self, span: ast.Span, children: list) -> ast.Output:
        perf, name, type_ = children
        return ast.Output(span=span, name=self._ident(name), type=type_, perf=perf)

    def perf(self, children: list) -> ast.Ident:
        return self._ident(children[0])

    def outputs(self, children: list) -> list[ast.Output]:
        return children

    def params(self, children: list) -> list[ast.Param]:
        return [c for c in children if c is not None]

    @_spanned
    def param(self, span: ast.Span, children: list) -> ast.Param:
        name, type_, default = children
        return ast.Param(span=span, name=self._ident(name), type=type_, default=default)

    @_spanned
    def type(self, span: ast.Span, children: list) -> ast.TypeRef:
        if len(children) == 1:
            return children[0]  # type: ignore[no-any-return]
        return ast.TypeRef(span=span, name="|", args=children)

    @_spanned
    def single(self, span: ast.Span, children: list) -> ast.TypeRef:
        name, *rest, optional = children
        args = [c for c in rest if isinstance(c, ast.TypeRef)]
        bounds = [c for c in rest if isinstance(c, ast.Keyword)]
        return ast.TypeRef(
            span=span, name=name[0], args=args, bounds=bounds, optional=optional is not None
        )

    @_spanned
    def bound(self, span: ast.Span, children: list) -> ast.Keyword:
        name, value = children
        return ast.Keyword(span=span, name=self._ident(name), value=self.int([value]))

    @_spanned
    def decorator(self, span: ast.Span, children: list) -> ast.Decorator:
        name, args = children
        positional, keywords = args or ([], [])
        return ast.Decorator(span=span, name=self._ident(name), args=positional, kwargs=keywords)

    @_spanned
    def fn_decl(self, span: ast.Span, children: list) -> ast.FnDecl:
        *decorators, name, params, outputs, template = children
        return ast.FnDecl(
            span=span,
            name=self._ident(name),
            params=params or [],
            outputs=outputs,
            template=self._template(template),
            decorators=decorators,
        )

    @_spanned
    def fn_pin(self, span: ast.Span, children: list) -> ast.FnPin:
        *decorators, name = children
        return ast.FnPin(span=span, name=self._ident(name), decorators=decorators)

    @_spanned
    def extern_decl(self, span: ast.Span, children: list) -> ast.ExternDecl:
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
            span=span,
            name=self._ident(name),
            params=params or [],
            outputs=outputs,
            single=single,
            target=self._unquote(target),
            target_span=self._token_span(target),
            decorators=decorators,
        )

    @_spanned
    def flow_decl(self, span: ast.Span, children: list) -> ast.FlowDecl:
        *decorators, name, params, outputs, body = children
        return ast.FlowDecl(
            span=span,
            name=self._ident(name),
            params=params or [],
            outputs=outputs,
            body=body,
            decorators=decorators,
        )

    @_spanned
    def eval_decl(self, span: ast.Span, children: list) -> ast.EvalDecl:
        name, args, *metrics = children
        positional, keywords = args or ([], [])
        return ast.EvalDecl(
            span=span,
            name=self._ident(name),
            args=positional,
            kwargs=keywords,
            metrics=[m for m in metrics if m is not None],
        )

    @_spanned
    def eval_metric(self, span: ast.Span, children: list) -> ast.EvalMetric:
        return ast.EvalMetric(span=span, output=self._ident(children[0]), metric=children[1])

    # statements
    def block(self, children: list) -> list[ast.Stmt]:
        return children

    @_spanned
    def assign(self, span: ast.Span, children: list) -> ast.Assign:
        *targets, value = children
        return ast.Assign(span=span, targets=targets, value=value)

    def target(self, children: list) -> ast.Ident:
        return self._ident(children[0])

    @_spanned
    def if_stmt(self, span: ast.Span, children: list) -> ast.If:
        cond, then, orelse = children
        if isinstance(orelse, ast.If):
            orelse = [orelse]
        return ast.If(span=span, cond=cond, then=then, orelse=orelse or [])

    @_spanned
    def repeat_stmt(self, span: ast.Span, children: list) -> ast.Loop:
        count, carried, body, until = children
        bound: ast.Const | ast.Name = (
            self._const(count, self._int(count))
            if count.type == "INT"
            else ast.Name(span=self._token_span(count), id=count[0])
        )
        return ast.Loop(span=span, max_iters=bound, carried=carried or [], body=body, until=until)

    @_spanned
    def for_stmt(self, span: ast.Span, children: list) -> ast.Loop:
        var, iterable, carried, body, until = children
        return ast.Loop(
            span=span,
            var=self._ident(var),
            iterable=iterable,
            carried=carried or [],
            body=body,
            until=until,
        )

    def carry(self, children: list) -> list[ast.Binding]:
        return children

    @_spanned
    def binding(self, span: ast.Span, children: list) -> ast.Binding:
        return ast.Binding(span=span, name=self._ident(children[0]), value=children[1])

    def until(self, children: list) -> ast.Expr:
        return children[0]

    # expressions
    @_spanned
    def map_expr(self, span: ast.Span, children: list) -> ast.MapExpr:
        var, iterable, body = children
        return ast.MapExpr(span=span, var=self._ident(var), iterable=iterable, body=body)

    @_spanned
    def sample_expr(self, span: ast.Span, children: list) -> ast.SampleExpr:
        return ast.SampleExpr(span=span, count=children[0], body=children[1])

    @_spanned
    def comprehension(self, span: ast.Span, children: list) -> ast.MapExpr:
        body, var, iterable, where = children
        return ast.MapExpr(
            span=span, var=self._ident(var), iterable=iterable, body=body, where=where
        )

    @_spanned
    def or_op(self, span: ast.Span, children: list) -> ast.BinOp:
        return ast.BinOp(span=span, op="or", left=children[0], right=children[1])

    @_spanned
    def and_op(self, span: ast.Span, children: list) -> ast.BinOp:
        return ast.BinOp(span=span, op="and", left=children[0], right=children[1])

    @_spanned
    def not_op(self, span: ast.Span, children: list) -> ast.UnaryOp:
        return ast.UnaryOp(span=span, op="not", operand=children[0])

    @_spanned
    def neg(self, span: ast.Span, children: list) -> ast.UnaryOp:
        return ast.UnaryOp(span=span, op="-", operand=children[1])

    @_spanned
    def compare(self, span: ast.Span, children: list) -> ast.BinOp:
        return ast.BinOp(span=span, op=children[1][0], left=children[0], right=children[2])

    binop = compare

    @_spanned
    def attr(self, span: ast.Span, children: list) -> ast.Attr:
        return ast.Attr(span=span, value=children[0], attr=self._ident(children[1]))

    @_spanned
    def index(self, span: ast.Span, children: list) -> ast.Index:
        return ast.Index(span=span, value=children[0], index=children[1])

    @_spanned
    def call(self, span: ast.Span, children: list) -> ast.Call:
        func, args = children
        positional, keywords = args or ([], [])
        return ast.Call(span=span, func=self._ident(func), args=positional, kwargs=keywords)

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

    @_spanned
    def kwarg(self, span: ast.Span, children: list) -> ast.Keyword:
        return ast.Keyword(span=span, name=self._ident(children[0]), value=children[1])

    option = kwarg

    @_spanned
    def flag(self, span: ast.Span, children: list) -> ast.Keyword:
        """`{{o | format}}`: an option written alone means `= true`."""
        name = self._ident(children[0])
        return ast.Keyword(span=span, name=name, value=ast.Const(span=name.span, value=True))

    pair = kwarg

    @_spanned
    def dict(self, span: ast.Span, children: list) -> ast.DictExpr:
        pairs = [c for c in children if c is not None]
        return ast.DictExpr(
            span=span, keys=[p.name for p in pairs], values=[p.value for p in pairs]
        )

    @_spanned
    def list(self, span: ast.Span, children: list) -> ast.ListExpr:
        return ast.ListExpr(span=span, items=[c for c in children if c is not None])

    def name(self, children: list) -> ast.Name:
        token = children[0]
        return ast.Name(span=self._token_span(token), id=token[0])

    def _const(self, token: _Tok, value: str | bool | int | float) -> ast.Const:
        return ast.Const(span=self._token_span(token), value=value)

    def string(self, children: list) -> ast.Const:
        return self._const(children[0], self._unquote(children[0]))

    def triple(self, children: list) -> ast.Const:
        text = children[0][0][3:-3]
        return self._const(children[0], text[1:] if text.startswith("\n") else text)

    def int(self, children: list) -> ast.Const:
        return self._const(children[0], self._int(children[0]))

    def float(self, children: list) -> ast.Const:
        value = float(children[0][0])
        if not math.isfinite(value):
            self._literal_error(children[0], "this number is too large: it overflows a float")
            value = 0.0
        return self._const(children[0], value)

    def _int(self, token: _Tok) -> int:
        """An integer literal's value; one too long to convert is an error (and 0)."""
        digits = token[0]
        if len(digits) > MAX_INT_DIGITS:
            self._literal_error(
                token, f"this integer has {len(digits):,} digits; at most {MAX_INT_DIGITS:,}"
            )
            return 0
        return int(digits)

    def _literal_error(self, token: _Tok, message: str) -> None:
        self.diagnostics.append(
            Diagnostic(kind="limit", message=message, span=self._token_span(token))
        )

    @_spanned
    def true(self, span: ast.Span, children: list) -> ast.Const:
        return ast.Const(span=span, value=True)

    @_spanned
    def false(self, span: ast.Span, children: list) -> ast.Const:
        return ast.Const(span=span, value=False)

    @_spanned
    def none(self, span: ast.Span, children: list) -> ast.Const:
        return ast.Const(span=span, value=None)

    # templates
    def _template(self, token: _Tok) -> ast.Template:
        line, col = self._pos(token[1], token[2])
        template, diags = parse_template(token[0], line, col, self.file)
        self.diagnostics.extend(diags)
        return template

    def placeholder(self, children: list) -> tuple[list[_Tok], list[ast.Keyword]]:
        names = [c for c in children if isinstance(c, _Tok)]
        options = [c for c in children if isinstance(c, ast.Keyword)]
        return names, options


def _placeholders(body: str) -> Iterator[tuple[int, int]]:
    r"""Where each `{{…}}` starts and ends: from a `{{` to the first `}}` after it, as
    `\{\{(.*?)\}\}` would match, but with `str.find`, so a run of `{{` that no `}}` closes
    costs linear time, not quadratic."""
    cursor = 0
    while (start := body.find("{{", cursor)) >= 0:
        end = body.find("}}", start + 2)
        if end < 0:
            return
        yield start, end + 2
        cursor = end + 2


_PLAIN_PATH = re.compile(r"[ \t]*[A-Za-z_]\w*(?:[ \t]*\.[ \t]*[A-Za-z_]\w*)*[ \t]*", re.ASCII)
_WORD = re.compile(r"[A-Za-z_]\w*", re.ASCII)


@cache
def _keywords() -> frozenset[str]:
    """Words the grammar reserves (`if`, `true`...): never a placeholder's name."""
    return frozenset(
        str(t.pattern.value)
        for t in _parser().terminals
        if t.pattern.type == "str" and _WORD.fullmatch(str(t.pattern.value))
    )


def _plain_path(inner: str) -> list[tuple[int, str]] | None:
    """The names of a placeholder that is only a dotted path, with their offsets."""
    if not _PLAIN_PATH.fullmatch(inner):
        return None
    names = [(m.start(), m.group()) for m in _WORD.finditer(inner)]
    return None if any(name in _keywords() for _, name in names) else names


def _name_token(at: int, name: str) -> _Tok:
    """A NAME token at offset `at` of a one-line placeholder, as lark would make it."""
    return _Tok((name, 1, at + 1, 1, at + 1 + len(name), "NAME"))


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
    tags: list[tuple[int, str, ast.Span]] = []
    """Block tags (`{% system %}`, `{% end %}`): index in `parts` where each stands."""

    def text(a: int, b: int) -> None:
        for m in _TAG.finditer(body, a, b):
            if m.start() > a:
                parts.append(ast.TemplateText(span=span(a, m.start()), text=body[a : m.start()]))
            tags.append((len(parts), m.group(1), span(m.start(), m.end())))
            a = m.end() + (1 if body.startswith("\n", m.end()) and m.end() < b else 0)
        if b > a:
            parts.append(ast.TemplateText(span=span(a, b), text=body[a:b]))

    cursor = 0
    for start, end in _placeholders(body):
        if start > cursor:
            text(cursor, start)
        inner_start, inner_end = start + 2, end - 2
        inner = body[inner_start:inner_end]
        l1, c1 = position(inner_start)
        builder = _Builder(file, line=l1, col=c1)
        path = _plain_path(inner)
        try:
            if path is not None:  # `{{name}}`, `{{a.b}}`: most placeholders, no parser needed
                names = [_name_token(at, name) for at, name in path]
                options = []
            else:
                names, options = _parse(inner, "placeholder", builder)
        except UnexpectedInput as err:
            diag = _shifted(_syntax_error(err, file, inner), l1, c1)
            if diag.message == "unexpected end of file":
                # The placeholder ended early: point at its closing braces.
                end_line, end_col = position(inner_end)
                diag.message = "unexpected '}}'"
                diag.span = ast.Span(
                    file=file, line=end_line, col=end_col, end_line=end_line, end_col=end_col + 2
                )
            diag.message = f"malformed placeholder: {diag.message}"
            diag.hint = 'write {{name}} or {{name | max_tokens=60, stop="\\n"}}'
            diags.append(diag)
            # Keep the name so that later stages do not report it as missing too.
            names = [_name_token(0, m) for m in re.findall(r"^\s*([A-Za-z_]\w*)", inner, re.ASCII)]
            options = []
        parts.append(
            ast.Placeholder(
                span=span(inner_start, inner_end),
                path=[builder._ident(n) for n in names],
                options=options,
            )
        )
        cursor = end
    if cursor < len(body):
        text(cursor, len(body))
    template = ast.Template(span=span(0, len(body)), parts=parts)
    if tags:
        template = _sections(template, tags, diags)
    return template, diags


_TAG = re.compile(r"\{%-?[ \t]*([^\n]*?)[ \t]*-?%\}")
"""A block tag: the text between `{%` and `%}` on one line (`{% system %}`, or a Jinja
tag such as `{% for d in demos %}`, which is an error, not text sent to the model)."""
JINJA_TAGS = frozenset(
    "for endfor if elif else endif set endset macro endmacro block endblock include "  # noqa: SIM905
    "extends import from with endwith filter endfilter call endcall raw endraw".split()
)
"""Jinja's statement words: a template using them expects loops and conditionals."""
_JINJA_NAMES = re.compile(r"^(?:for|set|with)\s+([\w\s,()]+?)\s*(?:\bin\b|=|$)")
"""The names a Jinja `for`/`set`/`with` tag binds (placeholders reading them would
otherwise each be an unknown variable)."""
JINJA_HINT = (
    "build the text in the flow and pass it in, e.g. "
    'join([format("Text: {t}", t=d.text) for d in demos], "\n")'
)
JINJA_IF_HINT = (
    'choose the text in the flow and pass it in: if c { part = "..." } else { part = "" }'
)
BLOCK_TAGS = ("system", "end")
"""The block tags a template may hold: `{% system %}...{% end %}` at its start."""
SYSTEM_HINT = "write the system message first: {% system %}You are terse.{% end %}"


def _sections(
    template: ast.Template, tags: list[tuple[int, str, ast.Span]], diags: list[Diagnostic]
) -> ast.Template:
    """Cut the template's leading `{% system %}...{% end %}` section off its parts; any
    other use of block tags is an error (and the tags are dropped)."""

    def error(message: str, where: ast.Span, hint: str = SYSTEM_HINT) -> None:
        diags.append(Diagnostic(kind="template", message=message, span=where, hint=hint))

    parts = template.parts
    system: list[ast.TemplateText | ast.Placeholder] | None = None
    rest_from = 0
    opened: tuple[int, ast.Span] | None = None
    seen_system: ast.Span | None = None
    jinja_seen = False
    jinja_names: set[str] = set()
    for at, word, where in tags:
        first = word.split(maxsplit=1)[0] if word.strip() else ""
        if first in JINJA_TAGS:
            bound = _JINJA_NAMES.match(word)
            if bound:
                jinja_names.update(re.findall(r"[A-Za-z_]\w*", bound.group(1)))
            if not jinja_seen:  # the other tags of the loop are the same mistake
                error(
                    f"templates have no loops or conditionals: '{{% {word} %}}'",
                    where,
                    hint=JINJA_IF_HINT if first in ("if", "elif", "else", "endif") else JINJA_HINT,
                )
            jinja_seen = True
        elif word not in BLOCK_TAGS:
            close = did_you_mean(word, BLOCK_TAGS)
            error(
                f"unknown template block '{{% {word} %}}'",
                where,
                hint=f"{close + ' ' if close else ''}the one block is "
                "{% system %}...{% end %}, at the template's start",
            )
        elif word == "system" and opened is not None:
            error("a system section cannot contain another", where)
        elif word == "system" and seen_system is not None:
            error(
                "the template has a system section already",
                where,
                hint=f"one system section per template (the first is on line {seen_system.line})",
            )
            opened = (at, where)
        elif word == "system":
            seen_system = where
            before = parts[:at]
            if any(not (isinstance(p, ast.TemplateText) and not p.text.strip()) for p in before):
                error("the system section must come first in the template", where)
            opened = (at, where)
        elif opened is None:
            error("'{% end %}' closes no section", where)
        else:
            if system is None and not any(
                not (isinstance(p, ast.TemplateText) and not p.text.strip())
                for p in parts[: opened[0]]
            ):
                system, rest_from = parts[opened[0] : at], at
            opened = None
    if jinja_names:
        parts = [
            ast.TemplateText(span=p.span, text="")
            if isinstance(p, ast.Placeholder) and p.path and p.path[0].name in jinja_names
            else p
            for p in parts
        ]
        template = template.model_copy(update={"parts": parts})
    if opened is not None:
        error(
            "the system section is never closed",
            opened[1],
            hint="end it with {% end %} before the rest of the template",
        )
    if system is None:
        return template
    return template.model_copy(update={"parts": parts[rest_from:], "system": system})
