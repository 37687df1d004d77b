"""The gallery (examples/README.md): every example checks and plans with its sample
inputs, its drawn plan in docs/img/ is current, and the short ones run end to end on the
embedded model (small max_tokens; the longer ones are compiled and planned only)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import llmflow
from llmflow.cli import main
from llmflow.runtime.backends.scripted import ScriptedBackend

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "examples/data/lighthouse.txt").read_text()
TREE = ROOT / "examples/tree_of_thought.llmflow"
PASSAGES = json.loads((ROOT / "examples/data/passages.json").read_text())

SAMPLES: dict[str, dict[str, object]] = {
    "code_review_agents": {"spec": "a function that reverses a string"},
    "fewshot_classify": {"texts": ["The striker scored twice.", "Shares fell 3% on Monday."]},
    "tree_of_thought": {"question": "How can a small town reduce its traffic jams?"},
    "constrained_sentiment": {"review": "We had a great stay. The food is really good."},
    "resume_extract": {"resume": (ROOT / "examples/data/resume.txt").read_text()},
    "map_join": {"items": ["tea", "coffee"]},
    "rag_answer": {"question": "Who designed the lighthouse?", "passages": PASSAGES},
    "judge_eval": {"passage": DOC, "question": "Who designed the lighthouse?"},
}


@pytest.fixture(autouse=True)
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_example_plans_with_its_sample_inputs(name: str) -> None:
    plan = llmflow.compile(ROOT / f"examples/{name}.llmflow", inputs=SAMPLES[name])
    assert plan.calls() and plan.total is not None and plan.total.instances >= 1


def test_every_example_has_a_section_and_a_picture() -> None:
    readme = (ROOT / "examples/README.md").read_text()
    for name in SAMPLES:
        assert f"examples/{name}.llmflow" in readme, f"{name} has no section in examples/README.md"
        assert f"../docs/img/{name}.svg" in readme
        assert (ROOT / f"docs/img/{name}.svg").is_file()


def _drawn(svg: str) -> list[str]:
    """What a picture says (its labels and titles), not where Graphviz put them."""
    return sorted(re.findall(r"<(?:text|title)[^>]*>([^<]*)<", svg))


@pytest.mark.graphviz("dot")
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_committed_pictures_are_current(name: str, tmp_path: Path) -> None:
    fresh = tmp_path / f"{name}.svg"
    assert main(["plan", f"examples/{name}.llmflow", "-o", str(fresh)]) == 0
    committed = (ROOT / f"docs/img/{name}.svg").read_text()
    hint = f"redraw it: llmflow plan examples/{name}.llmflow -o docs/img/{name}.svg"
    assert _drawn(fresh.read_text()) == _drawn(committed), hint


def run(capsys: pytest.CaptureFixture[str], name: str, *inputs: str) -> dict:
    code = main(["run", f"examples/{name}.llmflow", *inputs, "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.model
def test_constrained_sentiment_asks_the_follow_up_its_label_picks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run(capsys, "constrained_sentiment", "-i", "review=The lid cracked and it leaks.")
    assert out["sentiment"] in ("positive", "neutral", "negative") and out["analysis"].strip()


@pytest.mark.model
def test_fewshot_classify_shares_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    texts = json.dumps(SAMPLES["fewshot_classify"]["texts"])
    code = main(
        ["run", "examples/fewshot_classify.llmflow", "-i", f"texts={texts}"]
        + ["--json", "--stats", "-q"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert len(data["outputs"]["topics"]) == 2
    assert set(data["outputs"]["topics"]) <= {"sports", "business", "science", "politics"}
    assert data["stats"]["default"]["reused_prompt_tokens"] > 50  # the examples, once


@pytest.mark.model
def test_code_review_agents_write_test_and_review(capsys: pytest.CaptureFixture[str]) -> None:
    """The three agents on the embedded model, each answer cut to a few tokens."""
    spec = SAMPLES["code_review_agents"]["spec"]
    out = run(capsys, "code_review_agents", "-i", f"spec={spec}", "-i", "limit=8")
    assert out["code"].strip() and out["tests"].strip() and out["comments"].strip()
    assert out["verdict"] in ("approve", "request_changes")


@pytest.mark.model
def test_tree_of_thought_extends_the_path_by_the_best_step(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One level: BREADTH sampled steps, each scored, the best one appended."""
    question = SAMPLES["tree_of_thought"]["question"]
    inputs = ["-i", f"question={question}", "-i", "depth=1", "-i", "limit=8"]
    out = run(capsys, "tree_of_thought", *inputs)
    assert out["path"].startswith("(start) ") and out["path"] != "(start) "
    assert out["answer"].strip()


def test_tree_of_thought_cannot_be_zero_wide_nor_negatively_deep(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """BREADTH is a sample count, so 0 is a compile error; a negative `depth` fails the
    loop before any call, with the count it was given."""
    source = TREE.read_text()
    narrow = tmp_path / "narrow.llmflow"
    narrow.write_text(source.replace("const BREADTH = 3", "const BREADTH = 0"))
    assert main(["check", str(narrow)]) == 1
    assert "the number of samples must be a positive integer constant" in capsys.readouterr().err
    backend = ScriptedBackend(lambda request: "7")
    with pytest.raises(llmflow.RunError) as caught:
        llmflow.run(
            ROOT / "examples/tree_of_thought.llmflow", {"question": "q", "depth": -1}, backend
        )
    assert "repeat ≤depth: the count must be an int of 0 or more, but it is -1" in str(caught.value)
    assert backend.served == []


@pytest.mark.model
def test_map_join(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "map_join", "-i", 'items=["tea", "coffee"]')
    body = out["text"].split("\n\n", 1)[1]
    assert [line.split(":")[0] for line in body.splitlines()] == ["tea", "coffee"]


@pytest.mark.model
def test_rag_answer_cites_only_relevant_passages(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(
        capsys,
        "rag_answer",
        "-i",
        "passages=@examples/data/passages.json",
        "-i",
        "question=Who designed the lighthouse?",
    )
    assert set(out["used"]) <= {1, 2, 3, 4} and out["answer"].strip()


@pytest.mark.model
def test_judge_eval_reports_a_judged_score(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "examples/judge_eval.llmflow", "--limit", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "judged" in out + err and "Traceback" not in err


@pytest.mark.model
def test_resume_extract_finishes_inside_its_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    """Unbounded, the 135M model repeats a skill until max_tokens cuts the JSON off; the
    bounds in the schema make the grammar close the lists."""
    resume = ROOT / "examples/data/resume.txt"
    argv = ["run", str(ROOT / "examples/resume_extract.llmflow"), "-i", f"resume=@{resume}"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 1 <= out["skills"] <= 8 and len(out["parsed"]["jobs"]) <= 4
    assert all(len(skill) <= 30 for skill in out["parsed"]["skills"])
