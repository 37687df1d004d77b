"""`llmflow doc`: signatures and docs of the standard library and the builtins, read from
their source (the `#` block directly above a declaration)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmflow.cli import main
from llmflow.cli_doc import all_entries, describe
from llmflow.compiler.modules import stdlib_modules
from llmflow.stdlib.builtins import BUILTINS


def doc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["doc", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_doc_lists_the_modules(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = doc(capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if line and not line.startswith("`")]
    assert names == ["builtins", *stdlib_modules()]
    assert re.search(r"^rank +Rank a list by pairwise comparison", out, re.M)


def test_doc_of_a_module_lists_its_declarations(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = doc(capsys, "rank")
    assert code == 0
    assert out.startswith("module rank\n  Rank a list by pairwise comparison")
    assert "  enum PairChoice { first, second }\n      Which of two items" in out
    assert (
        "  flow rank(items: list[str], criterion: str) -> ranked: list[str], wins: list[int]" in out
    )


def test_doc_of_a_name_shows_its_signature_doc_and_place(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = doc(capsys, "classify.classify")
    assert code == 0
    first, where = out.splitlines()[:2]
    assert first.startswith("flow classify(text: str, labels: list[str], instructions: str = ")
    assert first.endswith("-> label: str, reason: str, valid: bool")
    assert where == "    (flow, stdlib/classify.llmflow:33)"
    assert "    Classify `text` into one of `labels`" in out


def test_doc_of_a_decorated_function_shows_the_decorator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = doc(capsys, "answer_math")
    assert out.startswith("@needs(reasoning >= 0.1)\nfn answer_math(question: str) -> answer: str")
    assert "An answer to a math question" in out


def test_doc_of_a_builtin_uses_its_type_rule_and_docstring(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = doc(capsys, "chunk_tokens")
    assert out.startswith(
        'chunk_tokens(text: str, size: int, overlap: int = 0, model: str = "assigned") '
        "-> list[str]\n    (builtin, builtins)"
    )
    assert "paragraph, line, sentence or word boundaries" in out  # from the docstring
    _, out, _ = doc(capsys, "join")
    assert out.startswith('join(items, sep: str = "\\n") -> str')
    _, out, _ = doc(capsys, "format")
    assert out.startswith("format(template: str, name=value, …) -> str")


def test_doc_of_a_generic_builtin_names_its_type_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, start in [
        ("take", "take(items: list[T], n: int) -> list[T]\n"),
        ("flatten", "flatten(lists: list[list[T]]) -> list[T]\n"),
        ("first", "first(items: list[T]) -> T\n"),
        ("sum", "sum(items: list[int]) -> int\nsum(items: list[float]) -> float\n"),
        (
            "max",
            "max(a: list[T]) -> T  (T: int, float or str; an empty list fails)\nmax(a: T, b: T)",
        ),
    ]:
        _, out, _ = doc(capsys, name)
        assert out.startswith(start)
    builtins = [e.signature for e in all_entries() if e.kind == "builtin"]
    assert not [s for s in builtins if "-> any" in s or "-> T" in s and "[T" not in s]


def test_every_builtin_and_stdlib_declaration_has_a_doc() -> None:
    assert {e.name for e in all_entries() if e.kind == "builtin"} == set(BUILTINS)
    assert [e.name for e in all_entries() if not e.doc] == []


def test_an_unknown_name_is_an_error_with_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = doc(capsys, "chunk_token")
    assert code == 1 and out == ""
    assert err == (
        "error: no module, declaration or builtin named 'chunk_token': "
        "did you mean 'chunk_tokens'?\n"
    )
    code, _, err = doc(capsys, "rank.prefer_not")
    assert code == 1 and "named 'rank.prefer_not'" in err


def test_doc_of_a_program_file_follows_the_convention(tmp_path: Path) -> None:
    program = tmp_path / "lib.llmflow"
    program.write_text(
        "# A module of mine.\n"
        "\n"
        "# Not a doc: a blank line separates it.\n"
        "\n"
        "enum Mood { calm, busy }\n"
        "\n"
        "# Double a number.\n"
        "# Twice as much.\n"
        "flow double(n: int = 2) -> m: int {\n"
        "    m = n * 2\n"
        "}\n"
    )
    text = describe(str(program))
    assert text.splitlines() == [
        f"module {program}",
        "  A module of mine.",
        "",
        "  enum Mood { calm, busy }",
        "",
        "  flow double(n: int = 2) -> m: int",
        "      Double a number.",
    ]


@pytest.mark.parametrize(
    ("doc", "summary"),
    [
        (
            'The items as a list: one "1. item" line each. More.',
            'The items as a list: one "1. item" line each.',
        ),
        ("The integers 0 .. n-1. More.", "The integers 0 .. n-1."),
        ("Version 3. Then more.", "Version 3. Then more."),
        ("Pick one, e.g. the first. More.", "Pick one, e.g. the first."),
        ("Run `a. b` now! Later.", "Run `a. b` now!"),
        ("No end", "No end"),
    ],
)
def test_a_summary_ends_at_the_end_of_a_sentence(doc: str, summary: str) -> None:
    from llmflow.cli_doc import _first_sentence

    assert _first_sentence(doc) == summary


def test_builtin_docs_do_not_repeat_themselves(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("vote", "best_of", "range"):
        _, out, _ = doc(capsys, name)
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        assert len(lines) == len(set(lines))
        assert " .." not in lines[-1] or lines[-1].endswith("n-1.")
    _, out, _ = doc(capsys, "text")
    assert 'one "1. item" line each.' in out
