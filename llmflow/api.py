"""The public API: compile a program to a Plan, bind inputs, run it."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, Literal

from llmflow.compiler import compile_file
from llmflow.compiler.diagnostics import did_you_mean
from llmflow.compiler.ir import IRNode, Plan
from llmflow.compiler.optimizer import optimize as run_optimizer
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
from llmflow.runtime.scheduler import Event, RunResult, Scheduler
from llmflow.runtime.trace import TraceWriter
from llmflow.runtime.values import InvalidValue, validate

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


def bind_inputs(plan: Plan, values: dict[str, Any], partial: bool = False) -> dict[str, Any]:
    """Check input values against the flow's parameters and fill in defaults. Every
    problem is reported at once, each naming its input. `partial`: missing inputs are
    fine (planning with what is known)."""
    problems: list[str] = []
    known = {spec.name for spec in plan.inputs}
    for name in values:
        if name not in known:
            hint = did_you_mean(name, known)
            problems.append(
                f"unknown input '{name}'"
                + (f"; {hint}" if hint else f" (inputs: {', '.join(sorted(known)) or 'none'})")
            )
    bound: dict[str, Any] = {}
    for spec in plan.inputs:
        if spec.name not in values:
            if spec.required and not partial:
                problems.append(f"missing input '{spec.name}' ({spec.type})")
            elif not spec.required:
                bound[spec.name] = validate(spec.type, spec.default)
            continue
        try:
            bound[spec.name] = validate(spec.type, values[spec.name])
        except InvalidValue as err:
            problems.append(f"input '{spec.name}' expects {spec.type}: {err}")
    if problems:
        raise InputError("\n".join(problems))
    return bound


async def run_async(
    plan: Plan,
    inputs: dict[str, Any],
    backend: Backend | None = None,
    on_event: Event | None = None,
    *,
    budget: float | None = None,
    cache: ResponseCache | None = None,
    run_dir: RunDir | None = None,
    retry: RetryPolicy | None = None,
    otel: TracerProvider | None = None,
    seed: int | RunSeed | None = None,
) -> RunResult:
    """Run a plan; failed nodes are in the result, next to every output that succeeded.

    `budget`: USD the run may spend (calls that could exceed it are not sent). `cache`:
    answer deterministic requests from (and into) this response cache. `run_dir`: write
    the trace and the journal there; a journal already there is replayed (resume).
    `otel`: also export each call as an OpenTelemetry span through this provider.
    `seed`: the run's seed, from which each sampled call's seed is derived (default: one
    drawn at random, in the result's `seed`); the same seed samples the same answers."""
    bound = bind_inputs(plan, inputs)
    owned = backend is None
    if backend is None:
        router = Router(plan.models)
        used = {call.call.model for call in plan.calls() if call.call}
        router.check(used)
        router.open(used)
        backend = router
    journal = Journal(run_dir.journal) if run_dir else None
    trace = TraceWriter(run_dir.trace, plan.models) if run_dir else None
    spans = SpanWriter(otel, plan.models) if otel else None
    gateway = Gateway(
        backend,
        plan.models,
        cache=cache,
        journal=journal,
        budget=Budget(budget) if budget is not None else None,
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
        return await Scheduler(plan, gateway, event, run_seed).run(bound)
    finally:
        for part in (journal, trace, spans):
            if part:
                part.close()
        if owned:
            await backend.aclose()


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
