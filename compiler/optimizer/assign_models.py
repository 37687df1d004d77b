"""Every call gets a model: one that meets its pin, its `@needs`, its context length and
its output type, chosen for the whole program under the objective and the budget.

Without a budget, calls are independent and each takes its best qualifying model. With a
budget, choosing is a multiple-choice knapsack (one option per call, total dollars at
most the budget): solved exactly by dynamic programming over Pareto frontiers for small
programs, and greedily by best value per dollar for large ones, with the LP bound that
says how far from the optimum the greedy answer can be. When the budget cannot buy every
need, the plan says which calls fall short and by how much instead of downgrading quietly.

Ties never move a call: a model exactly as cheap and as good as the call's declared
model (its pin, else the program's default) does not displace it, whatever its speed
under the cost and quality objectives; and a template written as a chat turn
(`costs.written_as_chat_turn`) is not moved to a completion-only model unless no chat
model meets its needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx

from llmflow.compiler import prices
from llmflow.compiler.ir import LLMNode, Plan
from llmflow.compiler.models import ModelSpec
from llmflow.compiler.optimizer import costs
from llmflow.compiler.optimizer.prompts import Shape, Shapes
from llmflow.compiler.optimizer.working import own

RULE = "model assignment"
EXACT_LIMIT = 5_000
"""Largest Pareto frontier the exact solver keeps before switching to the greedy one."""


@dataclass(frozen=True)
class Option:
    model: str
    dollars: float
    seconds: float
    quality: float
    qualifies: bool
    declared: bool = False
    """The call's declared model (its pin, else the program's default): ties keep it."""
    fits: bool = True
    """The model serves the template's form (`costs.fits_form`), or is the declared one."""


def _options(plan: Plan, node: LLMNode, shape: Shape) -> list[Option]:
    out = []
    for name, model in plan.models.items():
        cost = costs.call_cost(model, shape)
        qualifies = _qualifies(model, node, shape)
        declared = name == node.call.model
        fits = declared or costs.fits_form(model, node.call)
        quality = costs.quality(model, node)
        out.append(Option(name, cost.dollars, cost.seconds, quality, qualifies, declared, fits))
    return out


def _qualifies(model: ModelSpec, node: LLMNode, shape: Shape) -> bool:
    if costs.shortfall(model, node) or not costs.fits_context(model, shape):
        return False
    return not costs.needs_schema(node) or model.supports_schema is not False


def _value(option: Option, objective: str, weight: float) -> float:
    if objective == "quality":
        return weight * option.quality
    if objective == "latency":
        return -weight * option.seconds
    return -option.dollars


_DECIDING = {"cost": 3, "quality": 3, "latency": 4}
"""How many leading keys of `_rank` say what the objective cares about (before the
declared model's precedence): options equal on them are as good a choice."""


def _rank(option: Option, objective: str) -> tuple[float, ...]:
    """A call's own preference, ties included. First what the objective wants (the
    cheapest, the best, the fastest); among equals, a model that fits the template's
    form; then the objective's other concerns; then the declared model; then speed.
    Qualities are compared to 9 decimals, so sums that differ only by rounding tie."""
    quality = round(option.quality, 9)
    if objective == "quality":
        return (quality, option.fits, -option.dollars, option.declared, -option.seconds)
    if objective == "latency":
        return (-option.seconds, option.fits, -option.dollars, quality, option.declared)
    return (-option.dollars, option.fits, quality, option.declared, -option.seconds)


def assign_models(
    plan: Plan,
    objective: str | None = None,
    budget: float | None = None,
    exact_limit: int = EXACT_LIMIT,
) -> Plan:
    plan = own(plan, RULE)
    plan.fallbacks = {}
    for node in plan.calls():  # what a previous run assigned: decided again
        if node.call is not None and not node.call.pinned:
            node.call.model = plan.default_model
    plan.objective = objective or plan.objective  # type: ignore[assignment]
    plan.budget = budget if budget is not None else plan.budget
    shapes = Shapes(plan)
    calls = plan.calls()
    if plan.budget is not None:  # any model may get a call: each needs its price
        prices.check_priced(plan.models.values())
    for name, model in plan.models.items():
        if not prices.priced(model):
            plan.explain(
                RULE,
                f"{name} has no known price: it counts as free here; declare "
                "price_in/price_out (USD per 1M tokens) to weigh it properly",
            )
    choices: list[list[Option]] = []
    for node in calls:
        options = _options(plan, node, shapes[node.id])
        if node.call.pinned:
            options = [o for o in options if o.model == node.call.model]
            if not options[0].qualifies:
                plan.explain(
                    RULE,
                    f"{node.label} is pinned to {node.call.model}, which does not "
                    "meet its needs or context; the pin is kept",
                    node.id,
                )
        else:
            qualifying = [o for o in options if o.qualifies]
            if qualifying:
                options = qualifying
            else:
                best = max(options, key=lambda o: o.quality)
                gap = costs.shortfall(plan.models[best.model], node)
                plan.explain(
                    RULE,
                    f"{node.label}: no model meets {_needs(node)}; the closest is "
                    f"{best.model} ({_gaps(gap)})",
                    node.id,
                )
                options = [best]
        choices.append(options)

    picked = [
        max(range(len(opts)), key=lambda i, opts=opts: _rank(opts[i], plan.objective))
        for opts in choices
    ]
    spend = sum(choices[c][i].dollars for c, i in enumerate(picked))
    if plan.budget is not None and spend > plan.budget:
        cheapest = sum(min(o.dollars for o in opts) for opts in choices)
        if cheapest <= plan.budget:
            values = [
                [_value(o, plan.objective, w) for o in opts]
                for opts, w in zip(choices, _importance(plan, calls), strict=True)
            ]
            picked, how = solve_budget(choices, values, plan.budget, exact_limit)
            plan.explain(
                RULE, f"best {plan.objective} within the budget of ${plan.budget:.4f} ({how})"
            )
        else:
            _over_budget(plan, calls, choices, picked, cheapest)

    for node, opts, i in zip(calls, choices, picked, strict=True):
        chosen = opts[i]
        before = node.call.model
        node.call.model = chosen.model
        reason = _reason(plan, node, opts, chosen) + _kept(plan.objective, opts, chosen)
        moved = "" if before == chosen.model else f" (declared default: {before})"
        others = sorted(
            (o for o in opts if o.qualifies and o is not chosen),
            key=lambda o: _rank(o, plan.objective),
            reverse=True,
        )
        if others and not node.call.pinned:
            plan.fallbacks[node.id] = [o.model for o in others]
            reason += f"; falls back to {', '.join(plan.fallbacks[node.id])}"
        plan.explain(RULE, f"{node.label} → {chosen.model}{moved}: {reason}", node.id)
    return plan


def _importance(plan: Plan, calls: Sequence[LLMNode]) -> list[float]:
    """A call feeding many others matters more: one plus the calls downstream of it.
    The calls below each node are a bit set built from its successors' (latest first):
    one pass, not a search per call."""
    graph = plan.graph.g
    llm = [n for n in graph if graph.nodes[n]["node"].kind == "llm"]
    bit = {n: 1 << i for i, n in enumerate(llm)}
    below: dict[str, int] = {}
    for n in reversed(list(nx.topological_sort(graph))):
        mask = 0
        for s in graph.successors(n):
            mask |= below[s] | bit.get(s, 0)
        below[n] = mask
    return [1.0 + below[n.id].bit_count() if n.id in below else 1.0 for n in calls]


def _needs(node: LLMNode) -> str:
    return ", ".join(f"{s} >= {q:g}" for s, q in node.call.needs.items()) or "its context length"


def _gaps(gap: dict[str, float]) -> str:
    return ", ".join(f"{s} short by {d:.2f}" for s, d in gap.items()) or "too small a context"


def _reason(plan: Plan, node: LLMNode, options: list[Option], chosen: Option) -> str:
    n = len(options)
    scope = (
        f"{n} qualifying model{'s' if n != 1 else ''}" if chosen.qualifies else "no model qualifies"
    )
    if plan.objective == "quality":
        what = f"best quality ({chosen.quality:.2f}) of {scope}"
    elif plan.objective == "latency":
        what = f"fastest (~{chosen.seconds:.1f}s) of {scope}"
    else:
        what = f"cheapest (${chosen.dollars:.6f}) of {scope}"
    if node.call.needs:
        what += f" for {_needs(node)}"
    return what


def _kept(objective: str, options: list[Option], chosen: Option) -> str:
    """What the tie rules did: a model as good by the objective but not fitting the
    template's form lost to one that fits; the declared model kept a tie; or the call
    landed on a model that does not fit its form, which no measurement vouches for."""
    rank = _rank(chosen, objective)
    out = ""
    if not chosen.fits:
        out += "; written as a chat turn, on a completion-only model: measure it (llmflow tune)"
    unfit = [o.model for o in options if not o.fits and _rank(o, objective)[:1] == rank[:1]]
    if chosen.fits and unfit:
        out += (
            f"; written as a chat turn: not moved to completion-only {', '.join(unfit)} "
            "without measurements"
        )
    keys = _DECIDING[objective]
    tied = [
        o.model for o in options if o is not chosen and _rank(o, objective)[:keys] == rank[:keys]
    ]
    if chosen.declared and tied:
        what = "is" if len(tied) == 1 else "are"
        out += f"; {', '.join(tied)} {what} as good a choice: the declared model stays"
    return out


def _over_budget(
    plan: Plan,
    calls: Sequence[LLMNode],
    choices: list[list[Option]],
    picked: list[int],
    cheapest: float,
) -> None:
    """The budget cannot buy every need: keep the needs, and say what it would take."""
    assert plan.budget is not None
    plan.explain(
        RULE,
        f"the budget of ${plan.budget:.4f} cannot buy every need: the cheapest "
        f"qualifying plan costs ${cheapest:.4f} (short by ${cheapest - plan.budget:.4f})",
    )
    for c, node in enumerate(calls):
        cheapest_option = min(choices[c], key=lambda o: o.dollars)
        picked[c] = choices[c].index(cheapest_option)
        if cheapest_option.dollars > 0:
            plan.explain(
                RULE,
                f"{node.label} needs at least ${cheapest_option.dollars:.4f} "
                f"({cheapest_option.model})",
                node.id,
            )


# ---- the multiple-choice knapsack ------------------------------------------------------


def solve_budget(
    choices: list[list[Option]],
    values: list[list[float]],
    budget: float,
    exact_limit: int = EXACT_LIMIT,
) -> tuple[list[int], str]:
    """Pick one option per call maximizing total value with total dollars ≤ budget."""
    exact = _exact(choices, values, budget, exact_limit)
    if exact is not None:
        return exact, "exact"
    picked, bound = _greedy(choices, values, budget)
    got = sum(values[c][i] for c, i in enumerate(picked))
    return picked, f"greedy; the optimum is at most {bound - got:.4g} better"


def _exact(
    choices: list[list[Option]], values: list[list[float]], budget: float, limit: int
) -> list[int] | None:
    # Frontier of (dollars, value, picks) with no state both cheaper and better.
    frontier: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]
    for c, opts in enumerate(choices):
        grown = [
            (d + o.dollars, v + values[c][i], picks + (i,))
            for d, v, picks in frontier
            for i, o in enumerate(opts)
            if d + o.dollars <= budget + 1e-12
        ]
        grown.sort(key=lambda s: (s[0], -s[1]))
        frontier = []
        best = float("-inf")
        for state in grown:
            if state[1] > best:
                frontier.append(state)
                best = state[1]
        if len(frontier) > limit:
            return None
    return list(max(frontier, key=lambda s: s[1])[2])


def _greedy(
    choices: list[list[Option]], values: list[list[float]], budget: float
) -> tuple[list[int], float]:
    """Start from each call's cheapest option and buy the upgrades with the most value per
    dollar along each call's upper convex hull. Returns the picks and the LP bound."""
    picked = [
        min(range(len(o)), key=lambda i, o=o, c=c: (o[i].dollars, -values[c][i]))
        for c, o in enumerate(choices)
    ]
    left = budget - sum(choices[c][i].dollars for c, i in enumerate(picked))
    steps: list[tuple[float, int, int, float, float]] = []  # (ratio, call, to, Δ$, Δvalue)
    for c, opts in enumerate(choices):
        for frm, to in _hull_steps(opts, values[c], picked[c]):
            dd = opts[to].dollars - opts[frm].dollars
            dv = values[c][to] - values[c][frm]
            steps.append((dv / dd if dd > 0 else float("inf"), c, to, dd, dv))
    steps.sort(key=lambda s: -s[0])
    total = sum(values[c][i] for c, i in enumerate(picked))
    bound: float | None = None
    blocked: set[int] = set()
    for ratio, c, to, dd, dv in steps:
        if c in blocked:
            continue
        if dd <= left + 1e-12:
            picked[c] = to
            left -= dd
            total += dv
        else:
            if bound is None:  # the LP optimum takes this step fractionally, then stops
                bound = total + ratio * left
            blocked.add(c)  # later hull steps of this call build on this one
    return picked, total if bound is None else bound


def _hull_steps(opts: list[Option], values: list[float], start: int) -> list[tuple[int, int]]:
    """Upgrade steps of one call along the upper convex hull of (dollars, value)."""
    points = sorted(
        (
            i
            for i in range(len(opts))
            if opts[i].dollars >= opts[start].dollars and values[i] > values[start]
        ),
        key=lambda i: (opts[i].dollars, -values[i]),
    )
    hull = [start]
    for i in points:
        if values[i] <= values[hull[-1]]:
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            slope_ab = _slope(opts, values, a, b)
            slope_bi = _slope(opts, values, b, i)
            if slope_bi >= slope_ab:
                hull.pop()
            else:
                break
        hull.append(i)
    return list(zip(hull, hull[1:], strict=False))


def _slope(opts: list[Option], values: list[float], a: int, b: int) -> float:
    dd = opts[b].dollars - opts[a].dollars
    return (values[b] - values[a]) / dd if dd > 0 else float("inf")
