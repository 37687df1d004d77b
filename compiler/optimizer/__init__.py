"""The optimizer: a tuple of passes, each a function `Plan -> Plan` in its own module.

Each pass records what it decided and why in `plan.decisions` (`llmflow plan --explain`).
`-O0` runs none of them: every call stays on its declared or default model, with no
prefix groups and no priorities.

Passes are pure: each returns a new Plan and leaves its input as it was. `optimize`
copies the plan once and runs every pass on that copy (`working`); a pass called on its
own copies for itself (`own`, its first line). A pass that decides afresh (models,
groups, estimates, priorities) first resets what it owns, so optimizing an optimized
plan gives the same plan.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from llmflow.compiler.heap import gc_paused
from llmflow.compiler.ir import Plan
from llmflow.compiler.optimizer.analyze_prefixes import analyze_prefixes
from llmflow.compiler.optimizer.assign_models import assign_models
from llmflow.compiler.optimizer.choose_tokenizers import choose_tokenizers
from llmflow.compiler.optimizer.eliminate_common_calls import eliminate_common_calls
from llmflow.compiler.optimizer.eliminate_dead import eliminate_dead
from llmflow.compiler.optimizer.estimate import estimate
from llmflow.compiler.optimizer.evaluate_known import evaluate_known
from llmflow.compiler.optimizer.prioritize import prioritize
from llmflow.compiler.optimizer.working import working
from llmflow.errors import LLMFlowError

Rule = Callable[..., Plan]

RULES: tuple[Rule, ...] = (
    eliminate_common_calls,
    eliminate_dead,
    evaluate_known,
    assign_models,
    choose_tokenizers,
    analyze_prefixes,
    estimate,
    prioritize,
)


class UnknownOption(LLMFlowError, TypeError):
    """`optimize` was given an option no pass takes (a typo would otherwise be ignored)."""


def options_of(rules: tuple[Rule, ...]) -> set[str]:
    """The options the passes take: every keyword parameter after the plan."""
    return {name for rule in rules for name in list(inspect.signature(rule).parameters)[1:]}


@gc_paused()
def optimize(plan: Plan, rules: tuple[Rule, ...] = RULES, **options: Any) -> Plan:
    """Run the passes in order on a copy of `plan` (which stays as it was). Each pass
    takes the options it names (inputs, objective, budget, min_tokens...); an option no
    pass names (of `rules` or the optimizer's own) is an error, not silently dropped."""
    known = options_of((*RULES, *rules))
    unknown = sorted(set(options) - known)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise UnknownOption(
            f"unknown optimizer option{'s' if len(unknown) > 1 else ''} {names}; "
            f"the passes take: {', '.join(sorted(known))}"
        )
    plan = plan.copy()
    for rule in rules:
        accepted = inspect.signature(rule).parameters
        with working(plan):
            plan = rule(plan, **{k: v for k, v in options.items() if k in accepted})
    return plan


__all__ = ["RULES", "UnknownOption", "optimize"]
