"""System sections: `{% system %}...{% end %}` at a template's start becomes the system
message, and a shared system text is a shared prefix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from llmflow.cli import main
from llmflow.compiler.ir import LLMNode, Plan, Read, System, Text
from llmflow.compiler.optimizer.costs import written_as_chat_turn
from llmflow.compiler.parse import parse_module

TERSE = '''
fn answer(q: str) -> a: str
"""
{% system %}
You are terse. Audience: {{q}}.
{% end %}
Question: {{q}}
{{a}}
"""
'''


def test_the_section_is_cut_off_the_template_and_its_newlines_dropped() -> None:
    module, diags = parse_module(TERSE, "t.llmflow")
    assert diags == []
    template = module.decls[0].template  # type: ignore[union-attr]
    assert template.system is not None
    assert [getattr(p, "text", None) for p in template.system] == [
        "You are terse. Audience: ",
        None,
        ".\n",
    ]
    assert template.parts[0].text == "Question: "  # type: ignore[union-attr]


def test_it_lowers_to_a_system_segment_after_the_system_text(plan: Callable[..., Plan]) -> None:
    p = plan(TERSE + "flow main(q: str) -> a: str {\n    a = answer(q)\n}\n")
    (call,) = [n.call for n in p.graph.walk() if isinstance(n, LLMNode)]
    assert call.segments[:4] == [
        Text(text="You are terse. Audience: "),
        Read(input="q"),
        Text(text=".\n"),
        System(),
    ]
    # the user's turn starts after the section: its output begins a line of its own
    assert written_as_chat_turn(call)


def test_a_template_without_a_section_lowers_as_before(plan: Callable[..., Plan]) -> None:
    p = plan(
        '''
fn f(q: str) -> a: str
"""Plain text: {{q}} {{a}}"""

flow main(q: str) -> a: str {
    a = f(q)
}
'''
    )
    (call,) = [n.call for n in p.graph.walk() if isinstance(n, LLMNode)]
    assert not any(isinstance(s, System) for s in call.segments)
    assert "system" not in str(p.to_json())


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{q}} {% system %}x{% end %} {{a}}", "the system section must come first"),
        ("{% system %}x{% end %}{% system %}y{% end %}{{a}}", "system section already"),
        ("{% system %}x {{a}}", "the system section is never closed"),
        ("{{q}}{% end %}{{a}}", "'{% end %}' closes no section"),
        ("{% System %}x{{a}}", "unknown template block '{% System %}'"),
        ("{% for x in xs %}{{x}}{% endfor %}{{a}}", "templates have no loops or conditionals"),
    ],
)
def test_misplaced_sections_are_errors(template: str, message: str) -> None:
    source = f'fn f(q: str) -> a: str\n"""{template}"""\n'
    _, diags = parse_module(source, "t.llmflow")
    assert len(diags) == 1 and message in diags[0].message
    assert diags[0].kind == "template" and diags[0].span is not None


LONG = " ".join(
    f"Rule {i}: answer plainly, cite nothing you cannot name, and keep it short." for i in range(8)
)


def test_two_functions_sharing_a_const_system_text_form_one_group(
    write: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        "prog.llmflow",
        f'''
const RULES = """{LONG}"""

fn ask(q: str) -> a: str
"""
{{% system %}}{{{{RULES}}}}{{% end %}}
Question: {{{{q}}}}
{{{{a | max_tokens=8}}}}
"""

fn tell(topic: str) -> t: str
"""
{{% system %}}{{{{RULES}}}}{{% end %}}
Tell me about {{{{topic}}}}.
{{{{t | max_tokens=8}}}}
"""

fn plain(q: str) -> p: str
"""
{{{{RULES}}}}
{{{{q}}}} {{{{p | max_tokens=8}}}}
"""

flow main(q: str, topic: str) -> a: str, t: str, p: str {{
    a = ask(q)
    t = tell(topic)
    p = plain(q)
}}
''',
    )
    assert main(["plan", "--explain", str(path)]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.strip().startswith("g1 on")]
    assert "ask, tell (2 calls) share" in line
    assert "Rule 0: answer plainly" in line
    # the same text outside a system section is another prompt: not in the group
    assert "g2 on" not in out and "plain (" not in line and ", plain" not in line
