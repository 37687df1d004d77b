"""Checked AST → IR graph for one flow.

Flows called by the flow are inlined, so the optimizer and the runtime see the whole
program as one graph. Names are lowered on first use (statement order does not matter),
so a value nothing reads never becomes a node.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from llmflow.compiler import ast
from llmflow.compiler.check import (
    SAMPLE_TEMPERATURE,
    Checked,
    ExternSym,
    FlowSym,
    FnSym,
    TypeSym,
    narrowing,
)
from llmflow.compiler.evalspec import EvalSpec, FieldsMetric, JudgeMetric, Metric
from llmflow.compiler.heap import gc_paused
from llmflow.compiler.ir import (
    BranchNode,
    BuiltinNode,
    ConstNode,
    ExternNode,
    Generate,
    Graph,
    InputNode,
    InputSpec,
    Item,
    LLMCall,
    LLMNode,
    LoopNode,
    MapNode,
    OutputNode,
    OutputSpec,
    Param,
    Plan,
    Port,
    Read,
    Ref,
    Segment,
    System,
    Text,
)
from llmflow.compiler.ir import Carried as CarriedBinding
from llmflow.compiler.types import (
    ANY,
    CHOICES_INTRO,
    INT,
    ListT,
    OptionalT,
    RecordT,
    Type,
    describe_choices,
    format_instructions,
    optional,
    unify,
)
from llmflow.stdlib.builtins import Builtin, to_text


class _Env:
    """The names visible in one scope, lowered into one graph on demand."""

    def __init__(
        self,
        graph: Graph,
        parent: _Env | None = None,
        first_port: int = 0,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.graph = graph
        self.parent = parent
        self.thunks: dict[str, Callable[[], str]] = {}
        self.reads: dict[str, list[ast.Expr]] = {}
        """The expressions a thunk lowers in this scope: the names they read are lowered
        first, with an explicit stack, so a chain of any length is no deep recursion."""
        self.memo: dict[str, str] = {}
        self.branches: dict[int, _Once] = {}
        """id(if statement) → its branch node, lowered once for all the names it exports."""
        self.first_port = first_port
        self.captures: list[str] = []
        """Producers in the parent graph this subgraph reads, in port order."""
        self._capture_nodes: dict[tuple[str, bool], str] = {}
        self.narrowed: set[str] = set()
        """Variables this branch reads only when they are not none (`if x != none`): their
        values come in with their present types (T of T?)."""
        assert parent is not None or new_id is not None, "a root scope needs an id source"
        self.new_id: Callable[[], str] = new_id or parent.new_id  # type: ignore[union-attr]

    def get(self, name: str) -> str:
        """The node holding a name's value in this scope's graph: lowered on first use,
        captured from enclosing graphs through input nodes, then remembered here."""
        if name in self.memo:
            return self.memo[name]
        passed: list[_Env] = []
        env = self.holder(name, passed)
        assert env is not None, f"checker let an unknown name through: {name}"
        if name not in env.memo:
            env.force(name)
        value = env.memo[name]
        for inner in reversed(passed):
            assert inner.parent is not None
            if inner.parent.graph is not inner.graph:
                value = inner.capture(value, present=name in inner.narrowed)
            inner.memo[name] = value
        return value

    def holder(self, name: str, passed: list[_Env] | None = None) -> _Env | None:
        """The scope that has a name's value, or the thunk that lowers it (None: the name
        is not a variable, like the enum in `Verdict.yes`)."""
        env: _Env | None = self
        while env is not None and name not in env.memo and name not in env.thunks:
            if passed is not None:
                passed.append(env)
            env = env.parent
        return env

    def force(self, name: str) -> None:
        """Run a name's thunk, the thunks of the names it reads first (depth first, with
        an explicit stack)."""
        stack = [(self, name, iter(self.dependencies(name)))]
        started = {(id(self), name)}
        while stack:
            env, current, deps = stack[-1]
            for dep_env, dep in deps:
                if dep in dep_env.memo or (id(dep_env), dep) in started:
                    continue
                started.add((id(dep_env), dep))
                stack.append((dep_env, dep, iter(dep_env.dependencies(dep))))
                break
            else:
                stack.pop()
                if current not in env.memo:
                    env.memo[current] = env.thunks[current]()

    def dependencies(self, name: str) -> list[tuple[_Env, str]]:
        """The names a thunk's expressions read, each with the scope whose thunk lowers it."""
        out: list[tuple[_Env, str]] = []
        for expr in self.reads.get(name, []):
            for name in ast.free_names(expr):
                env = self.holder(name.id)
                if env is not None and name.id not in env.memo:
                    out.append((env, name.id))
        return out

    def capture(self, outer: str, present: bool = False) -> str:
        """An input node of this graph for a producer of the parent's (`present`: typed as
        the value an optional has, in a branch that runs only when it has one)."""
        key = (outer, present)
        if key not in self._capture_nodes:
            assert self.parent is not None
            producer = self.parent.graph.node(outer)
            port = self.first_port + len(self.captures)
            self.captures.append(outer)
            t = producer.type
            node = self.graph.add(
                InputNode(
                    id=self.new_id(),
                    label=producer.var or producer.label,
                    type=t.item if present and isinstance(t, OptionalT) else t,
                    var=producer.var,
                    binding=Port(index=port),
                )
            )
            self._capture_nodes[key] = node.id
        return self._capture_nodes[key]


def _chained(stmt: ast.If) -> ast.If | None:
    """The if that is all of this if's else branch (`else if`), if any."""
    if len(stmt.orelse) == 1 and isinstance(stmt.orelse[0], ast.If):
        return stmt.orelse[0]
    return None


class Lowerer:
    def __init__(self, checked: Checked) -> None:
        self.checked = checked
        self._ids = itertools.count(1)
        self._inlined: dict[int, _Env] = {}

    def new_id(self) -> str:
        return f"n{next(self._ids)}"

    def type_of(self, expr: ast.Expr) -> Type:
        return self.checked.type_of(expr)

    def add(self, env: _Env, **fields: Any) -> str:
        kind = _KINDS[fields.pop("kind")]
        return env.graph.add(kind(id=self.new_id(), **fields)).id

    def const(self, env: _Env, value: Any, type_: Type, span: ast.Span | None = None) -> str:
        return self.add(
            env,
            kind="const",
            label=_short(value)
            if isinstance(value, str)
            else "none"
            if value is None
            else repr(value),
            type=type_,
            value=value,
            span=span,
        )

    def field(self, env: _Env, source: str, name: str, type_: Type, var: str | None = None) -> str:
        return self.add(
            env,
            kind="builtin",
            op="field",
            label=f".{name}",
            type=type_,
            args=[source],
            field=name,
            var=var,
        )

    # -- flows

    def lower_flow(self, name: str) -> Plan:
        sym = self.checked.flow(name)
        assert sym is not None
        graph = Graph()
        env = _Env(graph, new_id=self.new_id)
        inputs: list[InputSpec] = []
        for (pname, ptype, default), param in zip(sym.sig.params, sym.decl.params, strict=True):
            node = graph.add(
                InputNode(
                    id=self.new_id(),
                    label=pname,
                    type=ptype,
                    var=pname,
                    binding=Param(name=pname),
                    span=param.name.span,
                )
            )
            env.memo[pname] = node.id
            inputs.append(
                InputSpec(
                    name=pname,
                    type=ptype,
                    required=default is None,
                    default=_const_value(default, self.checked) if default is not None else None,
                )
            )
        self.collect(sym.decl.body, env)
        for oname, otype in sym.sig.outputs:
            out = self.add(
                env,
                kind="output",
                label=oname,
                type=otype,
                args=[env.get(oname)],
                name=oname,
                var=oname,
            )
            graph.outputs[oname] = out
        return Plan(
            flow=name,
            file=self.checked.program.main,
            base_dir=str(self.checked.program.base_dir),
            inputs=inputs,
            outputs=dict(sym.sig.outputs),
            graph=graph,
            models=self.checked.models,
            default_model=self.checked.default_model,
            perf={o.name.name: o.perf.name for o in sym.decl.outputs if o.perf is not None},  # type: ignore[misc]
            evals={n: self.lower_eval(e) for n, e in self.checked.evals.items() if e.flow == name},
        )

    def lower_eval(self, spec: EvalSpec) -> EvalSpec:
        """The eval with each judge's call in it, so the plan alone can run it."""
        return spec.model_copy(
            update={"metrics": {k: self.lower_metric(m) for k, m in spec.metrics.items()}}
        )

    def lower_metric(self, metric: Metric) -> Metric:
        if isinstance(metric, JudgeMetric):
            fn = self.checked.symbols[self.checked.program.main][metric.function]
            assert isinstance(fn, FnSym), f"the checker let judge {metric.function} through"
            return metric.model_copy(update={"call": self.llm_call(fn)})
        if isinstance(metric, FieldsMetric):
            fields = {k: self.lower_metric(m) for k, m in metric.fields.items()}
            return metric.model_copy(update={"fields": fields})
        return metric

    def collect(
        self, stmts: list[ast.Stmt], env: _Env, nexts: dict[str, ast.Assign] | None = None
    ) -> None:
        for stmt in stmts:
            if isinstance(stmt, ast.Assign):
                self.collect_assign(stmt, env, nexts)
            elif isinstance(stmt, ast.If):
                self.collect_if(stmt, env)
            else:
                self.collect_loop(stmt, env)

    def exports(self, stmt: ast.If) -> list[str]:
        """The names an if assigns in every branch (the checker found them)."""
        return self.checked.exports(stmt)

    def collect_assign(
        self, stmt: ast.Assign, env: _Env, nexts: dict[str, ast.Assign] | None
    ) -> None:
        if nexts is not None and any(t.name in nexts for t in stmt.targets):
            return  # a loop-carried variable's next value: the loop lowers it
        for t in stmt.targets:
            env.reads[t.name] = [stmt.value]
        if len(stmt.targets) == 1:
            target = stmt.targets[0].name
            env.thunks[target] = lambda: self.expr(stmt.value, env, var=target)
            return
        value_type = self.type_of(stmt.value)
        assert isinstance(value_type, RecordT)
        if self.is_flow_call(stmt.value):
            call = stmt.value
            assert isinstance(call, ast.Call)
            for target, (fname, _) in zip(stmt.targets, value_type.fields, strict=True):
                env.thunks[target.name] = lambda fname=fname: self.flow_env(call, env).get(fname)
            return
        whole = _Once(lambda: self.expr(stmt.value, env))
        for target, (fname, ftype) in zip(stmt.targets, value_type.fields, strict=True):
            env.thunks[target.name] = lambda fname=fname, ftype=ftype, target=target: self.field(
                env, whole(), fname, ftype, target.name
            )

    def collect_if(self, stmt: ast.If, env: _Env) -> None:
        exports = self.exports(stmt)
        branch = _Once(lambda: self.lower_if(stmt, env))
        env.branches[id(stmt)] = branch
        for name in exports:
            env.reads[name] = [stmt.cond]
            env.thunks[name] = lambda name=name: self.field(
                env, branch(), name, _record_field(env.graph.node(branch()).type, name), name
            )

    def lower_if(self, stmt: ast.If, env: _Env) -> str:
        """A branch node. Down an else-if chain, each if's condition and then branch are
        lowered and its else branch opened; back up, each else branch reads the branch
        node of the if inside it: a chain of any length, in the order recursion takes."""
        links: list[tuple[ast.If, _Env, str, _Env, _Env]] = []
        while True:
            cond = self.expr(stmt.cond, env)
            then_env = _Env(Graph(), env, first_port=1)
            tests = narrowing(stmt.cond)
            then_env.narrowed.update(name for name, in_then in tests if in_then)
            self.collect(stmt.then, then_env)
            then_env.graph.outputs = {name: then_env.get(name) for name in self.exports(stmt)}
            else_env = _Env(Graph(), env, first_port=1 + len(then_env.captures))
            else_env.narrowed.update(name for name, in_then in tests if not in_then)
            self.collect(stmt.orelse, else_env)
            links.append((stmt, env, cond, then_env, else_env))
            link = _chained(stmt)
            if link is None:
                break
            stmt, env = link, else_env
        node_id = ""
        for stmt, env, cond, then_env, else_env in reversed(links):
            if link is not None:
                else_env.branches[id(link)].value = node_id
            exports = self.exports(stmt)
            absent = self.checked.if_absent.get(id(stmt), [])
            else_env.graph.outputs = {
                name: self.none(else_env, then_env, name) if name in absent else else_env.get(name)
                for name in exports
            }
            types: dict[str, Type] = {}
            for sub in (then_env, else_env):
                for name, out in sub.graph.outputs.items():
                    t = sub.graph.node(out).type
                    types[name] = unify(types.get(name, t), t) or t
            record = RecordT(name="if", fields=tuple((n, types[n]) for n in exports))
            node_id = self.add(
                env,
                kind="branch",
                label="if",
                type=record,
                args=[cond, *then_env.captures, *else_env.captures],
                then=then_env.graph,
                orelse=else_env.graph,
                span=stmt.span,
            )
            link = stmt
        return node_id

    def none(self, else_env: _Env, then_env: _Env, name: str) -> str:
        """The value of a name an if without else did not assign: none, of the optional
        type of what the then branch assigns."""
        then_type = then_env.graph.node(then_env.graph.outputs[name]).type
        return self.const(else_env, None, optional(then_type))

    def collect_loop(self, stmt: ast.Loop, env: _Env) -> None:
        loop = _Once(lambda: self.lower_loop(stmt, env))
        reads = [b.value for b in stmt.carried]
        first = stmt.iterable if stmt.iterable is not None else self._count_arg(stmt)
        for binding in stmt.carried:
            name = binding.name.name
            env.reads[name] = [first, *reads] if first is not None else reads
            env.thunks[name] = lambda name=name: self.field(
                env, loop(), name, _record_field(env.graph.node(loop()).type, name), name
            )

    def _count_arg(self, stmt: ast.Loop) -> ast.Name | None:
        """The int value a `repeat at most n` reads its count from when the loop starts
        (None: a `for` loop, or a count the program fixes)."""
        if isinstance(stmt.max_iters, ast.Name) and id(stmt) not in self.checked.loop_counts:
            return stmt.max_iters
        return None

    def lower_loop(self, stmt: ast.Loop, env: _Env) -> str:
        args: list[str] = []
        count = self._count_arg(stmt)
        if stmt.iterable is not None:
            args.append(self.expr(stmt.iterable, env))
        elif count is not None:
            args.append(self.expr(count, env))
        carried = [b.name.name for b in stmt.carried]
        types: dict[str, Type] = {}
        for b in stmt.carried:
            args.append(self.expr(b.value, env, var=b.name.name))
            types[b.name.name] = env.graph.node(args[-1]).type
        graph = Graph()
        body = _Env(graph, env, first_port=len(args))
        if stmt.var is not None:
            iter_type = env.graph.node(args[0]).type
            item_type = getattr(iter_type, "item", ANY)
            body.memo[stmt.var.name] = self.add(
                body,
                kind="input",
                label=stmt.var.name,
                type=item_type,
                var=stmt.var.name,
                binding=Item(),
            )
        for name in carried:
            body.memo[name] = self.add(
                body,
                kind="input",
                label=name,
                type=types[name],
                var=name,
                binding=CarriedBinding(name=name),
            )
        nexts = self.checked.next_values(stmt)
        self.collect(stmt.body, body, nexts)
        next_ids: dict[str, str] = {}
        for name in carried:
            assign = nexts.get(name)
            if assign is None:
                next_ids[name] = body.memo[name]
            elif len(assign.targets) == 1:
                next_ids[name] = self.expr(assign.value, body, var=name)
            else:
                value_type = self.type_of(assign.value)
                assert isinstance(value_type, RecordT)
                i = [t.name for t in assign.targets].index(name)
                fname, ftype = value_type.fields[i]
                next_ids[name] = self.field(body, self.expr(assign.value, body), fname, ftype, name)
        graph.outputs = {name: next_ids[name] for name in carried}
        if stmt.until is not None:
            after = _Env(graph, body)
            after.memo.update(next_ids)
            graph.outputs["until"] = self.expr(stmt.until, after)
        record = RecordT(name="loop", fields=tuple((n, types[n]) for n in carried))
        bound = stmt.max_iters
        if stmt.var is not None:
            label = f"for {stmt.var.name}"
        elif isinstance(bound, ast.Name):
            label = f"repeat ≤{bound.id}"
        else:
            assert bound is not None, "a loop without a list has a count"
            label = f"repeat ≤{bound.value}"
        return self.add(
            env,
            kind="loop",
            label=label,
            type=record,
            args=args + body.captures,
            body=graph,
            loop_max=self.checked.loop_counts.get(id(stmt)),
            count_arg=count is not None,
            carried=carried,
            span=stmt.span,
        )

    # -- expressions

    def expr(self, e: ast.Expr, env: _Env, var: str | None = None) -> str:
        node_id = self._binops(e, env) if isinstance(e, ast.BinOp) else self._expr(e, env)
        node = env.graph.node(node_id)
        if var is not None and node.var is None and node.kind != "input":
            node.var = var
            for _, _, data in env.graph.g.out_edges(node_id, data=True):
                data["var"] = var
        return node_id

    def _expr(self, e: ast.Expr, env: _Env) -> str:
        t = self.type_of(e)
        match e:
            case ast.Const(value=value):
                return self.const(env, value, t, e.span)
            case ast.Name(id=name):
                is_const, value = self.checked.const_value(e)
                if is_const:
                    return self.const(env, value, t, e.span)
                return env.get(name)
            case ast.ListExpr(items=items):
                args = [self.expr(i, env) for i in items]
                return self.add(
                    env, kind="builtin", op="list", label="[…]", type=t, args=args, span=e.span
                )
            case ast.Attr():
                member = self.checked.enum_member(e)
                if member is not None:
                    return self.const(env, member, t, e.span)
                if self.is_flow_call(e.value):
                    assert isinstance(e.value, ast.Call)
                    return self.flow_env(e.value, env).get(e.attr.name)
                return self.field(env, self.expr(e.value, env), e.attr.name, t)
            case ast.Index(value=value, index=index):
                args = [self.expr(value, env), self.expr(index, env)]
                return self.add(
                    env, kind="builtin", op="index", label="[i]", type=t, args=args, span=e.span
                )
            case ast.UnaryOp(op=op, operand=operand):
                name = "neg" if op == "-" else "not"
                return self.add(
                    env,
                    kind="builtin",
                    op=name,
                    label=op,
                    type=t,
                    args=[self.expr(operand, env)],
                    span=e.span,
                )
            case ast.MapExpr():
                return self.lower_map(e, env)
            case ast.SampleExpr():
                return self.lower_sample(e, env)
            case ast.Call():
                return self.call(e, env)
        raise AssertionError(f"unhandled expression {e!r}")

    def _binops(self, e: ast.BinOp, env: _Env) -> str:
        """A chain of binary operators, bottom up with no recursion along the chain."""
        chain = [e]
        while isinstance(chain[-1].left, ast.BinOp):
            chain.append(chain[-1].left)  # type: ignore[arg-type]
        left = self.expr(chain[-1].left, env)
        for op in reversed(chain):
            args = [left, self.expr(op.right, env)]
            left = self.add(
                env,
                kind="builtin",
                op=op.op,
                label=op.op,
                type=self.type_of(op),
                args=args,
                span=op.span,
            )
        return left

    def lower_map(self, e: ast.MapExpr, env: _Env) -> str:
        iterable = self.expr(e.iterable, env)
        graph = Graph()
        body = _Env(graph, env, first_port=1)
        item_type = getattr(env.graph.node(iterable).type, "item", ANY)
        body.memo[e.var.name] = self.add(
            body, kind="input", label=e.var.name, type=item_type, var=e.var.name, binding=Item()
        )
        if e.where is not None:
            graph.outputs["where"] = self.expr(e.where, body)
        graph.outputs["value"] = self.expr(e.body, body)
        source = env.graph.node(iterable)
        label = f"map {e.var.name} in {source.var or source.label}"
        return self.add(
            env,
            kind="map",
            label=label,
            type=self.type_of(e),
            args=[iterable, *body.captures],
            body=graph,
            span=e.span,
        )

    def lower_sample(self, e: ast.SampleExpr, env: _Env) -> str:
        """`sample n: f(x)` is a map over `range(n)` whose body is the call, sampled: the
        optimizer counts n instances sharing one prefix, and each instance's place (the
        map and its index) gives it its own seed, the same again on a rerun."""
        count = self.checked.sample_counts[id(e)]
        indices = self.const(env, list(range(count)), ListT(item=INT), e.count.span)
        graph = Graph()
        body = _Env(graph, env, first_port=1)
        self.add(body, kind="input", label="sample", type=INT, binding=Item())
        value = self.expr(e.body, body)
        call = graph.node(value)
        assert isinstance(call, LLMNode), "the checker lets only fn calls be sampled"
        outputs = [
            o
            if o.temperature is not None or "temperature" in o.from_inputs
            else o.model_copy(update={"temperature": SAMPLE_TEMPERATURE})
            for o in call.call.outputs
        ]
        call.call = call.call.model_copy(update={"outputs": outputs})
        graph.outputs["value"] = value
        return self.add(
            env,
            kind="map",
            label=f"sample {count}: {call.label}",
            type=self.type_of(e),
            args=[indices, *body.captures],
            body=graph,
            span=e.span,
        )

    def _bound(self, e: ast.Call, env: _Env, defaults: list[Any], types: list[Type]) -> list[str]:
        args = []
        bound = self.checked.call(e).args
        for arg, default, t in zip(bound, defaults, types, strict=True):
            if arg is not None:
                args.append(self.expr(arg, env))
            else:
                args.append(self.const(env, default, t))
        return args

    def call(self, e: ast.Call, env: _Env) -> str:
        facts = self.checked.call(e)
        callee = facts.callee
        t = self.type_of(e)
        name = e.func.name
        if isinstance(callee, Builtin):
            defaults = [None if p.required else p.default for p in callee.params]
            types = [p.type or ANY for p in callee.params]
            args = self._bound(e, env, defaults, types)
            extra = facts.extra
            args += [self.expr(kw.value, env) for kw in extra]
            return self.add(
                env,
                kind="builtin",
                op=name,
                label=f"{name}()",
                type=t,
                args=args,
                span=e.span,
                names=[kw.name.name for kw in extra] or None,
            )
        if isinstance(callee, TypeSym):
            assert isinstance(t, RecordT)
            args = self._bound(e, env, [None] * len(t.fields), [ft for _, ft in t.fields])
            return self.add(
                env,
                kind="builtin",
                op="record",
                label=name,
                type=t,
                args=args,
                span=e.span,
                names=[n for n, _ in t.fields],
            )
        if isinstance(callee, FlowSym):
            return self.inline(callee, e, env)
        params = callee.sig.params
        defaults = [_const_value(d, self.checked) if d is not None else None for _, _, d in params]
        args = self._bound(e, env, defaults, [pt for _, pt, _ in params])
        if isinstance(callee, ExternSym):
            return self.add(
                env,
                kind="extern",
                label=name,
                type=t,
                args=args,
                span=e.span,
                extern=callee.decl.target,
                extern_single=callee.decl.single,
                outputs=[name for name, _ in callee.sig.outputs],
            )
        assert isinstance(callee, FnSym)
        return self.add(
            env, kind="llm", label=name, type=t, args=args, span=e.span, call=self.llm_call(callee)
        )

    def flow_env(self, e: ast.Call, env: _Env) -> _Env:
        """The inlined body of a flow call, lowered output by output as they are read."""
        if id(e) not in self._inlined:
            flow = self.checked.call(e).callee
            assert isinstance(flow, FlowSym)
            params = flow.sig.params
            defaults = [
                _const_value(d, self.checked) if d is not None else None for _, _, d in params
            ]
            args = self._bound(e, env, defaults, [pt for _, pt, _ in params])
            inner = _Env(env.graph, new_id=self.new_id)
            for (pname, _, _), arg in zip(params, args, strict=True):
                inner.memo[pname] = arg
            self.collect(flow.decl.body, inner)
            self._inlined[id(e)] = inner
        return self._inlined[id(e)]

    def is_flow_call(self, e: ast.Expr) -> bool:
        return isinstance(self.checked.callee(e), FlowSym)

    def inline(self, flow: FlowSym, e: ast.Call, env: _Env) -> str:
        inner = self.flow_env(e, env)
        outputs = [inner.get(name) for name, _ in flow.sig.outputs]
        if len(outputs) == 1:
            return outputs[0]
        result = flow.sig.result(flow.decl.name.name)
        return self.add(
            env,
            kind="builtin",
            op="record",
            label=flow.decl.name.name,
            type=result,
            args=outputs,
            names=[n for n, _ in flow.sig.outputs],
        )

    def llm_call(self, fn: FnSym) -> LLMCall:
        outputs = dict(fn.sig.outputs)
        params = {n for n, _, _ in fn.sig.params}
        segments: list[Segment] = []
        specs: list[OutputSpec] = []
        template = fn.decl.template
        system = [*template.system, None] if template.system is not None else []
        for part in [*system, *template.parts]:
            if part is None:
                segments.append(System())
                continue
            if isinstance(part, ast.TemplateText):
                segments.append(Text(text=part.text))
                continue
            head, path = part.path[0].name, [p.name for p in part.path[1:]]
            is_const, value = self.checked.const_value(part)
            if is_const and head not in params:
                segments.append(Text(text=to_text(value)))
            elif head in params:
                segments.append(Read(input=head, path=path))
            elif any(s.name == head for s in specs):
                segments.append(Ref(output=head, path=path))
            else:
                inputs = {  # options an input gives: names, not constants
                    kw.name.name: kw.value.id
                    for kw in part.options
                    if isinstance(kw.value, ast.Name) and not self.checked.const_value(kw.value)[0]
                }
                options = {
                    kw.name.name: _const_value(kw.value, self.checked)
                    for kw in part.options
                    if kw.name.name not in inputs
                }
                from_inputs = {k: v for k, v in inputs.items() if k != "choices"}
                stop = options.get("stop")
                if options.get("format") and "choices" in inputs:  # listed at run time
                    segments.append(Text(text=CHOICES_INTRO))
                    segments.append(Read(input=inputs["choices"]))
                    segments.append(Text(text="\n"))
                elif options.get("format") and isinstance(options.get("choices"), list):
                    listed = describe_choices(tuple(options["choices"]))
                    segments.append(Text(text=CHOICES_INTRO + listed + "\n"))
                elif options.get("format"):
                    segments.append(Text(text=format_instructions(outputs[head])))
                specs.append(
                    OutputSpec(
                        name=head,
                        type=outputs[head],
                        max_tokens=options.get("max_tokens"),
                        stop=[stop] if isinstance(stop, str) else stop,
                        temperature=options.get("temperature"),
                        seed=options.get("seed"),
                        from_inputs=from_inputs,
                        choices=inputs.get("choices") or options.get("choices"),
                    )
                )
                segments.append(Generate(output=head))
        return LLMCall(
            function=fn.decl.name.name,
            params=[n for n, _, _ in fn.sig.params],
            outputs=specs,
            segments=segments,
            model=fn.pin or self.checked.default_model,
            pinned=fn.pin is not None,
            needs=fn.needs,
        )


_KINDS: dict[str, type[Any]] = {
    cls.model_fields["kind"].default: cls
    for cls in (
        InputNode,
        ConstNode,
        LLMNode,
        BuiltinNode,
        ExternNode,
        MapNode,
        BranchNode,
        LoopNode,
        OutputNode,
    )
}


class _Once:
    """A memoized thunk: a branch or loop is lowered once, however many names it exports."""

    def __init__(self, fn: Callable[[], str]) -> None:
        self.fn = fn
        self.value: str | None = None

    def __call__(self) -> str:
        if self.value is None:
            self.value = self.fn()
        return self.value


def _record_field(t: Type, name: str) -> Type:
    return t.field(name) or ANY if isinstance(t, RecordT) else ANY


def _const_value(expr: ast.Expr, checked: Checked) -> Any:
    match expr:
        case ast.Const(value=value):
            return value
        case ast.ListExpr(items=items):
            return [_const_value(i, checked) for i in items]
        case ast.UnaryOp(op="-", operand=operand):
            return -_const_value(operand, checked)
        case ast.Attr() if checked.enum_member(expr) is not None:
            return checked.enum_member(expr)
        case ast.Name() if checked.const_value(expr)[0]:
            return checked.const_value(expr)[1]
    raise AssertionError(f"not a constant: {expr!r}")


def _short(text: str, limit: int = 24) -> str:
    flat = text.replace("\n", "⏎")
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


@gc_paused()
def lower(checked: Checked, flow: str) -> Plan:
    return Lowerer(checked).lower_flow(flow)
