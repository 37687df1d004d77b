"""Model assignment on synthetic programs of 10, 100 and 1,000 calls over 6 models.

Reports, per size: the optimizer's own run time (all passes), the cost of its plan
(objective `cost`) against "the strongest model everywhere", and, under a budget with
objective `quality`, the greedy solver's quality against the exact optimum (dynamic
programming over Pareto frontiers) where that is computable, else against the LP bound.

    python bench/assignment.py            # prints a Markdown table
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import llmflow
from llmflow.compiler.ir import Plan
from llmflow.compiler.optimizer import optimize
from llmflow.compiler.optimizer.assign_models import _options, _value, solve_budget
from llmflow.compiler.optimizer.prompts import Shapes

MODELS = [  # name, $/1M in, $/1M out, reasoning, writing
    ("nano", 0.05, 0.20, 0.30, 0.40),
    ("mini", 0.15, 0.60, 0.55, 0.60),
    ("small", 0.40, 1.60, 0.65, 0.70),
    ("medium", 1.00, 4.00, 0.75, 0.80),
    ("large", 2.50, 10.00, 0.85, 0.85),
    ("frontier", 10.00, 30.00, 0.95, 0.90),
]


def program(calls: int, seed: int) -> str:
    """A random DAG of `calls` semantic-function calls with random @needs."""
    rng = random.Random(seed)
    lines = []
    for name, p_in, p_out, reasoning, writing in MODELS:
        lines.append(
            f'model {name} = openai_compatible("{name}", base_url="http://127.0.0.1:1/v1", '
            f"price_in={p_in}, price_out={p_out}, context=128000, "
            f"skills={{reasoning: {reasoning}, writing: {writing}}})"
        )
    for i in range(calls):
        need = rng.choice(["", "reasoning >= 0.5", "reasoning >= 0.7", "writing >= 0.6", ""])
        deco = f"@needs({need})\n" if need else ""
        tokens = rng.choice([64, 128, 256, 512])
        lines.append(
            f'{deco}fn f{i}(a: str, b: str) -> out: str\n"""\nStep {i}. Use this: {{{{a}}}}\n'
            f'And this: {{{{b}}}}\n{{{{out | max_tokens={tokens}}}}}\n"""'
        )
    body = []
    for i in range(calls):
        a = f"v{rng.randrange(i)}" if i and rng.random() < 0.8 else "seed"
        b = f"v{rng.randrange(i)}" if i and rng.random() < 0.5 else "seed"
        body.append(f"    v{i} = f{i}({a}, {b})")
    every = ", ".join(f"v{i}" for i in range(calls))  # every call reaches the output
    lines.append(
        "flow main(seed: str) -> result: str {\n"
        + "\n".join(body)
        + f"\n    result = join([{every}])\n}}"
    )
    return "\n\n".join(lines) + "\n"


def compile_program(source: str) -> Plan:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.llmflow"
        path.write_text(source)
        return llmflow.compile(path, optimize=False)


def strongest_everywhere(plan: Plan) -> float:
    shapes = Shapes(plan)
    strongest = max(MODELS, key=lambda m: m[3] + m[4])[0]
    total = 0.0
    for node in plan.calls():
        option = next(o for o in _options(plan, node, shapes[node.id]) if o.model == strongest)
        total += option.dollars
    return total


def row(calls: int, seed: int = 1) -> dict[str, float | str]:
    source = program(calls, seed)
    timings = []
    for _ in range(3):
        plan = compile_program(source)
        start = time.perf_counter()
        plan = optimize(plan)
        timings.append(time.perf_counter() - start)
    assert plan.total is not None
    cost = plan.total.dollars
    strongest = strongest_everywhere(compile_program(source))

    # Quality under a budget halfway between the cheapest qualifying plan and the best.
    plan = compile_program(source)
    shapes = Shapes(plan)
    choices, values = [], []
    for node in plan.calls():
        opts = [o for o in _options(plan, node, shapes[node.id]) if o.qualifies]
        choices.append(opts)
        values.append([_value(o, "quality", 1.0) for o in opts])
    cheapest = sum(min(o.dollars for o in c) for c in choices)
    best = sum(max(c, key=lambda o: o.quality).dollars for c in choices)
    budget = (cheapest + best) / 2
    start = time.perf_counter()
    greedy, how = solve_budget(choices, values, budget, exact_limit=0)
    greedy_seconds = time.perf_counter() - start
    greedy_value = sum(values[c][i] for c, i in enumerate(greedy))
    exact_picks, exact_how = solve_budget(choices, values, budget)
    if exact_how == "exact":
        reference, kind = sum(values[c][i] for c, i in enumerate(exact_picks)), "exact optimum"
    else:
        reference = greedy_value + float(how.rsplit("at most ", 1)[1].split(" ")[0])
        kind = "LP bound"
    return {
        "calls": calls,
        "optimize_s": statistics.median(timings),
        "cost": cost,
        "strongest": strongest,
        "saving": 1 - cost / strongest,
        "greedy_gap": (reference - greedy_value) / reference,
        "reference": kind,
        "greedy_s": greedy_seconds,
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 100, 1000]
    print(
        "| calls | optimizer run time (all passes) | plan cost | strongest model everywhere "
        "| saving | greedy quality gap at budget | vs |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
    for calls in sizes:
        r = row(calls)
        print(
            f"| {r['calls']} | {r['optimize_s'] * 1000:.0f} ms | ${r['cost']:.4f} | "
            f"${r['strongest']:.4f} | {r['saving']:.0%} | {r['greedy_gap']:.3%} "
            f"| {r['reference']} |"
        )


if __name__ == "__main__":
    main()
