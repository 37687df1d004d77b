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

With a profile (`llmflow.compiler.profile`), measured quality replaces declared skills
where it exists: a function measured on some models chooses among those (by their
end-to-end scores), and `min_quality` asks for the cheapest (or, under `latency`, the
fastest) assignment whose estimated program score (`Evidence.estimate`: baseline plus
measured per-function changes) is at least the floor. A budget then buys the best
estimated score. Functions nothing measured are assigned by declared skills as before,
at their cheapest when a floor or a budget is being met, and count at the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import networkx as nx

from llmflow.compiler import prices
from llmflow.compiler.ir import InputNode, LLMNode, Param, Plan, Route
from llmflow.compiler.optimizer import costs
from llmflow.compiler.optimizer.prompts import Shape, Shapes
from llmflow.compiler.optimizer.working import own
from llmflow.compiler.profile import Evidence, Profile, Score, match

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
    """The model serves the template's form (`costs.fits_form`), is the declared one, or
    was measured on this function."""
    usable: bool = True
    """Fits the context and can produce the output type (needs aside)."""
    measured: Score | None = None
    """The profile's end-to-end score with this call's function on this model."""


def _options(plan: Plan, node: LLMNode, shape: Shape, evidence: Evidence | None) -> list[Option]:
    out = []
    fn = node.call.function
    for name, model in plan.models.items():
        cost = costs.call_cost(model, shape)
        dollars, seconds = cost.dollars, cost.seconds
        score = evidence.score_of(fn, name) if evidence is not None else None
        entry = evidence.of(fn, name) if evidence is not None else None
        if entry is not None and entry.per_call.input_tokens > 0:  # measured cost per call
            dollars = shape.instances * entry.per_call.dollars
            seconds = shape.instances * entry.per_call.seconds
        declared = name == node.call.model
        usable = costs.fits_context(model, shape) and (
            not costs.needs_schema(node) or model.supports_schema is not False
        )
        out.append(
            Option(
                model=name,
                dollars=dollars,
                seconds=seconds,
                quality=score.mean if score is not None else costs.quality(model, node),
                qualifies=usable and not costs.shortfall(model, node),
                declared=declared,
                fits=declared or score is not None or costs.fits_form(model, node.call),
                usable=usable,
                measured=score,
            )
        )
    return out


def _measured_candidates(options: list[Option]) -> list[Option]:
    """A measured function chooses among its measured models. A need is met by declared
    skills, or by a measured score at least the low end of the interval of the best
    measured model whose skills meet it (measured as good as what the need asks for)."""
    measured = [o for o in options if o.measured is not None and o.usable]
    meeting = [o.measured for o in measured if o.qualifies and o.measured is not None]
    reference = max(meeting, key=lambda s: s.mean, default=None)
    return [
        o if o.qualifies else replace(o, qualifies=True)
        for o in measured
        if o.qualifies or (reference is not None and o.quality >= reference.low)
    ]


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
    profile: Profile | None = None,
    min_quality: float | None = None,
) -> Plan:
    """`profile`: measurements to assign from (`compiler.profile`); `min_quality`: the
    least estimated end-to-end score the assignment may have (needs a profile)."""
    plan = own(plan, RULE)
    plan.fallbacks = {}
    plan.routes = {}
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
    evidence = match(profile, plan) if profile is not None else None
    for problem in evidence.stale if evidence is not None else ():
        plan.explain(RULE, f"profile: {problem}")
    if min_quality is not None and not (evidence and evidence.baseline and evidence.measured):
        plan.explain(
            RULE,
            f"min_quality {min_quality:g} needs measurements (llmflow tune writes a "
            "profile): assigned by declared skills",
        )
    choices: list[list[Option]] = []
    for node in calls:
        options = _options(plan, node, shapes[node.id], evidence)
        measured = _measured_candidates(options) if not node.call.pinned else []
        if measured:
            options = measured
        elif node.call.pinned:
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
    items = _measured_items(calls, choices)
    routes: dict[str, Route] = {}
    estimated: float | None = None
    if evidence is not None and evidence.baseline is not None and items:
        over = plan.budget is not None and spend > plan.budget
        if min_quality is not None or over:
            routes, estimated = _solve_measured(
                plan, calls, choices, picked, items, evidence, min_quality
            )
    elif plan.budget is not None and spend > plan.budget:
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
        route = routes.get(node.id)
        if route is not None:
            plan.routes[node.id] = route
            reason += "; " + _shown_route(route, chosen.model)
        plan.explain(RULE, f"{node.label} → {chosen.model}{moved}: {reason}", node.id)
    if evidence is not None and evidence.baseline is not None and items:
        _explain_estimate(plan, calls, choices, picked, evidence, min_quality, estimated)
        _explain_categories(plan, calls, choices, picked, evidence)
    return plan


def _shown_route(route: Route, default: str) -> str:
    by_model: dict[str, list[str]] = {}
    for value, name in sorted(route.models.items()):
        by_model.setdefault(name, []).append(value)
    parts = [
        f"{len(values)} value{'s' if len(values) != 1 else ''} → {name} "
        f"({', '.join(values[:3])}{', …' if len(values) > 3 else ''})"
        for name, values in sorted(by_model.items())
    ]
    return f"routes by {route.input}: {'; '.join(parts)}; the rest on {default}"


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
    kind = "measured" if chosen.measured is not None else "qualifying"
    scope = f"{n} {kind} model{'s' if n != 1 else ''}" if chosen.qualifies else "no model qualifies"
    if plan.objective == "quality":
        what = f"best quality ({chosen.quality:.2f}) of {scope}"
    elif plan.objective == "latency":
        what = f"fastest (~{chosen.seconds:.1f}s) of {scope}"
    else:
        what = f"cheapest (${chosen.dollars:.6f}) of {scope}"
    if node.call.needs:
        what += f" for {_needs(node)}"
    evidence = f"score {chosen.measured}" if chosen.measured is not None else "not measured"
    return f"{what} ({evidence})"


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


# ---- from measurements -----------------------------------------------------------------


def _measured_items(calls: Sequence[LLMNode], choices: list[list[Option]]) -> dict[str, list[int]]:
    """Measured functions → their calls (by index): one choice each, since a measurement
    is of every call of the function on one model."""
    items: dict[str, list[int]] = {}
    for c, node in enumerate(calls):
        if choices[c] and all(o.measured is not None for o in choices[c]):
            items.setdefault(node.call.function, []).append(c)
    return items


def _solve_measured(
    plan: Plan,
    calls: Sequence[LLMNode],
    choices: list[list[Option]],
    picked: list[int],
    items: dict[str, list[int]],
    evidence: Evidence,
    min_quality: float | None,
) -> tuple[dict[str, Route], float | None]:
    """Choose a model per measured function: the cheapest (fastest under `latency`)
    reaching `min_quality`, or the best estimated score within the budget. The other
    calls take their cheapest option and the rest of the budget is the functions'.

    A function measured per value of a flow input that its calls take directly chooses
    per value (`_by_value`): the returned routes (call node id → Route) and the estimated
    score of the whole choice (None when nothing was chosen here)."""
    assert evidence.baseline is not None
    measured = {c for cs in items.values() for c in cs}
    for c in range(len(calls)):
        if c not in measured and plan.budget is not None:
            picked[c] = min(
                range(len(choices[c])),
                key=lambda i, c=c: (
                    choices[c][i].dollars,
                    [-k for k in _rank(choices[c][i], "cost")],
                ),
            )
    names: list[str] = []
    models: list[list[str]] = []
    for fn in items:  # the models every call of the function can take, best first
        common = set.intersection(*({o.model for o in choices[c]} for c in items[fn]))
        first = choices[items[fn][0]]
        ordered = sorted(
            (o for o in first if o.model in common),
            key=lambda o: _rank(o, plan.objective),
            reverse=True,
        )
        if ordered:  # else its calls keep their own picks
            names.append(fn)
            models.append([o.model for o in ordered])
    if not names:
        return {}, None

    def total(fn_index: int, model: str, what: str) -> float:
        return sum(
            getattr(next(o for o in choices[c] if o.model == model), what)
            for c in items[names[fn_index]]
        )

    base = evidence.baseline.mean
    # One item per function, or per (function, value) where it routes: the knapsack's.
    owner: list[tuple[int, str | None]] = []
    dollars: list[list[float]] = []
    seconds: list[list[float]] = []
    values: list[list[float]] = []
    splits: dict[int, tuple[dict[str, str], dict[str, float]]] = {}
    for f, (fn, ms) in enumerate(zip(names, models, strict=True)):
        fn_dollars = [total(f, m, "dollars") for m in ms]
        fn_seconds = [total(f, m, "seconds") for m in ms]
        gains = [(evidence.score_of(fn, m) or evidence.baseline).mean - base for m in ms]
        split = _by_value(plan, [calls[c] for c in items[fn]], ms, evidence)
        if split is None:
            owner.append((f, None))
            dollars.append(fn_dollars)
            seconds.append(fn_seconds)
            values.append(gains)
            continue
        params, shares, per_value = split
        splits[f] = (params, shares)
        for value, share in shares.items():
            owner.append((f, value))
            dollars.append([share * d for d in fn_dollars])
            seconds.append([share * t for t in fn_seconds])
            values.append([share * g for g in per_value[value]])
    fixed = sum(choices[c][picked[c]].dollars for c in range(len(calls)) if c not in measured)
    pick: list[int] | None = None
    if min_quality is not None and plan.objective != "quality":
        weights = seconds if plan.objective == "latency" else dollars
        found = solve_floor(weights, values, min_quality - base)
        if found is None:
            best = base + sum(max(v) for v in values)
            plan.explain(
                RULE,
                f"no assignment reaches min_quality {min_quality:g}: the best estimate is "
                f"{best:.3f}; taking the best measured models",
            )
            pick = [
                max(range(len(v)), key=lambda i, v=v, k=k: (v[i], -dollars[k][i]))
                for k, v in enumerate(values)
            ]
        else:
            pick, how = found
            what = "fastest" if plan.objective == "latency" else "cheapest"
            plan.explain(RULE, f"{what} assignment estimated at or above {min_quality:g} ({how})")
    if plan.budget is not None:
        current = pick or [
            _position(models[f], choices[items[names[f]][0]][picked[items[names[f]][0]]].model)
            for f, _ in owner
        ]
        spent = fixed + sum(dollars[k][i] for k, i in enumerate(current))
        if spent > plan.budget + 1e-12:
            if pick is not None and min_quality is not None:
                plan.explain(
                    RULE,
                    f"that assignment costs ${spent:.4f}, over the budget of "
                    f"${plan.budget:.4f}: the budget wins",
                )
            left = plan.budget - fixed
            cheapest = sum(min(d) for d in dollars)
            if cheapest > left + 1e-12:
                plan.explain(
                    RULE,
                    f"the budget of ${plan.budget:.4f} cannot buy the measured functions their "
                    f"cheapest models (${fixed + cheapest:.4f} in all): taking the cheapest",
                )
                pick = [min(range(len(d)), key=lambda i, d=d: d[i]) for d in dollars]
            else:
                opts = [
                    [
                        Option(m, dollars[k][i], seconds[k][i], values[k][i], True)
                        for i, m in enumerate(models[f])
                    ]
                    for k, (f, _) in enumerate(owner)
                ]
                pick, how = solve_budget(opts, values, left)
                plan.explain(
                    RULE,
                    f"best estimated score within the budget of ${plan.budget:.4f} ({how})",
                )
    if pick is None:
        return {}, None
    chosen: dict[int, dict[str | None, str]] = {}
    for k, (f, value) in enumerate(owner):
        chosen.setdefault(f, {})[value] = models[f][pick[k]]
    routes: dict[str, Route] = {}
    for f, fn in enumerate(names):
        per_value = chosen[f]
        model = per_value.get(None)
        others: dict[str, str] = {}
        if f in splits:  # the model most rows take; the others by value
            params, shares = splits[f]
            weight = {m: sum(shares[v] for v, n in per_value.items() if n == m) for m in models[f]}
            model = max(models[f], key=lambda m: (weight[m], -models[f].index(m)))
            others = {v: m for v, m in per_value.items() if v is not None and m != model}
        assert model is not None
        for c in items[fn]:
            picked[c] = next(i for i, o in enumerate(choices[c]) if o.model == model)
            if others:
                routes[calls[c].id] = Route(
                    input=params[calls[c].id],
                    models=others,
                    shares={v: shares[v] for v in others},
                )
    return routes, base + sum(values[k][i] for k, i in enumerate(pick))


def _by_value(
    plan: Plan, calls: Sequence[LLMNode], models: list[str], evidence: Evidence
) -> tuple[dict[str, str], dict[str, float], dict[str, list[float]]] | None:
    """Where every one of `models` was measured per value of one flow input and every
    call takes that input as it is: the parameter carrying it per call id, each value's
    share of the measured rows, and each value's gain over the baseline per model (the
    function's overall gain for a value a model was not measured on). None otherwise."""
    base = evidence.baseline_categories
    assert evidence.baseline is not None
    if base is None or not calls or any(n.call.pinned for n in calls):
        return None
    fn = calls[0].call.function
    scores = [evidence.category_scores(fn, m, base.input) for m in models]
    if any(s is None for s in scores):
        return None
    params: dict[str, str] = {}
    for node in calls:
        param = _param_of(plan, node, base.input)
        if param is None:
            plan.explain(
                RULE,
                f"{node.label}: measured by {base.input}, but it does not take the flow's "
                f"{base.input} as it is: one model for all its calls",
                node.id,
            )
            return None
        params[node.id] = param
    rows = sum(score.n for score in base.scores.values())
    shares = {v: score.n / rows for v, score in sorted(base.scores.items())}
    overall = [
        (evidence.score_of(fn, m) or evidence.baseline).mean - evidence.baseline.mean
        for m in models
    ]
    per_value: dict[str, list[float]] = {}
    for value, baseline in sorted(base.scores.items()):
        gains = []
        for gain, by_value in zip(overall, scores, strict=True):
            measured = by_value.get(value) if by_value is not None else None
            gains.append(gain if measured is None else measured.mean - baseline.mean)
        per_value[value] = gains
    return params, shares, per_value


def _param_of(plan: Plan, node: LLMNode, flow_input: str) -> str | None:
    """The call's parameter that receives the flow's input `flow_input` unchanged (calls
    of the top graph only: a value inside a map or branch is not the row's)."""
    graph = plan.graph
    if node.id not in graph.g:
        return None
    for param, arg in zip(node.call.params, node.args, strict=True):
        source = graph.node(arg)
        if isinstance(source, InputNode) and source.binding == Param(name=flow_input):
            return param
    return None


def _position(models: list[str], model: str) -> int:
    return models.index(model) if model in models else 0


def _explain_estimate(
    plan: Plan,
    calls: Sequence[LLMNode],
    choices: list[list[Option]],
    picked: list[int],
    evidence: Evidence,
    min_quality: float | None,
    estimated: float | None,
) -> None:
    """`estimated`: the solver's own estimate, which counts routed calls per value."""
    assert evidence.baseline is not None
    assignment = {n.call.function: choices[c][picked[c]].model for c, n in enumerate(calls)}
    measured = sorted(fn for fn, m in assignment.items() if evidence.score_of(fn, m) is not None)
    estimate = estimated if estimated is not None else evidence.estimate(assignment)
    assert estimate is not None
    unmeasured = len(assignment) - len(measured)
    rest = (
        f"; {unmeasured} unmeasured function{'s count' if unmeasured != 1 else ' counts'} "
        "at the baseline"
        if unmeasured
        else ""
    )
    floor = f", floor {min_quality:g}" if min_quality is not None else ""
    plan.explain(
        RULE,
        f"estimated score {estimate:.3f}{floor}: the baseline's {evidence.baseline} plus the "
        f"measured changes of {len(measured)} function{'s' if len(measured) != 1 else ''}{rest}",
    )


def _explain_categories(
    plan: Plan,
    calls: Sequence[LLMNode],
    choices: list[list[Option]],
    picked: list[int],
    evidence: Evidence,
) -> None:
    """Where a function's scores per value of an input say another of its measured
    models is better for some values and its calls do not route by it (no floor or
    budget asked for one), say which (Composition of Experts' map)."""
    done: set[str] = set()
    for c, node in enumerate(calls):
        fn = node.call.function
        if fn in done or node.id in plan.routes:
            continue
        done.add(fn)
        chosen = choices[c][picked[c]].model
        per_value: dict[str, tuple[float, str]] = {}
        source: str | None = None
        for option in choices[c]:
            entry = evidence.of(fn, option.model)
            if entry is None or entry.categories is None:
                continue
            source = entry.categories.input
            for value, score in entry.categories.scores.items():
                best = per_value.get(value)
                if (
                    best is None
                    or score.mean > best[0] + 1e-12
                    or (abs(score.mean - best[0]) <= 1e-12 and option.model == chosen)
                ):
                    per_value[value] = (score.mean, option.model)
        better = {v: m for v, (_, m) in sorted(per_value.items()) if m != chosen}
        if source is not None and better:
            routes = ", ".join(f"{v} → {m}" for v, m in better.items())
            plan.explain(
                RULE,
                f"{node.label}: by {source}, measured better elsewhere for {routes} "
                f"(the rest on {chosen}); --min-quality or --budget routes calls by it",
                node.id,
            )


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


def solve_floor(
    weights: list[list[float]], values: list[list[float]], need: float, limit: int = EXACT_LIMIT
) -> tuple[list[int], str] | None:
    """One option per item, least total weight (dollars, seconds) with total value at
    least `need`; None when even the best options fall short. Exact over Pareto
    frontiers while they stay under `limit` states, else greedy: start from each item's
    best option and take the downgrades that save the most weight per value lost. On
    ties the earlier option wins (callers list the preferred first)."""
    if sum(max(v) for v in values) < need - 1e-9:
        return None
    frontier: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]
    for c, item in enumerate(values):
        grown = [
            (w + weights[c][i], v + item[i], picks + (i,))
            for w, v, picks in frontier
            for i in range(len(item))
        ]
        grown.sort(key=lambda s: (s[0], -s[1]))
        frontier, best = [], float("-inf")
        for state in grown:
            if state[1] > best + 1e-12:
                frontier.append(state)
                best = state[1]
        if len(frontier) > limit:
            return _greedy_floor(weights, values, need), "greedy"
    feasible = [s for s in frontier if s[1] >= need - 1e-9]
    return list(min(feasible, key=lambda s: s[0])[2]), "exact"


def _greedy_floor(weights: list[list[float]], values: list[list[float]], need: float) -> list[int]:
    picks = [
        max(range(len(v)), key=lambda i, v=v, c=c: (v[i], -weights[c][i]))
        for c, v in enumerate(values)
    ]
    total = sum(values[c][i] for c, i in enumerate(picks))
    while True:
        best: tuple[float, int, int] | None = None
        for c, item in enumerate(values):
            for i in range(len(item)):
                saved = weights[c][picks[c]] - weights[c][i]
                lost = item[picks[c]] - item[i]
                if saved <= 0 or total - lost < need - 1e-9:
                    continue
                ratio = saved / lost if lost > 0 else math.inf
                if best is None or ratio > best[0]:
                    best = (ratio, c, i)
        if best is None:
            return picks
        _, c, i = best
        total -= values[c][picks[c]] - values[c][i]
        picks[c] = i


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
