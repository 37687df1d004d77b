"""The syntax tree. Every node keeps its source span so that any later stage can point
at the exact text an error is about."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Span(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    """Exclusive end column, 1-based like `col`."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Node(BaseModel):
    model_config = ConfigDict(frozen=True)

    span: Span


# ---- types ------------------------------------------------------------------------------


class TypeRef(Node):
    name: str
    """A type's name, or "|" for a union of `args`."""
    args: list[TypeRef] = Field(default_factory=list)
    bounds: list[Keyword] = Field(default_factory=list)
    """`list[str, max=5]`: the `max=5`."""
    optional: bool = False
    """`str?`."""

    def __str__(self) -> str:
        if self.name == "|":
            return " | ".join(map(str, self.args))
        inside = [*map(str, self.args), *(f"{b.name.name}={b.value}" for b in self.bounds)]
        text = f"{self.name}[{', '.join(inside)}]" if inside else self.name
        return text + "?" if self.optional else text


# ---- expressions ------------------------------------------------------------------------


class Name(Node):
    id: str


class Const(Node):
    value: str | bool | int | float | None
    """None is the `none` literal."""


class ListExpr(Node):
    items: list[Expr]


class DictExpr(Node):
    keys: list[Ident]
    values: list[Expr]


class Attr(Node):
    value: Expr
    attr: Ident


class Index(Node):
    value: Expr
    index: Expr


class Keyword(Node):
    name: Ident
    value: Expr


class Call(Node):
    func: Ident
    args: list[Expr]
    kwargs: list[Keyword] = Field(default_factory=list)


class BinOp(Node):
    op: str
    left: Expr
    right: Expr


class UnaryOp(Node):
    op: Literal["-", "not"]
    operand: Expr


class MapExpr(Node):
    """`map x in xs: body` and `[body for x in xs if cond]`."""

    var: Ident
    iterable: Expr
    body: Expr
    where: Expr | None = None


class SampleExpr(Node):
    """`sample n: f(x)`: n samples of one call, as a list (docs/language.md, Samples)."""

    count: Expr
    body: Expr


Expr = (
    Name
    | Const
    | ListExpr
    | DictExpr
    | Attr
    | Index
    | Call
    | BinOp
    | UnaryOp
    | MapExpr
    | SampleExpr
)


class Ident(Node):
    """A name in a declaring or selecting position, kept with its own span."""

    name: str


# ---- statements -------------------------------------------------------------------------


class Assign(Node):
    targets: list[Ident]
    value: Expr


class If(Node):
    cond: Expr
    then: list[Stmt]
    orelse: list[Stmt] = Field(default_factory=list)


class Binding(Node):
    name: Ident
    value: Expr


class Loop(Node):
    """`repeat at most N ...` (var is None) or `for x in xs ...` over a list in order."""

    var: Ident | None = None
    iterable: Expr | None = None
    max_iters: Const | Name | None = None
    """`repeat`'s bound: a number, or a name (a const, or an int value of the flow)."""
    carried: list[Binding] = Field(default_factory=list)
    body: list[Stmt]
    until: Expr | None = None


Stmt = Assign | If | Loop


# ---- templates --------------------------------------------------------------------------


class TemplateText(Node):
    text: str


class Placeholder(Node):
    path: list[Ident]
    """`{{review.summary}}` is ["review", "summary"]."""
    options: list[Keyword] = Field(default_factory=list)


class Template(Node):
    parts: list[TemplateText | Placeholder]
    system: list[TemplateText | Placeholder] | None = None
    """The `{% system %}...{% end %}` section at the template's start: the system message."""


# ---- declarations -----------------------------------------------------------------------


class Param(Node):
    name: Ident
    type: TypeRef
    default: Expr | None = None


class Output(Node):
    name: Ident
    type: TypeRef
    description: str = ""
    """A record field's `"..."` after its type, shown to the model."""
    perf: Ident | None = None
    """`@latency` or `@throughput` on a flow output (Parrot's performance criteria)."""


class Decorator(Node):
    name: Ident
    args: list[Expr] = Field(default_factory=list)
    kwargs: list[Keyword] = Field(default_factory=list)


class ImportDecl(Node):
    path: str | None = None
    """A relative file path (`import "lib/util.llmflow"`)."""
    module: str | None = None
    """A standard-library module (`import text`)."""


class ModelDecl(Node):
    name: Ident
    backend: Ident
    args: list[Expr] = Field(default_factory=list)
    kwargs: list[Keyword] = Field(default_factory=list)


class EnumDecl(Node):
    name: Ident
    members: list[Ident]
    descriptions: list[str] = Field(default_factory=list)
    """One per member ("" for none): `enum E { a "what a means" }`."""


class RecordDecl(Node):
    name: Ident
    fields: list[Output]


class FnDecl(Node):
    name: Ident
    params: list[Param]
    outputs: list[Output]
    template: Template
    decorators: list[Decorator] = Field(default_factory=list)


class ExternDecl(Node):
    name: Ident
    params: list[Param]
    outputs: list[Output]
    """Named outputs, or one output named "result" for `-> T`."""
    single: bool
    """Declared as `-> T`: the Python function returns the value itself."""
    target: str
    target_span: Span
    decorators: list[Decorator] = Field(default_factory=list)


class FlowDecl(Node):
    name: Ident
    params: list[Param]
    outputs: list[Output]
    body: list[Stmt]
    decorators: list[Decorator] = Field(default_factory=list)


class EvalMetric(Node):
    """`sentiment: exact(case = false)`: how one flow output is scored."""

    output: Ident
    metric: Expr
    """A metric's name, or a call of it with its options."""


class EvalDecl(Node):
    """`eval dev(data = "dev.jsonl", flow = main) { output: metric ... }`."""

    name: Ident
    args: list[Expr] = Field(default_factory=list)
    kwargs: list[Keyword] = Field(default_factory=list)
    metrics: list[EvalMetric] = Field(default_factory=list)


class FnPin(Node):
    """`@model(big) fn argue_for`: decorators for a semantic function an imported module
    declares, given by the program that uses it."""

    name: Ident
    decorators: list[Decorator] = Field(default_factory=list)


class ConstDecl(Node):
    """`const STYLE = \"\"\"...\"\"\"`: a module-level literal, importable like a function."""

    name: Ident
    value: Expr


Decl = (
    ConstDecl
    | ImportDecl
    | ModelDecl
    | EnumDecl
    | RecordDecl
    | FnDecl
    | FnPin
    | ExternDecl
    | FlowDecl
    | EvalDecl
)


class Module(BaseModel):
    file: str
    decls: list[Decl]
    broken: list[str] = Field(default_factory=list)
    """Names of declarations dropped for syntax errors (their uses are not errors too)."""
    source: str = Field(repr=False)


def _rebuild() -> None:
    for model in list(globals().values()):
        if isinstance(model, type) and issubclass(model, BaseModel) and model is not BaseModel:
            model.model_rebuild()


_rebuild()


def operands(e: Expr) -> list[Expr]:
    """An expression's sub-expressions in the order they are evaluated (and checked)."""
    match e:
        case ListExpr(items=items):
            return items
        case Attr(value=value) | UnaryOp(operand=value):
            return [value]
        case Index(value=value, index=index):
            return [value, index]
        case Call(args=args, kwargs=kwargs):
            return [*args, *(kw.value for kw in kwargs)]
        case BinOp(left=left, right=right):
            return [left, right]
        case SampleExpr(count=count, body=body):
            return [count, body]
        case MapExpr(iterable=iterable, where=where, body=body):
            return [iterable, body] if where is None else [iterable, where, body]
    return []  # names, constants, and {key: value} (an error in a flow: not checked)


def free_names(expr: Expr) -> list[Name]:
    """The names an expression reads, in evaluation order, but those bound by a `map`
    inside it. Walks with its own stack: an expression may be a 10,000-term chain."""
    out: list[Name] = []
    stack: list[tuple[Expr, frozenset[str]]] = [(expr, frozenset())]
    while stack:
        e, bound = stack.pop()
        if isinstance(e, Name):
            if e.id not in bound:
                out.append(e)
            continue
        inner = bound | {e.var.name} if isinstance(e, MapExpr) else bound
        stack.extend(
            (child, inner if isinstance(e, MapExpr) and child is not e.iterable else bound)
            for child in reversed(operands(e))
        )
    return out
