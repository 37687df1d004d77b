"""`llmflow tune PROGRAM`: the search over scripted models whose scores are known in
advance, the profile it writes beside the program, and `plan`/`run` choosing from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmflow.cli import main

PROGRAM = '''
model yes = scripted("yes", reply="positive")
model echo = scripted("echo", price_in=100, price_out=100)

enum Sentiment { positive, negative }

fn classify(review: str) -> sentiment: Sentiment
"""
{{review}}
{{sentiment}}
"""

flow main(review: str, topic: str = "x") -> sentiment: Sentiment {
    sentiment = classify(review)
}

eval dev(data = "rows.jsonl") {
    sentiment: exact
}
'''
# echo repeats the review: always right; yes says positive: right on half the rows.
# Reviews carry their row number so that no two prompts are alike (no cache hits).


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prog.llmflow").write_text(PROGRAM)
    with (tmp_path / "rows.jsonl").open("w") as rows:
        for i in range(20):
            s = "positive" if i % 2 else "negative"
            topic = "a" if i < 10 else "b"
            row = {"id": f"r{i}", "review": s, "topic": topic, "expected": {"sentiment": s}}
            rows.write(json.dumps(row) + "\n")
    return tmp_path


def tune(*args: str) -> int:
    return main(["tune", "prog.llmflow", "--id", "id", *args])


def test_a_target_chooses_the_cheapest_assignment_reaching_it_and_writes_the_profile(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tune("--target", "0.9", "--json") == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["chosen"]["assignment"] == {"classify": "echo"}
    assert result["held_out"]["score"]["mean"] == 1.0 and result["held_out"]["score"]["n"] == 10
    assert "--min-quality 0.9" in err
    profile = json.loads((work / "prog.profile.json").read_text())
    assert profile["baseline"]["assignment"] == {"classify": "yes"}
    assert profile["baseline"]["score"]["n"] == 10
    entry = profile["functions"]["classify"]["echo"]
    assert entry["score"]["mean"] == 1.0
    assert entry["per_call"]["dollars"] > 0  # per call, from the eval's usage

    # plan and run now assign from what was measured.
    assert main(["plan", "prog.llmflow", "--explain", "--min-quality", "0.9"]) == 0
    assert "classify → echo" in capsys.readouterr().out
    assert main(["plan", "prog.llmflow", "--explain"]) == 0
    explained = capsys.readouterr().out
    assert "classify → yes" in explained and "measured" in explained
    assert main(["plan", "prog.llmflow", "--explain", "--no-profile"]) == 0
    unmeasured = capsys.readouterr().out
    assert "(not measured)" in unmeasured and "measured model" not in unmeasured


def test_an_unreachable_target_says_so_and_exits_1(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tune("--target", "1.0", "--models", "yes", "--no-write") == 1
    err = capsys.readouterr().err
    assert "missed: no measured assignment reaches the target 1" in err
    assert not (work / "prog.profile.json").exists()


def test_by_category_chooses_a_model_per_value(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tune("--by", "topic", "--target", "0.9", "--json", "-q", "--no-write") == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["categories"]) == {"a", "b"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "nope"], "--models: 'nope' is not a model of this program"),
        (["--by", "nope"], "--by: 'nope' is not an input of flow main"),
        (["--metric", "sentiment=exact"], "--metric needs --data"),
        (["--data", "missing.jsonl"], "missing.jsonl"),
    ],
)
def test_bad_options_are_clear_errors(
    work: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert tune(*args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "internal error" not in err


def test_a_damaged_profile_is_an_error_with_its_position(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "prog.profile.json").write_text('{"llmflow_profile": 1,\n  "program": ')
    assert main(["plan", "prog.llmflow"]) == 1
    err = capsys.readouterr().err
    assert "prog.profile.json:2:" in err and "Traceback" not in err
    assert main(["plan", "prog.llmflow", "--no-profile"]) == 0


def test_answers_from_the_cache_are_priced_so_a_second_tune_chooses_the_same(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-tuning reads every answer from the cache: they cost nothing now, but the dear
    model must not look free (it once did, and a cost search would have taken it)."""
    assert tune("--target", "0.4", "--json", "-q", "--no-write") == 0
    first = json.loads(capsys.readouterr().out)
    assert tune("--target", "0.4", "--json", "-q", "--no-write") == 0
    again = json.loads(capsys.readouterr().out)
    dear = [p for p in again["points"] if p["assignment"] == {"classify": "echo"}]
    assert dear and dear[0]["dollars"] > 0
    assert again["chosen"]["assignment"] == first["chosen"]["assignment"] == {"classify": "yes"}
    assert again["chosen"]["dollars"] == first["chosen"]["dollars"]
    assert again["held_out"]["dollars"] == first["held_out"]["dollars"]


def test_a_metric_given_on_the_command_line_is_tuned_on(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data", "rows.jsonl", "--metric", "sentiment=exact", "--target", "0.9"]
    assert tune(*args, "--json", "-q", "--no-write") == 0
    assert json.loads(capsys.readouterr().out)["chosen"]["assignment"] == {"classify": "echo"}


ROUTED = '''
model yes = scripted("yes", reply="positive")
model echo = scripted("echo", price_in=100, price_out=100)

enum Sentiment { positive, negative }
enum Topic { films, food }

fn classify(topic: Topic, review: str) -> sentiment: Sentiment
"""
About {{topic}}:
{{review}}
{{sentiment}}
"""

flow main(topic: Topic, review: str) -> sentiment: Sentiment {
    sentiment = classify(topic, review)
}

eval dev(data = "rows.jsonl") {
    sentiment: exact
}
'''
# yes is right on every films review and on half the food ones; echo is right on all, dearly.


@pytest.fixture
def routed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prog.llmflow").write_text(ROUTED)
    with (tmp_path / "rows.jsonl").open("w") as rows:
        for i in range(40):
            topic = "films" if i < 20 else "food"
            s = "positive" if topic == "films" or i % 2 else "negative"
            row = {"id": f"r{i}", "topic": topic, "review": s, "expected": {"sentiment": s}}
            rows.write(json.dumps(row) + "\n")
    return tmp_path


def test_a_profile_by_category_makes_calls_route_by_their_input(
    routed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tune --by writes scores per value; a floor then routes each call by its topic:
    films on the cheap model, food on the dear one, cheaper than all-dear and as good."""
    assert tune("--by", "topic", "--target", "0.95", "-q") == 0
    profile = json.loads((routed / "prog.profile.json").read_text())
    by_value = profile["functions"]["classify"]["echo"]["categories"]
    assert by_value["input"] == "topic" and by_value["scores"]["food"]["mean"] == 1.0
    baseline = profile["baseline"]["categories"]["scores"]
    assert baseline["films"]["mean"] == 1.0 and baseline["food"]["mean"] < 1.0

    assert main(["plan", "prog.llmflow", "--min-quality", "0.95", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    (node,) = [n for n in plan["graph"]["nodes"] if n["kind"] == "llm"]
    assert node["call"]["model"] == "yes"
    assert plan["routes"] == {
        node["id"]: {"input": "topic", "models": {"food": "echo"}, "shares": {"food": 0.5}}
    }
    assert main(["plan", "prog.llmflow", "--min-quality", "0.95", "--explain"]) == 0
    assert "routes by topic: 1 value → echo (food); the rest on yes" in capsys.readouterr().out

    def evaluated(*args: str) -> dict[str, object]:
        assert main(["eval", "prog.llmflow", "--json", "-q", "--no-cache", *args]) == 0
        return json.loads(capsys.readouterr().out)

    routed_report = evaluated("--min-quality", "0.95")
    dear = evaluated("--models", "echo")
    assert routed_report["scores"]["sentiment"]["score"] == 1.0  # type: ignore[index]
    assert routed_report["total"]["models"] == ["yes", "echo"]  # type: ignore[index]
    assert 0 < routed_report["total"]["dollars"] < dear["total"]["dollars"]  # type: ignore[index,operator]


def test_a_retune_from_the_cache_prices_calls_as_the_first_tune_did(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cached answers cost nothing to fetch, but the profile's cost per call is what the
    model charges: else a re-tune would find the dear model free and route everything
    to it."""
    assert tune("--target", "0.9", "-q") == 0
    first = json.loads((work / "prog.profile.json").read_text())["functions"]["classify"]
    assert tune("--target", "0.9", "-q") == 0
    again = json.loads((work / "prog.profile.json").read_text())["functions"]["classify"]
    assert again["echo"]["per_call"]["dollars"] > 0
    assert again["echo"]["per_call"]["dollars"] == first["echo"]["per_call"]["dollars"]
