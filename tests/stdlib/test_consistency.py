"""`vote` and `best_of` (stdlib/builtins.py) and the self-consistency module written with
them (stdlib/consistency.llmflow)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler.ir import Plan
from llmflow.compiler.types import INT, STR, ListT, RecordT
from llmflow.runtime.backends.base import GenerationRequest
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.stdlib.builtins import BUILTINS, BuiltinError, evaluate

STDLIB = Path(__file__).resolve().parents[2] / "stdlib"


def test_vote_is_the_majority_and_a_tie_goes_to_the_first_seen() -> None:
    assert evaluate("vote", None, [["b", "a", "b", "c"]]) == "b"
    assert evaluate("vote", None, [["x", "y", "y", "x"]]) == "x"
    assert evaluate("vote", None, [["y", "x", "x", "y"]]) == "y"
    assert evaluate("vote", None, [[{"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": 3}]]) == {
        "a": 1,
        "b": 2,
    }
    with pytest.raises(BuiltinError, match="empty list"):
        evaluate("vote", None, [[]])


def test_best_of_takes_the_highest_score_and_the_earliest_of_ties() -> None:
    assert evaluate("best_of", None, [["a", "b", "c"], [1, 3, 3]]) == "b"
    assert evaluate("best_of", None, [["a", "b"], [0.5, -1]]) == "a"
    with pytest.raises(BuiltinError, match="2 items but 1 scores"):
        evaluate("best_of", None, [["a", "b"], [1]])


def test_their_types_are_the_items_type() -> None:
    record = RecordT(name="R", fields=(("a", STR),))
    assert BUILTINS["vote"].result([ListT(item=record)]) == record
    assert BUILTINS["vote"].result([STR]) == "expects a list, got str"
    assert BUILTINS["best_of"].result([ListT(item=STR), ListT(item=INT)]) == STR
    assert "list of numbers" in str(BUILTINS["best_of"].result([ListT(item=STR), ListT(item=STR)]))


def test_every_declaration_of_the_module_is_documented_by_the_comments_above_it() -> None:
    lines = (STDLIB / "consistency.llmflow").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(("const ", "fn ", "flow "))]
    assert len(starts) == 5
    assert all(lines[i - 1].startswith("# ") for i in starts)


def test_consistent_answer_votes_over_five_distinct_samples(
    compile_source: Callable[..., Plan],
) -> None:
    plan = compile_source(
        """
    import consistency

    flow main(q: str) -> answer: str, answers: list[str] {
        r = consistent_answer(q)
        answer = r.answer
        answers = r.answers
    }
    """
    )

    def reply(request: GenerationRequest) -> str:
        assert request.turns[0].role == "system" and "step by step" in request.turns[0].text
        assert request.seed is not None
        if request.max_tokens == 16:  # the answer after the reasoning
            return [" 12 ", "12.", " Twelve", "13", "TWELVE!"][request.seed % 5]
        return "Add them."

    backend = ScriptedBackend(reply)
    result = asyncio.run(llmflow.run_async(plan, {"q": "7 + 5?"}, backend=backend, seed=3))
    assert result.ok, result.failures
    answers = result.outputs["answers"]
    assert len(answers) == 5 and set(answers) <= {"12", "12.", "Twelve", "13", "TWELVE!"}
    keys = [a.lower().strip(".!") for a in answers]
    winner = max(keys, key=keys.count)  # ties: Python's max keeps the first, as vote does
    assert result.outputs["answer"] == answers[keys.index(winner)]  # as its first sample wrote it
    assert len({s.request.seed for s in backend.served}) == 10  # two outputs of five samples


def test_answers_are_compared_without_case_space_or_punctuation(
    compile_source: Callable[..., Plan],
) -> None:
    plan = compile_source(
        """
    import consistency

    flow main(answers: list[str]) -> keys: list[str] {
        keys = [answer_key(a) for a in answers]
    }
    """
    )
    given = [" Paris.", "PARIS!", '"paris"', "Paris, France"]
    keys = llmflow.run(plan, {"answers": given})["keys"]
    assert keys == ["paris", "paris", "paris", "paris france"]
