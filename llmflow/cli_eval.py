"""`llmflow eval PROGRAM`: score the program on labeled rows (docs/evals.md).

The eval runs once, or once per `--models` model (every call the program does not pin
on it), in one Session: models stay loaded, the cache and the budget hold across runs.
The table goes to stderr, `--json` prints the reports to stdout, each row's scores go
to a JSON-lines file, and `--min-score` makes it a gate (exit 1 below it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from llmflow.api import compile, is_saved_plan
from llmflow.cli_args import (
    add_measured_options,
    dollars,
    fraction,
    positive,
    profile_choice,
    seed,
)
from llmflow.errors import LLMFlowError
from llmflow.evals import evaluate, prepare
from llmflow.runtime import runs
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.calls import RunSeed
from llmflow.runtime.evals import EvalReport, RowScore, unpinned
from llmflow.runtime.runs import RunDir
from llmflow.runtime.session import Session, check_plan
from llmflow.runtime.store import dumps

EXAMPLE = (
    "llmflow eval examples/triage_eval.llmflow --limit 6\n"
    "  llmflow eval examples/triage_eval.llmflow --models small,gemma --json\n"
    "  llmflow eval prog.llmflow --data dev.jsonl --metric answer=exact --min-score 0.8"
)


SHOWN_PROBLEMS = 8
"""Rows whose problem the table shows (all of them are in the rows file)."""


def add_command(sub: argparse.ArgumentParser) -> None:
    """The options of `llmflow eval` (the parser is made by cli.py, as every command's)."""
    sub.add_argument("program", help="a .llmflow file")
    sub.add_argument("--eval", metavar="NAME", help="the eval block to run (default: the only one)")
    sub.add_argument("--data", metavar="ROWS", help="the labeled rows (default: the eval's data)")
    sub.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="OUTPUT=METRIC",
        help="score OUTPUT with METRIC (exact, contains(case = false), numeric(tolerance = 1), "
        "f1, ...) instead of a declared eval; give --data too",
    )
    sub.add_argument("--flow", help="with --metric: the flow to score (default: main)")
    sub.add_argument(
        "--models",
        metavar="A,B",
        help="run the eval once per model, every call the program does not pin on it",
    )
    sub.add_argument("--json", action="store_true", help="print the report(s) as JSON on stdout")
    sub.add_argument(
        "--min-score",
        type=fraction,
        metavar="X",
        help="exit 1 if any output's score is below X (a CI gate)",
    )
    sub.add_argument(
        "--output",
        metavar="FILE",
        help="write each row's outputs, expected values and scores here (default: in the "
        "run's folder)",
    )
    sub.add_argument("--limit", type=positive, metavar="N", help="only the first N rows")
    sub.add_argument("--id", metavar="COLUMN", help="each row's id (default: its line number)")
    sub.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input given to every row (NAME=@FILE reads a file)",
    )
    sub.add_argument(
        "--budget", type=dollars, metavar="USD", help="spend at most this much, judges included"
    )
    sub.add_argument(
        "--rows-in-flight", type=positive, default=16, metavar="N", help="rows at once"
    )
    sub.add_argument("--seed", type=seed, metavar="N", help="the seed sampled calls derive from")
    add_measured_options(sub)
    sub.add_argument("--no-cache", action="store_true", help="ask the models again")
    sub.add_argument("-q", "--quiet", action="store_true", help="no table on stderr")


def constant_inputs(plan: Any, pairs: list[str]) -> dict[str, Any]:
    """The `-i` inputs every row gets: only those given (a default filled in here would
    win over every row's own value)."""
    from llmflow.cli import parse_inputs

    given = {pair.partition("=")[0] for pair in pairs}
    return {k: v for k, v in parse_inputs(plan, pairs, partial=True).items() if k in given}


def _metrics(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, metric = pair.partition("=")
        if not sep or not name.strip() or not metric.strip():
            raise LLMFlowError(f"--metric {pair!r}: write OUTPUT=METRIC, e.g. answer=exact")
        if "\n" in pair:
            raise LLMFlowError("--metric: a metric is one line")
        out[name.strip()] = metric.strip()
    return out


def run_eval(args: argparse.Namespace) -> int:
    metrics = _metrics(args.metric)
    if metrics and args.eval:
        raise LLMFlowError("--metric scores without an eval block: give --metric or --eval")
    if args.flow and not metrics:
        raise LLMFlowError("--flow is for --metric: an eval block names the flow it scores")
    if metrics and not args.data:
        raise LLMFlowError("--metric needs --data: the labeled rows to score")
    base, spec = prepare(
        args.program, args.eval, metrics=metrics, flow=args.flow, optimize_plan=False
    )
    constants = constant_inputs(base, args.input)
    saved = is_saved_plan(args.program)  # runs as saved
    plan = (
        base
        if saved
        else compile(
            base,
            inputs=constants,
            budget=args.budget,
            profile=profile_choice(args),
            min_quality=args.min_quality,
        )
    )
    models = [m.strip() for m in args.models.split(",")] if args.models else [None]
    for model in models:
        if model is not None and model not in plan.models:
            raise LLMFlowError(
                f"--models: '{model}' is not a model of this program "
                f"(models: {', '.join(plan.models)})"
            )
    check_plan(plan, priced=args.budget is not None)
    run_dir = RunDir.create()
    meta: dict[str, Any] = {
        "program": str(Path(args.program).resolve()),
        "flow": plan.flow,
        "inputs": constants,
        "models": list(plan.models),
        "started": time.time(),
        "status": "running",
        "eval": spec.name,
    }
    run_dir.write_meta(meta)
    output = Path(args.output) if args.output else run_dir.path / "eval-rows.jsonl"
    budget = Budget(args.budget) if args.budget is not None else None
    cache = None if args.no_cache else ResponseCache(runs.home() / "cache", _warn)
    reports: list[tuple[str | None, EvalReport]] = []
    try:
        with output.open("w", encoding="utf-8") as rows_file:
            reports = asyncio.run(
                _run_all(
                    args, plan, spec.name, models, constants, budget, cache, run_dir, rows_file
                )
            )
    except OSError as err:
        raise LLMFlowError(f"cannot write {output}: {err.strerror}") from None
    finally:
        if cache is not None:
            cache.close()
        meta.update(status="done" if reports else "stopped", finished=time.time())
        run_dir.write_meta(meta)
    if not args.quiet:
        _table(reports, sys.stderr)
        sys.stderr.write(f"rows: {output} (run {run_dir.id})\n")
    if args.json:
        data = [_json(model, report) for model, report in reports]
        sys.stdout.write(json.dumps(data[0] if len(data) == 1 else data, indent=2) + "\n")
    if args.min_score is not None:
        below = [
            f"{s.output}{f' on {model}' if model else ''} scored {s.mean:.3f}"
            if s.mean is not None
            else f"{s.output}{f' on {model}' if model else ''} has no score"
            for model, report in reports
            for s in report.scores.values()
            if s.mean is None or s.mean < args.min_score
        ]
        if below:
            sys.stderr.write(f"below --min-score {args.min_score:g}: {'; '.join(below)}\n")
            return 1
    return 0


async def _run_all(
    args: argparse.Namespace,
    plan: Any,
    eval_name: str,
    models: list[str | None],
    constants: dict[str, Any],
    budget: Budget | None,
    cache: ResponseCache | None,
    run_dir: RunDir,
    rows_file: TextIO,
) -> list[tuple[str | None, EvalReport]]:
    seed = RunSeed(args.seed) if args.seed is not None else RunSeed.draw()
    reports: list[tuple[str | None, EvalReport]] = []
    async with Session(budget=budget, cache=cache, run_dir=run_dir) as session:
        for model in models:
            assignment = unpinned(plan, model) if model is not None else None

            progress = _Progress(model, live=not args.quiet and sys.stderr.isatty())

            def write(
                row: RowScore, model: str | None = model, progress: _Progress = progress
            ) -> None:
                line = row.to_json()
                if model is not None:
                    line = {"model": model, **line}
                rows_file.write(dumps(line) + "\n")
                rows_file.flush()
                progress.add(row)

            report = await evaluate(
                plan,
                eval_name,
                args.data,
                assignment,
                constants=constants,
                limit=args.limit,
                id_column=args.id,
                in_flight=args.rows_in_flight,
                session=session,
                seed=seed,
                on_row=write,
            )
            progress.done()
            reports.append((model, report))
    return reports


class _Progress:
    """A live line on stderr while a terminal watches: rows scored, failed, seconds."""

    def __init__(self, model: str | None, live: bool) -> None:
        self.label = f"{model}: " if model else ""
        self.live = live
        self.started = time.perf_counter()
        self.rows = self.failed = 0

    def add(self, row: RowScore) -> None:
        self.rows += 1
        self.failed += row.error is not None
        if self.live:
            elapsed = time.perf_counter() - self.started
            sys.stderr.write(
                f"\r{self.label}{self.rows} rows scored, {self.failed} failed, {elapsed:.1f}s\x1b[K"
            )
            sys.stderr.flush()

    def done(self) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[K")


def _json(model: str | None, report: EvalReport) -> dict[str, Any]:
    data = report.to_json()
    return {"model": model, **data} if model is not None else data


def _table(reports: list[tuple[str | None, EvalReport]], out: TextIO) -> None:
    """Scores per output (a column per model), then what each function's calls used."""
    if not reports:
        return
    first = reports[0][1]
    labels = [model or "score" for model, _ in reports]
    out.write(f"eval {first.eval}: flow {first.flow} on {len(first.rows)} rows of {first.data}\n\n")
    width = max([len("output"), *(len(f"{k} ({m})") for k, m in first.metrics.items())])
    cell = 34
    header = f"  {'output':<{width}}  " + "".join(f"{label:<{cell}}" for label in labels)
    out.write(header.rstrip() + "\n")
    for name, metric in first.metrics.items():
        shown = f"{name} ({metric})"
        cells = []
        for _, report in reports:
            s = report.scores[name]
            if s.mean is None:
                text = "no rows scored"
            else:
                text = f"{s.mean:.3f} [{s.low:.2f}, {s.high:.2f}] n={s.rows}"
            if s.judged:
                text += " judged"
            cells.append(f"{text:<{cell}}")
        out.write((f"  {shown:<{width}}  " + "".join(cells)).rstrip() + "\n")
    out.write("\n")
    for model, report in reports:
        head = f"{model}: " if model else ""
        for fn, usage in [*report.functions.items(), *report.judges.items()]:
            judge = " (judge)" if fn in report.judges else ""
            out.write(
                f"  {head}{fn}{judge}: {usage.calls} calls on {', '.join(usage.models)}, "
                f"{usage.input_tokens} in / {usage.output_tokens} out tokens, "
                f"${usage.dollars:.4f}, {usage.seconds:.1f}s\n"
            )
        failed = report.failed
        skipped = max((s.skipped for s in report.scores.values()), default=0)
        out.write(
            f"  {head}total: {report.total.calls} calls, ${report.total.dollars:.4f}, "
            f"{report.seconds:.1f}s; {failed} row{'s' if failed != 1 else ''} failed or "
            f"unreadable, {skipped} not scored\n"
        )
        problems = [
            (row.error or next(iter(row.problems.values()))).splitlines()[0]
            for row in report.rows
            if row.error or row.problems
        ]
        for problem in problems[:SHOWN_PROBLEMS]:
            out.write(f"  {head}{problem}\n")
        if len(problems) > SHOWN_PROBLEMS:
            out.write(
                f"  {head}… and {len(problems) - SHOWN_PROBLEMS} more rows (see the rows file)\n"
            )


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
