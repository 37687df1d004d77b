"""The public API: compile a program to a Plan, bind inputs, run it (through a Session)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

from llmflow.compiler import compile_file
from llmflow.compiler.ir import Plan, PlanError
from llmflow.compiler.modules import UnreadableSource, read_file
from llmflow.compiler.optimizer import optimize as run_optimizer
from llmflow.compiler.profile import Profile, profile_path
from llmflow.compiler.profile import load as load_profile
from llmflow.errors import LLMFlowError, RunError
from llmflow.runtime.backends.base import Backend
from llmflow.runtime.batch import DEFAULT_IN_FLIGHT, RowResult
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.calls import RunSeed
from llmflow.runtime.inputs import bind_inputs, quoted_name
from llmflow.runtime.retry import RetryPolicy
from llmflow.runtime.rows import bind_rows
from llmflow.runtime.runs import RunDir
from llmflow.runtime.scheduler import Event, RunResult
from llmflow.runtime.session import Session

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "Session",
    "bind_inputs",
    "compile",
    "quoted_name",
    "run",
    "run_async",
    "run_batch",
    "run_batch_sync",
]


def compile(  # noqa: A001
    program: Plan | str | os.PathLike[str],
    flow: str | None = None,
    *,
    inputs: dict[str, Any] | None = None,
    optimize: bool = True,
    objective: Literal["cost", "quality", "latency"] = "cost",
    budget: float | None = None,
    profile: Profile | str | os.PathLike[str] | bool = True,
    min_quality: float | None = None,
) -> Plan:
    """Parse, check, lower and optimize a program; raises CompileError with every error.

    A path ending in `.json` is a saved plan (`llmflow plan --json`, `Plan.to_json`): it
    is loaded as it was saved, decisions and edits included, and not optimized again
    (PlanError if it is not a plan).

    Given a Plan instead of a path (one compiled with `optimize=False`), optimize it:
    so a caller can read the flow's input types before it binds the inputs the
    optimizer should know. Inputs given here are known to the optimizer: map sizes,
    prompt text and so prefix groups and estimates become exact (InputError if one does
    not fit its type; missing ones are fine). `optimize=False` is `-O0`.

    `profile`: what model assignment measured quality from. True (the default) reads
    the program's own profile (`report.llmflow` → `report.profile.json`, written by
    `llmflow tune`) when there is one; a path or a `Profile` names another; False uses
    declared skills only. `min_quality`: the cheapest assignment whose estimated score
    (from the profile) reaches it."""
    if isinstance(program, Plan):
        if flow is not None and flow != program.flow:
            raise LLMFlowError(f"this plan is of flow {program.flow!r}, not {flow!r}")
        plan = program
    elif is_saved_plan(program):
        plan = load_plan(program)
        if flow is not None and flow != plan.flow:
            raise LLMFlowError(f"{program}: this plan is of flow {plan.flow!r}, not {flow!r}")
        return plan
    else:
        plan = compile_file(program, flow)
    if optimize:
        known = bind_inputs(plan, inputs, partial=True) if inputs else None
        plan = run_optimizer(
            plan,
            inputs=known,
            objective=objective,
            budget=budget,
            profile=measured_profile(plan, profile),
            min_quality=min_quality,
        )
    return plan


def measured_profile(
    plan: Plan, profile: Profile | str | os.PathLike[str] | bool
) -> Profile | None:
    """The profile `compile` assigns from (see there); a named file must exist."""
    if isinstance(profile, Profile) or profile is False:
        return profile or None
    if profile is True:
        beside = profile_path(plan.file) if plan.file else None
        return load_profile(beside) if beside is not None and beside.is_file() else None
    return load_profile(profile)


MAX_PLAN_BYTES = 256 * 2**20
"""Largest saved plan read (256 MiB): a 10,000-call plan takes a few tens of MiB."""


def is_saved_plan(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).endswith(".json")


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """A plan saved as JSON, ready to run without its source; PlanError (naming the
    file, and the JSON path of what is wrong) for anything else."""
    try:
        data = read_file(path, MAX_PLAN_BYTES, "a saved plan")
    except UnreadableSource as err:
        raise PlanError(f"{os.fspath(path)}: {err}") from None
    try:
        return Plan.from_json(data)
    except PlanError as err:
        raise PlanError(f"{os.fspath(path)}: {err}") from None


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
    """Run a plan once, in a Session of its own; failed nodes are in the result, next
    to every output that succeeded. To run many inputs or plans with models, caches
    and limits kept warm, open a `Session` and call its `run`.

    `budget`: USD the run may spend (calls that could exceed it are not sent), or a
    `Budget` to read `spent` from afterwards; a resumed run adds what its journal's
    answers cost to what the budget has spent already. `cache`: answer deterministic
    requests from (and into) this response cache. `run_dir`: write
    the trace and the journal there; a journal already there is replayed (resume).
    `otel`: also export each call as an OpenTelemetry span through this provider.
    `seed`: the run's seed, from which each sampled call's seed is derived (default: one
    drawn at random, in the result's `seed`); the same seed samples the same answers."""
    session = Session(
        backend=backend, budget=budget, cache=cache, run_dir=run_dir, retry=retry, otel=otel
    )
    async with session:
        return await session.run(plan, inputs, on_event=on_event, seed=seed)


async def run_batch(
    program: Plan | str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    *,
    constants: Mapping[str, Any] | None = None,
    id_column: str | None = None,
    in_flight: int = DEFAULT_IN_FLIGHT,
    backend: Backend | None = None,
    budget: float | Budget | None = None,
    cache: ResponseCache | None = None,
    run_dir: RunDir | None = None,
    retry: RetryPolicy | None = None,
    seed: int | RunSeed | None = None,
) -> AsyncIterator[RowResult]:
    """Run a program once per row, `in_flight` rows at a time in one Session, and yield
    each row's `RowResult` as it finishes (completion order: its `id` says which row,
    the `id_column` field's value or else the row's position, from 1). Rows are taken
    from the iterable only as rows finish, so a generator can stream a large dataset. A
    row's fields are the flow's inputs (others are ignored), `constants` are given to
    every row; a row that does not fit the flow's inputs, or whose run fails, is a result
    with its `error`, and the others go on. A path is compiled once, knowing the
    constants; a Plan runs as given. Other options as for `run_async`."""
    plan = program if isinstance(program, Plan) else compile(program, inputs=dict(constants or {}))
    records = (
        (position, dict(row), None)
        if isinstance(row, Mapping)
        else (position, {}, f"a row is a dict of input values, not a {type(row).__name__}")
        for position, row in enumerate(rows, 1)
    )
    source = bind_rows(plan, records, id_column=id_column, constants=constants)
    run_seed = RunSeed(seed) if isinstance(seed, int) else seed
    session = Session(backend=backend, budget=budget, cache=cache, run_dir=run_dir, retry=retry)
    async with session:
        async for result in session.run_many(plan, source, in_flight=in_flight, seed=run_seed):
            yield result


def run_batch_sync(
    program: Plan | str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    **options: Any,
) -> list[RowResult]:
    """`run_batch` for a script or a notebook: every row's result, in the rows' order.
    Where an event loop is running already (a notebook) it runs in a thread of its own."""

    async def collect() -> list[RowResult]:
        return [result async for result in run_batch(program, rows, **options)]

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        results = asyncio.run(collect())
    else:
        with ThreadPoolExecutor(1) as pool:
            results = pool.submit(asyncio.run, collect()).result()
    return sorted(results, key=lambda result: result.line)


def run(
    program: Plan | str | os.PathLike[str],
    inputs: dict[str, Any] | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Compile (if given a path; a saved plan's `.json` is loaded) and run a program;
    returns its outputs.

    Raises CompileError, InputError, or RunError (which keeps the outputs computed and
    renders each failure at the call that failed); every error is an LLMFlowError."""
    plan = program if isinstance(program, Plan) else compile(program)
    result = asyncio.run(run_async(plan, inputs or {}, backend))
    if result.failures:
        messages = [f"{f.where()}{f.node.label}: {f.message}" for f in result.failures]
        raise RunError("; ".join(messages), result.outputs, messages, result.failures)
    return result.outputs
