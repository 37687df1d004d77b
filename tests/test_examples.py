"""Every example runs end to end on the embedded model (a few seconds each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOC = "examples/data/lighthouse.txt"

pytestmark = pytest.mark.model


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code = main(["run", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    return json.loads(out)


@pytest.fixture(autouse=True)
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_hello(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "examples/hello.llmflow", "-i", "name=Ada")
    assert list(out) == ["greeting"] and out["greeting"].strip()


def test_qa_over_doc_reuses_the_shared_document(capsys: pytest.CaptureFixture[str]) -> None:
    questions = json.dumps(["Who designed the tower?", "When was the light automated?"])
    out = run_json(
        capsys,
        "examples/qa_over_doc.llmflow",
        "-i",
        f"doc=@{DOC}",
        "-i",
        f"questions={questions}",
        "--stats",
    )
    assert len(out["outputs"]["answers"]) == 2
    stats = out["stats"]["default"]
    assert stats["calls"] == 2
    # The second question reads the document from the first call's KV state.
    assert stats["reused_prompt_tokens"] > 300


def test_qa_over_doc(capsys: pytest.CaptureFixture[str]) -> None:
    questions = json.dumps(["Who designed the tower?", "When was the light automated?"])
    out = run_json(
        capsys, "examples/qa_over_doc.llmflow", "-i", f"doc=@{DOC}", "-i", f"questions={questions}"
    )
    assert len(out["answers"]) == 2 and all(a.strip() for a in out["answers"])


def test_map_reduce_summary(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(
        capsys, "examples/map_reduce_summary.llmflow", "-i", f"text=@{DOC}", "-i", "chunk_size=1000"
    )
    assert len(out["parts"]) == 2 and out["summary"].strip()


def test_chain_summary(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(
        capsys, "examples/chain_summary.llmflow", "-i", f"text=@{DOC}", "-i", "chunk_size=1000"
    )
    assert out["steps"] == 2 and out["summary"].strip()


@pytest.mark.parametrize(
    "review", ["Great blender, quiet and strong.", "The lid cracked after two days."]
)
def test_review_triage(capsys: pytest.CaptureFixture[str], review: str) -> None:
    out = run_json(capsys, "examples/review_triage.llmflow", "-i", f"review={review}")
    assert out["sentiment"] in {"positive", "negative", "mixed"}
    if out["sentiment"] == "positive":
        assert out["action"].strip()
    else:
        assert out["action"].startswith("ticket: ")


def test_two_models(capsys: pytest.CaptureFixture[str]) -> None:
    opening = "On the last night before the light was automated, the keeper"
    out = run_json(capsys, "examples/two_models.llmflow", "-i", f"opening={opening}")
    assert out["story"].startswith(opening + " ") and len(out["story"]) > len(opening) + 5
    assert out["title"].strip()


def test_review_triage_over_a_dataset(tmp_path: Path) -> None:
    """The README's dataset example, on the embedded model: one line per row, by id."""
    out = tmp_path / "triage.jsonl"
    args = ["run", "examples/review_triage.llmflow", "--inputs", "examples/data/reviews.jsonl"]
    assert main([*args, "--id", "id", "--output", str(out), "--limit", "3", "-q"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["r1", "r2", "r3"]
    assert all(r["outputs"]["sentiment"] in {"positive", "negative", "mixed"} for r in rows)


def test_triage_eval_replays_its_cassette_with_no_model() -> None:
    """`llmflow test` on the committed cassette: the recorded verdicts, in a process where
    llama.cpp cannot even be imported (CI needs no model)."""
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "from llmflow.cli import main\n"
        "sys.exit(main(['test', 'examples/triage_eval.llmflow', '-q']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # the small models miss most cases
    assert "cassette examples/triage_eval.cassette.json: 28 replayed" in done.stderr
    assert "1 of 14 cases passed, 13 failed" in done.stderr
    assert "Traceback" not in done.stderr
