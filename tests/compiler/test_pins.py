"""`@model(big) fn argue_for`: a program gives decorators to a function an imported
module declares, so a library's functions can run on the program's models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import llmflow
from llmflow.compiler.diagnostics import Diagnostic

Write = Callable[[str, str], Path]

MODELS = """
import debate

model smol = local("smollm2-135m")
model gem = local("gemma3-270m")
"""

DEBATE = """
flow main(claim: str) -> winner: DebateSide {
    winner = debate(claim).winner
}
"""


def models_of(path: Path, optimize: bool = True) -> dict[str, set[str]]:
    plan = llmflow.compile(path, optimize=optimize)
    out: dict[str, set[str]] = {}
    for node in plan.calls():
        out.setdefault(node.label, set()).add(node.call.model)
    return out


def test_a_debate_between_two_models_pins_the_library_debaters(write: Write) -> None:
    path = write(
        "main.llmflow",
        MODELS + "\n@model(gem)\nfn argue_against\n\n@model(smol) fn argue_for\n" + DEBATE,
    )
    for optimize in (True, False):  # a pin holds with and without the optimizer
        got = models_of(path, optimize)
        assert got["argue_against"] == {"gem"} and got["argue_for"] == {"smol"}
    plan = llmflow.compile(path)
    pinned = {n.label: n.call.pinned for n in plan.calls()}
    assert pinned == {"argue_for": True, "argue_against": True, "judge_debate": False}


def test_needs_given_by_the_program_replace_the_librarys(write: Write) -> None:
    source = (
        MODELS.replace("import debate", "import route")
        + """
@needs(writing >= 0.2) fn answer_math

flow main(q: str) -> answer: str {
    answer = route(q).answer
}
"""
    )
    path = write("main.llmflow", source)
    plan = llmflow.compile(path, optimize=False)
    (math,) = [n for n in plan.calls() if n.label == "answer_math"]
    assert math.call.needs == {"writing": 0.2}  # not the library's reasoning >= 0.1


def test_every_caller_in_the_program_sees_the_pin(write: Write) -> None:
    write(
        "lib.llmflow",
        '''
        fn shout(x: str) -> s: str
        """Say {{x}} loudly: {{s | max_tokens=5}}"""

        flow twice(x: str) -> a: str, b: str {
            a = shout(x)
            b = shout(x + "!")
        }
        ''',
    )
    path = write(
        "main.llmflow",
        """
        import "lib.llmflow"
        model gem = local("gemma3-270m")
        model smol = local("smollm2-135m")

        @model(smol) fn shout

        flow main(x: str) -> a: str, c: str {
            a = twice(x).a
            c = shout(x + "?")
        }
        """,
    )
    assert models_of(path, optimize=False) == {"shout": {"smol"}}


def test_mistakes_are_one_error_each(diagnostics: Callable[..., list[Diagnostic]]) -> None:
    diags = diagnostics(MODELS + "\nfn argue_for\n@model(gem) fn nothing_like_it\n" + DEBATE)
    got = [(d.kind, d.message) for d in diags]
    assert got == [
        ("declaration", "fn argue_for without a signature gives it decorators, but it has none"),
        ("unknown-name", "unknown function 'nothing_like_it'"),
    ]
