"""Token builtins count with the embedded models' real vocabularies (loaded alone, no
weights), so a piece that `chunk_tokens` makes fits its budget on that tokenizer."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import llmflow
from llmflow.errors import CompileError
from llmflow.stdlib import tokenizers
from llmflow.stdlib.builtins import BuiltinError, evaluate

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "examples/data/lighthouse.txt").read_text()


def call(name: str, *args: Any, **keywords: Any) -> Any:
    return evaluate(name, list(keywords), [*args, *keywords.values()])


def test_count_tokens_is_the_tokenizers_count_not_a_character_guess() -> None:
    assert call("count_tokens", "Hello world") == 2
    # SmolLM2 spends a token per digit: a character-based guess would say about 3.
    assert call("count_tokens", "1234567890") == 10
    assert call("count_tokens", "") == 0
    assert call("count_tokens", DOC, model="gemma3-270m") != call("count_tokens", DOC)


@pytest.mark.parametrize("size", [40, 120])
def test_chunk_tokens_fit_the_budget_and_cover_the_text(size: int) -> None:
    pieces = call("chunk_tokens", DOC, size)
    assert len(pieces) > 1
    assert all(tokenizers.count_tokens(p) <= size for p in pieces)
    assert " ".join(pieces).split() == DOC.split()  # nothing lost, nothing repeated
    assert all(not p[0].isspace() and not p[-1].isspace() for p in pieces)


def test_chunk_tokens_prefers_sentence_boundaries() -> None:
    pieces = call("chunk_tokens", DOC, 120)
    assert sum(p.endswith(".") for p in pieces) >= len(pieces) - 1


def test_chunk_tokens_overlap_repeats_the_end_of_each_piece() -> None:
    plain = call("chunk_tokens", DOC, 80)
    shared = call("chunk_tokens", DOC, 80, overlap=20)
    assert len(shared) > len(plain)
    for before, after in zip(shared, shared[1:], strict=False):
        start = " ".join(after.split()[:3])
        assert start in before and before.rindex(start) > len(before) // 2


def test_chunk_tokens_cuts_a_run_longer_than_the_budget() -> None:
    pieces = call("chunk_tokens", "x" * 500, 10)
    assert "".join(pieces) == "x" * 500 and all(len(p) > 0 for p in pieces)


def test_truncate_tokens() -> None:
    cut = call("truncate_tokens", DOC, 12)
    assert DOC.startswith(cut) and tokenizers.count_tokens(cut) <= 12
    assert DOC[len(cut)] in " \n"  # at a word boundary
    assert call("truncate_tokens", "short text", 50) == "short text"
    assert call("truncate_tokens", DOC, 0) == ""


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("count_tokens", ["x", "gpt-4o"], "no tokenizer for 'gpt-4o': name an embedded model"),
        ("chunk_tokens", ["x", 0], "chunk size must be positive"),
        ("chunk_tokens", ["x", 5, 5], "overlap must be at least 0 and smaller"),
        ("truncate_tokens", ["x", -1], "cannot be negative"),
    ],
)
def test_token_builtins_fail_with_the_reason(name: str, args: list[Any], message: str) -> None:
    keywords = {"count_tokens": [], "chunk_tokens": [], "truncate_tokens": []}[name]
    if name == "count_tokens":
        keywords = ["model"]
        args = [args[0], args[1]]
    if name == "chunk_tokens" and len(args) == 3:
        keywords = ["overlap"]
    with pytest.raises(BuiltinError, match=message):
        evaluate(name, keywords, args)


def test_the_checker_types_them_and_the_planner_computes_them(tmp_path: Path) -> None:
    """With the text known at plan time, the map over `chunk_tokens` has its exact size."""
    program = tmp_path / "prog.llmflow"
    program.write_text(
        textwrap.dedent(
            """
        fn gist(piece: str) -> gist: str
        \"\"\"
        {{piece}}
        {{gist | max_tokens=8}}
        \"\"\"

        flow main(text: str) -> n: int, gists: list[str] {
            n = count_tokens(text, model="gemma3-270m")
            gists = map p in chunk_tokens(text, 120, overlap=10): gist(truncate_tokens(p, 100))
        }
        """
        )
    )
    planned = llmflow.compile(program, inputs={"text": DOC})
    explained = " ".join(d.message for d in planned.decisions)
    assert f"runs {len(call('chunk_tokens', DOC, 120, overlap=10))} items" in explained


def test_a_wrong_argument_is_a_compile_error(compile_source: Any) -> None:
    with pytest.raises(CompileError) as err:
        compile_source(
            """
            flow main(n: int) -> k: int {
                k = count_tokens(n)
            }
            """
        )
    assert "argument 'text' of count_tokens() expects str, got int" in err.value.render()
