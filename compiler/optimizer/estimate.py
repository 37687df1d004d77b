"""Tokens, dollars and seconds per call and for the program, before anything runs.

Members of a prefix group after the first read the shared prefix from a reused KV state
(embedded models) or a provider's prompt cache, so their prefix is counted as cached."""

from __future__ import annotations

from llmflow.compiler.ir import Estimate, Plan
from llmflow.compiler.optimizer import costs
from llmflow.compiler.optimizer.prompts import Shapes

RULE = "estimates"


def estimate(plan: Plan) -> Plan:
    shapes = Shapes(plan)
    total = Estimate(instances=0)
    plan.estimates = {}
    groups = {call: group for group in plan.groups for call in group.calls}
    for node in plan.calls():
        shape = shapes[node.id]
        model = plan.models[node.call.model]
        group = groups.get(node.id)
        cached = 0.0
        if group is not None:
            # Every instance but the group's first reads the shared prefix again.
            share = max(0.0, 1.0 - 1.0 / group.instances)
            cached = min(group.prefix_tokens, shape.input_tokens) * share
        cost = costs.call_cost(model, shape, cached)
        est = Estimate(
            instances=shape.instances,
            input_tokens=shape.instances * shape.input_tokens,
            cached_tokens=cost.cached_tokens,
            output_tokens=shape.instances * shape.output_tokens,
            dollars=cost.dollars,
            seconds=cost.seconds,
        )
        plan.estimates[node.id] = est
        total.instances += est.instances
        total.add(est)
    plan.total = total
    plan.explain(
        RULE,
        f"{total.instances:g} calls, ~{total.input_tokens:.0f} prompt tokens "
        f"(~{total.cached_tokens:.0f} from reused prefixes), ~{total.output_tokens:.0f} "
        f"output tokens, ${total.dollars:.4f}, ~{total.seconds:.1f}s of model time",
    )
    return plan
