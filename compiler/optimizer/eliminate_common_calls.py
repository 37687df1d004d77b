"""The same call on the same inputs runs once: identical deterministic nodes merge."""

from __future__ import annotations

import json
from typing import Any

from llmflow.compiler.ir import Graph, IRNode, Plan

RULE = "common-call elimination"


def _deterministic(node: IRNode) -> bool:
    if node.kind == "llm":
        assert node.call is not None
        return all(not o.temperature for o in node.call.outputs)
    # Externs may have side effects or read the world; inputs are bound per graph.
    return node.kind in ("const", "builtin")


def _key(node: IRNode) -> str:
    data: dict[str, Any] = {
        "kind": node.kind,
        "op": node.op,
        "value": node.value,
        "args": node.args,
        "type": node.type.model_dump(mode="json"),
        "call": node.call.model_dump(mode="json") if node.call else None,
    }
    return json.dumps(data, sort_keys=True, default=repr)


def eliminate_common_calls(plan: Plan) -> Plan:
    _merge(plan, plan.graph)
    return plan


def _merge(plan: Plan, graph: Graph) -> None:
    seen: dict[str, IRNode] = {}
    for node in graph.nodes:  # creation order is topological: arguments are merged first
        for body in node.bodies.values():
            _merge(plan, body)
        if not _deterministic(node):
            continue
        key = _key(node)
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        graph.rewire(node.id, first.id)
        if node.kind == "llm":
            plan.explain(
                RULE,
                f"{node.label} ({node.id}) is the same call on the same inputs as "
                f"{first.id}: it runs once",
                node.id,
            )
