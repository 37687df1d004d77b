"""Names, types, templates, decorators, models and cycles: every error of a program in
one pass.

Flow bodies are single-assignment dataflow, so statement order does not matter: a
variable's type is computed on first use, and a variable met again while its own type is
being computed is a dependency cycle.
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from llmflow.compiler import ast, catalog, resolve
from llmflow.compiler import config as config_file
from llmflow.compiler.branch_nexts import shown
from llmflow.compiler.check_evals import check_eval
from llmflow.compiler.diagnostics import Diagnostic, Kind, did_you_mean, sort_key
from llmflow.compiler.evalspec import EvalSpec
from llmflow.compiler.externs import ExternError, load_extern
from llmflow.compiler.heap import gc_paused
from llmflow.compiler.models import MAX_OPTION_NUMBER, ModelSpec
from llmflow.compiler.modules import Program
from llmflow.compiler.parse import MAX_NESTING, nesting
from llmflow.compiler.types import (
    ANY,
    BOOL,
    FLOAT,
    INT,
    NONE,
    OUTPUTS,
    PRIMS,
    STR,
    AnyT,
    EnumT,
    ListT,
    OptionalT,
    Prim,
    RecordT,
    Type,
    UnionT,
    assignable,
    is_numeric,
    optional,
    unbounded,
    unify,
)
from llmflow.stdlib.builtins import BUILTINS, Builtin

OUTPUT_OPTIONS = {"max_tokens", "stop", "temperature", "seed", "format", "choices"}
MAX_SEED = 2**63 - 1
OPTION_INPUT_TYPES = {"max_tokens": ("int",), "temperature": ("int", "float"), "seed": ("int",)}
"""The options a function's input can give, and the input types each takes."""
# Model options are each backend kind's settings: see compiler/resolve.py.
RESERVED = frozenset(
    [
        "import",
        "model",
        "enum",
        "record",
        "extern",
        "fn",
        "flow",
        "if",
        "else",
        "for",
        "in",
        "map",
        "repeat",
        "at",
        "most",
        "with",
        "until",
        "and",
        "or",
        "not",
        "true",
        "false",
        "none",
        "eval",
        "const",
        "sample",
    ]
)
MAX_SAMPLES = 100
"""The most samples one `sample n: f(x)` draws (each is a model call)."""
PYTHON_CONSTANTS = {
    "True": "did you mean true? write true/false",
    "False": "did you mean false? write true/false",
    "None": "did you mean none? write none (a value of an optional type T?)",
}
"""Python's constants written in a flow, and what llmflow writes instead."""
SAMPLE_TEMPERATURE = 0.7
"""The temperature `sample n: f(x)` draws with, for outputs that set none (greedy
decoding would give n copies of one answer)."""
DECORATORS = ("model", "needs")
PERF_GOALS = ("latency", "throughput")
"""What a flow output may ask for (`-> @latency answer: str`): docs/optimizer.md, prioritize."""


# ---- symbols ----------------------------------------------------------------------------


@dataclass
class Signature:
    params: list[tuple[str, Type, ast.Expr | None]]
    """Name, type, default expression (None: required)."""
    outputs: list[tuple[str, Type]]

    def result(self, name: str) -> Type:
        if len(self.outputs) == 1:
            return self.outputs[0][1]
        return RecordT(name=f"{name}{OUTPUTS}", fields=tuple(self.outputs))


@dataclass
class FnSym:
    decl: ast.FnDecl
    module: str
    sig: Signature
    pin: str | None = None
    needs: dict[str, float] = field(default_factory=dict)


@dataclass
class ExternSym:
    decl: ast.ExternDecl
    module: str
    sig: Signature
    func: Callable[..., Any] | None = None


@dataclass
class FlowSym:
    decl: ast.FlowDecl
    module: str
    sig: Signature


@dataclass
class TypeSym:
    decl: ast.EnumDecl | ast.RecordDecl
    module: str
    type: Type | None = None


@dataclass
class ModelSym:
    decl: ast.ModelDecl
    module: str
    spec: ModelSpec | None = None


@dataclass
class ConstSym:
    decl: ast.ConstDecl
    module: str
    type: Type = ANY
    value: Any = None


Symbol = FnSym | ExternSym | FlowSym | TypeSym | ModelSym | ConstSym
Callee = FnSym | ExternSym | FlowSym | TypeSym | Builtin


@dataclass(frozen=True)
class CallFacts:
    callee: Callee
    args: list[ast.Expr | None]
    """One per parameter, in order (None: the parameter's default)."""
    extra: list[ast.Keyword]
    """Keyword arguments a variadic builtin takes beyond its parameters."""


@dataclass
class Checked:
    """The program with every name resolved and every expression typed."""

    program: Program
    symbols: dict[str, dict[str, Symbol]]
    """Per module: every name it can see."""
    types: dict[int, Type] = field(default_factory=dict)
    """id(expression) → its type."""
    callees: dict[int, Callee] = field(default_factory=dict)
    """id(call) → what it calls."""
    bound_args: dict[int, list[ast.Expr | None]] = field(default_factory=dict)
    """id(call) → one argument per parameter, in order (None: the parameter's default)."""
    extra_kwargs: dict[int, list[ast.Keyword]] = field(default_factory=dict)
    """id(call) → keyword arguments a variadic builtin takes beyond its parameters."""
    enum_values: dict[int, str] = field(default_factory=dict)
    """id(attr) → the enum member an `Enum.member` expression stands for."""
    if_exports: dict[int, list[str]] = field(default_factory=dict)
    """id(if statement) → the names it assigns in every branch, visible after it."""
    if_absent: dict[int, list[str]] = field(default_factory=dict)
    """id(if statement without else) → the exports its missing else leaves empty (None):
    their types are optional."""
    loop_nexts: dict[int, dict[str, ast.Assign]] = field(default_factory=dict)
    """id(loop statement) → carried variable → the assignment of its next value."""
    models: dict[str, ModelSpec] = field(default_factory=dict)
    default_model: str = ""
    evals: dict[str, EvalSpec] = field(default_factory=dict)
    """The main file's `eval` blocks, checked, by name (`compiler/check_evals.py`)."""
    const_values: dict[int, Any] = field(default_factory=dict)
    """id(name or placeholder) → the value of the module constant it reads."""
    sample_counts: dict[int, int] = field(default_factory=dict)
    """id(sample expression) → how many samples it draws."""
    loop_counts: dict[int, int] = field(default_factory=dict)
    """id(`repeat` statement) → its bound, when the program fixes it (a number, a const);
    a `repeat at most n` over an int value is absent (its count is read at run time)."""

    # What lowering reads: typed answers about one node of a checked program, where a
    # miss is a bug in the checker (so an assertion), never a silent `any`.

    def type_of(self, e: ast.Expr) -> Type:
        """The type the checker gave an expression."""
        t = self.types.get(id(e))
        assert t is not None, f"the checker did not type {type(e).__name__} at {e.span}"
        return t

    def call(self, e: ast.Call) -> CallFacts:
        """What a call calls, with one argument per parameter (None: its default) and
        the keyword arguments a variadic builtin takes beyond them."""
        callee = self.callees.get(id(e))
        assert callee is not None, f"the checker did not resolve the call at {e.span}"
        bound = self.bound_args.get(id(e), [])
        return CallFacts(callee, bound, self.extra_kwargs.get(id(e), []))

    def callee(self, e: ast.Expr) -> Callee | None:
        """What an expression calls (None: it is no call the checker resolved)."""
        return self.callees.get(id(e)) if isinstance(e, ast.Call) else None

    def const_value(self, e: ast.Expr | ast.Placeholder) -> tuple[bool, Any]:
        """Whether a name or placeholder reads a module constant, and its value."""
        return (id(e) in self.const_values, self.const_values.get(id(e)))

    def enum_member(self, e: ast.Expr) -> str | None:
        """The enum member an `Enum.member` expression stands for (None: it is none)."""
        return self.enum_values.get(id(e))

    def exports(self, stmt: ast.If) -> list[str]:
        """The names an if assigns in every branch, in the order the then branch does."""
        return self.if_exports[id(stmt)]

    def next_values(self, stmt: ast.Loop) -> dict[str, ast.Assign]:
        """A loop's carried variables that its body assigns → that assignment."""
        return self.loop_nexts[id(stmt)]

    def flow(self, name: str) -> FlowSym | None:
        sym = self.symbols[self.program.main].get(name)
        return sym if isinstance(sym, FlowSym) else None

    def flows(self) -> list[str]:
        main = self.program.modules[self.program.main]
        return [d.name.name for d in main.decls if isinstance(d, ast.FlowDecl)]


# ---- scopes -----------------------------------------------------------------------------


@dataclass
class _Def:
    name: str
    span: ast.Span
    compute: Callable[[], Type]
    type: Type | None = None
    busy: bool = False
    reads: Callable[[], list[_Def]] | None = None
    """The definitions `compute` forces, in the order it forces them: `_force` computes
    those first, with its own stack, so a chain of any length is no deep recursion."""
    narrowed: bool = False
    """A variable as a branch that tested it against none sees it (`span`: the test)."""
    value: ast.Expr | None = None
    """The expression assigned (`x = value`), when the definition is one."""
    scope: _Scope | None = None
    """The scope `value` is read in."""
    origin: tuple[ast.Span, str] | None = None
    """Where and why an optional value may hold none, when that is not `value` itself
    (an if without else; the branch of an if that assigns an optional)."""


class _Scope:
    def __init__(self, parent: _Scope | None = None) -> None:
        self.parent = parent
        self.defs: dict[str, _Def] = {}
        self.branch_only: dict[str, ast.Span] = {}
        """Names assigned in only some branches of an if: visible nowhere else."""
        self.loop_locals: dict[str, ast.Span] = {}
        self.nexts: dict[str, _Def] = {}
        """A loop body: each carried variable's value for the next iteration, checked
        against its declared type with the other definitions, but no name anyone reads."""
        self.narrowed: dict[str, _Def] = {}
        """A branch that runs only when a variable is not none (`if x != none`): the
        variable as its present type, in place of the definition outside."""
        self._version: list[int] = parent._version if parent is not None else [0]
        """Bumped by every definition in the scope tree: `find`'s cache is kept until then."""
        self._found: dict[str, tuple[int, _Def | None]] = {}

    def add(self, name: str, d: _Def) -> None:
        self._version[0] += 1
        self.defs[name] = d

    def narrow(self, name: str, d: _Def) -> None:
        self._version[0] += 1
        self.narrowed[name] = d

    def find(self, name: str) -> _Def | None:
        """The definition a name refers to here. Cached in every scope on the way up, so
        lookups from deep in an else-if chain of any length cost O(1) each."""
        version = self._version[0]
        scope: _Scope | None = self
        passed: list[_Scope] = []
        found: _Def | None = None
        while scope is not None:
            if name in scope.defs:
                found = scope.defs[name]
                break
            hit = scope._found.get(name)
            if hit is not None and hit[0] == version:
                found = hit[1]
                break
            passed.append(scope)
            scope = scope.parent
        # Below a branch that narrows the variable found, the name is the narrowed one
        # (only a variable: a constant or a function is not narrowed).
        for s in reversed(passed):
            if found is not None and name in s.narrowed:
                found = s.narrowed[name]
            s._found[name] = (version, found)
        return found

    def names(self) -> set[str]:
        scope: _Scope | None = self
        out: set[str] = set()
        while scope is not None:
            out |= scope.defs.keys()
            scope = scope.parent
        return out

    def hint_for(self, name: str, explained: set[ast.Span]) -> str:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.branch_only:
                explained.add(scope.branch_only[name])
                return (
                    f"'{name}' is assigned in only one branch of the if on line "
                    f"{scope.branch_only[name].line}; assign it in every branch to use it after"
                )
            if name in scope.loop_locals:
                return (
                    f"'{name}' is local to the loop on line {scope.loop_locals[name].line}; "
                    "carry it with `with` to use it after the loop"
                )
            scope = scope.parent
        return ""


# ---- the checker ------------------------------------------------------------------------


class Checker:
    def __init__(self, program: Program) -> None:
        self.program = program
        self.diags: list[Diagnostic] = []
        self.checked = Checked(program=program, symbols={})
        self.module = program.main
        self.flow_calls: list[tuple[str, str, ast.Span]] = []
        self.current_flow: str | None = None
        self._resolving_types: set[str] = set()
        self._computing: list[_Def] = []
        self._visible: dict[str, list[_Def]] = {}
        """While flow bodies are collected: the definitions of each name in the scopes
        being collected (all enclosing the current one), innermost last."""
        self._open: list[_Scope] = []
        self._explained: set[ast.Span] = set()
        """Ifs whose branch-only names were reported where they are used."""
        self.broken = {name for m in program.modules.values() for name in m.broken}
        """Declarations with syntax errors: their uses are not reported again."""
        self._sampled: list[tuple[ast.SampleExpr, FnSym, int]] = []
        """Each `sample n: f(x)` of an fn, with n: checked for greedy outputs once every
        fn's options are (`_check_greedy_samples`)."""

    def error(
        self, kind: Kind, message: str, span: ast.Span | None, label: str = "", hint: str = ""
    ) -> None:
        self.diags.append(Diagnostic(kind=kind, message=message, span=span, label=label, hint=hint))

    # -- entry point

    def run(self) -> tuple[Checked, list[Diagnostic]]:
        self._declare()
        for name, module in self.program.modules.items():
            self.module = name
            for decl in module.decls:
                if isinstance(decl, ast.EnumDecl | ast.RecordDecl) and self._declared_by(decl):
                    self._type_of_decl(decl.name.name, decl.name.span)
        for name, module in self.program.modules.items():
            self.module = name
            for decl in module.decls:
                if isinstance(decl, ast.ConstDecl) and self._declared_by(decl):
                    self._check_const(decl)
        for name, module in self.program.modules.items():
            self.module = name
            for decl in module.decls:
                if isinstance(decl, ast.ModelDecl) and self._declared_by(decl):
                    self._check_model(decl)
        self._collect_models()
        for name, module in self.program.modules.items():
            self.module = name
            for decl in module.decls:
                if not self._declared_by(decl):
                    continue  # a second declaration of a name: reported, not checked
                if isinstance(decl, ast.FnDecl):
                    self._check_fn(decl)
                elif isinstance(decl, ast.ExternDecl):
                    self._check_extern(decl)
                elif isinstance(decl, ast.FlowDecl):
                    self._check_flow(decl)
        self._check_pins()
        if not self._check_flow_cycles():
            self._check_inlined_depth()
        self._check_greedy_samples()
        self._check_evals()
        self.diags.sort(key=sort_key)
        return self.checked, self.diags

    def _check_evals(self) -> None:
        """Every module's eval blocks (after the flows they score); the main file's are
        kept for the plan."""
        for name, module in self.program.modules.items():
            self.module = name
            seen: dict[str, ast.EvalDecl] = {}
            for decl in module.decls:
                if not isinstance(decl, ast.EvalDecl):
                    continue
                if decl.name.name in seen:
                    first = seen[decl.name.name].name.span
                    self.error(
                        "declaration",
                        f"eval '{decl.name.name}' is declared twice",
                        decl.name.span,
                        hint=f"first declared on line {first.line}",
                    )
                    continue
                seen[decl.name.name] = decl
                spec = check_eval(self, decl)
                if spec is not None and name == self.program.main:
                    self.checked.evals[spec.name] = spec
        self.module = self.program.main

    # -- declarations and scopes

    def _declare(self) -> None:
        own: dict[str, dict[str, Symbol]] = {}
        for name, module in self.program.modules.items():
            table: dict[str, Symbol] = {}
            for decl in module.decls:
                sym = self._symbol(decl, name)
                if sym is None:
                    continue
                key = decl.name.name  # type: ignore[union-attr]
                if key in table:
                    first = table[key].decl.name.span  # type: ignore[union-attr]
                    self.error(
                        "declaration",
                        f"'{key}' is declared twice",
                        decl.name.span,  # type: ignore[union-attr]
                        hint=f"first declared on line {first.line}",
                    )
                    continue
                if key in BUILTINS:
                    self.error(
                        "declaration",
                        f"'{key}' is the name of a builtin function",
                        decl.name.span,  # type: ignore[union-attr]
                        hint="choose another name",
                    )
                table[key] = sym
            own[name] = table
        for name in self.program.modules:
            visible: dict[str, Symbol] = {}
            for dep in self.program.imports.get(name, []):
                visible.update(own.get(dep, {}))
            visible.update(own[name])
            self.checked.symbols[name] = visible

    def _symbol(self, decl: ast.Decl, module: str) -> Symbol | None:
        empty = Signature([], [])
        match decl:
            case ast.FnDecl():
                return FnSym(decl, module, empty)
            case ast.ExternDecl():
                return ExternSym(decl, module, empty)
            case ast.FlowDecl():
                return FlowSym(decl, module, empty)
            case ast.EnumDecl() | ast.RecordDecl():
                return TypeSym(decl, module)
            case ast.ModelDecl():
                return ModelSym(decl, module)
            case ast.ConstDecl():
                return ConstSym(decl, module)
        return None

    def _lookup(self, name: str) -> Symbol | None:
        return self.checked.symbols[self.module].get(name)

    def _declared_by(self, decl: ast.Decl) -> bool:
        """Whether `decl` is what its name means in its module (not a duplicate)."""
        name = getattr(decl, "name", None)
        if not isinstance(name, ast.Ident):
            return True
        sym = self._lookup(name.name)
        return sym is None or sym.decl is decl

    # -- types

    def _type_of_decl(self, name: str, span: ast.Span) -> Type:
        sym = self._lookup(name)
        assert isinstance(sym, TypeSym)
        if sym.type is not None:
            return sym.type
        key = f"{sym.module}:{name}"
        if key in self._resolving_types:
            self.error(
                "cycle",
                f"record '{name}' contains itself",
                span,
                hint="a record cannot hold a value of its own type, even indirectly",
            )
            return ANY
        self._resolving_types.add(key)
        saved, self.module = self.module, sym.module
        decl = sym.decl
        if isinstance(decl, ast.EnumDecl):
            members: dict[str, str] = {}
            notes = decl.descriptions or [""] * len(decl.members)
            for m, note in zip(decl.members, notes, strict=True):
                if m.name in members:
                    self.error("declaration", f"enum member '{m.name}' is listed twice", m.span)
                    continue
                members[m.name] = note
            described = tuple(members.values()) if any(members.values()) else ()
            sym.type = EnumT(name=name, members=tuple(members), descriptions=described)
        else:
            fields: dict[str, Type] = {}
            notes: dict[str, str] = {}
            for f in decl.fields:
                if f.name.name in fields:
                    self.error(
                        "declaration", f"field '{f.name.name}' is declared twice", f.name.span
                    )
                    continue
                fields[f.name.name] = self.resolve_type(f.type)
                notes[f.name.name] = f.description
            described = tuple(notes.values()) if any(notes.values()) else ()
            sym.type = RecordT(name=name, fields=tuple(fields.items()), descriptions=described)
        self.module = saved
        self._resolving_types.discard(key)
        return sym.type

    def resolve_type(self, ref: ast.TypeRef) -> Type:
        if ref.name == "|":
            return self._union(ref)
        if ref.optional:
            return optional(self.resolve_type(ref.model_copy(update={"optional": False})))
        if ref.bounds:
            return self._bounded(ref)
        if ref.name == "list":
            if len(ref.args) != 1:
                self.error("type", "list takes one type argument", ref.span, hint="write list[str]")
                return ListT(item=ANY)
            return ListT(item=self.resolve_type(ref.args[0]))
        if ref.args:
            self.error("type", f"type '{ref.name}' takes no type arguments", ref.span)
        if ref.name in PRIMS:
            return PRIMS[ref.name]
        sym = self._lookup(ref.name)
        if isinstance(sym, TypeSym):
            return self._type_of_decl(ref.name, ref.span)
        type_names = [*PRIMS, "list"] + [
            n for n, s in self.checked.symbols[self.module].items() if isinstance(s, TypeSym)
        ]
        if ref.name in self.broken:
            return ANY
        self.error(
            "unknown-name",
            f"unknown type '{ref.name}'",
            ref.span,
            hint=did_you_mean(ref.name, type_names)
            or "types: str, int, float, bool, list[T], enums, records",
        )
        return ANY

    # -- module constants

    def _check_const(self, decl: ast.ConstDecl) -> None:
        """`const NAME = literal`: its type and value, on its symbol."""
        sym = self._lookup(decl.name.name)
        assert isinstance(sym, ConstSym)
        if decl.name.name in RESERVED:
            self.error("declaration", f"'{decl.name.name}' is a reserved word", decl.name.span)
        t = self.expr(decl.value, _Scope())
        if isinstance(decl.value, ast.Const) and decl.value.value is None:
            self.error(
                "type",
                "a constant cannot be none",
                decl.value.span,
                hint="a constant always has a value; for an input that may have none, "
                "declare a parameter `p: str? = none`",
            )
            return
        if not self._is_constant(decl.value) or isinstance(decl.value, ast.Attr):
            self.error(
                "type",
                "a constant's value must be a literal",
                decl.value.span,
                hint='write a string, """text""", number, true/false or a list of them',
            )
            return
        sym.type = t
        sym.value = _literal(decl.value)

    def _const_sym(self, name: str) -> ConstSym | None:
        sym = self._lookup(name)
        return sym if isinstance(sym, ConstSym) else None

    def _const_names(self) -> list[str]:
        return [n for n, s in self.checked.symbols[self.module].items() if isinstance(s, ConstSym)]

    def _union(self, ref: ast.TypeRef) -> Type:
        """`A | B`: records and enums only, each once (a model's JSON tells them apart)."""
        options: list[Type] = []
        for arg in ref.args:
            t = self.resolve_type(arg)
            if isinstance(t, AnyT):
                return ANY
            if not isinstance(t, RecordT | EnumT):
                self.error(
                    "type",
                    f"a union joins records or enums, not {t}",
                    arg.span,
                    hint="declare a record for each case: record Email { address: str }",
                )
                return ANY
            if t in options:
                self.error("type", f"{t} is listed twice in this union", arg.span)
                continue
            options.append(t)
        return UnionT(options=tuple(options)) if len(options) > 1 else options[0]

    def _bounded(self, ref: ast.TypeRef) -> Type:
        """`list[T, max=N]`, `str[max=N]`: a bound the validator checks and the embedded
        backend's grammar enforces."""
        t = self.resolve_type(ref.model_copy(update={"bounds": []}))
        most = None
        for b in ref.bounds:
            value = b.value.value if isinstance(b.value, ast.Const) else None
            if b.name.name != "max":
                self.error(
                    "type",
                    f"unknown bound '{b.name.name}'",
                    b.name.span,
                    hint="the bound is max=N: list[str, max=5], str[max=200]",
                )
            elif not isinstance(value, int) or value < 1:
                self.error("type", "max must be a positive integer", b.value.span)
            elif value > MAX_OPTION_NUMBER:
                self.error(
                    "limit", f"max is too large: at most {MAX_OPTION_NUMBER:,}", b.value.span
                )
            elif most is not None:
                self.error("type", "max is given twice", b.span)
            else:
                most = value
        if most is None or isinstance(t, AnyT):
            return t
        if isinstance(t, ListT):
            return ListT(item=t.item, max_items=most)
        if t == STR:
            return Prim(name="str", max_len=most)
        self.error(
            "type",
            f"{t} takes no bound",
            ref.bounds[0].span,
            hint="bounds apply to lists (items) and str (characters)",
        )
        return t

    # -- models

    def _const_value(self, expr: ast.Expr) -> Any:
        match expr:
            case ast.Const(value=value):
                return value
            case ast.ListExpr(items=items):
                return [self._const_value(i) for i in items]
            case ast.DictExpr(keys=keys, values=values):
                return {k.name: self._const_value(v) for k, v in zip(keys, values, strict=True)}
            case ast.UnaryOp(op="-", operand=ast.Const(value=int() | float() as v)):
                return -v
            case ast.Name(id=name) if (const := self._const_sym(name)) is not None:
                self.checked.const_values[id(expr)] = const.value
                return const.value
        self.error(
            "type",
            "expected a constant here",
            expr.span,
            hint="write a string, number, list or {key: value}",
        )
        return None

    def _check_model(self, decl: ast.ModelDecl) -> None:
        """A `model` declaration → its spec (on its symbol); errors via `resolve`."""
        sym = self._lookup(decl.name.name)
        diags = resolve.Diagnostics("program")
        try:
            kind = resolve.backend_kind(decl.backend.name, decl.backend.span, diags)
            if kind is None:
                return
            if (
                len(decl.args) != 1
                or not isinstance(decl.args[0], ast.Const)
                or not isinstance(decl.args[0].value, str)
            ):
                self.error(
                    "type",
                    f"{kind.name}(...) takes the model's id as its one positional argument",
                    decl.span,
                    hint=f'write {kind.name}("{kind.example_id}")',
                )
                return
            options = []
            for kw in decl.kwargs:
                key, value = kw.name.name, None
                if key in kind.settings.model_fields:  # else reported without its value
                    value = self._const_value(kw.value)
                    if value is None:
                        continue
                options.append(resolve.Option(key, value, kw.name.span, kw.value.span, kw.span))
            valid = resolve.check_options(kind, options, diags)
            base = self.program.paths[self.module].parent
            model_id = resolve.model_id(
                kind, decl.args[0].value, decl.args[0].span, base, "the declaring file", diags
            )
            if model_id is None:
                return
            assert isinstance(sym, ModelSym)
            name = decl.name.name
            config = resolve.config_layer(self._config(), name, kind, diags)
            sym.spec = resolve.resolve(
                name, kind, model_id, [(catalog.DECLARATION, valid), *config]
            )
        finally:
            self.diags.extend(diags.list)

    def _config(self) -> config_file.Config | None:
        """The program's config file (llmflow.toml or [tool.llmflow]), loaded once; its
        errors join the program's, rendered against its own text."""
        if not hasattr(self, "_config_file"):
            main = self.program.main
            config, diags = config_file.load_config(self.program.paths[main], main)
            if config is not None:
                self.program.sources.setdefault(config.name, config.shown_text)
            self.diags.extend(diags)
            self._config_file = config
        return self._config_file

    def _config_models(self) -> None:
        """Models the config file defines and the program does not declare."""
        config = self._config()
        if config is None:
            return
        for name, entry in config.models.items():
            if name in self.checked.models or not entry.defines:
                continue
            spec, diags = config_file.config_spec(config, entry)
            self.diags.extend(diags)
            if spec is not None:
                self.checked.models[name] = spec

    def _config_model_names(self) -> list[str]:
        """Models the program may use without declaring them (`@model(NAME)`)."""
        config = self._config()
        if config is None:
            return []
        declared = {
            s.decl.name.name
            for m in self.checked.symbols.values()
            for s in m.values()
            if isinstance(s, ModelSym)
        }
        return [n for n in config.models if n in self.checked.models and n not in declared]

    def _collect_models(self) -> None:
        """Models are global to a program: a plan names them, whatever file they are in."""
        declared_in: dict[str, str] = {}
        for module in self.program.modules:
            for sym in self.checked.symbols[module].values():
                if not isinstance(sym, ModelSym) or sym.module != module or sym.spec is None:
                    continue
                name = sym.spec.name
                if name in declared_in:
                    self.error(
                        "declaration",
                        f"model '{name}' is also declared in {declared_in[name]}",
                        sym.decl.name.span,
                        hint="model names are global to a program: rename one of them",
                    )
                    continue
                declared_in[name] = module
                self.checked.models[name] = sym.spec
        self._config_models()
        main = self.program.modules[self.program.main]
        declared = [d.name.name for d in main.decls if isinstance(d, ast.ModelDecl)]
        declared = [n for n in declared if n in self.checked.models]
        config = self._config()
        configured = config.default_model if config is not None else None
        if configured is not None and configured not in self.checked.models:
            assert config is not None and config.default_span is not None
            self.error(
                "config",
                f"default_model '{configured}' is not a model",
                config.default_span,
                hint=did_you_mean(configured, self.checked.models)
                or "name a model of the config file or of the program",
            )
            configured = None
        if declared:
            self.checked.default_model = declared[0]
        elif configured is not None:
            self.checked.default_model = configured
        else:
            diags = resolve.Diagnostics("config")
            spec = resolve.default_model(config, diags)
            self.diags.extend(diags.list)
            self.checked.models.setdefault(spec.name, spec)
            self.checked.default_model = spec.name

    # -- parameters, outputs, decorators

    def _params(self, params: list[ast.Param]) -> list[tuple[str, Type, ast.Expr | None]]:
        out: list[tuple[str, Type, ast.Expr | None]] = []
        for p in params:
            if any(p.name.name == n for n, _, _ in out):
                self.error(
                    "declaration", f"parameter '{p.name.name}' is declared twice", p.name.span
                )
                continue
            t = self.resolve_type(p.type)
            if p.default is not None:
                value_type = self.expr(p.default, _Scope())
                if not self._is_constant(p.default):
                    self.error("type", "a default value must be a constant", p.default.span)
                elif not assignable(value_type, t):
                    self.error(
                        "type",
                        f"default value of '{p.name.name}' is {value_type}, not {t}",
                        p.default.span,
                        hint=_optional_hint(value_type, t),
                    )
            out.append((p.name.name, t, p.default))
        return out

    def _is_constant(self, expr: ast.Expr) -> bool:
        match expr:
            case ast.Const():
                return True
            case ast.ListExpr(items=items):
                return all(self._is_constant(i) for i in items)
            case ast.UnaryOp(op="-", operand=ast.Const(value=int() | float())):
                return True
            case ast.Attr():
                return id(expr) in self.checked.enum_values
            case ast.Name(id=name):
                return self._const_sym(name) is not None
        return False

    def _outputs(
        self,
        outputs: list[ast.Output],
        params: list[tuple[str, Type, ast.Expr | None]],
        generated: bool = False,
    ) -> list[tuple[str, Type]]:
        """Outputs' names and types (`generated`: an fn's, written by the model)."""
        out: list[tuple[str, Type]] = []
        for o in outputs:
            if any(o.name.name == n for n, _ in out):
                self.error("declaration", f"output '{o.name.name}' is declared twice", o.name.span)
                continue
            if any(o.name.name == n for n, _, _ in params):
                self.error(
                    "declaration",
                    f"'{o.name.name}' is both an input and an output",
                    o.name.span,
                    hint="inputs and outputs need distinct names: rename the output, e.g. "
                    f"-> revised: {self._quiet_type(o.type)}"
                    + (", and generate {{revised}}" if generated else ""),
                )
            if o.perf is not None and o.perf.name not in PERF_GOALS:
                self.error(
                    "unknown-name",
                    f"unknown performance goal '@{o.perf.name}'",
                    o.perf.span,
                    hint=did_you_mean(o.perf.name, PERF_GOALS) or "write @latency or @throughput",
                )
            out.append((o.name.name, self.resolve_type(o.type)))
        return out

    def _no_perf(self, outputs: list[ast.Output]) -> None:
        for o in outputs:
            if o.perf is not None:
                self.error(
                    "declaration",
                    f"@{o.perf.name} applies only to the outputs of a flow",
                    o.perf.span,
                    hint="mark the flow output that needs it",
                )

    def _check_pins(self) -> None:
        """`@model(big) fn argue_for`: decorators a module gives a function it imports,
        applied over the function's own (after them, so the program that uses a library
        decides). Every caller in the program sees them: a pin is per function."""
        first: dict[int, ast.FnPin] = {}
        for name, module in self.program.modules.items():
            self.module = name
            for decl in module.decls:
                if isinstance(decl, ast.FnPin):
                    self._check_pin(decl, first)
        self.module = self.program.main

    def _check_pin(self, pin: ast.FnPin, first: dict[int, ast.FnPin]) -> None:
        fn = pin.name.name
        if fn in self.broken:
            return
        sym = self._lookup(fn)
        if sym is None:
            names = [
                n for n, s in self.checked.symbols[self.module].items() if isinstance(s, FnSym)
            ]
            self.error(
                "unknown-name",
                f"unknown function '{fn}'",
                pin.name.span,
                hint=did_you_mean(fn, names)
                or "`fn NAME` without a signature decorates a function of an imported module",
            )
            return
        if sym.module == self.module and isinstance(sym, FnSym):
            line = sym.decl.name.span.line
            self.error(
                "declaration",
                f"'{fn}' is declared in this module: decorate its declaration",
                pin.name.span,
                hint=f"put the decorators on the line above fn {fn}(…) on line {line}",
            )
            return
        if not pin.decorators:
            self.error(
                "declaration",
                f"fn {fn} without a signature gives it decorators, but it has none",
                pin.span,
                hint=f"write @model(NAME) fn {fn}, or declare it with a signature and a template",
            )
            return
        if id(sym) in first:
            earlier = first[id(sym)].span
            self.error(
                "declaration",
                f"'{fn}' is decorated twice",
                pin.name.span,
                hint=f"first in {Path(earlier.file).name} on line {earlier.line}",
            )
            return
        first[id(sym)] = pin
        if isinstance(sym, FnSym) and any(d.name.name == "needs" for d in pin.decorators):
            sym.needs = {}  # the program's @needs replace the library's
        self._check_decorators(pin, sym)

    def _check_decorators(
        self, decl: ast.FnDecl | ast.ExternDecl | ast.FlowDecl | ast.FnPin, sym: Symbol
    ) -> None:
        for dec in decl.decorators:
            name = dec.name.name
            if name not in DECORATORS:
                self.error(
                    "unknown-name",
                    f"unknown decorator '@{name}'",
                    dec.name.span,
                    hint=did_you_mean(name, DECORATORS)
                    or "decorators: @model(name), @needs(skill >= q)",
                )
                continue
            if not isinstance(sym, FnSym):
                self.error(
                    "declaration", f"@{name} applies only to semantic functions (fn)", dec.span
                )
                continue
            if name == "model":
                if len(dec.args) != 1 or dec.kwargs or not isinstance(dec.args[0], ast.Name):
                    self.error(
                        "type", "@model takes one model name", dec.span, hint="write @model(small)"
                    )
                    continue
                target = dec.args[0].id
                if target in self.broken:
                    continue
                configured = self._config_model_names()
                if not isinstance(self._lookup(target), ModelSym) and target not in configured:
                    models = [
                        n
                        for n, s in self.checked.symbols[self.module].items()
                        if isinstance(s, ModelSym)
                    ] + configured
                    self.error(
                        "unknown-name",
                        f"unknown model '{target}'",
                        dec.args[0].span,
                        hint=did_you_mean(target, models)
                        or 'declare it: model small = local("smollm2-135m")',
                    )
                    continue
                sym.pin = target
            else:
                for arg in dec.args:
                    if (
                        isinstance(arg, ast.BinOp)
                        and arg.op == ">="
                        and isinstance(arg.left, ast.Name)
                        and isinstance(arg.right, ast.Const)
                        and isinstance(arg.right.value, int | float)
                        and not isinstance(arg.right.value, bool)
                        and 0 <= arg.right.value <= 1
                    ):
                        sym.needs[arg.left.id] = float(arg.right.value)
                    else:
                        self.error(
                            "type",
                            "@needs takes skill requirements like reasoning >= 0.7",
                            arg.span,
                            hint="a skill name, >=, and a number from 0 to 1",
                        )
                if not dec.args:
                    self.error(
                        "type",
                        "@needs takes at least one skill requirement",
                        dec.span,
                        hint="write @needs(reasoning >= 0.7)",
                    )

    # -- semantic functions

    def _check_fn(self, decl: ast.FnDecl) -> None:
        sym = self._lookup(decl.name.name)
        assert isinstance(sym, FnSym)
        params = self._params(decl.params)
        outputs = self._outputs(decl.outputs, params, generated=True)
        sym.sig = Signature(params, outputs)
        self._check_decorators(decl, sym)
        self._no_perf(decl.outputs)
        inputs = {n: t for n, t, _ in params}
        outs = dict(outputs)
        generated: set[str] = set()
        fn = decl.name.name
        for part in decl.template.system or []:
            if not isinstance(part, ast.Placeholder) or not part.path:
                continue
            head = part.path[0]
            if head.name in outs and head.name not in inputs:
                self.error(
                    "template",
                    f"output '{head.name}' cannot be generated in the system section",
                    head.span,
                    hint="the system section holds only text, inputs and constants; "
                    "generate outputs after {% end %}",
                )
                continue
            self._template_value(part, inputs, {}, fn)
        for part in decl.template.parts:
            if not isinstance(part, ast.Placeholder) or not part.path:
                continue
            head = part.path[0]
            if head.name in outs and head.name not in generated:
                generated.add(head.name)
                if len(part.path) > 1:
                    self.error(
                        "template",
                        f"'{head.name}' is generated here, so it has no fields yet",
                        part.path[1].span,
                        hint=f"generate the whole value with {{{{{head.name}}}}}",
                    )
                self._check_options(part, inputs, outs[head.name])
                continue
            if head.name not in inputs and head.name not in outs:
                self._template_value(part, inputs, outs, fn)
                continue
            t = inputs[head.name] if head.name in inputs else outs[head.name]
            what = "an input" if head.name in inputs else "already generated"
            # A name both input and output is one error, at its declaration.
            if part.options and not (head.name in inputs and head.name in outs):
                self.error(
                    "template",
                    "options apply where an output is generated",
                    part.options[0].span,
                    hint=f"'{head.name}' is {what}; put options on the output's first placeholder",
                )
            for sel in part.path[1:]:
                t = self._field(t, sel)
        for o in decl.outputs:
            if o.name.name in outs and o.name.name not in generated:
                self.error(
                    "output",
                    f"output '{o.name.name}' is never generated",
                    o.name.span,
                    hint=f"add {{{{{o.name.name}}}}} to the template where the model writes it",
                )

    def _template_value(
        self, part: ast.Placeholder, inputs: dict[str, Type], outs: dict[str, Type], fn: str
    ) -> None:
        """A placeholder that reads an input or a module constant (not an output)."""
        head = part.path[0]
        const = self._const_sym(head.name) if head.name not in inputs else None
        if head.name in inputs:
            t = inputs[head.name]
        elif const is not None:
            t = const.type
            self.checked.const_values[id(part)] = const.value
        else:
            self.error(
                "template",
                f"unknown variable '{head.name}'",
                head.span,
                label=f"not an input or output of `{fn}`",
                hint=did_you_mean(head.name, [*inputs, *outs, *self._const_names()]),
            )
            return
        if part.options:
            self.error(
                "template",
                "options apply where an output is generated",
                part.options[0].span,
                hint=f"'{head.name}' is {'an input' if const is None else 'a constant'}; "
                "put options on the output's first placeholder",
            )
        for sel in part.path[1:]:
            t = self._field(t, sel)

    def _check_options(
        self, part: ast.Placeholder, inputs: dict[str, Type] | None = None, out: Type = ANY
    ) -> None:
        for opt in part.options:
            key = opt.name.name
            if key not in OUTPUT_OPTIONS:
                self.error(
                    "unknown-name",
                    f"unknown option '{key}'",
                    opt.name.span,
                    hint=did_you_mean(key, OUTPUT_OPTIONS)
                    or "options: max_tokens, stop, temperature, seed, format, choices",
                )
                continue
            if key == "choices":
                self._check_choices(opt, inputs or {}, out)
                continue
            if isinstance(opt.value, ast.Name) and self._const_sym(opt.value.id) is None:
                self._check_option_input(key, opt.value, inputs or {})
                continue
            reported = len(self.diags)
            value = self._const_value(opt.value)
            if len(self.diags) > reported:
                continue  # not a constant: one error for one mistake
            if key == "format" and value is not True:
                self.error(
                    "type",
                    "format is a flag",
                    opt.value.span,
                    hint="write {{o | format}} to describe the output's type in the prompt",
                )
            if key == "max_tokens" and not (
                isinstance(value, int) and not isinstance(value, bool) and value > 0
            ):
                self.error("type", "max_tokens must be a positive integer", opt.value.span)
            elif key == "max_tokens" and value > MAX_OPTION_NUMBER:
                self.error(
                    "limit",
                    f"max_tokens is too large: at most {MAX_OPTION_NUMBER:,}",
                    opt.value.span,
                )
            elif key == "stop" and not (
                isinstance(value, str)
                or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            ):
                self.error("type", "stop must be a string or a list of strings", opt.value.span)
            elif key == "temperature" and not (
                isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 2
            ):
                self.error("type", "temperature must be a number from 0 to 2", opt.value.span)
            elif key == "seed" and not (
                isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED
            ):
                self.error("type", f"seed must be an integer from 0 to {MAX_SEED}", opt.value.span)

    def _check_option_input(self, key: str, name: ast.Name, inputs: dict[str, Type]) -> None:
        """`max_tokens=n`, `temperature=t`, `seed=s`: a number the call is given (its
        range is checked when the call runs, where the value is known)."""
        wanted = OPTION_INPUT_TYPES.get(key)
        if wanted is None:
            self.error(
                "type",
                f"{key} must be a constant",
                name.span,
                hint="only max_tokens, temperature and seed can come from an input",
            )
            return
        t = inputs.get(name.id)
        if t is None:
            self.error(
                "unknown-name",
                f"unknown variable '{name.id}'",
                name.span,
                label="not an input of this function",
                hint=did_you_mean(name.id, inputs) or f"write a number or add an input '{name.id}'",
            )
        elif not isinstance(t, AnyT) and str(t) not in wanted:
            self.error(
                "type",
                f"{key} must be {' or '.join(wanted)}, but '{name.id}' is {t}",
                name.span,
            )

    def _check_choices(self, opt: ast.Keyword, inputs: dict[str, Type], out: Type) -> None:
        """`choices=options`: the output is one of an input's strings, known at run time,
        or of a constant list of strings (`choices=COLORS`, `choices=["red", "blue"]`)."""
        name = opt.value.id if isinstance(opt.value, ast.Name) else None
        if name is not None and name in inputs:
            t = inputs[name]
            if not (
                isinstance(t, ListT) and assignable(t.item, STR) and not isinstance(t.item, AnyT)
            ):
                self.error(
                    "type",
                    f"choices needs a list[str], but '{name}' is {t}",
                    opt.value.span,
                    hint=f"declare {name}: list[str]",
                )
        elif isinstance(opt.value, ast.ListExpr) or (
            name is not None and self._const_sym(name) is not None
        ):
            reported = len(self.diags)
            value = self._const_value(opt.value)
            if len(self.diags) > reported:
                return
            if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
                self.error(
                    "type",
                    "choices needs a non-empty list of strings",
                    opt.value.span,
                    hint='write choices=["red", "green"], or an input: choices=options',
                )
                return
        else:
            self.error(
                "type",
                "choices takes a list of strings: an input of this function or a constant",
                opt.value.span,
                hint="declare a parameter options: list[str] and write choices=options",
            )
            return
        if not assignable(out, STR) or isinstance(out, EnumT):
            self.error(
                "type",
                f"an output with choices is a str, not {out}",
                opt.name.span,
                hint="declare the output as str; an enum already has its choices",
            )

    def _field(self, t: Type, sel: ast.Ident, value: ast.Expr | None = None) -> Type:
        if isinstance(t, AnyT):
            return ANY
        if isinstance(t, RecordT):
            ft = t.field(sel.name)
            if ft is not None:
                return ft
            self.error(
                "unknown-name",
                f"{t} has no field '{sel.name}'",
                sel.span,
                hint=did_you_mean(sel.name, [n for n, _ in t.fields])
                or "fields: " + ", ".join(n for n, _ in t.fields),
            )
            return ANY
        if isinstance(t, UnionT) and (ft := t.field(sel.name)) is not None:
            return ft
        if isinstance(t, UnionT):
            self.error(
                "type",
                f"not every option of {t} has a field '{sel.name}' of one type",
                sel.span,
                hint="a field of a union is one that each of its records has, with one type",
            )
            return ANY
        name = value.id if isinstance(value, ast.Name) else "x"
        hint = (
            f"{t} may be none, so it has no fields to read; read them where a test found "
            f"a value: `if {name} != none {{ … }}`, `{name} != none and …`"
            + (" (x a name holding it)" if not isinstance(value, ast.Name) else "")
            + "; or pass it on whole"
            if isinstance(t, OptionalT)
            else ""
        )
        if isinstance(t, OptionalT) and isinstance(value, ast.Attr):
            field = value.attr.name
            hint = (
                f"{t} may be none, so it has no fields to read; a test narrows only a name: "
                f"write `{field} = {self._text(value)}`, then `if {field} != none {{ … }}`"
            )
        self.error("type", f"{t} has no fields", sel.span, hint=hint)
        return ANY

    # -- externs

    def _check_extern(self, decl: ast.ExternDecl) -> None:
        sym = self._lookup(decl.name.name)
        assert isinstance(sym, ExternSym)
        params = self._params(decl.params)
        sym.sig = Signature(params, self._outputs(decl.outputs, params))
        self._check_decorators(decl, sym)
        self._no_perf(decl.outputs)
        try:
            func = load_extern(decl.target, self.program.base_dir)
        except ExternError as err:
            self.error("extern", err.message, decl.target_span, hint=err.hint)
            return
        attr = decl.target.partition(":")[2]
        try:
            inspect.signature(func).bind(*[None] * len(params))
        except TypeError:
            self.error(
                "extern",
                f"'{decl.target}' cannot be called with {len(params)} argument"
                f"{'s' if len(params) != 1 else ''}",
                decl.target_span,
                hint=f"its Python signature is {attr}{inspect.signature(func)}",
            )
            return
        except ValueError:
            pass  # builtins without a signature: trust the declaration
        sym.func = func

    # -- flows

    def _check_flow(self, decl: ast.FlowDecl) -> None:
        sym = self._lookup(decl.name.name)
        assert isinstance(sym, FlowSym)
        params = self._params(decl.params)
        outputs = self._outputs(decl.outputs, params)
        sym.sig = Signature(params, outputs)
        self._check_decorators(decl, sym)
        self.current_flow = f"{self.module}:{decl.name.name}"
        scope = _Scope()
        self._enter(scope)
        for name, t, _ in params:
            p = next(p for p in decl.params if p.name.name == name)
            self._add(scope, name, _Def(name, p.name.span, lambda t=t: t, type=t))
        deferred: list[Callable[[], None]] = []
        self._collect(decl.body, scope, deferred)
        self._leave(scope)
        for name, t in outputs:
            out_decl = next(o for o in decl.outputs if o.name.name == name)
            d = scope.defs.get(name)
            if d is None:
                self.error(
                    "output",
                    f"output '{name}' of flow '{decl.name.name}' is never assigned",
                    out_decl.name.span,
                    hint=scope.hint_for(name, self._explained)
                    or f"assign it in the body: {name} = ...",
                )
                continue
            got = self._force(d)
            if not assignable(got, t):
                where, why = d.span, OPTIONAL_FROM_IF
                if isinstance(got, OptionalT) and not isinstance(t, OptionalT):
                    where, why = self._why_optional(d)
                self.error(
                    "type",
                    f"output '{name}' is declared {t} but assigned {got}",
                    where,
                    hint=_optional_hint(
                        got, t, self._text(d.value) if d.value is not None else "…", why=why
                    ),
                )
        self._finish(scope, deferred)
        self.current_flow = None

    def _finish(self, scope: _Scope, deferred: list[Callable[[], None]]) -> None:
        for d in [*scope.defs.values(), *scope.nexts.values()]:
            self._force(d)
        for check in deferred:
            check()

    def _force(self, d: _Def) -> Type:
        """A definition's type, computing what it reads first, depth first with an explicit
        stack: exactly the order recursion would take, cycles included."""
        if d.type is not None:
            return d.type
        if d.busy:
            return self._cycle(d)
        self._computing.append(d)
        d.busy = True
        stack = [(d, iter(d.reads() if d.reads else ()))]
        while stack:
            top, reads = stack[-1]
            for dep in reads:
                if dep.type is not None:
                    continue
                if dep.busy:
                    self._cycle(dep)
                    continue
                self._computing.append(dep)
                dep.busy = True
                stack.append((dep, iter(dep.reads() if dep.reads else ())))
                break
            else:
                stack.pop()
                t = top.compute()
                self._computing.pop()
                top.busy = False
                if top.type is None:
                    top.type = t
        assert d.type is not None
        return d.type

    def _cycle(self, d: _Def) -> Type:
        """A definition met again while its own type is computed."""
        names = [x.name for x in self._computing[self._computing.index(d) :]] + [d.name]
        names = [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]
        names = names if len(names) > 1 else names * 2
        self.error(
            "cycle",
            f"dependency cycle: {' → '.join(names)}",
            d.span,
            hint="a flow variable cannot be computed from its own value; "
            "use a loop (`repeat` or `for` with `with`) to refine a value",
        )
        d.type = ANY
        return ANY

    def _enter(self, scope: _Scope) -> None:
        self._open.append(scope)

    def _leave(self, scope: _Scope) -> None:
        assert self._open.pop() is scope
        for name in scope.defs:
            self._visible[name].pop()

    def _add(self, scope: _Scope, name: str, d: _Def) -> None:
        assert self._open[-1] is scope, "definitions go into the scope being collected"
        scope.add(name, d)
        self._visible.setdefault(name, []).append(d)

    def _reads(self, expr: ast.Expr, scope: _Scope) -> list[_Def]:
        """The definitions `self.expr(expr, scope)` forces, in order."""
        return [d for n in ast.free_names(expr) if (d := scope.find(n.id)) is not None]

    def _define(
        self,
        scope: _Scope,
        name: ast.Ident,
        compute: Callable[[], Type],
        reads: Callable[[], list[_Def]] | None = None,
    ) -> _Def | None:
        const = self._const_sym(name.name)
        if const is not None:
            self.error(
                "assign",
                f"cannot assign to constant '{name.name}'",
                name.span,
                hint=f"'{name.name}' is declared `const` on line {const.decl.span.line}"
                + ("" if const.module == self.module else f" of {const.module}")
                + "; give the variable another name",
            )
            return None
        if name.name in RESERVED:
            self.error(
                "declaration",
                f"'{name.name}' is a reserved word",
                name.span,
                hint="choose another name",
            )
        visible = self._visible.get(name.name)
        existing = visible[-1] if visible else None
        if existing is not None:
            self.error(
                "assign",
                f"variable '{shown(name.name)}' is assigned twice",
                name.span,
                hint=f"first assigned on line {existing.span.line}; flow variables hold one value "
                "(a loop carries changing values with `with`)",
            )
            return None
        d = _Def(name.name, name.span, compute, reads=reads)
        self._add(scope, name.name, d)
        return d

    def _collect(
        self,
        stmts: list[ast.Stmt],
        scope: _Scope,
        deferred: list[Callable[[], None]],
        carried: dict[str, _Def] | None = None,
        nexts: dict[str, ast.Assign] | None = None,
    ) -> None:
        for stmt in stmts:
            if isinstance(stmt, ast.Assign):
                self._collect_assign(stmt, scope, carried, nexts)
            elif isinstance(stmt, ast.If):
                self._collect_if(stmt, scope, deferred)
            else:
                self._collect_loop(stmt, scope, deferred)

    def _collect_in(
        self, stmts: list[ast.Stmt], scope: _Scope, deferred: list[Callable[[], None]]
    ) -> None:
        self._enter(scope)
        self._collect(stmts, scope, deferred)
        self._leave(scope)

    def _collect_assign(
        self,
        stmt: ast.Assign,
        scope: _Scope,
        carried: dict[str, _Def] | None,
        nexts: dict[str, ast.Assign] | None,
    ) -> None:
        value_type: list[Type] = []

        def whole() -> Type:
            if not value_type:
                value_type.append(self.expr(stmt.value, scope))
            return value_type[0]

        def reads() -> list[_Def]:
            return self._reads(stmt.value, scope)

        if len(stmt.targets) > 1:

            def part(i: int) -> Type:
                t = whole()
                if isinstance(t, AnyT):
                    return ANY
                if not isinstance(t, RecordT) or len(t.fields) != len(stmt.targets):
                    n = len(t.fields) if isinstance(t, RecordT) else 1
                    if i == 0:
                        self.error(
                            "type",
                            f"{len(stmt.targets)} names but the value has {n} "
                            f"part{'s' if n != 1 else ''}",
                            stmt.value.span,
                            hint="unpack the outputs of a function with several outputs",
                        )
                    return ANY
                names = [n for n, _ in t.fields]
                wrote = [target.name for target in stmt.targets]
                if wrote != names and sorted(wrote) == sorted(names):
                    if i == 0:
                        self._destructured_out_of_order(stmt, names)
                    return ANY
                return t.fields[i][1]

        for i, target in enumerate(stmt.targets):
            compute = (lambda i=i: part(i)) if len(stmt.targets) > 1 else whole
            if carried is not None and nexts is not None and target.name in carried:
                if target.name in nexts:
                    self.error(
                        "assign",
                        f"loop variable '{target.name}' is assigned twice in one iteration",
                        target.span,
                        hint=f"first assigned on line {nexts[target.name].span.line}",
                    )
                    continue
                nexts[target.name] = stmt
                d = carried[target.name]

                def check_next(
                    d: _Def = d, compute: Callable[[], Type] = compute, target: ast.Ident = target
                ) -> Type:
                    got = compute()
                    want = self._force(d)
                    if not assignable(got, want):
                        self.error(
                            "type",
                            f"'{target.name}' is carried as {want} but assigned {got}",
                            target.span,
                            hint="a value carried from `none` is always none; carry an "
                            f"optional instead: an input `start: {_present(got)}? = none`, "
                            f"then `with {target.name} = start`"
                            if want == NONE
                            else "",
                        )
                    return want

                scope.nexts[target.name] = _Def(
                    target.name, target.span, check_next, reads=lambda d=d: [*reads(), d]
                )
                continue
            if target.name != shown(target.name):
                compute = self._carried_next(target, compute, scope)
            defined = self._define(scope, target, compute, reads)
            if defined is not None and len(stmt.targets) == 1:
                defined.value, defined.scope = stmt.value, scope

    def _why_optional(self, d: _Def) -> tuple[ast.Span, str]:
        """Where a definition's optional value comes from, and why it may hold none."""
        if d.origin is not None:
            return d.origin
        t = self._force(d)
        if isinstance(d.value, ast.Name):
            read = d.scope.find(d.value.id) if d.scope is not None else None
            if read is not None and read.origin is not None:  # `out = said`, said from an if
                return d.value.span, read.origin[1]
            return d.value.span, f"'{d.value.id}' is {t}"
        if d.value is not None:
            return d.value.span, f"this value is {t}"
        return d.span, f"'{d.name}' is {t}"

    def _check_format_fields(self, e: ast.Call) -> None:
        """A constant format string's fields, checked now rather than when the flow runs:
        each `{name}` needs a keyword; JSON-like text needs its braces doubled."""
        template = self.checked.bound_args[id(e)][0]
        text: Any = None
        if isinstance(template, ast.Const):
            text = template.value
        elif isinstance(template, ast.Name):
            text = self.checked.const_values.get(id(template))
        if not isinstance(text, str):
            return
        braces = 'a literal brace is written {{ or }}, e.g. format("{{\\"n\\": {n}}}", n=1)'
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
        except ValueError as err:
            self.error("type", f"malformed format string: {err}", template.span, hint=braces)
            return
        given = {kw.name.name for kw in e.kwargs}
        for name in dict.fromkeys(fields):
            if not name.isidentifier():
                self.error(
                    "type",
                    f"format string has a field {{{name}}} that is not a name",
                    template.span,
                    hint=braces,
                )
            elif name not in given:
                self.error(
                    "type",
                    f"format() has no value for field {{{name}}}",
                    template.span,
                    hint=f"pass it as a keyword: format(..., {name}=...), or write "
                    f"{{{{{name}}}}} for the text {{{name}}}",
                )

    def _destructured_out_of_order(self, stmt: ast.Assign, names: list[str]) -> None:
        """`category, reason = classify(t)` where classify's outputs are (reason, category):
        names bind by position, not by name, so say the order (and nothing about types)."""
        wrote = ", ".join(t.name for t in stmt.targets)
        order = ", ".join(names)
        callee = stmt.value.func.name if isinstance(stmt.value, ast.Call) else ""
        shown_call = f"{callee}(...)" if callee else "the value"
        whose = f"{callee}'s" if callee else "its"
        first, last = stmt.targets[0].span, stmt.targets[-1].span
        self.error(
            "type",
            f"{wrote} = {shown_call} takes {whose} outputs in order: ({order})",
            ast.Span(
                file=first.file,
                line=first.line,
                col=first.col,
                end_line=last.end_line,
                end_col=last.end_col,
            ),
            hint=f"names take the outputs by position: write {order} = {shown_call}",
        )

    def _carried_next(
        self, target: ast.Ident, compute: Callable[[], Type], scope: _Scope
    ) -> Callable[[], Type]:
        """A carried variable's next value given in a branch (`compiler/branch_nexts.py`):
        checked against the carried type where the branch assigns it."""
        name = shown(target.name)

        def check() -> Type:
            got = compute()
            carried = scope.find(name)
            want = self._force(carried) if carried is not None else got
            if not assignable(got, want):
                self.error("type", f"'{name}' is carried as {want} but assigned {got}", target.span)
            return want

        return check

    def _collect_if(self, stmt: ast.If, scope: _Scope, deferred: list[Callable[[], None]]) -> None:
        """An if, and the ifs of its else-if chain one after the other: a chain of any
        length is collected without recursion, in the order recursion would take."""
        chain: list[tuple[ast.If, _Scope, _Scope, _Scope]] = []
        while True:
            then_scope, else_scope = _Scope(scope), _Scope(scope)
            self._narrow(stmt.cond, scope, then_scope, else_scope)
            self._collect_in(stmt.then, then_scope, deferred)
            chain.append((stmt, scope, then_scope, else_scope))
            if not (len(stmt.orelse) == 1 and isinstance(stmt.orelse[0], ast.If)):
                self._collect_in(stmt.orelse, else_scope, deferred)
                break
            self._enter(else_scope)  # left by the next link's if, once it is collected
            stmt, scope = stmt.orelse[0], else_scope
        for i, (stmt, scope, then_scope, else_scope) in enumerate(reversed(chain)):
            if i > 0:
                self._leave(else_scope)
            self._join_if(stmt, scope, then_scope, else_scope, deferred)

    def _narrow(
        self, cond: ast.Expr, scope: _Scope, then_scope: _Scope, else_scope: _Scope
    ) -> None:
        """`if x != none`: in the then branch, x is its present type (`T` of `T?`); `if x ==
        none`: in the else branch (and the else-if chain that is all of it)."""
        for name, in_then in narrowing(cond):
            (then_scope if in_then else else_scope).narrow(
                name, self._narrowed(name, scope, cond.span)
            )

    def _narrowed(self, name: str, scope: _Scope, test: ast.Span) -> _Def:
        """Variable `name` of `scope` as a place sees it where it is known not to be none."""

        def outer() -> _Def | None:
            return scope.find(name)

        def present() -> Type:
            d = outer()
            return _present(self._force(d)) if d is not None else ANY

        return _Def(name, test, present, reads=lambda: [d] if (d := outer()) else [], narrowed=True)

    def _narrowed_scope(
        self, tests: list[tuple[str, bool]], want: bool, scope: _Scope, test: ast.Span
    ) -> _Scope:
        """`scope`, with the names `tests` finds not none when the test is `want`."""
        names = {name for name, in_then in tests if in_then == want}
        if not names:
            return scope
        inner = _Scope(scope)
        for name in sorted(names):
            inner.narrow(name, self._narrowed(name, scope, test))
        return inner

    def _join_if(
        self,
        stmt: ast.If,
        scope: _Scope,
        then_scope: _Scope,
        else_scope: _Scope,
        deferred: list[Callable[[], None]],
    ) -> None:
        """The names an if assigns in both branches, visible after it."""

        def check_cond() -> None:
            t = self.expr(stmt.cond, scope)
            if not assignable(t, BOOL):
                self.error(
                    "type",
                    f"condition is {t}, not bool",
                    stmt.cond.span,
                    hint="compare it: x == Verdict.yes, len(items) > 0",
                )

        deferred.append(check_cond)
        deferred.append(lambda: self._finish(then_scope, []))
        deferred.append(lambda: self._finish(else_scope, []))
        exports: list[str] = []
        self.checked.if_exports[id(stmt)] = exports
        absent: list[str] = []
        for name, d in then_scope.defs.items():
            other = else_scope.defs.get(name)
            if other is None and not stmt.orelse and scope.find(name) is None:
                # No else: after the if, the name holds the then branch's value or none.
                absent.append(name)
                exports.append(name)
                maybe = self._define(
                    scope,
                    ast.Ident(name=name, span=d.span),
                    lambda a=d: optional(self._force(a)),
                    lambda a=d: [*self._reads(stmt.cond, scope), a],
                )
                if maybe is not None:
                    maybe.origin = (d.span, OPTIONAL_FROM_IF)
                continue
            if other is None:
                scope.branch_only[name] = stmt.span
                continue

            joined_def: list[_Def] = []

            def join(
                a: _Def = d, b: _Def = other, name: str = name, out: list[_Def] = joined_def
            ) -> Type:
                ta, tb = self._force(a), self._force(b)
                joined = unify(ta, tb)
                if joined is None:
                    self.error(
                        "type",
                        f"'{shown(name)}' is {ta} in one branch and {tb} in the other",
                        b.span,
                    )
                    return ANY
                if isinstance(joined, OptionalT) and out:
                    out[0].origin = self._why_optional(a if isinstance(ta, OptionalT) else b)
                return joined

            exports.append(name)
            # The if is lowered as a whole: what its condition reads comes first (a
            # condition reading a name the if assigns is a cycle).
            both = self._define(
                scope,
                ast.Ident(name=name, span=d.span),
                join,
                lambda a=d, b=other: [*self._reads(stmt.cond, scope), a, b],
            )
            if both is not None:
                joined_def.append(both)
        if absent:
            self.checked.if_absent[id(stmt)] = absent
        for name in else_scope.defs:
            if name not in then_scope.defs:
                scope.branch_only[name] = stmt.span
        if not exports:

            def no_effect() -> None:
                if stmt.span in self._explained:
                    return  # a use of one of its names was reported, with a hint about it
                keyword = ast.Span(
                    **{
                        **stmt.span.model_dump(),
                        "end_line": stmt.span.line,
                        "end_col": stmt.span.col + 2,
                    }
                )
                self.error(
                    "assign",
                    "this if has no effect: no name is assigned in every branch",
                    keyword,
                    hint="a name assigned in only some branches is not visible after the if; "
                    "assign it in an else branch too",
                )

            deferred.append(no_effect)

    def _collect_loop(
        self, stmt: ast.Loop, scope: _Scope, deferred: list[Callable[[], None]]
    ) -> None:
        body = _Scope(scope)
        if not stmt.carried:
            keyword = "for" if stmt.var is not None else "repeat"
            self.error(
                "assign",
                "this loop has no effect: it carries no value out",
                ast.Span(
                    **{
                        **stmt.span.model_dump(),
                        "end_line": stmt.span.line,
                        "end_col": stmt.span.col + len(keyword),
                    }
                ),
                hint="name the values it refines with `with`: "
                f'{keyword} ... with summary = "" {{ summary = ... }}',
            )
        carried: dict[str, _Def] = {}
        for binding in stmt.carried:

            def init(b: ast.Binding = binding) -> Type:
                return self.expr(b.value, scope)

            # The loop is lowered as a whole: what its list expression reads comes first.
            outer = self._define(
                scope,
                binding.name,
                init,
                lambda b=binding: [
                    *(self._reads(stmt.iterable, scope) if stmt.iterable is not None else []),
                    *(self._reads(stmt.max_iters, scope) if stmt.max_iters is not None else []),
                    *self._reads(b.value, scope),
                ],
            )
            if outer is None:
                continue
            inner = _Def(
                binding.name.name,
                binding.name.span,
                lambda outer=outer: self._force(outer),
                reads=lambda outer=outer: [outer],
            )
            carried[binding.name.name] = inner
        self._enter(body)
        if stmt.var is not None and stmt.iterable is not None:
            iterable = stmt.iterable

            def item() -> Type:
                t = self.expr(iterable, scope)
                if isinstance(t, ListT):
                    return t.item
                if not isinstance(t, AnyT):
                    self.error("type", f"for loops run over a list, not {t}", iterable.span)
                return ANY

            self._add(
                body,
                stmt.var.name,
                _Def(
                    stmt.var.name,
                    stmt.var.span,
                    item,
                    reads=lambda: self._reads(iterable, scope),
                ),
            )
        elif stmt.max_iters is not None:
            count = stmt.max_iters
            deferred.append(lambda: self._check_count(stmt, count, scope))
        for name, inner in carried.items():
            self._add(body, name, inner)
        nexts: dict[str, ast.Assign] = {}
        body_deferred: list[Callable[[], None]] = []
        self._collect(stmt.body, body, body_deferred, carried, nexts)
        self.checked.loop_nexts[id(stmt)] = nexts
        self._leave(body)
        for name in body.defs:
            if name not in carried and (stmt.var is None or name != stmt.var.name):
                scope.loop_locals[name] = stmt.span
        if stmt.until is not None:
            until = stmt.until

            def check_until() -> None:
                t = self.expr(until, body)
                if not assignable(t, BOOL):
                    self.error("type", f"`until` condition is {t}, not bool", until.span)

            body_deferred.append(check_until)
        deferred.append(lambda: self._finish(body, body_deferred))

    def _check_count(self, stmt: ast.Loop, count: ast.Const | ast.Name, scope: _Scope) -> None:
        """`repeat at most N`: a number or a const of 1 or more (kept as the loop's fixed
        count), or an int value of the flow, read when the loop starts."""
        t = self.expr(count, scope)
        known, value = (
            (True, count.value) if isinstance(count, ast.Const) else self.checked.const_value(count)
        )
        what = f"'{count.id}'" if isinstance(count, ast.Name) else "the count"
        if isinstance(t, AnyT) and not known:
            return  # reported where it was made (an unknown name, a broken value)
        if t != INT:
            self.error(
                "type",
                f"`at most` needs an int, but {what} is {t}",
                count.span,
                hint="write a number, an int const, or an int value: repeat at most rounds ...",
            )
        elif not known:
            return  # checked when the loop starts
        elif value < 1:
            self.error(
                "type",
                "`at most` needs a count of 1 or more",
                count.span,
                label="" if isinstance(count, ast.Const) else f"{count.id} = {value}",
            )
        elif value > MAX_OPTION_NUMBER:
            self.error(
                "limit", f"`at most` count is too large: at most {MAX_OPTION_NUMBER:,}", count.span
            )
        else:
            self.checked.loop_counts[id(stmt)] = value

    # -- expressions

    def expr(self, e: ast.Expr, scope: _Scope) -> Type:
        if isinstance(e, ast.BinOp):
            return self._binops(e, scope)
        # A value's bounds were checked where it was made: in expressions, str[max=80]
        # is a str (len(), +, comparisons), and is checked again where one is declared.
        t = unbounded(self._expr(e, scope))
        if isinstance(t, ListT) and _list_depth(t) > MAX_NESTING:
            # Written nesting is bounded by the parser; this is built up through names
            # (`a1 = [a0]`, `a2 = [a1]`, …), and every later stage would recurse on it.
            self.error(
                "limit",
                f"the type of this value nests lists more than {MAX_NESTING} deep",
                e.span,
            )
            t = ANY
        self.checked.types[id(e)] = t
        return t

    def _binops(self, e: ast.BinOp, scope: _Scope) -> Type:
        """A chain of binary operators (`a + b + c ...` nests to the left), bottom up with
        no recursion along the chain: a sum of any length."""
        chain = [e]
        while isinstance(chain[-1].left, ast.BinOp):
            chain.append(chain[-1].left)  # type: ignore[arg-type]
        left = self.expr(chain[-1].left, scope)
        # `x != none and x.age > 3`: the right side of `and` runs only when its left side is
        # true, so there x has a value (`x == none or ...`: when it is false). The tests of
        # a run of one of them add up along the chain.
        tests: list[tuple[str, bool]] = []
        run = ""
        narrowed: tuple[int, _Scope] = (-1, scope)  # for how many tests, the scope made
        for op in reversed(chain):
            right_scope = scope
            if op.op in ("and", "or"):
                if run != op.op:
                    tests, run, narrowed = narrowing(op.left), op.op, (-1, scope)
                if narrowed[0] != len(tests):
                    want = op.op == "and"
                    narrowed = (len(tests), self._narrowed_scope(tests, want, scope, op.span))
                right_scope = narrowed[1]
                tests.extend(narrowing(op.right))
            else:
                run = ""
            left = self._binop(op, left, self.expr(op.right, right_scope), scope)
            self.checked.types[id(op)] = left
        return left

    def _expr(self, e: ast.Expr, scope: _Scope) -> Type:
        match e:
            case ast.Const(value=None):
                return NONE
            case ast.Const(value=bool()):
                return BOOL
            case ast.Const(value=int()):
                return INT
            case ast.Const(value=float()):
                return FLOAT
            case ast.Const():
                return STR
            case ast.Name():
                return self._name(e, scope)
            case ast.ListExpr(items=items):
                t: Type = ANY
                for item in items:
                    it = self.expr(item, scope)
                    joined = unify(t, it) if not isinstance(t, AnyT) else it
                    if joined is None:
                        self.error(
                            "type", f"list items must have one type: {t} and {it}", item.span
                        )
                        joined = t
                    t = joined
                return ListT(item=t)
            case ast.DictExpr():
                self.error(
                    "type",
                    "{key: value} literals appear only in model declarations",
                    e.span,
                    hint="build a record with its name: Review(summary=s, score=3)",
                )
                return ANY
            case ast.Attr():
                return self._attr(e, scope)
            case ast.Index(value=value, index=index):
                vt, it = self.expr(value, scope), self.expr(index, scope)
                if not assignable(it, INT):
                    self.error("type", f"index must be int, not {it}", index.span)
                if isinstance(vt, ListT):
                    return vt.item
                if vt == STR or isinstance(vt, AnyT):
                    return vt
                self.error("type", f"cannot index {vt}", value.span)
                return ANY
            case ast.Call():
                return self._call(e, scope)
            case ast.UnaryOp(op="not", operand=operand):
                t = self.expr(operand, scope)
                if not assignable(t, BOOL):
                    self.error("type", f"`not` needs a bool, not {t}", operand.span)
                return BOOL
            case ast.UnaryOp(operand=operand):
                t = self.expr(operand, scope)
                if not is_numeric(t):
                    self.error("type", f"cannot negate {t}", operand.span)
                return t
            case ast.MapExpr():
                return self._map(e, scope)
            case ast.SampleExpr():
                return self._sample(e, scope)
        raise AssertionError(f"unhandled expression {e!r}")

    def _name(self, e: ast.Name, scope: _Scope) -> Type:
        d = scope.find(e.id)
        if d is not None:
            return self._force(d)
        sym = self._lookup(e.id)
        if isinstance(sym, ConstSym):
            self.checked.const_values[id(e)] = sym.value
            return sym.type
        if isinstance(sym, TypeSym):
            self.error(
                "type",
                f"'{e.id}' is a type, not a value",
                e.span,
                hint=f"pick a member: {e.id}.{sym.decl.members[0].name}"
                if isinstance(sym.decl, ast.EnumDecl) and sym.decl.members
                else "",
            )
            return ANY
        if sym is not None or e.id in BUILTINS:
            self.error(
                "type", f"'{e.id}' is a function, not a value", e.span, hint=f"call it: {e.id}(...)"
            )
            return ANY
        self.error(
            "unknown-name",
            f"unknown variable '{e.id}'",
            e.span,
            hint=PYTHON_CONSTANTS.get(e.id)
            or scope.hint_for(e.id, self._explained)
            or did_you_mean(e.id, [*scope.names(), *self._const_names()]),
        )
        return ANY

    def _attr(self, e: ast.Attr, scope: _Scope) -> Type:
        if isinstance(e.value, ast.Name) and scope.find(e.value.id) is None:
            sym = self._lookup(e.value.id)
            if isinstance(sym, TypeSym) and isinstance(sym.decl, ast.EnumDecl):
                enum = self._type_of_decl(e.value.id, e.value.span)
                if isinstance(enum, EnumT) and e.attr.name not in enum.members:
                    self.error(
                        "unknown-name",
                        f"'{e.attr.name}' is not a member of {enum.name}",
                        e.attr.span,
                        hint=did_you_mean(e.attr.name, enum.members)
                        or "members: " + ", ".join(enum.members),
                    )
                    return ANY
                self.checked.enum_values[id(e)] = e.attr.name
                return enum
        value = self.expr(e.value, scope)
        if isinstance(e.value, ast.Call) and not isinstance(value, AnyT):
            decl = getattr(self.checked.callees.get(id(e.value)), "decl", None)
            outputs = getattr(decl, "outputs", None) or []
            if len(outputs) == 1 and outputs[0].name.name == e.attr.name:
                self.error(
                    "type",
                    f"{e.value.func.name}() has one output, '{e.attr.name}': its call is "
                    "that value, with no fields to select",
                    e.attr.span,
                    hint=f"drop .{e.attr.name}: {e.value.func.name}(...) is the {value} itself",
                )
                return value
        return self._field(value, e.attr, e.value)

    def _binop(self, e: ast.BinOp, lt: Type, rt: Type, scope: _Scope) -> Type:
        if e.op == "??":
            return self._coalesce(e, lt, rt)
        if e.op in ("and", "or"):
            for side, t in ((e.left, lt), (e.right, rt)):
                if not assignable(t, BOOL):
                    self.error("type", f"`{e.op}` needs bool operands, not {t}", side.span)
            return BOOL
        if e.op in ("==", "!="):
            self._check_enum_literal(lt, e.right)
            self._check_enum_literal(rt, e.left)
            if self._never_none(e, lt, rt, scope):
                return BOOL
            li, ri = _present(lt), _present(rt)
            if unify(lt, rt) is None and not (
                isinstance(li, EnumT) and ri == STR or isinstance(ri, EnumT) and li == STR
            ):
                self.error("type", f"cannot compare {lt} with {rt}", e.span)
            return BOOL
        if e.op in ("<", "<=", ">", ">="):
            if not (is_numeric(lt) and is_numeric(rt) or lt == rt == STR):
                hint = _optional_hint(lt, ANY, self._text(e.left)) or _optional_hint(
                    rt, ANY, self._text(e.right)
                )
                self.error("type", f"cannot order {lt} and {rt}", e.span, hint=hint)
            return BOOL
        if isinstance(lt, AnyT) or isinstance(rt, AnyT):
            return ANY
        if e.op == "+":
            if lt == rt == STR:
                return STR
            if isinstance(lt, ListT) and isinstance(rt, ListT):
                joined = unify(lt, rt)
                if joined is not None:
                    return joined
            if is_numeric(lt) and is_numeric(rt):
                return FLOAT if FLOAT in (lt, rt) else INT
            hint = "convert with str(...) first" if STR in (lt, rt) else ""
            hint = (
                _optional_hint(lt, ANY, self._text(e.left))
                or _optional_hint(rt, ANY, self._text(e.right))
                or hint
            )
            self.error("type", f"cannot add {lt} and {rt}", e.span, hint=hint)
            return ANY
        if is_numeric(lt) and is_numeric(rt):
            if e.op in ("/", "//", "%") and _is_zero(e.right):
                self.error(
                    "type",
                    f"`{e.op}` divides by zero",
                    e.span,
                    hint="every run fails here; divide by a number other than 0",
                )
            return FLOAT if e.op == "/" or FLOAT in (lt, rt) else INT
        hint = _optional_hint(lt, ANY, self._text(e.left)) or _optional_hint(
            rt, ANY, self._text(e.right)
        )
        self.error("type", f"`{e.op}` needs numbers, not {lt} and {rt}", e.span, hint=hint)
        return ANY

    def _coalesce(self, e: ast.BinOp, lt: Type, rt: Type) -> Type:
        """`x ?? y`: `T? ?? T` is a T, `T? ?? T?` a T?; a left side that is never none
        makes the default dead code, an error."""
        if isinstance(lt, AnyT):
            return ANY
        if not isinstance(lt, OptionalT):
            left, right = self._text(e.left), self._text(e.right)
            swapped = isinstance(rt, OptionalT) and unify(rt.item, lt) is not None
            self.error(
                "type",
                f"`??` needs an optional on its left, not {lt}",
                e.left.span,
                hint=f"{left} is never none; drop `?? {right}`"
                + (f", or swap them: `{right} ?? {left}`" if swapped else ""),
            )
            return lt
        if isinstance(rt, AnyT):
            return ANY
        inner = rt.item if isinstance(rt, OptionalT) else rt
        joined = unify(lt.item, inner) if lt != NONE else inner
        if joined is None:
            self.error(
                "type",
                f"the default of `??` is {rt}, but the value is {lt}",
                e.right.span,
                hint=f"give a default of type {lt.item}",
            )
            return ANY
        return optional(joined) if isinstance(rt, OptionalT) else joined

    def _never_none(self, e: ast.BinOp, lt: Type, rt: Type, scope: _Scope) -> bool:
        """`x == none` where x is no optional: always false (`!=`: true), an error.
        True when it was reported."""
        for value, vt, ot in ((e.left, lt, rt), (e.right, rt, lt)):
            if ot == NONE and not isinstance(vt, OptionalT | AnyT):
                always = "false" if e.op == "==" else "true"
                d = scope.find(value.id) if isinstance(value, ast.Name) else None
                hint = (
                    f"this is always {always}: '{d.name}' has a value here, "
                    f"a test on line {d.span.line} found it"
                    if d is not None and d.narrowed
                    else f"this is always {always}; only an optional ({vt}?) can be none"
                )
                self.error(
                    "type",
                    f"cannot compare {vt} with none: a {vt} is never none",
                    e.span,
                    hint=hint,
                )
                return True
        return False

    def _text(self, e: ast.Expr) -> str:
        """The source text of a short one-line expression, for a hint; else `…`."""
        span = e.span
        source = self.program.sources.get(span.file)
        if source is None or span.line != span.end_line:
            return "…"
        lines = source.split("\n", span.line)
        if span.line > len(lines):
            return "…"
        text = lines[span.line - 1][span.col - 1 : span.end_col - 1]
        return text if 0 < len(text) <= 30 else "…"

    def _check_enum_literal(self, t: Type, other: ast.Expr) -> None:
        t = _present(t)
        if (
            isinstance(t, EnumT)
            and isinstance(other, ast.Const)
            and isinstance(other.value, str)
            and other.value not in t.members
        ):
            self.error(
                "type",
                f"'{other.value}' is not a member of {t.name}",
                other.span,
                hint=did_you_mean(other.value, t.members) or "members: " + ", ".join(t.members),
            )

    def _map(self, e: ast.MapExpr, scope: _Scope) -> Type:
        it = self.expr(e.iterable, scope)
        if isinstance(it, ListT):
            item: Type = it.item
        else:
            if not isinstance(it, AnyT):
                self.error("type", f"map runs over a list, not {it}", e.iterable.span)
            item = ANY
        inner = _Scope(scope)
        inner.defs[e.var.name] = _Def(e.var.name, e.var.span, lambda: item, type=item)
        body = inner
        if e.where is not None:
            wt = self.expr(e.where, inner)
            if not assignable(wt, BOOL):
                self.error("type", f"filter condition is {wt}, not bool", e.where.span)
            # the body is computed only for items the filter keeps
            body = self._narrowed_scope(narrowing(e.where), True, inner, e.where.span)
        return ListT(item=self.expr(e.body, body))

    def _sample(self, e: ast.SampleExpr, scope: _Scope) -> Type:
        """`sample n: f(x)`: n a positive int constant, f a semantic function."""
        self.expr(e.count, scope)
        count = e.count
        value: Any = None
        if isinstance(count, ast.Const):
            value = count.value
        elif isinstance(count, ast.Name) and id(count) in self.checked.const_values:
            value = self.checked.const_values[id(count)]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.error(
                "type",
                "the number of samples must be a positive integer constant",
                count.span,
                hint="write a number or a const: sample 5: solve(q)",
            )
        elif value > MAX_SAMPLES:
            self.error(
                "limit",
                f"too many samples: {value:,}; at most {MAX_SAMPLES}",
                count.span,
                hint="each sample is a model call",
            )
        else:
            self.checked.sample_counts[id(e)] = value
        t = self.expr(e.body, scope)
        if not isinstance(self.checked.callee(e.body), FnSym):
            if not (isinstance(e.body, ast.Call) and e.body.func.name in self.broken):
                self.error(
                    "type",
                    "sample draws from a call of a semantic function (fn)",
                    e.body.span,
                    hint="write sample 5: solve(q), where solve is an fn",
                )
            self.checked.sample_counts.pop(id(e), None)
        elif id(e) in self.checked.sample_counts:
            sym = self.checked.callee(e.body)
            assert isinstance(sym, FnSym)
            self._sampled.append((e, sym, self.checked.sample_counts[id(e)]))
        return ListT(item=t)

    def _check_greedy_samples(self) -> None:
        """`sample n: f(x)` where every output of f says `temperature=0`: n greedy answers
        to one prompt are n copies of one answer."""
        for e, sym, count in self._sampled:
            if count < 2 or not self._all_greedy(sym.decl):
                continue
            name = sym.decl.name.name
            self.error(
                "type",
                f"{count} samples at temperature 0 are {count} copies of one answer",
                e.body.span,
                label=f"every output of '{name}' sets temperature=0",
                hint=f"drop temperature=0 from '{name}' (samples then draw at "
                f"{SAMPLE_TEMPERATURE}), set it above 0, or call {name} once",
            )

    def _all_greedy(self, decl: ast.FnDecl) -> bool:
        """Whether every output an fn generates has `temperature=0` (a constant 0, written
        or a const's) where it is generated."""
        outputs = {o.name.name for o in decl.outputs}
        greedy: dict[str, bool] = {}
        for part in decl.template.parts:
            if not isinstance(part, ast.Placeholder) or not part.path:
                continue
            head = part.path[0].name
            if head in outputs and head not in greedy:
                greedy[head] = any(
                    opt.name.name == "temperature" and self._is_zero(opt.value)
                    for opt in part.options
                )
        return bool(greedy) and all(greedy.values())

    def _is_zero(self, e: ast.Expr) -> bool:
        value = e.value if isinstance(e, ast.Const) else self.checked.const_values.get(id(e))
        return isinstance(value, int | float) and not isinstance(value, bool) and value == 0

    def _call(self, e: ast.Call, scope: _Scope) -> Type:
        name = e.func.name
        sym = self._lookup(name)
        for arg in [*e.args, *(kw.value for kw in e.kwargs)]:
            self.expr(arg, scope)  # types every argument; _bind then checks them
        if isinstance(sym, FnSym | ExternSym | FlowSym):
            self.checked.callees[id(e)] = sym
            if isinstance(sym, FlowSym) and self.current_flow is not None:
                self.flow_calls.append((self.current_flow, f"{sym.module}:{name}", e.func.span))
            params = [(n, t, d is not None) for n, t, d in self._signature(sym).params]
            self._bind(e, name, params)
            return self._signature(sym).result(name)
        if isinstance(sym, TypeSym) and isinstance(sym.decl, ast.RecordDecl):
            record = self._type_of_decl(name, e.func.span)
            self.checked.callees[id(e)] = sym
            if isinstance(record, RecordT):
                self._bind(e, name, [(n, t, False) for n, t in record.fields])
            return record
        if name in BUILTINS:
            builtin = BUILTINS[name]
            self.checked.callees[id(e)] = builtin
            params = [(p.name, p.type or ANY, not p.required) for p in builtin.params]
            ok = self._bind(e, name, params, variadic=builtin.variadic)
            if not ok:
                return ANY
            if name == "format":
                self._check_format_fields(e)
            bound = self.checked.bound_args[id(e)]
            # None for an argument left out: `max(xs)` and `max(a, b)` are two forms
            types = [self.checked.types[id(a)] if a is not None else None for a in bound]
            result = builtin.result(types)
            if isinstance(result, str):
                hints = (
                    _optional_hint(t, ANY, self._text(a), operand=False)
                    for a, t in zip(bound, types, strict=True)
                    if a is not None
                )
                self.error("type", f"{name}() {result}", e.span, hint=next(filter(None, hints), ""))
                return ANY
            return result
        if name in self.broken:
            return ANY
        sym = self._lookup(name)
        if isinstance(sym, TypeSym) and isinstance(sym.decl, ast.EnumDecl):
            first = sym.decl.members[0].name if sym.decl.members else "member"
            self.error(
                "type",
                f"'{name}' is an enum, not a function",
                e.func.span,
                hint=f"an enum value is a literal ({name}.{first}), an input or a model's "
                "output; to turn text into one, declare an fn whose output is the enum",
            )
            return ANY
        callables = [
            n
            for n, s in self.checked.symbols[self.module].items()
            if isinstance(s, FnSym | ExternSym | FlowSym)
        ] + list(BUILTINS)
        self.error(
            "unknown-name",
            f"unknown function '{name}'",
            e.func.span,
            hint=did_you_mean(name, callables),
        )
        return ANY

    def _signature(self, sym: FnSym | ExternSym | FlowSym) -> Signature:
        if not sym.sig.outputs and not sym.sig.params and (sym.decl.params or sym.decl.outputs):
            saved, self.module = self.module, sym.module
            params = self._params_quiet(sym.decl.params)
            outputs = [(o.name.name, self._quiet_type(o.type)) for o in sym.decl.outputs]
            self.module = saved
            return Signature(params, outputs)
        return sym.sig

    def _params_quiet(self, params: list[ast.Param]) -> list[tuple[str, Type, ast.Expr | None]]:
        return [(p.name.name, self._quiet_type(p.type), p.default) for p in params]

    def _quiet_type(self, ref: ast.TypeRef) -> Type:
        """Resolve a type of a declaration not checked yet, without reporting its errors
        twice (they are reported when that declaration is checked)."""
        before = len(self.diags)
        t = self.resolve_type(ref)
        del self.diags[before:]
        return t

    def _bind(
        self,
        e: ast.Call,
        name: str,
        params: list[tuple[str, Type, bool]],
        variadic: bool = False,
    ) -> bool:
        bound: list[ast.Expr | None] = [None] * len(params)
        ok = True
        if len(e.args) > len(params):
            self.error(
                "type",
                f"{name}() takes {len(params)} argument{'s' if len(params) != 1 else ''} "
                f"but {len(e.args)} were given",
                e.args[len(params)].span,
            )
            ok = False
        for i, arg in enumerate(e.args[: len(params)]):
            bound[i] = arg
        names = [p[0] for p in params]
        extra: list[ast.Keyword] = []
        for kw in e.kwargs:
            if kw.name.name not in names:
                if variadic:
                    extra.append(kw)
                    continue
                self.error(
                    "unknown-name",
                    f"{name}() has no parameter '{kw.name.name}'",
                    kw.name.span,
                    hint=did_you_mean(kw.name.name, names) or "parameters: " + ", ".join(names),
                )
                ok = False
                continue
            i = names.index(kw.name.name)
            if bound[i] is not None:
                self.error("type", f"{name}() got '{kw.name.name}' twice", kw.span)
                ok = False
                continue
            bound[i] = kw.value
        for i, (pname, ptype, has_default) in enumerate(params):
            arg = bound[i]
            if arg is None:
                if not has_default and ok:
                    self.error("type", f"{name}() is missing argument '{pname}' ({ptype})", e.span)
                    ok = False
                continue
            got = self.checked.types.get(id(arg), ANY)
            if not assignable(got, ptype):
                self.error(
                    "type",
                    f"argument '{pname}' of {name}() expects {ptype}, got {got}",
                    arg.span,
                    hint="convert with str(...)"
                    if ptype == STR and isinstance(got, Prim)
                    else _optional_hint(got, ptype, self._text(arg)),
                )
                ok = False
        self.checked.bound_args[id(e)] = bound
        if extra:
            self.checked.extra_kwargs[id(e)] = extra
        return ok

    # -- cycles between flows

    def _check_inlined_depth(self) -> None:
        """Flows called by a flow are inlined, so their bodies nest where they are called:
        the depths add up along a chain of calls, and MAX_NESTING bounds the sum (the
        first call in a flow where it goes over is reported)."""
        flows = [
            (module, decl)
            for module, m in self.program.modules.items()
            for decl in m.decls
            if isinstance(decl, ast.FlowDecl)
        ]
        sites: dict[str, list[tuple[int, str, ast.Span]]] = {}
        own: dict[str, int] = {}
        for module, decl in flows:
            key = f"{module}:{decl.name.name}"
            own[key], sites[key] = 0, []
            for node, depth in nesting(decl):
                own[key] = max(own[key], depth)
                callee = self.checked.callees.get(id(node))
                if isinstance(node, ast.Call) and isinstance(callee, FlowSym):
                    sites[key].append((depth, f"{callee.module}:{node.func.name}", node.span))
        order = nx.DiGraph()
        order.add_nodes_from(sites)
        order.add_edges_from((k, c) for k, s in sites.items() for _, c, _ in s if c in sites)
        total: dict[str, int] = {}
        for key in reversed(list(nx.topological_sort(order))):
            total[key] = own[key]
            for depth, callee, span in sites[key]:
                inlined = depth + total.get(callee, 0)
                if inlined > MAX_NESTING and total.get(callee, 0) <= MAX_NESTING:
                    self.error(
                        "declaration",
                        f"flow '{callee.split(':')[-1]}' is inlined here {inlined} levels "
                        f"deep: more than {MAX_NESTING}",
                        span,
                        hint="flows calling flows are inlined, so their nesting adds up; "
                        "call fewer flows inside one another",
                    )
                total[key] = max(total[key], inlined)

    def _check_flow_cycles(self) -> bool:
        """Report every cycle of flows calling flows; True if there was one."""
        graph = nx.DiGraph()
        for caller, callee, span in self.flow_calls:
            graph.add_edge(caller, callee, span=span)
        reported: set[frozenset[str]] = set()
        for cycle in nx.simple_cycles(graph):
            key = frozenset(cycle)
            if key in reported:
                continue
            reported.add(key)
            first = min(cycle)
            i = cycle.index(first)
            ordered = cycle[i:] + cycle[:i]
            span = graph.edges[ordered[0], ordered[1 % len(ordered)]]["span"]
            path = " → ".join(n.split(":")[-1] for n in [*ordered, ordered[0]])
            self.error(
                "cycle",
                f"dependency cycle between flows: {path}",
                span,
                hint="flows expand into one graph before running; "
                "iterate with `repeat` or `for` instead of recursion",
            )
        return bool(reported)


@gc_paused()
def check(program: Program) -> tuple[Checked, list[Diagnostic]]:
    return Checker(program).run()


def _literal(expr: ast.Expr) -> Any:
    """The value of a literal the checker accepted as constant."""
    match expr:
        case ast.Const(value=value):
            return value
        case ast.ListExpr(items=items):
            return [_literal(i) for i in items]
        case ast.UnaryOp(op="-", operand=ast.Const(value=int() | float() as v)):
            return -v
    raise AssertionError(f"not a literal: {expr!r}")


OPTIONAL_FROM_IF = "an if without else assigned it"


def _optional_hint(
    got: Type, want: Type, text: str = "…", operand: bool = True, why: str = ""
) -> str:
    """Why an optional does not fit, and what to do instead. `text` is the source of the
    optional (`…` when unknown or long); `want` is ANY for an operand (of an operator
    unless not `operand`: an argument of a builtin); `why` says where the none comes from."""
    if not isinstance(got, OptionalT) or isinstance(want, OptionalT):
        return ""
    if got == NONE:
        return (
            f"none fits only an optional: declare where it goes as {want}?"
            if not isinstance(want, AnyT)
            else "none is no value to compute with"
        )
    maybe = f"{got} may be none" + (f" ({why})" if why else "")
    name = text if text.isidentifier() else "x"
    test = f"test it with `if {name} != none {{ … }}`"
    if isinstance(want, AnyT):  # an operand: `??` binds less tightly than arithmetic
        example = f"({text} ?? …)" if operand else f"{text} ?? …"
        default = f"give a default with `{example}`" if text != "…" else "give a default"
        return f"{maybe}: {default}, or {test}"
    default = f"give a default with `{text} ?? …`" if text != "…" else "give a default with `??`"
    return f"{maybe}: {default}, {test}, or declare where it goes as {got} too"


def narrowing(cond: ast.Expr) -> list[tuple[str, bool]]:
    """The variables a condition tests against none, each with whether it has a value
    when the condition is true (`x != none`, `none != x`, and each such test of an `and`
    chain) or when it is false (`x == none`, and each of an `or` chain). Only plain names:
    `r.email != none` tests no variable."""
    tested = _tested(cond)
    if tested is not None:
        return [tested]
    if not (isinstance(cond, ast.BinOp) and cond.op in ("and", "or")):
        return []
    found: list[tuple[str, bool]] = []
    stack: list[ast.Expr] = [cond]
    while stack:  # the operands of a run of `and` (or of `or`), in any grouping
        e = stack.pop()
        if isinstance(e, ast.BinOp) and e.op == cond.op:
            stack += [e.right, e.left]
        elif (t := _tested(e)) is not None and t[1] == (cond.op == "and"):
            found.append(t)
    return found


def _tested(cond: ast.Expr) -> tuple[str, bool] | None:
    """`x != none` is (x, True), `x == none` is (x, False)."""
    if not isinstance(cond, ast.BinOp) or cond.op not in ("==", "!="):
        return None
    for a, b in ((cond.left, cond.right), (cond.right, cond.left)):
        if isinstance(a, ast.Name) and isinstance(b, ast.Const) and b.value is None:
            return a.id, cond.op == "!="
    return None


def _present(t: Type) -> Type:
    """The type of an optional's value when it has one (`T` of `T?`)."""
    return t.item if isinstance(t, OptionalT) else t


def _list_depth(t: Type) -> int:
    depth = 0
    while isinstance(t, ListT):
        t, depth = t.item, depth + 1
    return depth


def _is_zero(e: ast.Expr) -> bool:
    """A constant 0 (or 0.0) divisor: known to fail before anything runs."""
    return (
        isinstance(e, ast.Const)
        and isinstance(e.value, int | float)
        and not isinstance(e.value, bool)
        and e.value == 0
    )
