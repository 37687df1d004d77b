"""Nodes whose value reaches no output are removed (left over after merging calls)."""

from __future__ import annotations

from llmflow.compiler.ir import Graph, Plan
from llmflow.compiler.optimizer.working import own

RULE = "dead-node elimination"


def eliminate_dead(plan: Plan) -> Plan:
    plan = own(plan)
    stack = [plan.graph]
    while stack:  # a graph, then the subgraphs of the nodes it keeps (no recursion)
        graph = stack.pop()
        _sweep(plan, graph)
        stack.extend(
            body for node in reversed(graph.nodes) for body in reversed(node.bodies.values())
        )
    return plan


def _sweep(plan: Plan, graph: Graph) -> None:
    live = set(graph.outputs.values())
    stack = list(live)
    while stack:  # everything an output reads, once each
        for source in graph.g.predecessors(stack.pop()):
            if source not in live:
                live.add(source)
                stack.append(source)
    for node in graph.nodes:
        if node.id not in live and node.kind != "input":
            graph.remove(node.id)
            if node.kind in ("llm", "extern"):
                plan.explain(RULE, f"{node.label} ({node.id}) feeds no output: removed", node.id)
