"""Pinning semantic functions to models: the one way an eval (and a tuner) runs a plan
with another model assignment. Every call node of a pinned function gets the model and
`pinned`; the groups and fallbacks of those calls are dropped, since they were decided
for other models (`llmflow.pin_functions` decides them again with the optimizer, which
the runtime never loads)."""

from __future__ import annotations

from collections.abc import Mapping

from llmflow.compiler.ir import Plan
from llmflow.errors import LLMFlowError


def functions(plan: Plan) -> list[str]:
    """The semantic functions the plan calls, in the order first called."""
    return list(dict.fromkeys(node.call.function for node in plan.calls()))


def unpinned(plan: Plan, model: str) -> dict[str, str]:
    """The assignment that puts every call the program does not pin on `model`."""
    pinned = {n.call.function for n in plan.calls() if n.call.pinned}
    return {name: model for name in functions(plan) if name not in pinned}


def check_assignment(plan: Plan, assignment: Mapping[str, str], also: tuple[str, ...] = ()) -> None:
    """LLMFlowError naming the first function the plan does not call (nor is one of
    `also`, its judges) or model it does not declare."""
    known = [*functions(plan), *also]
    for name, model in assignment.items():
        if name not in known:
            raise LLMFlowError(
                f"the assignment names '{name}', which flow '{plan.flow}' never calls "
                f"(functions: {', '.join(known) or 'none'})"
            )
        if model not in plan.models:
            raise LLMFlowError(
                f"the assignment puts '{name}' on model '{model}', which the program does "
                f"not declare (models: {', '.join(plan.models)})"
            )


def with_pins(plan: Plan, assignment: Mapping[str, str]) -> Plan:
    """A copy of the plan with every call of each function in `assignment` on its model
    and pinned there, nothing else decided again (`llmflow.pin_functions` also runs the
    optimizer around the pins). The plan given is not changed."""
    check_assignment(plan, assignment)
    pinned = plan.copy()
    for node in pinned.calls():
        model = assignment.get(node.call.function)
        if model is not None:
            node.call.model, node.call.pinned = model, True
    changed = {n.id for n in pinned.calls() if n.call.function in assignment}
    pinned.groups = [g for g in pinned.groups if not changed & set(g.calls)]
    pinned.fallbacks = {k: v for k, v in pinned.fallbacks.items() if k not in changed}
    pinned.routes = {k: v for k, v in pinned.routes.items() if k not in changed}
    return pinned
