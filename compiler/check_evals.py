"""Checking an `eval` block: its options, the flow it scores, and each metric against the
type of the output it scores. The result is the block as plan data (`EvalSpec`); every
problem is a diagnostic at the text it is about, and one bad metric does not hide the
others'.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from llmflow.compiler import ast
from llmflow.compiler.diagnostics import Kind, did_you_mean
from llmflow.compiler.evalspec import (
    ContainsMetric,
    EvalSpec,
    ExactMetric,
    ExternMetric,
    F1Metric,
    FieldsMetric,
    JudgeMetric,
    Metric,
    Normalize,
    NumericMetric,
)
from llmflow.compiler.types import (
    BOOL,
    FLOAT,
    INT,
    STR,
    AnyT,
    EnumT,
    ListT,
    RecordT,
    Type,
    assignable,
)

if TYPE_CHECKING:  # check.py imports this module: its symbols are imported where used
    from llmflow.compiler.check import Checker, FlowSym

METRICS = ("exact", "enum", "contains", "numeric", "f1", "fields", "judge")
"""The built-in metrics; any other name must be an `extern fn (output, expected)`."""
NORMALIZE_OPTIONS = ("case", "whitespace", "punctuation", "articles", "normalize")
EVAL_OPTIONS = ("data", "flow")
_METRIC_HINT = "metrics: exact, enum, contains, numeric, f1, fields, judge(fn), or an extern fn"


def check_eval(checker: Checker, decl: ast.EvalDecl) -> EvalSpec | None:
    """The eval block as plan data, or None if it has errors (all reported)."""
    before = len(checker.diags)
    options = _options(checker, decl)
    flow_name, flow_span = options.get("flow", ("main", decl.name.span))
    flow = checker.checked.symbols[checker.module].get(flow_name)
    from llmflow.compiler.check import FlowSym

    if not isinstance(flow, FlowSym):
        flows = [
            n for n, s in checker.checked.symbols[checker.module].items() if isinstance(s, FlowSym)
        ]
        checker.error(
            "unknown-name",
            f"eval '{decl.name.name}' scores flow '{flow_name}', which is not declared",
            flow_span,
            hint=did_you_mean(flow_name, flows)
            or (
                f"flows: {', '.join(flows)}; name one with flow = NAME"
                if flows
                else "declare a flow"
            ),
        )
        return None
    if not decl.metrics:
        checker.error(
            "eval",
            f"eval '{decl.name.name}' scores no output",
            decl.name.span,
            hint="list each output with its metric: { answer: exact }",
        )
    outputs = dict(flow.sig.outputs)
    metrics: dict[str, Metric] = {}
    for entry in decl.metrics:
        name = entry.output.name
        if name in metrics:
            checker.error("eval", f"output '{name}' is scored twice", entry.output.span)
            continue
        if name not in outputs:
            checker.error(
                "unknown-name",
                f"flow '{flow_name}' has no output '{name}'",
                entry.output.span,
                hint=did_you_mean(name, outputs) or f"outputs: {', '.join(outputs) or 'none'}",
            )
            continue
        metric = _Metrics(checker, flow).metric(entry.metric, outputs[name], f"output '{name}'")
        if metric is not None:
            metrics[name] = metric
    if len(checker.diags) > before:
        return None
    data, _ = options.get("data", (None, None))
    if data is not None:
        data = os.path.abspath(os.path.join(os.path.dirname(decl.span.file), data))
    return EvalSpec(
        name=decl.name.name,
        flow=flow_name,
        data=data,
        metrics=metrics,
        where=f"{decl.span.file}:{decl.span.line}",
    )


def _options(checker: Checker, decl: ast.EvalDecl) -> dict[str, tuple[str, ast.Span]]:
    """`data = "file"` and `flow = name`, each once."""
    out: dict[str, tuple[str, ast.Span]] = {}
    for arg in decl.args:
        checker.error(
            "eval",
            "an eval's options are named",
            arg.span,
            hint='write eval NAME(data = "dev.jsonl", flow = main)',
        )
    for kw in decl.kwargs:
        key = kw.name.name
        if key not in EVAL_OPTIONS:
            checker.error(
                "unknown-name",
                f"unknown eval option '{key}'",
                kw.name.span,
                hint=did_you_mean(key, EVAL_OPTIONS) or "options: data, flow",
            )
        elif key in out:
            checker.error("eval", f"option '{key}' is given twice", kw.name.span)
        elif key == "data":
            if isinstance(kw.value, ast.Const) and isinstance(kw.value.value, str):
                if not kw.value.value.strip():
                    checker.error("eval", "the data file's name is empty", kw.value.span)
                elif "\0" in kw.value.value:
                    checker.error("eval", "a file name cannot hold a NUL character", kw.value.span)
                else:
                    out[key] = (kw.value.value, kw.value.span)
            else:
                checker.error(
                    "type",
                    "data is a file name in quotes",
                    kw.value.span,
                    hint='data = "data/dev.jsonl" (relative to this file)',
                )
        elif isinstance(kw.value, ast.Name):
            out[key] = (kw.value.id, kw.value.span)
        else:
            checker.error("type", "flow is the name of a flow", kw.value.span, hint="flow = main")
    return out


class _Metrics:
    """Metric expressions → metric specs, each checked against the type it scores."""

    def __init__(self, checker: Checker, flow: FlowSym) -> None:
        self.checker = checker
        self.flow = flow

    def error(self, message: str, span: ast.Span, hint: str = "", kind: Kind = "eval") -> None:
        self.checker.error(kind, message, span, hint=hint)

    def metric(self, expr: ast.Expr, t: Type, what: str) -> Metric | None:
        if isinstance(expr, ast.Name):
            name, span, args, kwargs = expr.id, expr.span, [], []
        elif isinstance(expr, ast.Call):
            name, span, args, kwargs = expr.func.name, expr.func.span, expr.args, expr.kwargs
        else:
            self.error(
                "a metric is a name, or a name with options",
                expr.span,
                hint="e.g. exact, contains(case = false), numeric(tolerance = 1)",
            )
            return None
        if isinstance(t, AnyT):
            return None  # the output's type has an error of its own
        if name == "enum":
            return self.enum(span, args, kwargs, t, what)
        if name in ("exact", "contains", "f1"):
            return self.text_metric(name, span, args, kwargs, t, what)
        if name == "numeric":
            return self.numeric(span, args, kwargs, t, what)
        if name == "fields":
            return self.fields(span, args, kwargs, t, what)
        if name == "judge":
            return self.judge(span, args, kwargs, t, what)
        return self.extern(name, span, expr, t, what)

    # -- built-in metrics

    def no_positional(self, name: str, args: list[ast.Expr]) -> bool:
        for arg in args[:1]:
            self.error(
                f"{name}'s options are named", arg.span, hint=f"write {name}(option = value)"
            )
        return not args

    def text_metric(
        self,
        name: str,
        span: ast.Span,
        args: list[ast.Expr],
        kwargs: list[ast.Keyword],
        t: Type,
        what: str,
    ) -> Metric | None:
        texts = _holds_text(t)
        fits = {
            "exact": True,
            "contains": t == STR,
            "f1": t == STR or isinstance(t, ListT),
        }[name]
        if not fits:
            allowed = {"contains": "a str", "f1": "a str (its words) or a list"}[name]
            self.error(
                f"{name} does not fit {what}: it is {t}, {name} scores {allowed}",
                span,
                hint=_suggest(t),
                kind="type",
            )
            return None
        ok = self.no_positional(name, args)
        flags: dict[str, bool] = {}
        for kw in kwargs:
            key = kw.name.name
            if key not in NORMALIZE_OPTIONS:
                self.error(
                    f"unknown option '{key}' of {name}",
                    kw.name.span,
                    hint=did_you_mean(key, NORMALIZE_OPTIONS)
                    or "options: case, whitespace, punctuation, articles, normalize",
                    kind="unknown-name",
                )
                ok = False
            elif not texts:
                self.error(
                    f"{name} compares {t} values as they are: '{key}' is for text",
                    kw.name.span,
                    hint=f"write {name} without options",
                )
                ok = False
            elif key in flags:
                self.error(f"option '{key}' is given twice", kw.name.span)
                ok = False
            elif not (isinstance(kw.value, ast.Const) and isinstance(kw.value.value, bool)):
                self.error(f"option '{key}' is true or false", kw.value.span, kind="type")
                ok = False
            else:
                flags[key] = kw.value.value
        if not ok:
            return None
        base = not flags.pop("normalize", False)
        normalize = Normalize(
            **{k: flags.get(k, base) for k in ("case", "whitespace", "punctuation", "articles")}
        )
        if name == "exact":
            return ExactMetric(normalize=normalize)
        if name == "contains":
            return ContainsMetric(normalize=normalize)
        return F1Metric(normalize=normalize)

    def enum(
        self, span: ast.Span, args: list[ast.Expr], kwargs: list[ast.Keyword], t: Type, what: str
    ) -> Metric | None:
        """Enum equality: exact match, written so the reader sees the output is a label."""
        if not isinstance(t, EnumT):
            self.error(
                f"enum does not fit {what}: it is {t}, enum scores an enum's member",
                span,
                hint=_suggest(t),
                kind="type",
            )
            return None
        for arg in [*args, *kwargs][:1]:
            self.error("enum takes no options", arg.span, hint="write enum")
            return None
        return ExactMetric()

    def numeric(
        self, span: ast.Span, args: list[ast.Expr], kwargs: list[ast.Keyword], t: Type, what: str
    ) -> Metric | None:
        if t not in (INT, FLOAT, STR):
            self.error(
                f"numeric does not fit {what}: it is {t}, numeric scores an int, a float, "
                "or a str's final number",
                span,
                hint=_suggest(t),
                kind="type",
            )
            return None
        ok = self.no_positional("numeric", args)
        values: dict[str, float] = {}
        for kw in kwargs:
            key = kw.name.name
            if key not in ("tolerance", "relative"):
                self.error(
                    f"unknown option '{key}' of numeric",
                    kw.name.span,
                    hint=did_you_mean(key, ("tolerance", "relative"))
                    or "options: tolerance (absolute), relative (a fraction of the expected)",
                    kind="unknown-name",
                )
                ok = False
                continue
            value = _number(kw.value)
            if value is None or value < 0:
                self.error(
                    f"option '{key}' is a number, 0 or more",
                    kw.value.span,
                    hint=f"{key} = 0.5",
                    kind="type",
                )
                ok = False
            elif key in values:
                self.error(f"option '{key}' is given twice", kw.name.span)
                ok = False
            else:
                values[key] = value
        return NumericMetric(**values) if ok else None

    def fields(
        self, span: ast.Span, args: list[ast.Expr], kwargs: list[ast.Keyword], t: Type, what: str
    ) -> Metric | None:
        if not isinstance(t, RecordT):
            self.error(
                f"fields does not fit {what}: it is {t}, fields scores a record",
                span,
                hint=_suggest(t),
                kind="type",
            )
            return None
        ok = self.no_positional("fields", args)
        chosen: dict[str, Metric] = {}
        for kw in kwargs:
            key = kw.name.name
            field_type = t.field(key)
            if field_type is None:
                self.error(
                    f"{t} has no field '{key}'",
                    kw.name.span,
                    hint=did_you_mean(key, [n for n, _ in t.fields])
                    or "fields: " + ", ".join(n for n, _ in t.fields),
                    kind="unknown-name",
                )
                ok = False
            elif key in chosen:
                self.error(f"field '{key}' is given twice", kw.name.span)
                ok = False
            else:
                metric = self.metric(kw.value, field_type, f"field '{key}' of {t}")
                if metric is None:
                    ok = False
                else:
                    chosen[key] = metric
        if not ok:
            return None
        return FieldsMetric(fields={n: chosen.get(n) or default_metric(ft) for n, ft in t.fields})

    def judge(
        self, span: ast.Span, args: list[ast.Expr], kwargs: list[ast.Keyword], t: Type, what: str
    ) -> Metric | None:
        from llmflow.compiler.check import ExternSym, FnSym

        if len(args) != 1 or not isinstance(args[0], ast.Name):
            self.error(
                "judge takes the semantic function that scores",
                args[0].span if args else span,
                hint="judge(rate_reply), where fn rate_reply(output: ..., expected: ...) -> "
                "score: float",
            )
            return None
        name, fn_span = args[0].id, args[0].span
        sym = self.checker.checked.symbols[self.checker.module].get(name)
        if isinstance(sym, ExternSym):
            self.error(
                f"judge takes a semantic function; '{name}' is an extern fn",
                fn_span,
                hint=f"an extern metric is used by its name: OUTPUT: {name}",
            )
            return None
        if not isinstance(sym, FnSym):
            if name not in self.checker.broken:
                fns = [
                    n
                    for n, s in self.checker.checked.symbols[self.checker.module].items()
                    if isinstance(s, FnSym)
                ]
                self.error(
                    f"unknown semantic function '{name}'",
                    fn_span,
                    hint=did_you_mean(name, fns)
                    or "declare it: fn NAME(output: T, ...) -> score: float",
                    kind="unknown-name",
                )
            return None
        sig = self.checker._signature(sym)
        inputs = {n: pt for n, pt, _ in self.flow.sig.params}
        ok = True
        binds: list[str] = []
        for pname, ptype, _ in sig.params:
            source = {"output": t, "expected": t}.get(pname, inputs.get(pname))
            param = next(p for p in sym.decl.params if p.name.name == pname)
            if source is None:
                self.error(
                    f"judge '{name}': parameter '{pname}' is not output, expected, or an input "
                    f"of flow '{self.flow.decl.name.name}'",
                    param.name.span,
                    hint="a judge's parameters are named output, expected, or after the flow's "
                    f"inputs ({', '.join(inputs) or 'none'})",
                )
                ok = False
            elif not _accepts(source, ptype):
                self.error(
                    f"judge '{name}': parameter '{pname}' is {ptype}, but it gets {source}",
                    param.type.span,
                    hint=f"declare it {pname}: {source}",
                    kind="type",
                )
                ok = False
            binds.append(pname)
        if ok and "output" not in binds:
            self.error(
                f"judge '{name}' does not read the output it scores",
                fn_span,
                hint=f"give {name} a parameter named output",
            )
            ok = False
        returns: str | None = None
        if len(sig.outputs) == 1:
            rt = sig.outputs[0][1]
            returns = "float" if rt == FLOAT else "bool" if rt == BOOL else None
            returns = "enum" if isinstance(rt, EnumT) else returns
        if returns is None:
            shown = ", ".join(f"{n}: {ot}" for n, ot in sig.outputs)
            self.error(
                f"judge '{name}' returns {shown}: a judge returns one score: float (0 to 1), "
                "bool, or an enum",
                fn_span,
                hint=f"fn {name}(...) -> score: float",
                kind="type",
            )
            return None
        scores: dict[str, float] = {}
        for kw in kwargs:
            if kw.name.name != "scores":
                self.error(
                    f"unknown option '{kw.name.name}' of judge",
                    kw.name.span,
                    hint="judge's only option: scores = {member: score, ...} for an enum judge",
                    kind="unknown-name",
                )
                ok = False
            elif returns != "enum":
                self.error(
                    f"scores are for a judge that returns an enum; '{name}' returns {returns}",
                    kw.name.span,
                )
                ok = False
            else:
                given = self.scores(kw.value, sig.outputs[0][1])
                ok = ok and given is not None
                scores = given or {}
        if not ok:
            return None
        if returns == "enum" and not scores:
            members = sig.outputs[0][1].members  # type: ignore[union-attr]
            steps = max(len(members) - 1, 1)
            scores = {m: 1.0 - i / steps for i, m in enumerate(members)}
        return JudgeMetric(function=name, binds=binds, returns=returns, scores=scores)  # type: ignore[arg-type]

    def scores(self, expr: ast.Expr, t: Type) -> dict[str, float] | None:
        assert isinstance(t, EnumT)
        if not isinstance(expr, ast.DictExpr):
            self.error(
                "scores is {member: score, ...}",
                expr.span,
                hint="scores = {" + ", ".join(f"{m}: 1" for m in t.members[:2]) + "}",
                kind="type",
            )
            return None
        out: dict[str, float] = {}
        ok = True
        for key, value in zip(expr.keys, expr.values, strict=True):
            number = _number(value)
            if key.name not in t.members:
                self.error(
                    f"'{key.name}' is not a member of {t}",
                    key.span,
                    hint=did_you_mean(key.name, t.members) or "members: " + ", ".join(t.members),
                    kind="unknown-name",
                )
                ok = False
            elif key.name in out:
                self.error(f"'{key.name}' is given twice", key.span)
                ok = False
            elif number is None or not 0 <= number <= 1:
                self.error("a score is a number from 0 to 1", value.span, kind="type")
                ok = False
            else:
                out[key.name] = number
        missing = [m for m in t.members if m not in out]
        if ok and missing:
            self.error(
                f"scores gives no score for {', '.join(repr(m) for m in missing)}",
                expr.span,
                hint="give every member of the enum a score",
            )
            ok = False
        return out if ok else None

    # -- extern metrics

    def extern(
        self, name: str, span: ast.Span, expr: ast.Expr, t: Type, what: str
    ) -> Metric | None:
        from llmflow.compiler.check import ExternSym, FnSym

        sym = self.checker.checked.symbols[self.checker.module].get(name)
        if isinstance(sym, FnSym):
            self.error(
                f"'{name}' is a semantic function: a metric that asks a model is a judge",
                span,
                hint=f"write judge({name})",
            )
            return None
        if not isinstance(sym, ExternSym):
            if name not in self.checker.broken:
                externs = [
                    n
                    for n, s in self.checker.checked.symbols[self.checker.module].items()
                    if isinstance(s, ExternSym)
                ]
                self.error(
                    f"unknown metric '{name}'",
                    span,
                    hint=did_you_mean(name, [*METRICS, *externs]) or _METRIC_HINT,
                    kind="unknown-name",
                )
            return None
        if isinstance(expr, ast.Call):
            self.error(
                f"extern metric '{name}' takes no options",
                expr.span,
                hint=f"write {name}; it is called with (output, expected)",
            )
            return None
        sig = self.checker._signature(sym)
        ok = len(sig.params) == 2 and all(_accepts(t, pt) for _, pt, _ in sig.params)
        if not ok:
            shown = ", ".join(f"{n}: {pt}" for n, pt, _ in sig.params)
            self.error(
                f"extern metric '{name}' takes ({shown}); a metric of {what} takes "
                f"(output: {t}, expected: {t})",
                span,
                hint=f"declare extern fn {name}(output: {t}, expected: {t}) -> float",
                kind="type",
            )
            return None
        if len(sig.outputs) != 1 or sig.outputs[0][1] not in (FLOAT, INT, BOOL):
            shown = ", ".join(str(ot) for _, ot in sig.outputs)
            self.error(
                f"extern metric '{name}' returns {shown}: a metric returns a float (0 to 1) "
                "or a bool",
                span,
                hint="declare it -> float",
                kind="type",
            )
            return None
        return ExternMetric(function=name, target=sym.decl.target)


def default_metric(t: Type) -> Metric:
    """What scores a record field nobody chose a metric for: its type's natural one."""
    if t in (INT, FLOAT):
        return NumericMetric()
    if isinstance(t, ListT):
        return F1Metric()
    if isinstance(t, RecordT):
        return FieldsMetric(fields={n: default_metric(ft) for n, ft in t.fields})
    return ExactMetric()


def _holds_text(t: Type) -> bool:
    return t == STR or isinstance(t, EnumT) or (isinstance(t, ListT) and _holds_text(t.item))


def _accepts(value: Type, param: Type) -> bool:
    """A parameter of type `param` takes a value of type `value` (an enum is text)."""
    return assignable(value, param)


def _suggest(t: Type) -> str:
    if isinstance(t, RecordT):
        return "score a record with fields, or fields(name = metric) per field"
    if isinstance(t, ListT):
        return "score a list with f1 (order free) or exact"
    if t in (INT, FLOAT):
        return "score a number with numeric(tolerance = ...) or exact"
    return "score it with exact" + (", contains or f1" if t == STR else "")


def _number(expr: ast.Expr) -> float | None:
    """A number written as a constant (`1`, `0.5`, `-2`), or None."""
    if isinstance(expr, ast.Const) and isinstance(expr.value, int | float):
        if isinstance(expr.value, bool):
            return None
        value = float(expr.value)
    elif (
        isinstance(expr, ast.UnaryOp)
        and expr.op == "-"
        and isinstance(expr.operand, ast.Const)
        and isinstance(expr.operand.value, int | float)
        and not isinstance(expr.operand.value, bool)
    ):
        value = -float(expr.operand.value)
    else:
        return None
    return value if math.isfinite(value) else None
