"""How passes stay pure while `optimize` copies the plan only once (as sqlglot copies
the tree once and lets its rules work on the copy).

A pass's first line is `plan = own(plan)`: called on its own, the pass gets a copy and
leaves the caller's plan as it was; run by `optimize`, it gets the optimizer's working
copy as is, so a pipeline of seven passes copies a 10,000-call plan once, not seven times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from llmflow.compiler.ir import Plan

_working: ContextVar[Plan | None] = ContextVar("llmflow_optimizer_working_plan", default=None)


def own(plan: Plan, rule: str | None = None) -> Plan:
    """The plan a pass may change: the optimizer's working copy, else a copy of `plan`.

    With `rule`, what that rule decided before is forgotten: a pass that decides afresh
    each time it runs (an analysis, not a rewrite) says it once, so optimizing an
    optimized plan changes nothing."""
    work = plan if _working.get() is plan else plan.copy()
    if rule is not None:
        work.decisions = [d for d in work.decisions if d.rule != rule]
    return work


@contextlib.contextmanager
def working(plan: Plan) -> Iterator[None]:
    """While a pass runs: `plan` is the optimizer's own copy, which `own` hands over."""
    token = _working.set(plan)
    try:
        yield
    finally:
        _working.reset(token)
