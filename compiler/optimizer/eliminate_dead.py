"""Nodes whose value reaches no output are removed (left over after merging calls)."""

from __future__ import annotations

import networkx as nx

from llmflow.compiler.ir import Graph, Plan

RULE = "dead-node elimination"


def eliminate_dead(plan: Plan) -> Plan:
    _sweep(plan, plan.graph)
    return plan


def _sweep(plan: Plan, graph: Graph) -> None:
    live: set[str] = set()
    for out in graph.outputs.values():
        live |= nx.ancestors(graph.g, out) | {out}
    for node in graph.nodes:
        if node.id not in live and node.kind != "input":
            graph.remove(node.id)
            if node.kind in ("llm", "extern"):
                plan.explain(RULE, f"{node.label} ({node.id}) feeds no output: removed", node.id)
    for node in graph.nodes:
        for body in node.bodies.values():
            _sweep(plan, body)
