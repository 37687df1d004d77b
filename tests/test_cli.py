"""The command line: exit codes, where output goes, input parsing. No model runs here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmflow.cli import MAX_INPUT_BYTES, main

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


ECHO = """
flow main(n: int, x: float, s: str, xs: list[str]) -> s2: str, x2: float {
    s2 = s
    x2 = x * x
}
"""
GOOD = {"n": "1", "x": "2", "s": "text", "xs": '["a"]'}


@pytest.fixture
def echo(tmp_path: Path) -> Path:
    """A program that calls no model: its outputs are its inputs (and x squared)."""
    path = tmp_path / "echo.llmflow"
    path.write_text(ECHO)
    return path


def strict_json(text: str) -> object:
    """Parse as JSON proper: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in the output")

    return json.loads(text, parse_constant=refuse)


def _run_inputs(echo: Path, *pairs: str, quiet: bool = False) -> list[str]:
    """`llmflow run echo --json` with GOOD inputs, each replaced by a pair given here."""
    given = {pair.partition("=")[0] for pair in pairs}
    args = ["run", str(echo), "--json", *(["-q"] if quiet else [])]
    for pair in [f"{k}={v}" for k, v in GOOD.items() if k not in given] + list(pairs):
        args += ["-i", pair]
    return args


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (
            "n=" + "9" * 5000,
            "input 'n' expects int written as JSON: an integer of 5000 digits is too long",
        ),
        ("x=NaN", "input 'x' expects float written as JSON: NaN is not JSON"),
        ("x=Infinity", "input 'x' expects float written as JSON: Infinity is not JSON"),
        ("x=-Infinity", "input 'x' expects float written as JSON: -Infinity is not JSON"),
        ("x=1e999", "input 'x' expects float written as JSON: '1e999' is out of range"),
        (
            "xs=" + "[" * 100_000 + "]" * 100_000,
            "input 'xs' expects list[str] written as JSON: nested deeper than 100 levels",
        ),
        ('xs=["\\ud800"]', "input 'xs' expects list[str] written as JSON: 0: a lone surrogate"),
        ("s=ab\udcff", "input 's' is not UTF-8 text (byte 0xff at offset 2)"),
        ('xs=["\udcc3"]', "input 'xs' is not UTF-8 text (byte 0xc3 at offset 2)"),
        ("bad\udcffname=1", "unknown input 'bad\\udcffname'"),
    ],
    ids=lambda case: case[:24],
)
def test_a_bad_input_is_an_input_error_naming_it(
    echo: Path, llmflow_home: Path, pair: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_run_inputs(echo, pair)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"error: {message}" in err
    assert "internal error" not in err and "Traceback" not in err
    assert not (llmflow_home / "runs").exists()  # no run folder for a run that never started


def test_a_non_utf8_argument_from_the_shell_is_an_input_error(echo: Path, tmp_path: Path) -> None:
    """The real path: the OS hands Python bytes, Python escapes the bad ones."""
    argv = [sys.executable, "-m", "llmflow.cli", "run", str(echo), "--json"]
    for key, value in {**GOOD, "s": "caf\xe9"}.items():
        argv += ["-i", f"{key}={value}".encode("latin-1")]
    env = {**os.environ, "LLMFLOW_HOME": str(tmp_path / "home"), "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(argv, capture_output=True, env=env, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr == b"error: input 's' is not UTF-8 text (byte 0xe9 at offset 3)\n"
    assert not (tmp_path / "home" / "runs").exists()


def test_an_input_given_twice_is_an_error_not_the_last_one(
    echo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_run_inputs(echo, "s=one", "s=two", "n=x", "n=2")) == 1
    err = capsys.readouterr().err
    assert "error: input 's' is given twice: give each input once" in err
    assert "error: input 'n' is given twice" in err
    assert "written as JSON" not in err  # the bad first n is not reported on top


def test_input_files_must_be_regular_utf8_files_of_bounded_size(
    echo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_with(path: Path) -> str:
        assert main(_run_inputs(echo, f"s=@{path}")) == 1
        out, err = capsys.readouterr()
        assert out == "" and "internal error" not in err
        return err

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    assert f"input 's': {latin1} is not UTF-8 text (byte 0xe9 at offset 3)" in run_with(latin1)
    bom_then_bad = tmp_path / "bom.txt"
    bom_then_bad.write_bytes(b"\xef\xbb\xbfok\xc3")
    assert "(byte 0xc3 at offset 5)" in run_with(bom_then_bad)
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text("hello", encoding="utf-16")
    assert "is not UTF-8 text (byte 0xff at offset 0)" in run_with(utf16)
    assert f"input 's': {tmp_path} is a directory, not a file" in run_with(tmp_path)
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as f:
        f.truncate(MAX_INPUT_BYTES + 1)  # sparse: no disk used
    assert f"input 's': {huge} is larger than 16 MiB" in run_with(huge)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading a FIFO blocked"))
    signal.alarm(20)
    try:
        assert f"input 's': {fifo} is not a regular file (a pipe or a device)" in run_with(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert main(_run_inputs(echo, f"xs=@{deep}")) == 1
    assert "input 'xs' expects list[str] written as JSON: nested deeper" in capsys.readouterr().err


def test_a_utf8_bom_is_not_part_of_an_input(
    echo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "bom.txt"
    text.write_bytes(b"\xef\xbb\xbfcaf\xc3\xa9")
    assert main(_run_inputs(echo, f"s=@{text}", quiet=True)) == 0
    assert strict_json(capsys.readouterr().out) == {"s2": "café", "x2": 4.0}


def test_json_output_is_always_json(echo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A value JSON cannot hold (x * x overflows to inf) fails its output at run time, and
    the others print; with the inputs known to the optimizer it is a compile error."""
    assert main([*_run_inputs(echo, "x=1e200", quiet=True), "-O0"]) == 1
    out, err = capsys.readouterr()
    assert strict_json(out) == {"s2": "text"}
    assert "4:10: error: * failed: the result of `*` is too large for a number" in err
    assert "not computed: x2" in err
    assert main(_run_inputs(echo, "x=1e200", quiet=True)) == 1
    out, err = capsys.readouterr()
    assert out == "" and "4:10: error: the result of `*` is too large for a number" in err


def test_plan_json_is_the_ir_graph(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "examples/qa_over_doc.llmflow", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["flow"] == "main"
    kinds = [n["kind"] for n in plan["graph"]["nodes"]]
    assert kinds == ["input", "input", "map", "output"]
    body = plan["graph"]["subgraphs"][plan["graph"]["nodes"][2]["bodies"]["body"]]
    (call,) = [n for n in body["nodes"] if n["kind"] == "llm"]
    assert call["call"]["function"] == "answer"
    assert {e["var"] for e in body["edges"]} == {"q", "doc"}


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("budget", ["nan", "inf", "-1", "-0.01", "ten"])
def test_a_budget_is_a_finite_amount_or_a_usage_error(
    budget: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("plan", "run"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "examples/hello.llmflow", "-i", "name=Ada", "--budget", budget])
        assert exit_.value.code == 2
        assert "argument --budget:" in capsys.readouterr().err


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


def test_plan_and_models_mask_a_url_password_written_in_the_program(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "p.llmflow"
    program.write_text(
        'model m = openai_compatible("x", base_url="http://u:Zb1Cd3Ef5Gh7Ij9@host/v1")\n'
        'fn f(a: str) -> b: str\n"""{{a}} {{b}}"""\n'
        "flow main(a: str) -> b: str {\n    b = f(a)\n}\n"
    )
    for command in (["plan"], ["plan", "--json"], ["models"], ["models", "--json"]):
        assert main([command[0], str(program), *command[1:]]) == 0
        out = capsys.readouterr().out
        assert "Zb1Cd3" not in out
        if "--json" in command:  # the options are there, masked inside their strings
            assert "http://u:[redacted]@host/v1" in out and json.loads(out)


@pytest.mark.model
def test_prompts_prints_each_prompt_and_answer_with_secrets_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFLOW_TEST_TOKEN", "hunter2-hunter2")
    args = ["run", "examples/hello.llmflow", "-i", "name=Ada hunter2-hunter2", "--prompts"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "── greet on default (" in err and "──\n[user]\nWrite a one-sentence" in err
    assert "greeting for Ada [redacted]." in err and "hunter2-hunter2" not in err
    assert "\n[answer]\n" in err
    assert main(args) == 0  # asked again: the answer comes from the response cache
    assert "── greet on default (cache) ──" in capsys.readouterr().err
    assert main(args[:-1]) == 0
    assert "[user]" not in capsys.readouterr().err  # only when asked for


OPTIONAL_INPUTS = """
enum Color { red, green }
flow main(nickname: str?, color: Color?, age: int?) -> name: str?, shade: Color?, years: int? {
    name = nickname
    shade = color
    years = age
}
"""


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (["nickname=Al", "color=red", "age=3"], {"name": "Al", "shade": "red", "years": 3}),
        (["nickname=42", "color=null", "age=null"], {"name": "42", "shade": None, "years": None}),
        (['nickname="Al"', "color=green", "age=7"], {"name": "Al", "shade": "green", "years": 7}),
    ],
)
def test_a_str_optional_input_takes_plain_text(
    tmp_path: Path,
    llmflow_home: Path,
    pairs: list[str],
    expected: dict,
    capsys: pytest.CaptureFixture[str],
) -> None:
    program = tmp_path / "opt.llmflow"
    program.write_text(OPTIONAL_INPUTS)
    args = ["run", str(program), "--json", "-q"]
    for pair in pairs:
        args += ["-i", pair]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == expected


def test_input_errors_are_in_our_words_not_pydantics(
    tmp_path: Path, llmflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "opt.llmflow"
    program.write_text(OPTIONAL_INPUTS.replace("age: int?", "age: int?, xs: list[int]"))
    args = ["run", str(program), "-i", "nickname=Al", "-i", "color=blue", "-i", "age=old"]
    assert main([*args, "-i", 'xs=[1, "a"]']) == 1
    err = capsys.readouterr().err
    assert "input 'age' expects int?: 'old' is not an integer (or null)" in err
    assert "input 'color' expects Color?: expected one of 'red' or 'green', got \"blue\"" in err
    assert "input 'xs' expects list[int]: item 1: expected an integer, got \"a\"" in err
    assert "Input should" not in err
