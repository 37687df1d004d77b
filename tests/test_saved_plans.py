"""`llmflow run plan.json`: a saved plan runs without its source, as it was saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmflow import Plan, compile, run
from llmflow.cli import main
from llmflow.compiler.ir import PlanError

PROGRAM = """
model echo = scripted("parrot", reply="hello")

fn greet(name: str) -> greeting: str
\"\"\"Say hello to {{name}}: {{greeting}}\"\"\"

flow main(names: list[str]) -> greetings: list[str] {
    greetings = map n in names: greet(n)
}
"""


@pytest.fixture
def saved(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    source = tmp_path / "prog.llmflow"
    source.write_text(PROGRAM)
    assert main(["plan", str(source), "--json", "-i", 'names=["a","b"]']) == 0
    path = tmp_path / "plan.json"
    path.write_text(capsys.readouterr().out)
    source.unlink()  # the plan runs without its source
    return path


def test_a_saved_plan_runs_without_its_source(
    saved: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(saved), "-i", 'names=["a","b","c"]', "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"greetings": ["hello"] * 3}
    assert run(saved, {"names": ["x"]}) == {"greetings": ["hello"]}


def test_a_saved_plan_is_loaded_as_saved(saved: Path) -> None:
    data = json.loads(saved.read_text())
    data["decisions"].append({"rule": "by hand", "message": "edited"})
    saved.write_text(json.dumps(data))
    plan = compile(saved, inputs={"names": ["a", "b", "c", "d"]})  # not optimized again
    assert plan.to_json() == Plan.from_json(data).to_json()
    assert plan.decisions[-1].message == "edited"


def test_a_saved_plan_can_be_drawn_and_printed(
    saved: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(saved)]) == 0
    assert "greet" in capsys.readouterr().out
    assert main(["plan", str(saved), "-o", str(saved.with_suffix(".dot"))]) == 0
    assert "digraph" in saved.with_suffix(".dot").read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "plan JSON: not JSON: "),  # cut
        ("[1, 2]", "plan JSON: the plan: a list, not an object"),
        ('{"flow": 3}', "plan JSON: flow: Input should be a valid string"),
        ("\x00\xff", "plan JSON: not JSON"),
        ("[" * 100_000, "plan JSON"),  # hostile nesting
    ],
)
def test_a_bad_saved_plan_is_a_clear_error(
    saved: Path, capsys: pytest.CaptureFixture[str], text: str | None, message: str
) -> None:
    saved.write_text(saved.read_text()[:300] if text is None else text)
    assert main(["run", str(saved), "-i", 'names=["a"]']) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {saved}: ") and message in err
    assert "Traceback" not in err and "internal error" not in err
    with pytest.raises(PlanError, match=str(saved)):
        compile(saved)


def test_a_saved_plan_that_is_not_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["run", str(tmp_path / "missing.json")]) == 1
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "dir.json").mkdir()
    assert main(["run", str(tmp_path / "dir.json")]) == 1
    assert "not a file: it is a directory" in capsys.readouterr().err


def test_a_saved_plan_of_another_flow(saved: Path) -> None:
    with pytest.raises(Exception, match="this plan is of flow 'main', not 'other'"):
        compile(saved, "other")
