"""Values known before running: inputs given to `plan`, constants, and the builtins
computed from them. They tell map sizes and prompt text (so prefixes) exactly."""

from __future__ import annotations

from typing import Any

from llmflow.compiler.ir import Plan
from llmflow.compiler.optimizer.prompts import DEFAULT_MAP_ITEMS
from llmflow.stdlib.builtins import BuiltinError, evaluate

RULE = "known values"


def evaluate_known(plan: Plan, inputs: dict[str, Any] | None = None) -> Plan:
    inputs = dict(inputs or {})
    for spec in plan.inputs:
        if spec.name not in inputs and not spec.required:
            inputs[spec.name] = spec.default
    for node in plan.graph.nodes:
        if node.kind == "input" and node.value in inputs:
            plan.known[node.id] = inputs[node.value]
        elif node.kind == "const":
            plan.known[node.id] = node.value
        elif node.kind == "builtin" and all(a in plan.known for a in node.args):
            assert node.op is not None
            try:
                plan.known[node.id] = evaluate(
                    node.op, node.value, [plan.known[a] for a in node.args]
                )
            except (BuiltinError, TypeError, KeyError):
                continue
        elif node.kind == "map" and node.args[0] in plan.known:
            items = plan.known[node.args[0]]
            plan.explain(RULE, f"{node.label} runs {len(items)} items", node.id)
    unknown = [n for n in plan.graph.nodes if n.kind == "map" and n.args[0] not in plan.known]
    for node in unknown:
        plan.explain(
            RULE,
            f"{node.label}: list not known before running; estimates assume "
            f"{DEFAULT_MAP_ITEMS} items (give `llmflow plan` the inputs for exact figures)",
            node.id,
        )
    return plan
