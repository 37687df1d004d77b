"""The command line: exit codes, where output goes, input parsing. No model runs here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmflow.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_check_reports_success_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "examples/hello.llmflow", "examples/qa_over_doc.llmflow"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "2 files checked: no errors\n"


def test_check_prints_every_error_with_position_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.llmflow"
    bad.write_text("flow main(x: str) -> y: str {\n    y = uper(x)\n    z = w\n}\n")
    assert main(["check", str(bad)]) == 1
    _, err = capsys.readouterr()
    assert f"{bad}:2:9: error: unknown function 'uper'" in err
    assert "hint: did you mean 'upper'?" in err
    assert f"{bad}:3:9: error: unknown variable 'w'" in err
    assert "Traceback" not in err
    assert err.endswith("2 errors\n")


def test_run_names_a_missing_or_ill_typed_input(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "examples/qa_over_doc.llmflow", "-i", "doc=x", "-i", "questions=not json"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "input 'questions' expects list[str] written as JSON" in err
    assert main(["run", "examples/qa_over_doc.llmflow", "-i", "questions=[1]"]) == 1
    _, err = capsys.readouterr()
    assert "missing input 'doc' (str)" in err
    assert "input 'questions' expects list[str]" in err


def test_run_reads_an_input_from_a_file_and_reports_unreadable_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "examples/hello.llmflow", "-i", "name=@no/such/file.txt"]) == 1
    _, err = capsys.readouterr()
    assert "input 'name': cannot read no/such/file.txt" in err


def test_plan_json_is_the_ir_graph(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "examples/qa_over_doc.llmflow", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["flow"] == "main"
    kinds = [n["kind"] for n in plan["graph"]["nodes"]]
    assert kinds == ["input", "input", "map", "output"]
    body = plan["graph"]["nodes"][2]["bodies"]["body"]
    (call,) = [n for n in body["nodes"] if n["kind"] == "llm"]
    assert call["call"]["function"] == "answer"
    assert {e["var"] for e in body["edges"]} == {"q", "doc"}


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run"])
    assert exit_.value.code == 2


def test_models_lists_the_embedded_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "gemma3-270m" in out


def test_plan_explain_prints_each_pass(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "plan",
        "examples/qa_over_doc.llmflow",
        "-i",
        "doc=@examples/data/lighthouse.txt",
        "-i",
        'questions=["Who?", "When?", "Why?"]',
        "--explain",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    for rule in (
        "known values:",
        "model assignment:",
        "prefix analysis:",
        "estimates:",
        "scheduling priorities:",
    ):
        assert rule in out
    assert "map q in questions runs 3 items" in out
    assert "g1 on default: answer (3 calls) share" in out


def test_plan_O0_runs_no_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "examples/qa_over_doc.llmflow", "-O0", "--explain"]) == 0
    assert capsys.readouterr().out == "no optimizer passes ran (-O0)\n"


def test_plan_json_carries_the_decisions(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "examples/qa_over_doc.llmflow", "-i", 'questions=["a?", "b?"]', "--json"]
    assert main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    (group,) = plan["groups"]
    assert group["instances"] == 2 and group["model"] == "default"
    assert plan["total"]["instances"] == 2
    assert plan["critical_path"] and plan["priorities"]
    assert {d["rule"] for d in plan["decisions"]} >= {"model assignment", "prefix analysis"}


def test_a_key_written_in_a_program_is_not_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "leak.llmflow"
    program.write_text('model m = openai("gpt-4o-mini", api_key="sk-planted-secret-123")\n')
    assert main(["check", str(program)]) == 1
    out, err = capsys.readouterr()
    assert "API keys do not belong in program text" in err
    assert "sk-planted" not in out + err


def test_check_goes_on_past_files_that_are_not_programs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = "flow main(x: str) -> y: str {\n    y = upper(x)\n}\n"
    (tmp_path / "good.llmflow").write_text(good)
    (tmp_path / "bom.llmflow").write_bytes(b"\xef\xbb\xbf" + good.encode())
    (tmp_path / "folder.llmflow").mkdir()
    (tmp_path / "latin1.llmflow").write_bytes(b"# caf\xe9\n" + good.encode())
    (tmp_path / "utf16.llmflow").write_bytes(good.encode("utf-16"))
    (tmp_path / "binary.llmflow").write_bytes(b"\x7fELF\x02\x01\x00\x00")
    (tmp_path / "imports.llmflow").write_text('import "/proc/self/environ"\n' + good)
    (tmp_path / "typo.llmflow").write_text(good.replace("upper", "uper"))
    monkeypatch.chdir(tmp_path)
    files = ["good.llmflow", "folder.llmflow", "latin1.llmflow", "missing.llmflow"]
    files += ["utf16.llmflow", "bom.llmflow", "binary.llmflow", "imports.llmflow"]
    files += ["typo.llmflow", "good.llmflow"]
    assert main(["check", *files]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    headers = [line for line in err.splitlines() if ": error: " in line]
    assert headers == [
        "folder.llmflow: error: not a file: it is a directory",
        "latin1.llmflow: error: not UTF-8 text: byte 0xe9 at byte offset 5 (line 1, column 6) "
        "is invalid; save it as UTF-8",
        "missing.llmflow: error: no such file",
        "utf16.llmflow: error: not UTF-8 text: it starts with a UTF-16 byte order mark; "
        "save it as UTF-8",
        "binary.llmflow: error: not a text file: a NUL byte at byte offset 6",
        "imports.llmflow:1:1: error: cannot import '/proc/self/environ': import reads only "
        ".llmflow files",
        "typo.llmflow:2:9: error: unknown function 'uper'",
    ]
    assert err.endswith("\n10 files checked: 7 errors\n")
    assert "Traceback" not in err and "internal error" not in err


def test_run_reports_a_value_past_the_limits_at_its_node_and_keeps_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "limits.llmflow"
    program.write_text(
        "flow main(n: int) -> big: int, small: int {\n"
        "    big = len(range(n))\n"
        "    small = len(range(3))\n"
        "}\n"
    )
    assert main(["plan", str(program), "-i", "n=10000000000"]) == 1
    _, err = capsys.readouterr()
    assert f"{program}:2:15: error: range(10000000000) would have 10,000,000,000 items" in err
    assert main(["run", "-O0", str(program), "-i", "n=10000000000"]) == 1
    out, err = capsys.readouterr()
    assert "small: 3" in out
    assert f"{program}:2:15: error: range() failed: range(10000000000) would have" in err
    assert "not computed: big" in err
