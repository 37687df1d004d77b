"""The public API: compile a program to a Plan, bind inputs, run it."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from llmflow.compiler import compile_file
from llmflow.compiler.diagnostics import did_you_mean
from llmflow.compiler.ir import Plan
from llmflow.errors import InputError, RunError
from llmflow.runtime.backends import Router
from llmflow.runtime.backends.base import Backend
from llmflow.runtime.scheduler import Event, RunResult, Scheduler
from llmflow.runtime.values import InvalidValue, validate


def compile(path: str | os.PathLike[str], flow: str | None = None) -> Plan:  # noqa: A001
    """Parse, check and lower a program; raises CompileError with every error in it."""
    return compile_file(path, flow)


def bind_inputs(plan: Plan, values: dict[str, Any]) -> dict[str, Any]:
    """Check input values against the flow's parameters and fill in defaults. Every
    problem is reported at once, each naming its input."""
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
            if spec.required:
                problems.append(f"missing input '{spec.name}' ({spec.type})")
            else:
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
) -> RunResult:
    """Run a plan; failed nodes are in the result, next to every output that succeeded."""
    bound = bind_inputs(plan, inputs)
    owned = backend is None
    if backend is None:
        router = Router(plan.models)
        router.check({call.call.model for call in plan.calls() if call.call})
        backend = router
    try:
        return await Scheduler(plan, backend, on_event).run(bound)
    finally:
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
