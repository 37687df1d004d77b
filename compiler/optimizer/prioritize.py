"""Scheduling priorities: the critical path first, `@latency` outputs before
`@throughput` ones (Parrot's performance criteria, propagated back to every producer).

A node's priority is the estimated time from its start to the end of the run along the
longest path through it, so whatever the slowest chain waits on runs first. The plan also
gets its critical path and an estimated makespan: the longer of that path and the work
queued on the busiest serial model (one whose backend runs its calls in turn, as the
embedded engine's one worker per model does: `Capabilities.concurrent` is False)."""

from __future__ import annotations

import networkx as nx

from llmflow.compiler.ir import Graph, IRNode, LLMNode, LoopNode, Plan
from llmflow.compiler.optimizer.prompts import DEFAULT_MAP_ITEMS, DEFAULT_REPEATS
from llmflow.compiler.optimizer.working import own

RULE = "scheduling priorities"
LATENCY_BOOST = 1e6
"""Added to every producer of a @latency output (subtracted for @throughput): the goal
outranks any difference in path length."""


def prioritize(plan: Plan) -> Plan:
    plan = own(plan, RULE)
    plan.priorities = {}
    durations: dict[str, float] = {}
    _durations(plan, plan.graph, durations)
    remaining = _remaining(plan.graph, durations)
    boost = _perf_boost(plan)
    for node_id, value in remaining.items():
        plan.priorities[node_id] = round(value + boost.get(node_id, 0.0), 3)
    _inner_priorities(plan, plan.graph, remaining, durations, boost)
    plan.critical_path = critical_path(plan.graph, remaining)
    path_seconds = sum(durations[n] for n in plan.critical_path)
    busiest = _busiest_serial_model(plan)
    plan.makespan = max(path_seconds, busiest)
    names = " → ".join(plan.graph.node(n).label for n in plan.critical_path if durations[n] > 0)
    plan.explain(RULE, f"critical path ~{path_seconds:.1f}s: {names or '(no calls)'}")
    if busiest > path_seconds:
        plan.explain(
            RULE,
            f"the busiest serial model (one call at a time) has ~{busiest:.1f}s of calls queued: "
            f"estimated makespan ~{plan.makespan:.1f}s",
        )
    for output, goal in plan.perf.items():
        plan.explain(
            RULE,
            f"output {output} is @{goal}: its producers run "
            f"{'first' if goal == 'latency' else 'after latency-bound work'}",
        )
    return plan


def _durations(plan: Plan, top: Graph, out: dict[str, float]) -> float:
    """Estimated seconds per node; returns the graph's longest path. Subgraphs first,
    from the innermost out, with no recursion."""
    longest: dict[int, float] = {}
    serial: dict[int, bool] = {}
    """Graph → do its instances queue on one serial model (a call on one, inside)?"""
    for graph in reversed(top.graphs()):
        serial[id(graph)] = False
        for node in graph.nodes:
            if isinstance(node, LLMNode):
                est = plan.estimates.get(node.id)
                out[node.id] = est.seconds / max(est.instances, 1.0) if est else 0.0
                serial[id(graph)] |= not plan.models[node.call.model].capabilities.concurrent
            elif node.bodies:
                inner = {key: longest[id(body)] for key, body in node.bodies.items()}
                serial[id(graph)] |= any(serial[id(b)] for b in node.bodies.values())
                if node.kind == "branch":
                    out[node.id] = max(inner.values())
                else:
                    body = node.bodies["body"]
                    count = _iterations(plan, node, graph)
                    parallel = node.kind == "map" and not serial[id(body)]
                    out[node.id] = inner["body"] * (1 if parallel else count)
            else:
                out[node.id] = 0.0
        longest[id(graph)] = max(_remaining(graph, out).values(), default=0.0)
    return longest[id(top)]


def _iterations(plan: Plan, node: IRNode, graph: Graph) -> float:
    """How many times a map or loop runs its body: its list's length or its count when
    known (a fixed bound, a value known at plan time), else the estimates' defaults."""
    if isinstance(node, LoopNode) and node.loop_max is not None:
        return float(node.loop_max)
    known = plan.known.get(node.args[0])
    if isinstance(node, LoopNode) and node.count_arg:
        if isinstance(known, int) and not isinstance(known, bool):
            return float(max(known, 0))
        return float(DEFAULT_REPEATS)
    length = plan.known_length(node.args[0], graph)
    return float(length) if length is not None else float(DEFAULT_MAP_ITEMS)


def _remaining(graph: Graph, durations: dict[str, float]) -> dict[str, float]:
    """For each node: its duration plus the longest path after it."""
    remaining: dict[str, float] = {}
    for node_id in reversed(list(nx.topological_sort(graph.g))):
        after = max((remaining[s] for s in graph.g.successors(node_id)), default=0.0)
        remaining[node_id] = durations.get(node_id, 0.0) + after
    return remaining


def _inner_priorities(
    plan: Plan,
    top: Graph,
    remaining: dict[str, float],
    durations: dict[str, float],
    boost: dict[str, float],
) -> None:
    """Priorities inside subgraphs: the time left after the subgraph's node, plus the
    path inside. Each subgraph before those inside it, with a stack, not recursion."""

    def bodies(graph: Graph, remaining: dict[str, float]) -> list[tuple[Graph, IRNode, dict]]:
        return [(b, n, remaining) for n in graph.nodes for b in n.bodies.values()]

    stack = bodies(top, remaining)[::-1]
    while stack:
        body, node, outer = stack.pop()
        inner = _remaining(body, durations)
        after = outer[node.id] - durations[node.id]
        for node_id, value in inner.items():
            plan.priorities[node_id] = round(value + after + boost.get(node.id, 0.0), 3)
        stack.extend(bodies(body, {k: v + after for k, v in inner.items()})[::-1])


def _perf_boost(plan: Plan) -> dict[str, float]:
    boost: dict[str, float] = {}
    for goal in ("throughput", "latency"):  # latency last: it wins where both reach
        sign = 1.0 if goal == "latency" else -1.0
        for output, wanted in plan.perf.items():
            if wanted != goal:
                continue
            out_id = plan.graph.outputs[output]
            for node_id in nx.ancestors(plan.graph.g, out_id) | {out_id}:
                boost[node_id] = sign * LATENCY_BOOST
    return boost


def critical_path(graph: Graph, remaining: dict[str, float]) -> list[str]:
    """The path through `graph` that always goes on to the node with the most time left
    (`remaining`); the drawing follows it into subgraphs with the plan's priorities."""
    sources = [n for n in graph.g.nodes if graph.g.in_degree(n) == 0]
    if not sources:
        return []
    path = [max(sources, key=lambda n: remaining[n])]
    while True:
        successors = list(graph.g.successors(path[-1]))
        if not successors:
            return path
        path.append(max(successors, key=lambda n: remaining[n]))


def _busiest_serial_model(plan: Plan) -> float:
    """Seconds of calls queued on the busiest model whose backend runs one at a time."""
    load: dict[str, float] = {}
    for node in plan.calls():
        serial = not plan.models[node.call.model].capabilities.concurrent
        if serial and node.id in plan.estimates:
            load[node.call.model] = load.get(node.call.model, 0.0) + plan.estimates[node.id].seconds
    return max(load.values(), default=0.0)
