"""`eval` blocks: parsed with positions, checked into plan data (compiler/evalspec.py),
carried by the plan of the flow they score, and left out of a dataset run's digest."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

import llmflow
from llmflow.cli_dataset import plan_digest
from llmflow.compiler import ast
from llmflow.compiler.evalspec import (
    ContainsMetric,
    ExactMetric,
    FieldsMetric,
    JudgeMetric,
    Normalize,
    NumericMetric,
)
from llmflow.compiler.parse import parse_module
from llmflow.errors import CompileError

PROGRAM = '''
enum Sentiment { positive, negative }
enum Grade { good, fair, bad }
record Issue { component: str, severity: int, tags: list[str] }

fn classify(review: str) -> sentiment: Sentiment
"""{{review}} {{sentiment}}"""

fn extract(review: str) -> issue: Issue
"""{{review}} {{issue}}"""

fn grade(output: Sentiment, review: str) -> grade: Grade
"""{{review}} {{output}} {{grade}}"""

flow main(review: str) -> sentiment: Sentiment, issue: Issue {
    sentiment = classify(review)
    issue = extract(review)
}

flow other(review: str) -> sentiment: Sentiment {
    sentiment = classify(review)
}
'''
EVALS = """
eval dev(data = "data/dev.jsonl", flow = main) {
    sentiment: exact(case = false)
    issue: fields(severity = numeric(tolerance = 1), component = contains(normalize = true)),
}

eval judged { sentiment: judge(grade) }

eval elsewhere(flow = other) { sentiment: exact }
"""


def write(tmp_path: Path, source: str, name: str = "prog.llmflow") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_an_eval_block_parses_with_positions() -> None:
    module, diags = parse_module(EVALS, "e.llmflow")
    assert diags == []
    dev = module.decls[0]
    assert isinstance(dev, ast.EvalDecl)
    assert dev.name.name == "dev" and (dev.span.line, dev.span.col) == (2, 1)
    assert [k.name.name for k in dev.kwargs] == ["data", "flow"]
    first = dev.metrics[0]
    assert first.output.name == "sentiment" and (first.output.span.line, first.output.span.col) == (
        3,
        5,
    )
    assert isinstance(first.metric, ast.Call) and first.metric.func.name == "exact"
    judged = module.decls[1]
    assert isinstance(judged, ast.EvalDecl) and judged.args == [] and judged.kwargs == []


def test_the_plan_carries_the_evals_of_its_flow(tmp_path: Path) -> None:
    path = write(tmp_path, PROGRAM + EVALS)
    plan = llmflow.compile(path)
    assert list(plan.evals) == ["dev", "judged"]
    dev = plan.evals["dev"]
    assert dev.data == str(tmp_path / "data" / "dev.jsonl")
    assert dev.where == f"{path}:{PROGRAM.count(chr(10)) + 2}"
    assert dev.metrics["sentiment"] == ExactMetric(normalize=Normalize(case=False))
    issue = dev.metrics["issue"]
    assert isinstance(issue, FieldsMetric)
    assert list(issue.fields) == ["component", "severity", "tags"]  # declaration order
    assert issue.fields["severity"] == NumericMetric(tolerance=1)
    assert issue.fields["component"] == ContainsMetric(
        normalize=Normalize(case=False, whitespace=False, punctuation=False, articles=False)
    )
    assert issue.fields["tags"].kind == "f1"  # a field's default metric: by its type
    judge = plan.evals["judged"].metrics["sentiment"]
    assert isinstance(judge, JudgeMetric)
    assert judge.binds == ["output", "review"] and judge.returns == "enum"
    assert judge.scores == {"good": 1.0, "fair": 0.5, "bad": 0.0}
    assert judge.call is not None and judge.call.params == ["output", "review"]
    other = llmflow.compile(path, "other")
    assert list(other.evals) == ["elsewhere"]


def test_evals_are_plan_json_and_read_back(tmp_path: Path) -> None:
    plan = llmflow.compile(write(tmp_path, PROGRAM + EVALS))
    data = json.loads(json.dumps(plan.to_json()))
    assert data["evals"]["dev"]["metrics"]["issue"]["kind"] == "fields"
    again = llmflow.Plan.from_json(data)
    assert again.evals == plan.evals


def test_an_eval_block_does_not_change_a_dataset_runs_plan_digest(tmp_path: Path) -> None:
    """Adding or editing an eval (after the flows) leaves what a run does as it was, so a
    dataset run resumes; `llmflow eval` reads the evals, `run --inputs` does not."""
    without = llmflow.compile(write(tmp_path, PROGRAM))
    with_evals = llmflow.compile(write(tmp_path, PROGRAM + EVALS))
    assert without.to_json() != with_evals.to_json()
    assert plan_digest(without) == plan_digest(with_evals)


def test_evals_of_an_imported_file_are_checked_not_carried(tmp_path: Path) -> None:
    write(tmp_path, PROGRAM + "\neval lib { sentiment: f1 }\n", "lib.llmflow")
    main = write(tmp_path, 'import "lib.llmflow"\n')
    with pytest.raises(CompileError) as err:
        llmflow.compile(main, "main")
    assert "f1 does not fit output 'sentiment'" in err.value.render()
    write(tmp_path, PROGRAM + "\neval lib { sentiment: exact }\n", "lib.llmflow")
    assert llmflow.compile(main, "main").evals == {}


def test_eval_is_reserved_as_a_variable_and_enum_is_a_metric(tmp_path: Path) -> None:
    source = PROGRAM + "\nflow third(q: str) -> x: str {\n    eval = q\n    x = eval\n}\n"
    with pytest.raises(CompileError) as err:
        llmflow.compile(write(tmp_path, source), "main")
    assert "'eval' is a reserved word" in err.value.render()
    plan = llmflow.compile(write(tmp_path, PROGRAM + "\neval e { sentiment: enum }\n"))
    assert plan.evals["e"].metrics["sentiment"] == ExactMetric()
    with pytest.raises(CompileError) as err:
        llmflow.compile(write(tmp_path, PROGRAM + "\neval e { issue: enum }\n"))
    assert "enum does not fit output 'issue': it is Issue" in err.value.render()


def _judge(data: dict) -> dict:  # type: ignore[type-arg]
    return data["metrics"]["sentiment"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("dev", lambda e: e["metrics"].update(sentiment={"kind": "x"}), "dev.metrics.sentiment"),
        ("dev", lambda e: e["metrics"].update(nope={"kind": "exact"}), "not an output of the plan"),
        ("dev", lambda e: e.update(flow="other"), "scores flow 'other', not this plan's"),
        ("judged", lambda e: _judge(e).update(call=None), "a judge without its call"),
        (
            "judged",
            lambda e: _judge(e)["call"].update(model="gpt-9"),
            "'gpt-9' is not one of the plan's models",
        ),
    ],
)
def test_a_saved_plans_evals_are_checked(tmp_path: Path, name: str, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    data = llmflow.compile(write(tmp_path, PROGRAM + EVALS)).to_json()
    edit(data["evals"][name])
    with pytest.raises(llmflow.PlanError, match=re.escape(message)):
        llmflow.Plan.from_json(json.dumps(data))
