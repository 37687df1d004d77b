"""`llmflow tune PROGRAM`: measure assignments of models to semantic functions on labeled
rows, choose one, validate it on held-out rows, and write the program's profile
(docs/tuning.md).

The search is `runtime/tune.py`'s; each assignment it asks about is an eval
(`llmflow.evaluate`) of the rows it names, in one Session with the response cache, so
re-tuning after a small change pays only for the answers that changed. The profile goes
beside the program (`PROGRAM.profile.json`), where `plan` and `run` read it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmflow.cli_args import dollars, fraction, positive, seed
from llmflow.cli_eval import _metrics, _warn, constant_inputs
from llmflow.compiler import profile as profiles
from llmflow.compiler.ir import Plan
from llmflow.errors import LLMFlowError
from llmflow.evals import evaluate, prepare
from llmflow.runtime import runs
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.evals import EvalReport, functions
from llmflow.runtime.rows import read_rows
from llmflow.runtime.session import Session, check_plan
from llmflow.runtime.tune import Measurements, Outcome, Point, Result, tune

EXAMPLE = (
    "llmflow tune examples/triage_eval.llmflow --target 0.5\n"
    "  llmflow tune prog.llmflow --data dev.jsonl --metric kind=exact --models small,mini "
    "--budget 0.001"
)


def add_command(sub: argparse.ArgumentParser) -> None:
    """The options of `llmflow tune` (the parser is made by cli.py)."""
    sub.add_argument("program", help="a .llmflow file")
    sub.add_argument("--eval", metavar="NAME", help="the eval block to tune on")
    sub.add_argument("--data", metavar="ROWS", help="the labeled rows (default: the eval's data)")
    sub.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="OUTPUT=METRIC",
        help="score OUTPUT with METRIC instead of a declared eval; give --data too",
    )
    sub.add_argument("--flow", help="with --metric: the flow to score (default: main)")
    sub.add_argument(
        "--models", metavar="A,B", help="the candidate models (default: all the program's)"
    )
    sub.add_argument(
        "--target", type=fraction, metavar="SCORE", help="the cheapest assignment scoring this"
    )
    sub.add_argument(
        "--budget",
        type=dollars,
        metavar="USD",
        help="the best assignment costing at most this per row",
    )
    sub.add_argument(
        "--objective",
        choices=("cost", "quality", "latency"),
        default="cost",
        help="with neither --target nor --budget: what to optimize (default: cost)",
    )
    sub.add_argument(
        "--by",
        metavar="INPUT",
        help="choose per value of this input (an enum or str, e.g. a subject): a map",
    )
    sub.add_argument(
        "--held-out",
        type=fraction,
        default=0.5,
        metavar="F",
        help="the share of rows kept to validate the choice (default: 0.5)",
    )
    sub.add_argument("--seed", type=seed, default=0, metavar="N", help="the split's seed")
    sub.add_argument("--limit", type=positive, metavar="N", help="only the first N rows")
    sub.add_argument("--id", metavar="COLUMN", help="each row's id (default: its line number)")
    sub.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input given to every row",
    )
    sub.add_argument(
        "--spend", type=dollars, metavar="USD", help="stop measuring past this much in all"
    )
    sub.add_argument(
        "--rows-in-flight", type=positive, default=16, metavar="N", help="rows at once"
    )
    sub.add_argument("--no-cache", action="store_true", help="ask the models again")
    sub.add_argument("--no-write", action="store_true", help="do not write the profile")
    sub.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    sub.add_argument("-q", "--quiet", action="store_true", help="no table on stderr")


def run_tune(args: argparse.Namespace) -> int:
    metrics = _metrics(args.metric)
    if metrics and not args.data:
        raise LLMFlowError("--metric needs --data: the labeled rows to score")
    if str(args.program).endswith(".json"):
        raise LLMFlowError("tune a .llmflow program: a saved plan has no profile beside it")
    plan, spec = prepare(args.program, args.eval, metrics=metrics, flow=args.flow)
    constants = constant_inputs(plan, args.input)
    data = args.data or spec.data
    if data is None:
        raise LLMFlowError(f"eval {spec.name} names no data: give --data")
    candidates = _candidates(plan, args.models)
    check_plan(plan, priced=args.budget is not None or args.spend is not None)
    rows = list(read_rows(data, plan, id_column=args.id, constants=constants))
    rows = [r for r in rows if r.problem is None][: args.limit]
    if not rows:
        raise LLMFlowError(f"{data}: no usable rows to tune on")
    categories = None
    if args.by is not None:
        if args.by not in {i.name for i in plan.inputs}:
            raise LLMFlowError(f"--by: '{args.by}' is not an input of flow {plan.flow}")
        categories = [str(r.inputs.get(args.by)) for r in rows]
    cache = None if args.no_cache else ResponseCache(runs.home() / "cache", _warn)
    try:
        result, memo, usage = asyncio.run(
            _search(args, plan, spec.name, data, constants, candidates, rows, categories, cache)
        )
    finally:
        if cache is not None:
            cache.close()
    by = None if categories is None else (args.by, categories)
    written = (
        None
        if args.no_write
        else _write_profile(args, plan, result, memo, usage, data, len(rows), by)
    )
    if not args.quiet:
        _table(result, sys.stderr)
        if written:
            sys.stderr.write(f"profile: {written}\n")
            if args.target is not None and not result.reason:
                how = f" (routing calls by {args.by})" if result.categories else ""
                sys.stderr.write(
                    f"plan and run choose from it{how}: llmflow run {args.program} "
                    f"--min-quality {args.target:g}\n"
                )
    if args.json:
        sys.stdout.write(json.dumps(_json(result), indent=2) + "\n")
    return 1 if result.reason else 0


def _candidates(plan: Plan, models: str | None) -> dict[str, list[str]]:
    """Each tunable function's models, the one the plan gives it first (the start)."""
    names = [m.strip() for m in models.split(",")] if models else list(plan.models)
    for name in names:
        if name not in plan.models:
            raise LLMFlowError(
                f"--models: '{name}' is not a model of this program "
                f"(models: {', '.join(plan.models)})"
            )
    current: dict[str, str] = {}
    pinned: set[str] = set()
    for node in plan.calls():
        current.setdefault(node.call.function, node.call.model)
        if node.call.pinned:
            pinned.add(node.call.function)
    out = {fn: [current[fn], *(m for m in names if m != current[fn])] for fn in functions(plan)}
    out = {fn: models for fn, models in out.items() if fn not in pinned}
    if not out:
        raise LLMFlowError("every function is pinned (@model): there is nothing to tune")
    return out


async def _search(
    args: argparse.Namespace,
    plan: Plan,
    eval_name: str,
    data: str,
    constants: dict[str, Any],
    candidates: dict[str, list[str]],
    rows: list[Any],
    categories: list[str] | None,
    cache: ResponseCache | None,
) -> tuple[Result, Measurements, dict[Any, list[float]]]:
    budget = Budget(args.spend) if args.spend is not None else None
    ids = [row.id for row in rows]
    usage: dict[tuple[tuple[tuple[str, str], ...], str], list[float]] = {}
    async with Session(cache=cache, budget=budget) as session:

        async def measure(assignment: dict[str, str], which: Sequence[int]) -> list[Outcome]:
            report: EvalReport = await evaluate(
                plan,  # compiled once; it carries the eval, --metric's too
                eval_name,
                data,
                assignment,
                constants=constants,
                only=[ids[r] for r in which],
                id_column=args.id,
                in_flight=args.rows_in_flight,
                session=session,
            )
            for fn, used in report.functions.items():
                seen = usage.setdefault((_key(assignment), fn), [0, 0, 0, 0.0, 0.0])
                for i, value in enumerate(
                    (used.calls, used.input_tokens, used.output_tokens, used.dollars, used.seconds)
                ):
                    seen[i] += value
            by_id = {row.id: row for row in report.rows}
            outcomes = []
            for r in which:
                got = by_id.get(ids[r])
                if got is None:
                    outcomes.append(Outcome(0.0))
                else:
                    outcomes.append(Outcome(got.score or 0.0, got.priced, got.seconds))
            return outcomes

        memo = Measurements(measure)
        result = await tune(
            candidates,
            memo,
            len(rows),
            target=args.target,
            budget=args.budget,
            objective=args.objective,
            categories=categories,
            by_category=categories is not None,
            held_out=args.held_out,
            seed=args.seed,
        )
        return result, memo, usage


def _write_profile(
    args: argparse.Namespace,
    plan: Plan,
    result: Result,
    memo: Measurements,
    usage: dict[Any, list[float]],
    data: str,
    n: int,
    by: tuple[str, list[str]] | None,
) -> Path:
    """The start assignment and each one-function change the search measured, scored on
    the tuning rows (with `--by`, also per value of that input, so plans can route by
    it), merged into the profile beside the program."""
    tuning = result.split.tuning
    start = result.start.assignment
    measured = {}
    per_value: dict[tuple[str, str], profiles.Categories] = {}
    for point in result.points:
        moved = [fn for fn in start if point.assignment[fn] != start[fn]]
        if len(moved) == 1:
            key = (moved[0], point.assignment[moved[0]])
            measured[key] = (
                memo.score(point.assignment, tuning),
                _per_call(usage.get((_key(point.assignment), moved[0]))),
            )
            if by is not None:
                per_value[key] = _by_value(memo, point.assignment, tuning, *by)
    fresh = profiles.new_profile(
        plan,
        start,
        memo.score(start, tuning),
        measured,
        data=f"{Path(data).name} ({n} rows, {len(tuning)} tuned on)",
        categories=per_value,
        baseline_categories=None if by is None else _by_value(memo, start, tuning, *by),
    )
    path = profiles.profile_path(args.program)
    old = None
    if path.is_file():
        try:
            old = profiles.load(path)
        except LLMFlowError as problem:
            _warn(f"{problem}; writing a new profile")
    merged = profiles.merge(old, fresh)
    for line in merged.dropped:
        _warn(line)
    profiles.save(merged.profile, path)
    return path


def _by_value(
    memo: Measurements, assignment: dict[str, str], rows: list[int], input: str, values: list[str]
) -> profiles.Categories:
    """The assignment's score on the rows of each value of `input`."""
    groups: dict[str, list[int]] = {}
    for r in rows:
        groups.setdefault(values[r], []).append(r)
    scores = {v: memo.score(assignment, members) for v, members in sorted(groups.items())}
    return profiles.Categories(input=input, scores=scores)


def _key(assignment: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(assignment.items()))


def _per_call(used: list[float] | None) -> profiles.PerCall:
    """A function's mean cost per call, over every call of it an assignment ran."""
    if not used or not used[0]:
        return profiles.PerCall()
    calls = used[0]
    return profiles.PerCall(
        input_tokens=used[1] / calls,
        output_tokens=used[2] / calls,
        dollars=used[3] / calls,
        seconds=used[4] / calls,
    )


def _shown(assignment: dict[str, str]) -> str:
    return ", ".join(f"{fn}={m}" for fn, m in assignment.items())


def _table(result: Result, out: Any) -> None:
    out.write(f"search: {result.how}; {result.measured_rows} rows measured\n")
    out.write(f"{'assignment':<48} {'score':>7} {'$/row':>11} {'s/row':>8}\n")
    front = {_key(p.assignment) for p in result.front}
    for p in sorted(result.points, key=lambda p: (p.dollars, -p.score)):
        mark = "*" if _key(p.assignment) in front else " "
        out.write(
            f"{mark}{_shown(p.assignment)[:47]:<47} {p.score:>7.3f} {p.dollars:>11.6f} "
            f"{p.seconds:>8.2f}\n"
        )
    chosen = _shown(result.chosen.assignment) if result.chosen.assignment else "per category"
    out.write(f"chosen: {chosen}: {result.chosen.score:.3f} on the tuning rows\n")
    if result.categories:
        for value, assignment in result.categories.items():
            out.write(f"  {value}: {_shown(assignment)}\n")
    if result.held_out is not None:
        s = result.held_out.score
        out.write(
            f"held out: {s.mean:.3f} [{s.low:.3f}, {s.high:.3f}] on {s.n} rows, "
            f"${result.held_out.dollars:.6f} per row\n"
        )
    if result.reason:
        out.write(f"missed: {result.reason}\n")
    out.write("(* on the cost-quality front)\n")


def _json(result: Result) -> dict[str, Any]:
    def point(p: Point) -> dict[str, Any]:
        return {"assignment": p.assignment, "score": p.score, "dollars": p.dollars,
                "seconds": p.seconds, "rows": p.rows}  # fmt: skip

    held = result.held_out
    return {
        "how": result.how,
        "chosen": point(result.chosen),
        "categories": result.categories,
        "front": [point(p) for p in result.front],
        "points": [point(p) for p in result.points],
        "held_out": None
        if held is None
        else {"score": held.score.model_dump(), "dollars": held.dollars, "seconds": held.seconds},
        "reason": result.reason,
        "measured_rows": result.measured_rows,
    }
