"""Module constants: `const NAME = literal`, read in templates and flows, imported like
functions, and never assigned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llmflow.compiler import compile_file
from llmflow.compiler.diagnostics import Diagnostic
from llmflow.compiler.ir import ConstNode, LLMNode, Plan, Text
from llmflow.compiler.types import INT, STR, ListT

STYLE = '''
const STYLE = """Answer in one short sentence."""
const LIMIT = 12
const WORDS = ["alpha", "beta"]
const EXACT = true
const RATE = -0.5
'''


def llm(plan: Plan) -> LLMNode:
    (node,) = [n for n in plan.graph.walk() if isinstance(n, LLMNode)]
    return node


def test_a_constant_in_a_template_is_template_text(plan: Callable[..., Plan]) -> None:
    p = plan(
        STYLE
        + '''
fn answer(q: str) -> a: str
"""
{{STYLE}}
Question: {{q}}
{{a | max_tokens=LIMIT}}
"""

flow main(q: str) -> a: str {
    a = answer(q)
}
'''
    )
    call = llm(p).call
    assert call.segments[0] == Text(text="Answer in one short sentence.")
    assert call.outputs[0].max_tokens == 12


def test_constants_in_flows_are_constant_nodes_of_their_type(plan: Callable[..., Plan]) -> None:
    p = plan(
        STYLE
        + """
flow main() -> s: str, n: int, w: list[str], e: bool, r: float {
    s = STYLE + "!"
    n = LIMIT * 2
    w = WORDS
    e = EXACT
    r = RATE
}
"""
    )
    consts = {
        n.value if not isinstance(n.value, list) else tuple(n.value): n.type
        for n in p.graph.nodes
        if isinstance(n, ConstNode)
    }
    assert consts["Answer in one short sentence."] == STR
    assert consts[12] == INT
    assert consts[("alpha", "beta")] == ListT(item=STR)
    assert consts[-0.5].name == "float"
    assert p.outputs["n"] == INT


def test_a_parameter_shadows_a_constant(plan: Callable[..., Plan]) -> None:
    p = plan(
        STYLE
        + '''
fn answer(STYLE: str) -> a: str
"""{{STYLE}} {{a}}"""

flow main(STYLE: str) -> a: str {
    a = answer(STYLE)
}
'''
    )
    assert [s.kind for s in llm(p).call.segments] == ["read", "text", "generate"]
    assert not [n for n in p.graph.nodes if isinstance(n, ConstNode)]


def test_constants_are_imported_with_their_module(write: Callable[[str, str], Path]) -> None:
    write(
        "lib/style.llmflow",
        STYLE
        + '''
fn styled(q: str) -> a: str
"""{{STYLE}} {{q}} {{a}}"""
''',
    )
    main = write(
        "main.llmflow",
        '''
import "lib/style.llmflow"

fn own(q: str) -> a: str
"""{{STYLE}} Again: {{q}} {{a}}"""

flow main(q: str) -> a: str, b: str, n: int {
    a = styled(q)
    b = own(q)
    n = LIMIT
}
''',
    )
    p = compile_file(main)
    texts = {n.label: n.call.segments[0] for n in p.graph.walk() if isinstance(n, LLMNode)}
    assert texts["styled"] == texts["own"] == Text(text="Answer in one short sentence.")
    assert any(isinstance(n, ConstNode) and n.value == 12 for n in p.graph.nodes)


def test_an_imported_constant_cannot_be_assigned(
    write: Callable[[str, str], Path], diagnostics: Callable[..., list[Diagnostic]]
) -> None:
    write("lib.llmflow", "const LIMIT = 3\n")
    (diag,) = diagnostics(
        """
import "lib.llmflow"

flow main() -> n: int {
    LIMIT = 4
    n = LIMIT
}
"""
    )
    assert diag.message == "cannot assign to constant 'LIMIT'"
    assert diag.hint.endswith("lib.llmflow; give the variable another name")


def test_a_constant_must_be_a_literal(diagnostics: Callable[..., list[Diagnostic]]) -> None:
    diags = diagnostics(
        """
const A = 1 + 2
const B = [1, "x"]
"""
    )
    assert [d.message for d in diags] == [
        "a constant's value must be a literal",
        "list items must have one type: int and str",
    ]


def test_const_and_sample_are_reserved_words(diagnostics: Callable[..., list[Diagnostic]]) -> None:
    (diag,) = diagnostics(
        """
flow main(x: str) -> y: str {
    sample = x
    y = sample
}
"""
    )
    assert diag.kind == "syntax"


def test_a_constant_can_set_a_model_option(plan: Callable[..., Plan]) -> None:
    p = plan(
        """
const RPM = 30
model m = local("smollm2-135m", rpm=RPM)

flow main(x: str) -> y: str {
    y = x
}
"""
    )
    assert p.models["m"].settings["rpm"] == 30


def test_choices_from_a_constant_or_a_literal_list_are_fixed_in_the_call(
    plan: Callable[..., Plan],
) -> None:
    p = plan(
        STYLE
        + '''
fn pick(thing: str) -> a: str, b: str
"""
What is {{thing}}? {{a | choices=WORDS}} or {{b | choices=["x", "y"]}}
"""

flow main(thing: str) -> a: str, b: str {
    a, b = pick(thing)
}
'''
    )
    outputs = {o.name: o.choices for o in llm(p).call.outputs}
    assert outputs == {"a": ["alpha", "beta"], "b": ["x", "y"]}


def test_a_parameter_default_may_be_a_constant(plan: Callable[..., Plan]) -> None:
    p = plan(
        STYLE
        + """
flow main(n: int = LIMIT, words: list[str] = WORDS) -> out: int {
    out = n + len(words)
}
"""
    )
    defaults = {spec.name: spec.default for spec in p.inputs}
    assert defaults == {"n": 12, "words": ["alpha", "beta"]}


def test_choices_need_strings(diagnostics: Callable[..., list[Diagnostic]]) -> None:
    diags = diagnostics(
        STYLE
        + '''
fn pick(thing: str) -> a: str
"""{{thing}} {{a | choices=LIMIT}}"""

flow main(thing: str) -> a: str {
    a = pick(thing)
}
'''
    )
    assert [d.message for d in diags] == ["choices needs a non-empty list of strings"]


def test_format_lists_constant_choices_in_the_prompt(plan: Callable[..., Plan]) -> None:
    p = plan(
        STYLE
        + '''
fn pick(thing: str) -> a: str
"""What is {{thing}}? {{a | choices=WORDS, format}}"""

flow main(thing: str) -> a: str {
    a = pick(thing)
}
'''
    )
    text = "".join(s.text for s in llm(p).call.segments if isinstance(s, Text))
    assert "Answer with one of these" in text and "- alpha\n- beta" in text
