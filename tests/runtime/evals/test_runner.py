"""evaluate(): labeled rows through the dataset runner, scored per output, with a
scripted backend so every score is known in advance."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

import llmflow
from llmflow.compiler.ir import Plan
from llmflow.errors import CompileError, LLMFlowError
from llmflow.evals import evaluate_sync, pin_functions
from llmflow.runtime.backends.base import GenerationRequest
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.evals import EvalError, unpinned, with_pins
from llmflow.runtime.rows import RowsError

PROGRAM = '''
model a = scripted("a")
model b = scripted("b")

enum Sentiment { positive, negative, mixed }
enum Verdict { right, partly, wrong }
record Issue { component: str, severity: int }

fn classify(review: str) -> sentiment: Sentiment
"""Classify: {{review}}
{{sentiment}}"""

fn issue_of(review: str) -> issue: Issue
"""Issue: {{review}}
{{issue}}"""

fn grade(output: Sentiment, expected: Sentiment, review: str) -> verdict: Verdict
"""Grade {{output}} against {{expected}} for {{review}}:
{{verdict}}"""

extern fn close_enough(output: int, expected: int) -> float = "evalmetrics:close"

flow main(review: str) -> sentiment: Sentiment, issue: Issue, severity: int {
    sentiment = classify(review)
    issue = issue_of(review)
    severity = issue.severity
}

eval dev(data = "rows.jsonl") {
    sentiment: exact
    issue: fields(severity = numeric(tolerance = 1))
    severity: close_enough
}

eval judged(data = "rows.jsonl") {
    sentiment: judge(grade)
}
'''

METRICS = """
def close(output, expected):
    if expected == 99:
        raise ValueError("no metric for 99")
    if expected == 98:
        return 2.0
    return 1.0 if abs(output - expected) <= 1 else 0.0
"""


def reply(request: GenerationRequest) -> str:
    """classify: the review's first word (b says `mixed` always); issue_of: JSON of the
    second and third words; grade: right or wrong."""
    prompt = request.turns[0].text
    if prompt.startswith("Classify:"):
        word = prompt.split()[1]
        if "boom" in prompt:
            return "kaboom"
        return "mixed" if request.model == "b" else word
    if prompt.startswith("Issue:"):
        _, _, component, severity = prompt.split()[:4]
        return json.dumps({"component": component, "severity": int(severity)})
    _, output, _, expected = prompt.split()[:4]
    return "right" if output == expected else "wrong"


def row(review: str, sentiment: str, component: str, severity: int, **extra: Any) -> str:
    expected = {
        "sentiment": sentiment,
        "issue": {"component": component, "severity": severity},
        "severity": severity,
    }
    return json.dumps({"review": review, "expected": expected, **extra})


ROWS = [
    row("positive lid 3", "positive", "lid", 3, id="r1"),  # all right
    row("negative lid 3", "positive", "lid", 4, id="r2"),  # sentiment wrong, severity off by 1
    row("mixed cap 1", "mixed", "lid", 5, id="r3"),  # component and severity wrong
    row("negative cap 2", "negative", "cap", 2, id="r4"),
]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "prog.llmflow").write_text(PROGRAM)
    (tmp_path / "evalmetrics.py").write_text(textwrap.dedent(METRICS))
    (tmp_path / "rows.jsonl").write_text("\n".join(ROWS) + "\n")
    return tmp_path


def run(work: Path, *args: Any, **options: Any) -> llmflow.EvalReport:
    backend = options.pop("backend", None) or ScriptedBackend(reply)
    return evaluate_sync(work / "prog.llmflow", *args, backend=backend, **options)


def test_scores_per_output(work: Path) -> None:
    report = run(work, "dev")
    assert [r.id for r in report.rows] == [1, 2, 3, 4]
    assert [r.scores["sentiment"] for r in report.rows] == [1, 0, 1, 1]
    assert [r.scores["issue"] for r in report.rows] == [1, 1, 0, 1]
    assert [r.scores["severity"] for r in report.rows] == [1, 1, 0, 1]
    s = report.scores["sentiment"]
    assert (s.mean, s.rows, s.failed, s.skipped, s.interval) == (0.75, 4, 0, 0, "wilson")
    assert s.low == pytest.approx(0.3006, abs=1e-4) and s.high == pytest.approx(0.9544, abs=1e-4)
    assert report.metrics == {
        "sentiment": "exact",
        "issue": "fields",
        "severity": "close_enough",
    }
    assert not report.judged and report.failed == 0


def test_usage_per_semantic_function(work: Path) -> None:
    report = run(work, "dev")
    assert set(report.functions) == {"classify", "issue_of"}
    assert report.functions["classify"].calls == 4
    assert report.functions["classify"].models == ["a"]
    assert report.total.calls == 8
    assert report.total.input_tokens == sum(u.input_tokens for u in report.functions.values())
    assert report.judges == {}


def test_scores_of_a_subset_of_rows(work: Path) -> None:
    report = run(work, "dev")
    held_out = report.summary({2, 3})
    assert held_out["sentiment"].mean == 0.5 and held_out["sentiment"].rows == 2
    assert report.summary()["issue"].mean == report.scores["issue"].mean


def test_a_failed_row_scores_zero_and_counts_as_failed(work: Path) -> None:
    (work / "rows.jsonl").write_text(
        "\n".join([*ROWS, row("boom lid 1", "positive", "lid", 1)]) + "\n"
    )
    report = run(work, "dev")
    failed = report.rows[-1]
    assert failed.error is not None and "classify" in failed.error
    assert failed.scores == {"sentiment": 0.0, "issue": 0.0, "severity": 0.0}
    assert report.scores["sentiment"].failed == 1 and report.scores["sentiment"].rows == 5
    assert report.failed == 1


def test_expected_values_at_the_top_of_a_row(work: Path) -> None:
    flat = json.dumps(
        {
            "review": "positive lid 3",
            "sentiment": "positive",
            "issue": {"component": "lid", "severity": 3},
            "severity": 3,
        }
    )
    (work / "rows.jsonl").write_text(flat + "\n")
    report = run(work, "dev")
    assert report.rows[0].scores == {"sentiment": 1.0, "issue": 1.0, "severity": 1.0}


def test_bad_rows_are_problems_with_file_and_line_and_are_not_run(work: Path) -> None:
    lines = [
        ROWS[0],
        "not json",
        json.dumps({"review": "positive lid 3"}),  # no expected values at all
        json.dumps({"review": "positive lid 3", "expected": ["positive"]}),
        json.dumps({"review": "positive lid 3", "expected": {"sentiment": "happy"}}),
        json.dumps({"review": 7, "expected": {"sentiment": "positive"}}),
        row("positive lid 3", "positive", "lid", 3).replace('"severity": 3}', '"severity": "x"}'),
    ]
    (work / "rows.jsonl").write_text("\n".join(lines) + "\n")
    backend = ScriptedBackend(reply)
    report = run(work, "dev", backend=backend)
    rows = report.rows
    where = str(work / "rows.jsonl")
    assert rows[1].error == f"{where}:2: not JSON at column 1 (Expecting value) in 'not json'"
    assert rows[2].error.startswith(f"{where}:3: no expected value for output 'sentiment'")
    assert "'expected' is not an object" in rows[3].error
    assert rows[4].problems["sentiment"].startswith(f"{where}:5: expected['sentiment']: ")
    assert "input 'review' expects str" in rows[5].error and rows[5].scores == {}
    # A row missing some expected values is scored on the others.
    assert rows[6].problems["severity"].startswith(f"{where}:7: expected['severity']")
    assert rows[6].problems["issue"].startswith(f"{where}:7: expected['issue']: field 'sev")
    assert set(rows[6].scores) == {"sentiment"}
    assert report.scores["sentiment"].rows == 2 and report.scores["sentiment"].skipped == 5
    ran = [s.request.turns[0].text for s in backend.served]
    assert len(ran) == 4  # rows 1 and 7, two calls each: no bad row was sent


def test_an_extern_metric_that_fails_is_a_problem_of_its_row(work: Path) -> None:
    (work / "rows.jsonl").write_text(
        "\n".join(
            [
                row("positive lid 3", "positive", "lid", 99),
                row("positive lid 3", "positive", "lid", 98),
            ]
        )
        + "\n"
    )
    report = run(work, "dev")
    first, second = report.rows
    assert "metric close_enough raised ValueError: no metric for 99" in first.problems["severity"]
    assert "close_enough gave 2.0, not a score from 0 to 1" in second.problems["severity"]
    assert report.scores["severity"].rows == 0 and report.scores["severity"].mean is None


def test_an_enum_judge_scores_through_the_same_session(work: Path) -> None:
    backend = ScriptedBackend(reply)
    report = run(work, "judged", backend=backend)
    assert [r.scores["sentiment"] for r in report.rows] == [1.0, 0.0, 1.0, 1.0]
    assert report.judged == {"sentiment"} and report.scores["sentiment"].judged
    assert report.judges["grade"].calls == 4
    assert "grade" not in report.functions
    assert report.total.calls == 4 * 3
    prompts = [
        s.request.turns[0].text for s in backend.served if "Grade" in s.request.turns[0].text
    ]
    assert "Grade negative against positive for negative lid 3:" in prompts


def test_assignment_pins_every_call_of_a_function(work: Path) -> None:
    backend = ScriptedBackend(reply)
    report = run(work, "dev", assignment={"classify": "b"}, backend=backend)
    models = {s.request.model for s in backend.served if "Classify" in s.request.turns[0].text}
    assert models == {"b"}
    assert report.functions["classify"].models == ["b"]
    assert report.functions["issue_of"].models == ["a"]
    assert report.scores["sentiment"].mean == 0.25  # b says mixed: right on r3 only
    assert report.assignment == {"classify": "b"}


def test_pinning_by_function_without_the_cli(work: Path) -> None:
    plan = llmflow.compile(work / "prog.llmflow")
    pinned = pin_functions(plan, {"issue_of": "b"})
    assert {n.call.function: (n.call.model, n.call.pinned) for n in pinned.calls()} == {
        "classify": ("a", False),
        "issue_of": ("b", True),
    }
    assert {n.call.model for n in plan.calls()} == {"a"}  # the plan given is unchanged
    assert unpinned(plan, "b") == {"classify": "b", "issue_of": "b"}
    runtime_only = with_pins(plan, {"issue_of": "b"})  # no optimizer: groups dropped
    moved = [n.id for n in runtime_only.calls() if n.call.function == "issue_of"]
    assert all(n.call.model == "b" for n in runtime_only.calls() if n.id in moved)
    assert not any(set(moved) & set(g.calls) for g in runtime_only.groups)
    assert not set(moved) & set(runtime_only.fallbacks)
    with pytest.raises(LLMFlowError, match="never calls"):
        pin_functions(plan, {"nope": "b"})
    with pytest.raises(LLMFlowError, match="does not declare"):
        pin_functions(plan, {"classify": "gpt-9"})


def test_a_compiled_or_saved_plan_evaluates_alike(work: Path) -> None:
    plan = llmflow.compile(work / "prog.llmflow")
    assert set(plan.evals) == {"dev", "judged"}
    saved = Plan.from_json(json.dumps(plan.to_json()))
    judge = saved.evals["judged"].metrics["sentiment"]
    assert judge.call is not None and judge.call.function == "grade"
    report = evaluate_sync(saved, "judged", backend=ScriptedBackend(reply))
    assert report.scores["sentiment"].mean == 0.75


def test_only_some_rows_run(work: Path) -> None:
    backend = ScriptedBackend(reply)
    report = run(work, "dev", only={2, 4}, backend=backend)
    assert [r.id for r in report.rows] == [2, 4] and len(backend.served) == 4
    assert [r.score for r in report.rows] == [pytest.approx(2 / 3), 1.0]
    by_id = run(work, "dev", only={"r3"}, id_column="id")
    assert [r.id for r in by_id.rows] == ["r3"]


def test_limit_and_data_given_at_run_time(work: Path) -> None:
    (work / "other.jsonl").write_text("\n".join(ROWS[1:]) + "\n")
    report = run(work, "dev", data=work / "other.jsonl", limit=2)
    assert [r.line for r in report.rows] == [1, 2]
    assert report.data == str(work / "other.jsonl")


def test_metrics_given_as_text(work: Path) -> None:
    report = run(work, metrics={"severity": "numeric(tolerance = 1)"}, data=work / "rows.jsonl")
    assert [r.scores["severity"] for r in report.rows] == [1, 1, 0, 1]
    with pytest.raises(CompileError) as err:
        run(work, metrics={"severity": "exakt"}, data=work / "rows.jsonl")
    assert "unknown metric 'exakt'" in err.value.render()


def test_errors_before_anything_runs(work: Path) -> None:
    with pytest.raises(EvalError, match="no eval 'nope' \\(evals: dev, judged\\)"):
        run(work, "nope")
    with pytest.raises(EvalError, match="several evals"):
        run(work)
    with pytest.raises(RowsError, match="cannot read .*missing.jsonl: No such file"):
        run(work, "dev", data=work / "missing.jsonl")
    with pytest.raises(LLMFlowError, match="never calls"):
        run(work, "dev", assignment={"summarize": "a"})


def test_the_report_is_json(work: Path) -> None:
    report = run(work, "judged")
    data = json.loads(json.dumps(report.to_json(rows=True)))
    assert data["scores"]["sentiment"]["judged"] is True
    assert data["scores"]["sentiment"]["ci95"][0] <= 0.75 <= data["scores"]["sentiment"]["ci95"][1]
    assert len(data["row_scores"]) == 4 and data["judges"]["grade"]["calls"] == 4


JUDGED = '''
model m = scripted("m")

enum Label { yes, no }

fn answer(q: str) -> a: str
"""Answer {{q}}
{{a}}"""

fn label(q: str) -> l: Label
"""Label {{q}}
{{l}}"""

fn rate(output: str, expected: str) -> score: float
"""Rate {{output}} {{expected}}
{{score}}"""

fn ok(output: str) -> good: bool
"""Ok {{output}}
{{good}}"""

flow main(q: str) -> a: str, b: str, l: Label {
    a = answer(q)
    b = answer(q)
    l = label(q)
}

eval dev(data = "rows.jsonl") {
    a: judge(rate)
    b: judge(ok)
    l: judge(ok)
}
'''


def judging(request: GenerationRequest) -> str:
    """answer echoes its question; rate answers the number in the question's first
    word (2 is out of range, "x" fails validation); ok says true for "good"."""
    prompt = request.turns[0].text
    words = prompt.split()
    if words[0] == "Answer":
        return words[1]
    if words[0] == "Label":
        return "yes" if words[1] == "good" else "no"
    if words[0] == "Rate":
        return "not a number" if words[1] == "x" else words[1]
    return "true" if words[1] in ("good", "yes") else "false"


def test_float_and_bool_judges_and_their_failures(tmp_path: Path) -> None:
    (tmp_path / "prog.llmflow").write_text(JUDGED)
    rows = [
        {"q": "0.25", "expected": {"a": "x", "b": "y", "l": "yes"}},
        {"q": "2", "expected": {"a": "x", "b": "y", "l": "no"}},
        {"q": "x", "expected": {"a": "x", "b": "y", "l": "yes"}},
        {"q": "good", "expected": {"a": "x", "b": "y", "l": "yes"}},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = evaluate_sync(tmp_path / "prog.llmflow", backend=ScriptedBackend(judging))
    first, second, third, fourth = report.rows
    assert first.scores["a"] == 0.25 and first.scores["b"] == 0.0
    assert "judge rate gave 2.0, not a score from 0 to 1" in second.problems["a"]
    assert "judge rate failed: rate(): output 'score' is not a valid float" in third.problems["a"]
    assert fourth.scores["b"] == 1.0
    # One judge for outputs of two types (str and an enum): each gets its own typed plan.
    assert [r.scores.get("l") for r in report.rows] == [0.0, 0.0, 0.0, 1.0]
    assert report.scores["a"].rows == 1 and report.scores["a"].skipped == 3
    assert report.scores["a"].interval == "bootstrap"
    assert report.judges["rate"].calls == 4 and report.judges["ok"].calls == 8


def test_csv_rows_read_expected_values_as_inputs_are(work: Path) -> None:
    (work / "rows.csv").write_text(
        "review,sentiment,severity,issue\n"
        'positive lid 3,positive,3,"{""component"": ""lid"", ""severity"": 3}"\n'
        "negative cap 2,negative,2.5,not json\n"
    )
    report = run(work, "dev", data=work / "rows.csv")
    first, second = report.rows
    assert first.scores == {"sentiment": 1.0, "issue": 1.0, "severity": 1.0}
    assert second.scores == {"sentiment": 1.0}
    assert "column 'issue' expects Issue written as JSON" in second.problems["issue"]
    assert second.problems["severity"].startswith(f"{work / 'rows.csv'}:3: 'severity': ")
