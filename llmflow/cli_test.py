"""`llmflow test PROGRAM`: the program's eval rows as test cases, answered from the
answers recorded in its cassette (`PROGRAM.cassette.json`), so CI needs no model.

A case is one labeled row of an eval block; its assertions are the block's metrics: the
case passes when every scored output reaches `--min-score` (default 1: the metric
holds). `--record` asks the real models and records their answers; a request that no
longer matches its recording fails its case and shows what changed (docs/testing.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from llmflow import cli_cassette
from llmflow.cli_args import fraction
from llmflow.cli_eval import constant_inputs
from llmflow.compiler import check_file
from llmflow.errors import LLMFlowError
from llmflow.evals import evaluate, prepare
from llmflow.runtime.evals import EvalReport
from llmflow.runtime.session import Session, check_plan

EXAMPLE = (
    "llmflow test examples/triage_eval.llmflow --record   # once, against the models\n"
    "  llmflow test examples/triage_eval.llmflow            # then in CI, with no model"
)


def add_command(sub: argparse.ArgumentParser) -> None:
    """The options of `llmflow test` (the parser is made by cli.py)."""
    sub.add_argument("program", help="a .llmflow file with eval blocks")
    sub.add_argument("--eval", metavar="NAME", help="only this eval block's cases")
    sub.add_argument(
        "--min-score",
        type=fraction,
        default=1.0,
        metavar="X",
        help="a case passes when each scored output reaches X (default: 1)",
    )
    sub.add_argument("--id", metavar="COLUMN", help="each case's id (default: its line number)")
    sub.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input given to every case",
    )
    cli_cassette.add_options(sub)
    sub.add_argument("-q", "--quiet", action="store_true", help="print failures only")


def run_test(args: argparse.Namespace) -> int:
    if str(args.program).endswith(".json"):
        raise LLMFlowError("test a .llmflow program: its cassette lives beside it")
    names = [args.eval] if args.eval else sorted(check_file(args.program).evals)
    if not names:
        raise LLMFlowError(
            f"{args.program} declares no eval block: its rows are the test cases (docs/evals.md)"
        )
    cassette = cli_cassette.cassette_of(args, cli_cassette.default_path(args.program))
    assert cassette is not None
    if cassette.mode == "replay" and not cassette.entries:
        raise LLMFlowError(
            f"no recorded answers in {cassette.path}: record them once with "
            f"llmflow test {args.program} --record"
        )
    plans = [prepare(args.program, name) for name in names]
    for plan, _ in plans:
        check_plan(plan, reached=cli_cassette.sends(cassette))
    constants = constant_inputs(plans[0][0], args.input)
    reports = asyncio.run(_run(args, names, constants, cassette))
    failed = sum(_show(name, report, args.min_score, args.quiet) for name, report in reports)
    cli_cassette.report(cassette, sys.stderr)
    cases = sum(len(report.rows) for _, report in reports)
    sys.stderr.write(
        f"{cases - failed} of {cases} case{'s' if cases != 1 else ''} passed"
        + (f", {failed} failed" if failed else "")
        + "\n"
    )
    return 1 if failed else 0


async def _run(
    args: argparse.Namespace, names: list[str], constants: dict[str, Any], cassette: Any
) -> list[tuple[str, EvalReport]]:
    out = []
    async with Session(cassette=cassette) as session:
        for name in names:
            report = await evaluate(
                args.program, name, constants=constants, id_column=args.id, session=session
            )
            out.append((name, report))
    return out


def shown_value(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(name: str, report: EvalReport, least: float, quiet: bool) -> int:
    """Each case's verdict on stderr (failures with what was expected and got); returns
    how many failed."""
    failed = 0
    for row in sorted(report.rows, key=lambda r: r.line):
        bad = {o: s for o, s in row.scores.items() if s < least - 1e-12}
        ok = not bad and row.error is None and not row.problems
        failed += not ok
        if ok:
            if not quiet:
                sys.stderr.write(f"PASS {name} {row.id}\n")
            continue
        sys.stderr.write(f"FAIL {name} {row.id} ({report.data}:{row.line})\n")
        if row.error:
            sys.stderr.write(f"  {row.error}\n")
        for output, problem in row.problems.items():
            sys.stderr.write(f"  {output}: {problem}\n")
        for output, score in bad.items():
            sys.stderr.write(
                f"  {output}: expected {shown_value(row.expected.get(output))}, got "
                f"{shown_value(row.outputs.get(output))} (score {score:.3f})\n"
            )
    return failed
