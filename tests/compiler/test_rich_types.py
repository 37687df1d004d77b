"""Optionals, unions, bounds, descriptions, `| format` and `| choices=` from source to plan
(and, for the flows that call no model, to their values)."""

from __future__ import annotations

from collections.abc import Callable

import llmflow
from llmflow.compiler.ir import LLMNode, Plan, Text
from llmflow.compiler.types import INT, STR, ListT, OptionalT, Prim, RecordT, UnionT

MakePlan = Callable[..., Plan]

MAYBE = """
flow main(n: int) -> big: int?, label: str? {
    if n > 10 {
        big = n * 2
    }
    if n > 100 {
        label = "huge"
    } else if n > 10 {
        label = "big"
    }
}
"""


def _call(p: Plan) -> LLMNode:
    (node,) = [n for n in p.graph.nodes if isinstance(n, LLMNode)]
    return node


def test_an_if_without_else_yields_an_optional(plan: MakePlan) -> None:
    p = plan(MAYBE)
    assert p.outputs["big"] == OptionalT(item=INT)
    assert p.outputs["label"] == OptionalT(item=STR)
    assert llmflow.run(p, {"n": 50}) == {"big": 100, "label": "big"}
    assert llmflow.run(p, {"n": 5}) == {"big": None, "label": None}
    assert llmflow.run(p, {"n": 500}) == {"big": 1000, "label": "huge"}


def test_a_plan_with_an_empty_else_reads_back_from_its_json(plan: MakePlan) -> None:
    p = plan(MAYBE)
    again = Plan.from_json(p.to_json())
    assert llmflow.run(again, {"n": 5}) == {"big": None, "label": None}


def test_bounds_unions_and_descriptions_reach_the_output_type(plan: MakePlan) -> None:
    p = plan(
        '''
        record Email { address: str "where mail goes" }
        record Phone { number: str[max=20] }
        record Person { name: str, contacts: list[Email | Phone, max=3] }

        fn read(text: str) -> person: Person
        """
        {{text}} {{person}}
        """

        flow main(text: str) -> person: Person { person = read(text) }
        '''
    )
    person = p.outputs["person"]
    assert isinstance(person, RecordT)
    contacts = person.field("contacts")
    assert isinstance(contacts, ListT) and contacts.max_items == 3
    assert isinstance(contacts.item, UnionT)
    email, phone = contacts.item.options
    assert isinstance(email, RecordT) and email.descriptions == ("where mail goes",)
    assert isinstance(phone, RecordT) and phone.field("number") == Prim(name="str", max_len=20)


def test_format_puts_the_schema_before_the_output(plan: MakePlan) -> None:
    p = plan(
        '''
        record Person { name: str "the full name", age: int }

        fn read(text: str) -> person: Person
        """
        {{text}}
        {{person | format}}
        """

        flow main(text: str) -> person: Person { person = read(text) }
        '''
    )
    segments = _call(p).call.segments
    before = segments[[type(s).__name__ for s in segments].index("Generate") - 1]
    assert isinstance(before, Text)
    assert before.text == (
        "Answer with JSON in this format:\n"
        '{\n  "name": string,  // the full name\n  "age": int,\n}\n'
    )


def test_choices_name_the_input_the_output_picks_from(plan: MakePlan) -> None:
    p = plan(
        '''
        fn route(ticket: str, teams: list[str]) -> team: str
        """
        {{ticket}} {{team | choices=teams}}
        """

        flow main(ticket: str, teams: list[str]) -> team: str { team = route(ticket, teams) }
        '''
    )
    (spec,) = _call(p).call.outputs
    assert spec.choices == "teams"
