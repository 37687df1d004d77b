"""The eval API: compile the plan to measure (its functions pinned to the models to
measure them on), then score it on labeled rows (`runtime/evals`). Here, not in the
runtime, because choosing the plan runs the compiler and the optimizer."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmflow.api import is_saved_plan, load_plan
from llmflow.compiler import check_file
from llmflow.compiler.evalspec import EvalSpec
from llmflow.compiler.ir import Plan
from llmflow.compiler.lower import lower
from llmflow.compiler.modules import MAX_SOURCE_BYTES, UnreadableSource, read_file
from llmflow.compiler.optimizer import optimize
from llmflow.runtime.backends.base import Backend
from llmflow.runtime.batch import DEFAULT_IN_FLIGHT
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.calls import RowId, RunSeed
from llmflow.runtime.evals import EvalError, EvalReport, RowScore, judges, run_eval, with_pins
from llmflow.runtime.evals.assign import check_assignment
from llmflow.runtime.inputs import bind_inputs
from llmflow.runtime.retry import RetryPolicy
from llmflow.runtime.runs import RunDir
from llmflow.runtime.session import Session

COMMAND_LINE = "command_line"
"""The name of the eval block made of `--metric` options."""


def pin_functions(
    plan: Plan, assignment: Mapping[str, str], *, inputs: Mapping[str, Any] | None = None
) -> Plan:
    """A copy of the plan with every call of each function in `assignment` on its model
    and pinned there; the optimizer then decides prefix groups, fallbacks and estimates
    again around the pins (`inputs`: values it may know, such as constants). A plan
    that was never optimized (-O0) is not optimized now. The plan given is unchanged."""
    check_assignment(plan, assignment)
    if not assignment:
        return plan
    pinned = with_pins(plan, assignment)
    if not plan.decisions:  # -O0
        return pinned
    known = bind_inputs(pinned, dict(inputs or {}), partial=True)
    return optimize(pinned, inputs=known, objective=plan.objective, budget=plan.budget)


def prepare(
    program: Plan | str | os.PathLike[str],
    eval_name: str | None = None,
    *,
    metrics: Mapping[str, str] | None = None,
    flow: str | None = None,
    assignment: Mapping[str, str] | None = None,
    constants: Mapping[str, Any] | None = None,
    optimize_plan: bool = True,
) -> tuple[Plan, EvalSpec]:
    """The plan to run (functions pinned as `assignment` says) and the eval to score it
    with. `program`: a `.llmflow` file (compiled for the eval's flow, optimized unless
    `optimize_plan` is false), or a Plan or a saved plan's `.json`, whose `evals` are
    used. `metrics`: output →
    metric text (`"exact"`, `"numeric(tolerance = 1)"`), checked as an eval block of
    the program would be, instead of a declared eval (`flow`: the flow they score)."""
    if not isinstance(program, Plan) and is_saved_plan(program):
        program = load_plan(program)  # runs as saved: not optimized again
    if isinstance(program, Plan):
        if metrics:
            raise EvalError("metrics given as text need the program's source, not a plan")
        spec = _chosen(program.evals, eval_name, program.file)
        plan = program
    else:
        path = os.fspath(program)
        source = None
        if metrics:
            source = _with_eval_block(path, metrics, flow)
            eval_name = COMMAND_LINE
        checked = check_file(path, source)
        spec = _chosen(checked.evals, eval_name, path)
        plan = lower(checked, spec.flow)
        spec = plan.evals[spec.name]  # with its judges' calls
        if optimize_plan:
            known = bind_inputs(plan, dict(constants or {}), partial=True)
            plan = optimize(plan, inputs=known)
    judge_names = tuple(m.function for m in judges(spec.metrics.values()))
    check_assignment(plan, assignment or {}, also=judge_names)
    called = {n.call.function for n in plan.calls()}
    flow_pins = {k: v for k, v in (assignment or {}).items() if k in called}
    return pin_functions(plan, flow_pins, inputs=constants), spec


async def evaluate(
    program: Plan | str | os.PathLike[str],
    eval_name: str | None = None,
    data: str | os.PathLike[str] | None = None,
    assignment: Mapping[str, str] | None = None,
    *,
    metrics: Mapping[str, str] | None = None,
    flow: str | None = None,
    constants: Mapping[str, Any] | None = None,
    limit: int | None = None,
    only: Collection[RowId] | None = None,
    id_column: str | None = None,
    in_flight: int = DEFAULT_IN_FLIGHT,
    session: Session | None = None,
    backend: Backend | None = None,
    budget: float | Budget | None = None,
    cache: ResponseCache | None = None,
    run_dir: RunDir | None = None,
    retry: RetryPolicy | None = None,
    seed: int | RunSeed | None = None,
    on_row: Callable[[RowScore], None] | None = None,
) -> EvalReport:
    """Score a program on labeled rows (docs/evals.md). `program`, `eval_name`,
    `metrics`, `flow`: as `prepare`. `data`: the rows (default: the eval's `data`).
    `assignment`: semantic function → model, pinning every call of each (a judge's
    too). `session`: run in this open Session (models, caches, limits and budget kept
    across evals; `backend`, `budget`, `cache`, `run_dir`, `retry` are then the
    session's own). `limit`: the first N rows; `only`: the rows with these ids (the id
    column's values, else line numbers), a split's. `on_row`: called as each row is
    scored."""
    plan, spec = prepare(
        program, eval_name, metrics=metrics, flow=flow, assignment=assignment, constants=constants
    )
    return await run_eval(
        plan,
        spec,
        data,
        assignment=assignment,
        constants=constants,
        limit=limit,
        only=only,
        id_column=id_column,
        in_flight=in_flight,
        session=session,
        backend=backend,
        budget=budget,
        cache=cache,
        run_dir=run_dir,
        retry=retry,
        seed=seed,
        on_row=on_row,
    )


def evaluate_sync(*args: Any, **options: Any) -> EvalReport:
    """`evaluate` for a script or a notebook (where a loop runs already, in a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(evaluate(*args, **options))
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, evaluate(*args, **options)).result()


def _with_eval_block(path: str, metrics: Mapping[str, str], flow: str | None) -> str | None:
    """The program's source with the command line's metrics as one more eval block (so
    they are checked, and errors shown, as any eval's). None if the file cannot be read
    as a program (compiling it says why)."""
    try:
        source = read_file(path, MAX_SOURCE_BYTES, "a program").decode("utf-8")
    except (UnreadableSource, UnicodeDecodeError):
        return None
    lines = [f"    {name}: {text}" for name, text in metrics.items()]
    options = f"(flow = {flow})" if flow else ""
    block = f"\n\neval {COMMAND_LINE}{options} {{\n" + "\n".join(lines) + "\n}\n"
    return source.rstrip("\n") + block


def _chosen(evals: Mapping[str, EvalSpec], name: str | None, where: str) -> EvalSpec:
    if name is not None:
        if name not in evals:
            known = ", ".join(evals) or "none"
            raise EvalError(f"{where}: no eval '{name}' (evals: {known})")
        return evals[name]
    if len(evals) == 1:
        return next(iter(evals.values()))
    if not evals:
        raise EvalError(
            f"{where} declares no eval: add an eval block (docs/evals.md) or give "
            "--metric OUTPUT=METRIC"
        )
    raise EvalError(f"{where} declares several evals ({', '.join(evals)}): choose one with --eval")


__all__ = ["COMMAND_LINE", "evaluate", "evaluate_sync", "pin_functions", "prepare"]
