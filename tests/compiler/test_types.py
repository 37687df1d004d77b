"""The type system's richer types: bounds, optionals, unions, descriptions, formats."""

from __future__ import annotations

from llmflow.compiler.optimizer.prompts import typical_tokens
from llmflow.compiler.types import (
    FLOAT,
    INT,
    STR,
    EnumT,
    ListT,
    OptionalT,
    Prim,
    RecordT,
    UnionT,
    assignable,
    describe_format,
    format_instructions,
    json_schema,
    unify,
)

EMAIL = RecordT(name="Email", fields=(("address", STR),))
PHONE = RecordT(name="Phone", fields=(("number", STR), ("address", STR)))
BOUNDED = ListT(item=Prim(name="str", max_len=30), max_items=5)


def test_types_without_the_new_parts_serialize_as_before() -> None:
    assert STR.model_dump(mode="json") == {"kind": "prim", "name": "str"}
    assert ListT(item=INT).model_dump(mode="json") == {
        "kind": "list",
        "item": {"kind": "prim", "name": "int"},
    }
    assert EMAIL.model_dump(mode="json") == {
        "kind": "record",
        "name": "Email",
        "fields": [["address", {"kind": "prim", "name": "str"}]],
    }


def test_bounds_are_written_and_read_back() -> None:
    data = BOUNDED.model_dump(mode="json")
    assert data["max_items"] == 5 and data["item"]["max_len"] == 30
    assert ListT.model_validate(data) == BOUNDED
    assert str(BOUNDED) == "list[str[max=30], max=5]"


def test_bounds_are_in_the_schema() -> None:
    assert json_schema(BOUNDED) == {
        "type": "array",
        "items": {"type": "string", "maxLength": 30},
        "maxItems": 5,
    }


def test_bounds_do_not_decide_assignability() -> None:
    assert assignable(ListT(item=STR), BOUNDED)
    assert assignable(BOUNDED, ListT(item=STR))


def test_optionals_take_values_but_do_not_give_them() -> None:
    assert assignable(STR, OptionalT(item=STR))
    assert assignable(INT, OptionalT(item=FLOAT))
    assert not assignable(OptionalT(item=STR), STR)
    assert unify(STR, OptionalT(item=STR)) == OptionalT(item=STR)
    assert str(OptionalT(item=STR)) == "str?"


def test_a_union_takes_each_of_its_options() -> None:
    union = UnionT(options=(EMAIL, PHONE))
    assert assignable(EMAIL, union) and assignable(PHONE, union)
    assert not assignable(union, EMAIL)
    assert not assignable(STR, union)
    assert union.field("address") == STR
    assert union.field("number") is None
    assert json_schema(union) == {"anyOf": [json_schema(EMAIL), json_schema(PHONE)]}


def test_descriptions_reach_the_schema_and_the_format() -> None:
    person = RecordT(
        name="Person",
        fields=(("name", STR), ("age", INT)),
        descriptions=("the person's full name", ""),
    )
    assert json_schema(person)["properties"]["name"]["description"] == "the person's full name"
    assert "description" not in json_schema(person)["properties"]["age"]
    assert describe_format(person) == (
        '{\n  "name": string,  // the person\'s full name\n  "age": int,\n}'
    )
    mood = EnumT(name="Mood", members=("up", "down"), descriptions=("happy", ""))
    assert json_schema(mood)["description"] == "up: happy"
    assert describe_format(mood) == 'one of:\n  "up"  // happy\n  "down"'


def test_format_instructions_say_how_to_answer() -> None:
    assert format_instructions(STR) == ""
    assert format_instructions(INT) == "Answer with int.\n"
    assert format_instructions(BOUNDED) == (
        "Answer with JSON in this format:\n"
        "[string (at most 30 characters), ...] (at most 5 items)\n"
    )


def test_format_instructions_of_an_enum_list_its_members_not_json() -> None:
    from llmflow.compiler.types import CHOICES_INTRO, UnionT

    mood = EnumT(name="Mood", members=("up", "down"), descriptions=("happy", ""))
    assert format_instructions(mood) == CHOICES_INTRO + "- up: happy\n- down\n"
    plain = EnumT(name="Side", members=("left", "right"))
    both = UnionT(options=(mood, plain))
    assert format_instructions(both) == CHOICES_INTRO + "- up: happy\n- down\n- left\n- right\n"
    assert "JSON" not in format_instructions(plain).replace("no JSON", "")


def test_bounds_shrink_the_typical_size_of_a_value() -> None:
    assert typical_tokens(ListT(item=STR, max_items=2)) < typical_tokens(ListT(item=STR))
    assert typical_tokens(Prim(name="str", max_len=30)) == 10
    assert typical_tokens(OptionalT(item=INT)) == typical_tokens(INT)


def test_a_calls_outputs_fit_a_record_with_the_same_fields() -> None:
    judged = RecordT(name="Judged", fields=(("reason", STR), ("score", FLOAT)))
    outputs = RecordT(name="judge outputs", fields=(("score", INT), ("reason", STR)))
    assert assignable(outputs, judged)  # any order; int fits float
    assert assignable(ListT(item=outputs), ListT(item=judged))
    assert not assignable(judged, outputs)  # a declared record is not a call's outputs
    fewer = RecordT(name="judge outputs", fields=(("reason", STR),))
    assert not assignable(fewer, judged)
    other = RecordT(name="Other", fields=(("score", INT), ("reason", STR)))
    assert not assignable(other, judged)  # declared records stay nominal
