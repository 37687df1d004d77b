"""Golden error files: what `llmflow check` prints for each bad program in golden/.

Every `golden/NAME.llmflow` has a `golden/NAME.txt` beside it holding the exact stderr of
`llmflow check tests/compiler/golden/NAME.llmflow` run from the repository root.

Regenerate them all after an intended change of messages with

    LLMFLOW_UPDATE_GOLDEN=1 /work/venv/bin/pytest tests/compiler/test_golden.py

and read the diff before committing it: message, position and caret must be right.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmflow.cli import main

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
REPO = HERE.parent.parent
UPDATE = os.environ.get("LLMFLOW_UPDATE_GOLDEN") == "1"

PROGRAMS = sorted(p.stem for p in GOLDEN.glob("*.llmflow"))

# Each error kind the checker reports has a golden file; a file going missing should fail.
REQUIRED = {
    "syntax_errors",
    "none_errors",
    "narrowing_limits",
    "malformed_placeholder",
    "template_unknown_variable",
    "unknown_option",
    "output_never_generated",
    "flow_output_never_assigned",
    "unknown_function",
    "unknown_variable",
    "unknown_type",
    "unknown_enum_member",
    "unknown_record_field",
    "unknown_model",
    "unknown_decorator",
    "unknown_backend",
    "wrong_argument_count",
    "wrong_argument_type",
    "unknown_keyword",
    "condition_not_bool",
    "assigned_twice",
    "dependency_cycle",
    "flow_recursion",
    "import_file_missing",
    "import_stdlib_missing",
    "extern_import_error",
    "extern_signature",
    "api_key",
    "declared_twice",
    "huge_literals",
    "base_url_errors",
    "import_not_a_program",
    "secret_on_error_line",
    "long_line",
    "eval_metric_errors",
    "eval_judge_errors",
    "eval_declaration_errors",
    "eval_syntax_error",
    "const_errors",
    "system_section_errors",
    "sample_errors",
    "sample_greedy",
    "repeat_count_errors",
}


def _run_check(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.chdir(REPO)
    code = main(["check", f"tests/compiler/golden/{name}.llmflow"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_required_golden_exists() -> None:
    missing = sorted(REQUIRED - set(PROGRAMS))
    assert not missing, f"golden programs missing: {missing}"
    without_txt = [n for n in PROGRAMS if not (GOLDEN / f"{n}.txt").exists() and not UPDATE]
    assert not without_txt, f"run with LLMFLOW_UPDATE_GOLDEN=1 to create: {without_txt}"


@pytest.mark.parametrize("name", PROGRAMS)
def test_golden(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run_check(name, monkeypatch, capsys)
    expected_file = GOLDEN / f"{name}.txt"
    if UPDATE:
        expected_file.write_text(err, encoding="utf-8")
    assert "Traceback" not in err
    assert "internal error" not in err
    assert out == ""
    assert code == 1
    assert err.endswith(" error\n") or err.endswith(" errors\n")
    assert err == expected_file.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", PROGRAMS)
def test_golden_count_matches_diagnostics(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The final count line agrees with the number of `error:` headers printed."""
    _, _, err = _run_check(name, monkeypatch, capsys)
    headers = [line for line in err.splitlines() if ": error: " in line]
    last = err.splitlines()[-1]
    count = len(headers)
    assert last == f"1 file checked: {count} error{'s' if count != 1 else ''}"
    for header in headers:
        assert header.startswith(f"tests/compiler/golden/{name}.llmflow:")
