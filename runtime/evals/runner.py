"""Running an eval: the labeled rows through the dataset runner (`Session.run_many`: one
Session, rows in flight together, the limits, cache, journal and budget of any dataset
run), each finished row scored as it arrives, judges asked through the same Session.

A row's expected value for output `o` is `row["expected"][o]` when the row has an
`expected` object, else `row[o]`. A row with no usable expected value for any output is
not run (nothing is spent on it); one missing some is scored on the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmflow.compiler import prices
from llmflow.compiler.evalspec import (
    EvalSpec,
    ExternMetric,
    FieldsMetric,
    JudgeMetric,
    Metric,
    NumericMetric,
    describe,
    judges_of,
)
from llmflow.compiler.externs import ExternError, load_extern
from llmflow.compiler.ir import (
    Graph,
    InputNode,
    InputSpec,
    LLMNode,
    OutputNode,
    Param,
    Plan,
)
from llmflow.compiler.types import Type
from llmflow.errors import LLMFlowError
from llmflow.runtime.backends.base import Backend
from llmflow.runtime.batch import DEFAULT_IN_FLIGHT, RowResult
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.calls import CallStats, RowId, RunSeed
from llmflow.runtime.evals import metrics as builtin
from llmflow.runtime.evals.report import EvalReport, RowScore, Usage, summarize
from llmflow.runtime.inputs import quoted_name, value_from_text
from llmflow.runtime.retry import RetryPolicy
from llmflow.runtime.rows import (
    Record,
    Row,
    RowsError,
    bind_rows,
    read_records,
    shown_name,
    source_format,
)
from llmflow.runtime.runs import RunDir
from llmflow.runtime.secrets import clip, redact
from llmflow.runtime.session import Session
from llmflow.runtime.values import InvalidValue

_MISSING = object()


class EvalError(LLMFlowError):
    """An eval that cannot run: no such eval, no data, a bad assignment."""


def judges(metrics: Iterable[Metric]) -> Iterator[JudgeMetric]:
    """The judges among metrics, those of record fields included (they ask a model)."""
    for metric in metrics:
        yield from judges_of(metric)


# ---- the run ----------------------------------------------------------------------------


@dataclass
class _Labeled:
    """What a record holds besides the flow's inputs: expected values, or why not."""

    expected: dict[str, Any]
    problems: dict[str, str]
    inputs: dict[str, Any] | None = None
    """The row's inputs as bound to the flow (what a judge may read)."""


async def run_eval(
    plan: Plan,
    spec: EvalSpec,
    data: str | os.PathLike[str] | None = None,
    *,
    assignment: Mapping[str, str] | None = None,
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
    """Score `plan` (its calls on the models they are to be measured on: see
    `llmflow.evals.prepare`) with `spec` on the labeled rows of `data` (default: the
    eval's own). `assignment`: what the plan's functions were pinned to (recorded in the
    report), and the models of judges it names. `session`: run in this open Session
    (then `backend`, `budget`, `cache`, `run_dir` and `retry` are the session's own).
    `limit`: only the first N rows. `only`: only the rows with these ids (the id
    column's values, else line numbers; a held-out split); the others are not run.
    `on_row`: called as each row is scored."""
    started = time.perf_counter()
    source = data if data is not None else spec.data
    if source is None:
        raise EvalError(f"eval '{spec.name}' names no data file: give data (--data ROWS)")
    if limit is not None and limit < 1:
        raise EvalError(f"limit is 1 or more, not {limit}")
    shown = shown_name(source)
    csv = source_format(source) == "csv"
    scorer = _Scorer(plan, spec, assignment or {}, shown)
    labels: dict[int, _Labeled] = {}
    rows = _with_inputs(
        bind_rows(
            plan,
            _labeled(read_records(source), spec, plan, labels, limit, csv),
            id_column=id_column,
            constants=constants,
            text=csv,
            shown=shown,
        ),
        labels,
        None if only is None else set(only),
    )
    run_seed = RunSeed(seed) if isinstance(seed, int) else seed
    functions: dict[str, Usage] = {}
    pending: list[asyncio.Task[RowScore]] = []

    async def scored(
        result: RowResult, label: _Labeled, session: Session, priced: float
    ) -> RowScore:
        row = await scorer.score(session, result, label, run_seed)
        row.priced = priced
        if on_row is not None:
            on_row(row)
        return row

    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = Session(
                backend=backend, budget=budget, cache=cache, run_dir=run_dir, retry=retry
            )
            await stack.enter_async_context(session)
        stack.push_async_callback(_cancel, pending)
        async for result in session.run_many(
            plan, rows, in_flight=in_flight, seed=run_seed, keep_calls=True
        ):
            for call in result.calls:
                functions.setdefault(call.function, Usage()).add(call)
            priced = _priced(plan, result.calls)
            result.calls = []  # summed up: a long eval's memory stays flat
            label = labels.pop(result.line, _Labeled({}, {}))
            pending.append(asyncio.ensure_future(scored(result, label, session, priced)))
        results = list(await asyncio.gather(*pending))
    results.sort(key=lambda r: r.line)
    total = Usage()
    for usage in [*functions.values(), *scorer.judge_usage.values()]:
        _merge(total, usage)
    names = {k: describe(m) for k, m in spec.metrics.items()}
    judged = {k for k, m in spec.metrics.items() if any(True for _ in judges([m]))}
    return EvalReport(
        eval=spec.name,
        flow=spec.flow,
        data=str(source),
        metrics=names,
        judged=judged,
        assignment=dict(assignment or {}),
        rows=results,
        scores=summarize(results, names, judged),
        functions=functions,
        judges=scorer.judge_usage,
        total=total,
        seconds=time.perf_counter() - started,
    )


async def _cancel(tasks: list[asyncio.Task[RowScore]]) -> None:
    """Scoring that is still going when the eval stops (an error, Ctrl-C) is cancelled."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _priced(plan: Plan, calls: Iterable[CallStats]) -> float:
    """What calls cost at their models' prices, answers from the cache or the journal
    included (`RowScore.priced`)."""
    total = 0.0
    for c in calls:
        model = plan.models.get(c.model)
        if model is not None and prices.priced(model):
            total += prices.prompt_dollars(model, c.input_tokens, c.cached_tokens, c.output_tokens)
    return total


def _merge(total: Usage, usage: Usage) -> None:
    for name in ("calls", "input_tokens", "cached_tokens", "output_tokens", "cache_hits"):
        setattr(total, name, getattr(total, name) + getattr(usage, name))
    total.dollars += usage.dollars
    total.seconds += usage.seconds
    total.models += [m for m in usage.models if m not in total.models]


def _labeled(
    records: Iterator[Record],
    spec: EvalSpec,
    plan: Plan,
    labels: dict[int, _Labeled],
    limit: int | None,
    text: bool,
) -> Iterator[Record]:
    """The records, each one's expected values put aside in `labels` (by line); a record
    with none usable becomes a problem record, which is not run."""
    for count, (line, fields, problem) in enumerate(records, 1):
        if limit is not None and count > limit:
            return
        if problem is None:
            label = _expected(fields, spec, plan, text)
            labels[line] = label
            if not label.expected:
                problem = "; ".join(label.problems.values()) or "no expected values"
        yield line, fields, problem


def _with_inputs(
    rows: Iterator[Row], labels: dict[int, _Labeled], only: set[RowId] | None
) -> Iterator[Row]:
    """The rows to run (those in `only`), each one's inputs kept with its label."""
    for row in rows:
        if only is not None and row.id not in only:
            labels.pop(row.line, None)
            continue
        if row.line in labels and row.problem is None:
            labels[row.line].inputs = row.inputs
        yield row


def _expected(fields: dict[str, Any], spec: EvalSpec, plan: Plan, text: bool) -> _Labeled:
    """A record's expected values; `text`: its fields are CSV cells, read as inputs are
    (the text itself for str and enum outputs and for numeric, JSON otherwise)."""
    label = _Labeled({}, {})
    nested = fields.get("expected", _MISSING)
    if nested is not _MISSING and not isinstance(nested, dict):
        problem = "the row's 'expected' is not an object of output → expected value"
        return _Labeled({}, {name: problem for name in spec.metrics})
    for name, metric in spec.metrics.items():
        raw = nested.get(name, _MISSING) if isinstance(nested, dict) else fields.get(name, _MISSING)
        where = f"expected[{quoted_name(name)}]" if isinstance(nested, dict) else quoted_name(name)
        if raw is _MISSING:
            label.problems[name] = f"no expected value for output {quoted_name(name)} ({where})"
            continue
        t = plan.outputs[name]
        try:
            if text and isinstance(raw, str) and not isinstance(metric, NumericMetric):
                raw = value_from_text(f"column {quoted_name(name)}", t, raw)
            label.expected[name] = builtin.expected_value(metric, t, raw)
        except InvalidValue as err:
            label.problems[name] = f"{where}: {clip(str(err), 200)}"
    return label


class _Scorer:
    """Scores a finished row, output by output; judges run as plans of one call."""

    def __init__(
        self, plan: Plan, spec: EvalSpec, assignment: Mapping[str, str], shown: str
    ) -> None:
        self.shown = shown
        self.plan = plan
        self.spec = spec
        self.assignment = assignment
        self.judge_usage: dict[str, Usage] = {}
        self._judge_plans: dict[str, Plan] = {}
        self._externs: dict[str, Callable[..., Any]] = {}

    async def score(
        self, session: Session, result: RowResult, label: _Labeled, seed: RunSeed | None
    ) -> RowScore:
        where = f"{self.shown}:{result.line}"
        row = RowScore(
            id=result.id,
            line=result.line,
            outputs=result.outputs,
            expected=label.expected,
            scores={},
            error=result.error,
            problems={k: f"{where}: {v}" for k, v in label.problems.items()},
            dollars=result.stats.dollars,
            seconds=result.stats.seconds,
        )
        if result.not_run:  # not the program's failure: the budget ran out
            row.error = row.error or "not run: the budget could not pay for it"
            return row
        if not label.expected or label.inputs is None:
            return row  # the row could not be run: a data problem, not scored
        for name, metric in self.spec.metrics.items():
            if name not in label.expected:
                continue
            if result.error is not None or name not in result.outputs:
                row.scores[name] = 0.0
                continue
            try:
                row.scores[name] = await self._one(
                    session, metric, self.plan.outputs[name], result, label, name, seed
                )
            except _Unscored as err:
                row.problems[name] = f"{where}: {err}"
        return row

    async def _one(
        self,
        session: Session,
        metric: Metric,
        t: Type,
        result: RowResult,
        label: _Labeled,
        name: str,
        seed: RunSeed | None,
    ) -> float:
        output, expected = result.outputs[name], label.expected[name]
        if isinstance(metric, JudgeMetric):
            return await self._judge(session, metric, t, result, label, output, expected, seed)
        if isinstance(metric, ExternMetric):
            return self._extern(metric, output, expected)
        if isinstance(metric, FieldsMetric) and _has_special(metric):
            return await self._fields(session, metric, t, result, label, output, expected, seed)
        return builtin.score(metric, t, output, expected)

    async def _fields(
        self,
        session: Session,
        metric: FieldsMetric,
        t: Type,
        result: RowResult,
        label: _Labeled,
        output: Any,
        expected: Any,
        seed: RunSeed | None,
    ) -> float:
        if not isinstance(output, dict) or not isinstance(expected, dict):
            return 0.0
        field_types = dict(getattr(t, "fields", ()))
        total = 0.0
        for field_name, field_metric in metric.fields.items():
            ft = field_types[field_name]
            got, want = output.get(field_name), expected.get(field_name)
            if isinstance(field_metric, JudgeMetric):
                total += await self._judge(
                    session, field_metric, ft, result, label, got, want, seed
                )
            elif isinstance(field_metric, ExternMetric):
                total += self._extern(field_metric, got, want)
            elif isinstance(field_metric, FieldsMetric) and _has_special(field_metric):
                total += await self._fields(
                    session, field_metric, ft, result, label, got, want, seed
                )
            else:
                total += builtin.score(field_metric, ft, got, want)
        return total / max(len(metric.fields), 1)

    def _extern(self, metric: ExternMetric, output: Any, expected: Any) -> float:
        func = self._externs.get(metric.target)
        if func is None:
            try:
                func = load_extern(metric.target, Path(self.plan.base_dir))
            except ExternError as err:
                raise EvalError(f"metric {metric.function}: {err.message}") from None
            self._externs[metric.target] = func
        try:
            value = func(output, expected)
        except Exception as err:  # the user's code: its failure is this row's problem
            why = f"{type(err).__name__}: {clip(redact(str(err)), 200)}"
            raise _Unscored(f"metric {metric.function} raised {why}") from None
        return _as_score(value, f"metric {metric.function}")

    async def _judge(
        self,
        session: Session,
        metric: JudgeMetric,
        t: Type,
        result: RowResult,
        label: _Labeled,
        output: Any,
        expected: Any,
        seed: RunSeed | None,
    ) -> float:
        plan = self._judge_plan(metric, t)
        given = {"output": output, "expected": expected}
        row_inputs = label.inputs or {}
        inputs = {
            name: given[name] if name in given else row_inputs.get(name) for name in metric.binds
        }
        run = await session.run(
            plan, inputs, row=result.id, seed=seed.for_row(result.id) if seed else None
        )
        usage = self.judge_usage.setdefault(metric.function, Usage())
        for call in run.calls:
            usage.add(call)
        if run.failures:
            raise _Unscored(f"judge {metric.function} failed: {clip(run.failures[0].message, 200)}")
        value = run.outputs["score"]
        if metric.returns == "enum":
            return metric.scores.get(value, 0.0)
        return _as_score(value, f"judge {metric.function}")

    def _judge_plan(self, metric: JudgeMetric, t: Type) -> Plan:
        """A plan of the judge's one call, its inputs typed as the values it is given."""
        key = f"{metric.function}:{t.model_dump_json()}"
        plan = self._judge_plans.get(key)
        if plan is not None:
            return plan
        assert metric.call is not None, "lowering fills in a judge's call"
        call = metric.call.model_copy()
        model = self.assignment.get(metric.function)
        if model is not None:
            call.model, call.pinned = model, True
        types = {i.name: i.type for i in self.plan.inputs}
        graph = Graph()
        specs = []
        ids = []
        for i, name in enumerate(metric.binds):
            node_type = t if name in ("output", "expected") else types[name]
            node = graph.add(
                InputNode(
                    id=f"j{i}", label=name, type=node_type, var=name, binding=Param(name=name)
                )
            )
            ids.append(node.id)
            specs.append(InputSpec(name=name, type=node_type))
        result_type = call.outputs[0].type
        graph.add(LLMNode(id="jcall", label=metric.function, type=result_type, args=ids, call=call))
        graph.add(
            OutputNode(id="jscore", label="score", type=result_type, args=["jcall"], name="score")
        )
        graph.outputs["score"] = "jscore"
        plan = Plan(
            flow=f"judge {metric.function}",
            file=self.plan.file,
            base_dir=self.plan.base_dir,
            inputs=specs,
            outputs={"score": result_type},
            graph=graph,
            models=self.plan.models,
            default_model=self.plan.default_model,
        )
        self._judge_plans[key] = plan
        return plan


class _Unscored(Exception):
    """An output that cannot be scored on this row (a judge or metric failed)."""


def _has_special(metric: FieldsMetric) -> bool:
    return any(
        isinstance(m, JudgeMetric | ExternMetric)
        or (isinstance(m, FieldsMetric) and _has_special(m))
        for m in metric.fields.values()
    )


def _as_score(value: Any, who: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
        shown = clip(repr(value), 60)
        raise _Unscored(f"{who} gave {shown}, not a score from 0 to 1")
    return float(value)


__all__ = ["EvalError", "RowsError", "judges", "run_eval"]
