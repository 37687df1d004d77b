"""`llmflow eval PROGRAM`: the table on stderr, --json on stdout, the rows file, the
--min-score gate and its exit status, bad rows with file:line, --models side by side.
Scripted models (an echo and a constant) make every score known in advance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmflow.cli import main

PROGRAM = '''
model echo = scripted("echo")
model yes = scripted("yes", reply="positive")

enum Sentiment { positive, negative }

fn classify(review: str) -> sentiment: Sentiment
"""
{{review}}
{{sentiment}}
"""

flow main(review: str) -> sentiment: Sentiment {
    sentiment = classify(review)
}
'''
EVAL = """
eval dev(data = "rows.jsonl") {
    sentiment: exact
}
"""
ROWS = [
    {"id": "r1", "review": "positive", "expected": {"sentiment": "positive"}},
    {"id": "r2", "review": "negative", "expected": {"sentiment": "positive"}},
    {"id": "r3", "review": "negative", "expected": {"sentiment": "negative"}},
    {"id": "r4", "review": "negative", "sentiment": "negative"},
]
# echo answers the review: 1, 0, 1, 1 (0.75); yes answers positive: 1, 1, 0, 0 (0.5).


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prog.llmflow").write_text(PROGRAM + EVAL)
    (tmp_path / "bare.llmflow").write_text(PROGRAM)
    write_rows(tmp_path / "rows.jsonl", ROWS)
    return tmp_path


def write_rows(path: Path, rows: list[object]) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rows_file(err: str) -> Path:
    found = re.search(r"^rows: (.+) \(run ", err, re.MULTILINE)
    assert found, err
    return Path(found.group(1))


def test_the_table_goes_to_stderr_and_the_rows_to_a_file(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "prog.llmflow"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "eval dev: flow main on 4 rows" in err
    assert re.search(r"sentiment \(exact\)\s+0\.750 \[0\.30, 0\.95\] n=4", err), err
    assert "classify: 4 calls on echo" in err
    written = sorted(lines(rows_file(err)), key=lambda r: r["line"])  # as they finish
    assert [(r["id"], r["scores"]) for r in written] == [
        (1, {"sentiment": 1.0}),
        (2, {"sentiment": 0.0}),
        (3, {"sentiment": 1.0}),
        (4, {"sentiment": 1.0}),
    ]
    assert written[1]["outputs"] == {"sentiment": "negative"}
    assert written[1]["expected"] == {"sentiment": "positive"}
    assert written[1]["error"] is None


def test_json_on_stdout(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "prog.llmflow", "--json", "-q", "--id", "id"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert set(data) >= {"eval", "flow", "data", "rows", "scores", "functions", "total"}
    score = data["scores"]["sentiment"]
    assert score["score"] == 0.75 and score["rows"] == 4 and score["interval"] == "wilson"
    assert score["judged"] is False and len(score["ci95"]) == 2
    assert data["functions"]["classify"]["calls"] == 4


def test_models_side_by_side(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["eval", "prog.llmflow", "--models", "echo,yes", "--json", "--output", "r.jsonl"]) == 0
    )
    out, err = capsys.readouterr()
    reports = json.loads(out)
    assert [(r["model"], r["scores"]["sentiment"]["score"]) for r in reports] == [
        ("echo", 0.75),
        ("yes", 0.5),
    ]
    assert reports[1]["assignment"] == {"classify": "yes"}
    assert re.search(r"output\s+echo\s+yes", err)
    written = lines(work / "r.jsonl")
    assert [r["model"] for r in written] == ["echo"] * 4 + ["yes"] * 4
    assert sorted(r["line"] for r in written[:4]) == [1, 2, 3, 4]


def test_min_score_is_a_gate(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "prog.llmflow", "-q", "--min-score", "0.7"]) == 0
    assert main(["eval", "prog.llmflow", "-q", "--min-score", "0.8"]) == 1
    assert "below --min-score 0.8: sentiment scored 0.750" in capsys.readouterr().err
    assert main(["eval", "prog.llmflow", "-q", "--models", "echo,yes", "--min-score", "0.6"]) == 1
    assert "sentiment on yes scored 0.500" in capsys.readouterr().err


def test_bad_rows_are_shown_with_file_and_line(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_rows(
        work / "rows.jsonl",
        [
            ROWS[0],
            "{cut",
            {"review": "positive"},
            {"review": "x", "expected": {"sentiment": "meh"}},
        ],
    )
    assert main(["eval", "prog.llmflow"]) == 0
    err = capsys.readouterr().err
    assert "rows.jsonl:2: not JSON at column 2" in err
    assert "rows.jsonl:3: no expected value for output 'sentiment'" in err
    assert (
        "rows.jsonl:4: expected['sentiment']: expected one of 'positive' or 'negative', got" in err
    )
    assert re.search(r"1\.000 \[0\.21, 1\.00\] n=1", err), err


def test_metric_on_the_command_line(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", "bare.llmflow", "--data", "rows.jsonl", "--json", "-q"]
    assert main([*args, "--metric", "sentiment=exact"]) == 0
    assert json.loads(capsys.readouterr().out)["scores"]["sentiment"]["score"] == 0.75
    assert main([*args, "--metric", "sentiment=f1"]) == 1
    err = capsys.readouterr().err
    assert "error: f1 does not fit output 'sentiment': it is Sentiment" in err
    assert main([*args, "--metric", "sentiment"]) == 1
    assert "write OUTPUT=METRIC" in capsys.readouterr().err
    assert main(["eval", "bare.llmflow", "--metric", "sentiment=exact"]) == 1
    assert "--metric needs --data" in capsys.readouterr().err
    assert main(["eval", "bare.llmflow", "--data", "rows.jsonl"]) == 1
    assert "declares no eval" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.jsonl"], "cannot read missing.jsonl: No such file or directory"),
        (["--models", "echo,gpt9"], "--models: 'gpt9' is not a model of this program"),
        (["--eval", "test"], "no eval 'test' (evals: dev)"),
        (["--data", "."], "is a directory: --inputs reads a file"),
    ],
)
def test_errors_exit_1(
    work: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["eval", "prog.llmflow", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize(
    "args", [["--min-score", "2"], ["--min-score", "nan"], ["--limit", "0"], ["--budget", "-1"]]
)
def test_usage_errors_exit_2(work: Path, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["eval", "prog.llmflow", *args])
    assert exit.value.code == 2


def test_a_saved_plan_evaluates_as_its_program(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "prog.llmflow", "--json"]) == 0
    (work / "plan.json").write_text(capsys.readouterr().out)
    assert main(["eval", "plan.json", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["scores"]["sentiment"]["score"] == 0.75
    assert main(["eval", "prog.llmflow", "--flow", "main"]) == 1
    assert "--flow is for --metric" in capsys.readouterr().err


def test_limit(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "prog.llmflow", "--limit", "2", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.model
def test_the_example_on_the_embedded_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/triage_eval.llmflow end to end on SmolLM2: one labeled row, both
    outputs scored, every call on the default model."""
    monkeypatch.chdir(REPO)
    assert main(["eval", "examples/triage_eval.llmflow", "--limit", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["rows"] == 1 and report["failed"] == 0
    for name in ("sentiment", "issue"):
        score = report["scores"][name]
        assert score["rows"] == 1 and 0 <= score["score"] <= 1
        assert score["ci95"][0] <= score["score"] <= score["ci95"][1]
    assert report["functions"]["classify"]["models"] == ["small"]
    assert report["functions"]["extract_issue"]["calls"] == 1
    assert "sentiment (exact)" in err and "issue (fields)" in err


def test_a_rows_own_value_wins_over_an_inputs_default(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A defaulted input the rows give is theirs: only `-i` constants apply to every row
    (the defaults were once filled in as constants, and every row scored as the default)."""
    (work / "defaulted.llmflow").write_text(
        PROGRAM.replace("flow main(review: str)", 'flow main(review: str = "positive")') + EVAL
    )
    assert main(["eval", "defaulted.llmflow", "--id", "id", "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scores"]["sentiment"]["score"] == 0.75  # echo of each row's review
