"""The optimizer: a tuple of passes, each a function `Plan -> Plan` in its own module.

Each pass records what it decided and why in `plan.decisions` (`llmflow plan --explain`).
`-O0` runs none of them: every call stays on its declared or default model, with no
prefix groups and no priorities.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from llmflow.compiler.heap import gc_paused
from llmflow.compiler.ir import Plan
from llmflow.compiler.optimizer.analyze_prefixes import analyze_prefixes
from llmflow.compiler.optimizer.assign_models import assign_models
from llmflow.compiler.optimizer.eliminate_common_calls import eliminate_common_calls
from llmflow.compiler.optimizer.eliminate_dead import eliminate_dead
from llmflow.compiler.optimizer.estimate import estimate
from llmflow.compiler.optimizer.evaluate_known import evaluate_known
from llmflow.compiler.optimizer.prioritize import prioritize

Rule = Callable[..., Plan]

RULES: tuple[Rule, ...] = (
    eliminate_common_calls,
    eliminate_dead,
    evaluate_known,
    assign_models,
    analyze_prefixes,
    estimate,
    prioritize,
)


@gc_paused()
def optimize(plan: Plan, rules: tuple[Rule, ...] = RULES, **options: Any) -> Plan:
    """Run the passes in order. Each takes the options it names (inputs, objective,
    budget, min_tokens...) and ignores the rest."""
    for rule in rules:
        accepted = inspect.signature(rule).parameters
        plan = rule(plan, **{k: v for k, v in options.items() if k in accepted})
    return plan


__all__ = ["RULES", "optimize"]
