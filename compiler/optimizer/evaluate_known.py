"""Values known before running: inputs given to `plan`, constants, and the builtins
computed from them. They tell map sizes and prompt text (so prefixes) exactly.

A builtin that would make a value past the evaluator's limits (`range(10000000000)`) is a
compile error at its position when every run computes it (so would fail there)."""

from __future__ import annotations

from typing import Any

from llmflow.compiler.ast import Span
from llmflow.compiler.diagnostics import Diagnostic, Kind
from llmflow.compiler.ir import BuiltinNode, ConstNode, InputNode, LoopNode, MapNode, Param, Plan
from llmflow.compiler.modules import UnreadableSource, read_source
from llmflow.compiler.optimizer.prompts import DEFAULT_MAP_ITEMS, DEFAULT_REPEATS
from llmflow.compiler.optimizer.working import own
from llmflow.errors import CompileError
from llmflow.stdlib.builtins import (
    SHORT_CIRCUIT,
    BuiltinError,
    EmptyListError,
    LimitError,
    decides,
    evaluate,
)

RULE = "known values"


def evaluate_known(plan: Plan, inputs: dict[str, Any] | None = None) -> Plan:
    plan = own(plan, RULE)
    plan.known = {}
    inputs = dict(inputs or {})
    surely = _surely_run(plan)
    for spec in plan.inputs:
        if spec.name not in inputs and not spec.required:
            inputs[spec.name] = spec.default
    for node in plan.graph.walk():  # ids are unique in a plan: bodies' constants too
        if isinstance(node, InputNode):
            if isinstance(node.binding, Param) and node.binding.name in inputs:
                plan.known[node.id] = inputs[node.binding.name]
        elif isinstance(node, ConstNode):
            plan.known[node.id] = node.value
        elif (
            isinstance(node, BuiltinNode)
            and node.op in SHORT_CIRCUIT
            and node.args[0] in plan.known
            and decides(node.op, plan.known[node.args[0]])
        ):  # `nick ?? ask(text)` with a nick given: known, whatever the right side is
            plan.known[node.id] = plan.known[node.args[0]]
        elif isinstance(node, BuiltinNode) and all(a in plan.known for a in node.args):
            try:
                plan.known[node.id] = evaluate(
                    node.op, node.static, [plan.known[a] for a in node.args], node.bound
                )
            except (LimitError, EmptyListError) as err:
                if node.id not in surely:
                    continue
                kind: Kind = "limit" if isinstance(err, LimitError) else "run"
                diag = Diagnostic(kind=kind, message=str(err), span=node.span)
                raise CompileError([diag], _source_of(node.span)) from None
            except (BuiltinError, TypeError, KeyError):
                continue
        elif isinstance(node, MapNode) and node.args[0] in plan.known:
            items = plan.known[node.args[0]]
            plan.explain(RULE, f"{node.label} runs {len(items)} items", node.id)
        elif isinstance(node, LoopNode) and node.count_arg and node.args[0] in plan.known:
            count = plan.known[node.args[0]]
            plan.explain(RULE, f"{node.label} runs at most {count} times", node.id)
    for graph in plan.graph.graphs():
        for node in graph.nodes:
            if node.kind != "map" or node.args[0] in plan.known:
                continue
            length = plan.known_length(node.args[0], graph)
            if length is not None:
                source = graph.node(node.args[0]).label
                plan.explain(
                    RULE, f"{node.label} runs {length} items, one per result of {source}", node.id
                )
            elif graph is plan.graph:  # a nested map's list may be an outer known list's item
                plan.explain(
                    RULE,
                    f"{node.label}: list not known before running; estimates assume "
                    f"{DEFAULT_MAP_ITEMS} items (give `llmflow plan` the inputs for exact "
                    "figures)",
                    node.id,
                )
    for node in plan.graph.nodes:
        if isinstance(node, LoopNode) and node.count_arg and node.args[0] not in plan.known:
            plan.explain(
                RULE,
                f"{node.label}: count not known before running; estimates assume "
                f"{DEFAULT_REPEATS} iterations (give `llmflow plan` the inputs for exact figures)",
                node.id,
            )
    return plan


def _surely_run(plan: Plan) -> set[str]:
    """Top-level nodes every run computes: what the outputs read, but not the right side
    of `and`, `or` and `??` (short-circuited) nor what only a map, branch or loop passes on."""
    surely = set(plan.graph.outputs.values())
    for node in reversed(plan.graph.nodes):
        if node.id in surely:
            conditional = bool(node.bodies) or (
                isinstance(node, BuiltinNode) and node.op in SHORT_CIRCUIT
            )
            surely.update(node.args[:1] if conditional else node.args)
    return surely


def _source_of(span: Span | None) -> dict[str, str]:
    """The file an error points into, to show its line (the plan keeps no sources)."""
    try:
        return {span.file: read_source(span.file)} if span else {}
    except UnreadableSource:
        return {}
