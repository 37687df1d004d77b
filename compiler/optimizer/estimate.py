"""Tokens, dollars and seconds per call and for the program, before anything runs.

Members of a prefix group after the first read the shared prefix from a reused KV state
(embedded models) or a provider's prompt cache, so their prefix is counted as cached:
as much of it as the model's backend reuses (`prefix_reuse.cached_tokens_expected`:
OpenAI, for one, caches nothing below 1,024 tokens), the same rule the runtime follows."""

from __future__ import annotations

from llmflow.compiler import prefix_reuse
from llmflow.compiler.ir import Estimate, Plan
from llmflow.compiler.optimizer import costs
from llmflow.compiler.optimizer.prompts import DEFAULT_INPUT_MAX_TOKENS, Shapes
from llmflow.compiler.optimizer.working import own

RULE = "estimates"


def estimate(plan: Plan) -> Plan:
    plan = own(plan, RULE)
    shapes = Shapes(plan)
    total = Estimate(instances=0)
    plan.estimates = {}
    groups = {call: group for group in plan.groups for call in group.calls}
    for node in plan.calls():
        shape = shapes[node.id]
        group = groups.get(node.id)
        est = Estimate(
            instances=shape.instances,
            input_tokens=shape.instances * shape.input_tokens,
            output_tokens=shape.instances * shape.output_tokens,
        )
        for name, weight in _models_of(plan, node.id, node.call.model):
            model = plan.models[name]
            cached = 0.0
            if group is not None and group.model == name:
                # Every instance but the group's first reads the shared prefix again.
                share = max(0.0, 1.0 - 1.0 / group.instances)
                shared = min(group.prefix_tokens, shape.input_tokens)
                cached = prefix_reuse.cached_tokens_expected(model, shared) * share
            cost = costs.call_cost(model, shape, cached)
            est.cached_tokens += weight * cost.cached_tokens
            est.dollars += weight * cost.dollars
            est.seconds += weight * cost.seconds
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
    labels = {node.id: node.label for node in plan.calls()}
    for node_id, options in shapes.assumed.items():
        plan.explain(
            RULE,
            f"{labels[node_id]}: "
            f"{', '.join(options)} not known before running; estimates assume "
            f"{DEFAULT_INPUT_MAX_TOKENS} tokens (give `llmflow plan` the input for exact figures)",
            node_id,
        )
    for group in plan.groups:
        model = plan.models[group.model]
        least = prefix_reuse.min_tokens(model)
        if not prefix_reuse.reuses(model, group.prefix_tokens):
            plan.explain(
                RULE,
                f"{group.id} on {group.model}: ~{group.prefix_tokens} shared tokens are "
                + (
                    f"below the {least:,} its backend reuses from"
                    if least is not None
                    else "not reused by its backend"
                )
                + ": counted as fresh prompt tokens",
            )
    return plan


def _models_of(plan: Plan, node_id: str, own_model: str) -> list[tuple[str, float]]:
    """The models a call runs on and the share of its instances each is expected to
    take: a routed call's by the measured shares of its values, the rest on its own."""
    route = plan.routes.get(node_id)
    if route is None:
        return [(own_model, 1.0)]
    weights: dict[str, float] = {}
    for value, name in route.models.items():
        weights[name] = weights.get(name, 0.0) + route.shares.get(value, 0.0)
    rest = max(0.0, 1.0 - sum(weights.values()))
    weights[own_model] = weights.get(own_model, 0.0) + rest
    return [(name, w) for name, w in weights.items() if w > 0]
