"""The same call on the same inputs runs once: identical deterministic nodes merge."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

from llmflow.compiler.ir import Graph, IRNode, LLMNode, Plan
from llmflow.compiler.optimizer.working import own

RULE = "common-call elimination"


def _deterministic(node: IRNode) -> bool:
    if isinstance(node, LLMNode):
        # A temperature an input gives may be above 0: such a call may sample, so it stays.
        return all(
            not o.temperature and "temperature" not in o.from_inputs for o in node.call.outputs
        )
    # Externs may have side effects or read the world; inputs are bound per graph.
    return node.kind in ("const", "builtin")


def _key(node: IRNode) -> str:
    """Everything that makes a node's value (its kind's own fields, its type and
    arguments), not what names or places it."""
    data = node.model_dump(mode="json", exclude={"id", "label", "span", "var"})
    return json.dumps(data, sort_keys=True, default=repr)


def eliminate_common_calls(plan: Plan) -> Plan:
    """Each graph in creation order (topological: arguments are merged first), the
    subgraphs of a node before the node; with a stack of graphs, not recursion."""
    plan = own(plan)
    stack: list[tuple[Graph, Iterator[IRNode], dict[str, IRNode]]] = [
        (plan.graph, iter(plan.graph.nodes), {})
    ]
    entered: set[str] = set()
    while stack:
        graph, nodes, seen = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            continue
        if node.bodies and node.id not in entered:
            entered.add(node.id)
            stack[-1] = (graph, itertools.chain([node], nodes), seen)
            stack.extend((b, iter(b.nodes), {}) for b in reversed(node.bodies.values()))
            continue
        _merge(plan, graph, node, seen)
    return plan


def _merge(plan: Plan, graph: Graph, node: IRNode, seen: dict[str, IRNode]) -> None:
    if not _deterministic(node):
        return
    key = _key(node)
    first = seen.get(key)
    if first is None:
        seen[key] = node
        return
    graph.rewire(node.id, first.id)
    if node.kind == "llm":
        plan.explain(
            RULE,
            f"{node.label} ({node.id}) is the same call on the same inputs as "
            f"{first.id}: it runs once",
            node.id,
        )
