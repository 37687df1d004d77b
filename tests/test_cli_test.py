"""`llmflow test PROGRAM`: eval rows as cases on recorded answers: record once, replay
with no model, a changed prompt fails its case showing what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmflow.cli import main

PROGRAM = '''
model echo = scripted("echo")

enum Sentiment { positive, negative }

fn classify(review: str) -> sentiment: Sentiment
"""
{{review}}
{{sentiment}}
"""

flow main(review: str) -> sentiment: Sentiment {
    sentiment = classify(review)
}

eval dev(data = "rows.jsonl") {
    sentiment: exact
}
'''


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prog.llmflow").write_text(PROGRAM)
    rows = [
        {"id": "ok", "review": "positive", "expected": {"sentiment": "positive"}},
        {"id": "wrong", "review": "negative", "expected": {"sentiment": "positive"}},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_record_then_replay_with_no_model(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "prog.llmflow"]) == 1  # nothing recorded yet
    assert "record one with --record" in capsys.readouterr().err
    assert main(["test", "prog.llmflow", "--id", "id", "--record"]) == 1
    recorded = json.loads((work / "prog.cassette.json").read_text())
    assert len(recorded["entries"]) == 2
    capsys.readouterr()
    # Replayed (tests/runtime/test_cassette.py shows no backend is made): the same verdicts.
    assert main(["test", "prog.llmflow", "--id", "id"]) == 1
    err = capsys.readouterr().err
    assert "PASS dev ok" in err and "FAIL dev wrong" in err
    assert 'expected "positive", got "negative"' in err
    assert "cassette prog.cassette.json: 2 replayed" in err
    assert "1 of 2 cases passed, 1 failed" in err
    assert main(["test", "prog.llmflow", "--id", "id", "--min-score", "0"]) == 0


def test_a_changed_prompt_fails_showing_what_changed(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["test", "prog.llmflow", "--record", "-q"]) == 1
    (work / "prog.llmflow").write_text(PROGRAM.replace("{{review}}\n", "Review: {{review}}\n"))
    capsys.readouterr()
    assert main(["test", "prog.llmflow", "-q"]) == 1
    err = capsys.readouterr().err
    assert "no recorded answer for this request" in err
    assert "-positive\n+Review: positive" in err
    assert "Traceback" not in err and "0 of 2 cases passed" in err


def test_a_program_without_evals_is_a_clear_error(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "bare.llmflow").write_text(PROGRAM.split("eval dev")[0])
    assert main(["test", "bare.llmflow"]) == 1
    assert "declares no eval block" in capsys.readouterr().err
