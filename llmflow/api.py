"""The public API: compile a program to a Plan, bind inputs, run it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from llmflow.compiler import compile_file
from llmflow.compiler.diagnostics import did_you_mean
from llmflow.compiler.ir import IRNode, Plan
from llmflow.compiler.optimizer import optimize as run_optimizer
from llmflow.compiler.prices import check_priced
from llmflow.errors import InputError, RunError
from llmflow.runtime.backends import Router
from llmflow.runtime.backends.base import Backend
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.calls import RunSeed
from llmflow.runtime.gateway import Gateway
from llmflow.runtime.journal import Journal
from llmflow.runtime.otel import SpanWriter
from llmflow.runtime.retry import RetryPolicy
from llmflow.runtime.runs import RunDir
from llmflow.runtime.scheduler import Event, NodeFailed, RunResult, Scheduler
from llmflow.runtime.trace import TraceWriter
from llmflow.runtime.values import InvalidValue, check_json, validate

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


def compile(  # noqa: A001
    path: str | os.PathLike[str],
    flow: str | None = None,
    *,
    inputs: dict[str, Any] | None = None,
    optimize: bool = True,
    objective: Literal["cost", "quality", "latency"] = "cost",
    budget: float | None = None,
) -> Plan:
    """Parse, check, lower and optimize a program; raises CompileError with every error.

    Inputs given here are known to the optimizer: map sizes, prompt text and so prefix
    groups and estimates become exact. `optimize=False` is `-O0`."""
    plan = compile_file(path, flow)
    if optimize:
        known = bind_inputs(plan, inputs, partial=True) if inputs else None
        plan = run_optimizer(plan, inputs=known, objective=objective, budget=budget)
    return plan


def check_budget(plan: Plan) -> None:
    """A budget needs the price of every model the run may pay: each call's model and
    its fallbacks (UnknownPrice names the ones without)."""
    names = {n.call.model for n in plan.calls() if n.call}
    names.update(name for fallbacks in plan.fallbacks.values() for name in fallbacks)
    check_priced(plan.models[name] for name in sorted(names))


def bind_inputs(plan: Plan, values: Mapping[str, Any], partial: bool = False) -> dict[str, Any]:
    """Check input values against the flow's parameters and fill in defaults. Every
    problem is reported at once, each naming its input. A value that passes is JSON data
    that can be recorded and printed (`runtime.values.check_json`): no NaN, no lone
    surrogate, no nesting deeper than MAX_DEPTH. `partial`: missing inputs are fine
    (planning with what is known)."""
    bound, problems = check_inputs(plan, values, partial)
    if problems:
        raise InputError("\n".join(problems.values()))
    return bound


def check_inputs(
    plan: Plan, values: Mapping[str, Any], partial: bool = False, given: Iterable[str] = ()
) -> tuple[dict[str, Any], dict[str, str]]:
    """`bind_inputs` without raising: the bound values, and one problem per input name.
    `given`: names that were given but could not be read (not reported as missing)."""
    if not isinstance(values, Mapping):
        problem = f"inputs are a dict of name → value, not a {type(values).__name__}"
        return {}, {"": problem}
    problems: dict[str, str] = {}
    known = {spec.name for spec in plan.inputs}
    for name in values:
        if name not in known:
            hint = did_you_mean(name, known) if isinstance(name, str) else None
            problems[name] = f"unknown input {quoted_name(name)}" + (
                f"; {hint}" if hint else f" (inputs: {', '.join(sorted(known)) or 'none'})"
            )
    bound: dict[str, Any] = {}
    skipped = set(given)
    for spec in plan.inputs:
        if spec.name in values:
            value, what = values[spec.name], f"input '{spec.name}'"
        elif spec.name in skipped:
            continue
        elif spec.required:
            if not partial:
                problems[spec.name] = f"missing input '{spec.name}' ({spec.type})"
            continue
        else:
            value, what = spec.default, f"the default of input '{spec.name}'"
        try:
            bound[spec.name] = validate(spec.type, value)
        except InvalidValue as err:
            problems[spec.name] = f"{what} expects {spec.type}: {err}"
    return bound, problems


def quoted_name(name: object, limit: int = 60) -> str:
    """An input name fit for a message: quoted, bounded, any lone surrogate (a byte of
    a non-UTF-8 argv) escaped."""
    text = name if isinstance(name, str) else repr(name)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "'" + text.encode("utf-8", "backslashreplace").decode("utf-8") + "'"


async def run_async(
    plan: Plan,
    inputs: dict[str, Any],
    backend: Backend | None = None,
    on_event: Event | None = None,
    *,
    budget: float | Budget | None = None,
    cache: ResponseCache | None = None,
    run_dir: RunDir | None = None,
    retry: RetryPolicy | None = None,
    otel: TracerProvider | None = None,
    seed: int | RunSeed | None = None,
) -> RunResult:
    """Run a plan; failed nodes are in the result, next to every output that succeeded.

    `budget`: USD the run may spend (calls that could exceed it are not sent), or a
    `Budget` to read `spent` from afterwards; a resumed run adds what its journal's
    answers cost to what the budget has spent already. `cache`: answer deterministic
    requests from (and into) this response cache. `run_dir`: write
    the trace and the journal there; a journal already there is replayed (resume).
    `otel`: also export each call as an OpenTelemetry span through this provider.
    `seed`: the run's seed, from which each sampled call's seed is derived (default: one
    drawn at random, in the result's `seed`); the same seed samples the same answers."""
    bound = bind_inputs(plan, inputs)
    if budget is not None:
        check_budget(plan)
    owned = backend is None
    if backend is None:
        router = Router(plan.models)
        used = check_backends(plan)
        router.open(used)
        backend = router
    journal = Journal(run_dir.journal) if run_dir else None
    if budget is not None and not isinstance(budget, Budget):
        budget = Budget(budget)
    if budget is not None and journal is not None:
        budget.spent += journal.dollars
    trace = TraceWriter(run_dir.trace, plan.models) if run_dir else None
    spans = SpanWriter(otel, plan.models) if otel else None
    gateway = Gateway(
        backend,
        plan.models,
        cache=cache,
        journal=journal,
        budget=budget,
        policy=retry,
    )

    def event(kind: str, node: IRNode, info: dict[str, Any]) -> None:
        if "stats" in info:
            for writer in (trace, spans):
                if writer:
                    writer.write(info["stats"])
        if on_event:
            on_event(kind, node, info)

    try:
        run_seed = RunSeed(seed) if isinstance(seed, int) else seed
        return _printable(plan, await Scheduler(plan, gateway, event, run_seed).run(bound))
    finally:
        for part in (journal, trace, spans):
            if part:
                part.close()
        if owned:
            await backend.aclose()


def check_backends(plan: Plan) -> set[str]:
    """Fail (BackendError) if a model the plan calls cannot be reached: a hosted model
    without its key or address. Returns the models called."""
    used = {call.call.model for call in plan.calls() if call.call}
    Router(plan.models).check(used)
    return used


def _printable(plan: Plan, result: RunResult) -> RunResult:
    """Outputs that JSON cannot hold (an operator overflowing to inf, an integer too long
    to print) become failures of their output, so every output can be recorded and
    printed as JSON."""
    for name, value in list(result.outputs.items()):
        try:
            check_json(value)
        except InvalidValue as err:
            del result.outputs[name]
            node = plan.graph.node(plan.graph.outputs[name])
            result.failures.append(NodeFailed(node, f"its value cannot be written as JSON: {err}"))
    return result


def run(
    program: Plan | str | os.PathLike[str],
    inputs: dict[str, Any] | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Compile (if given a path) and run a program; returns its outputs.

    Raises CompileError, InputError, or RunError (which keeps the outputs computed)."""
    plan = program if isinstance(program, Plan) else compile(program)
    result = asyncio.run(run_async(plan, inputs or {}, backend))
    if result.failures:
        messages = [f"{f.where()}{f.node.label}: {f.message}" for f in result.failures]
        raise RunError("; ".join(messages), result.outputs, messages)
    return result.outputs
