"""Typed values: every value that passes validation is JSON that writes and reads back
(no NaN, no lone surrogate, no integer too long to print, bounded nesting), whether it
comes from an input, an extern or a model's answer."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import pytest

from llmflow.compiler.types import (
    ANY,
    FLOAT,
    INT,
    STR,
    EnumT,
    ListT,
    OptionalT,
    Prim,
    RecordT,
    UnionT,
)
from llmflow.runtime.values import (
    MAX_DEPTH,
    InvalidValue,
    check_json,
    parse_choice,
    parse_json,
    parse_output,
    validate,
)

POINT = RecordT(name="Point", fields=(("x", FLOAT), ("label", STR)))
DIGITS = sys.get_int_max_str_digits()


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def written(value: Any) -> Any:
    """What the CLI does with a value: write it as strict JSON (UTF-8), read it back."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, indent=2)
    return json.loads(text.encode("utf-8").decode("utf-8"))


@pytest.mark.parametrize(
    ("t", "value", "message"),
    [
        (FLOAT, math.nan, "finite number"),
        (FLOAT, math.inf, "finite number"),
        (FLOAT, -math.inf, "finite number"),
        (FLOAT, 10**400, "out of range for a float"),
        (ListT(item=FLOAT), [1.0, math.nan], "item 1: expected a finite number, got NaN"),
        (POINT, {"x": math.inf, "label": "a"}, "field 'x': expected a finite number, got Infinity"),
        (INT, 10 ** (DIGITS + 10), f"more than {DIGITS} digits"),
        (STR, "ok\ud800", r"lone surrogate \('\\ud800'\) at character 2"),
        (ListT(item=STR), ["a", "\udcff"], "1: a lone surrogate"),
        (POINT, {"x": 1.0, "label": "\udfff"}, "label: a lone surrogate"),
        (
            ListT(item=ListT(item=INT)),
            nested(100_000),
            "item 0, item 0: expected an integer, got a list of 1",
        ),
    ],
    ids=lambda case: case[:30] if isinstance(case, str) else type(case).__name__,
)
def test_inputs_that_json_cannot_hold_are_invalid(t: Any, value: Any, message: str) -> None:
    with pytest.raises(InvalidValue, match=message):
        validate(t, value)


def test_what_passes_writes_and_reads_back_as_itself() -> None:
    cases = [
        (FLOAT, 1e308),
        (FLOAT, 3),
        (INT, 10 ** (DIGITS - 1)),
        (STR, "emoji \U0001f600 and \u00e9, NUL \x00"),
        (ListT(item=POINT), [{"x": -0.0, "label": "héllo"}]),
        (EnumT(name="Answer", members=("yes", "no")), "no"),
    ]
    for t, value in cases:
        checked = validate(t, value)
        assert written(checked) == checked


def test_any_values_are_checked_without_recursion() -> None:
    """`any` (an empty list's element) is not checked by type: the JSON check is what
    stops a cycle, a 100k-deep list, a tuple or a non-string key."""
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    bad = [
        (nested(100_000), f"nested deeper than {MAX_DEPTH} levels"),
        (cyclic, "nested deeper"),
        ([1, (2, 3)], "1: a tuple is not JSON data"),
        ({1: "a"}, "key 1 is not a string"),
        ({"k\ud800": 1}, "key: a lone surrogate"),
        ([{"a": [math.nan]}], "0.a.0: nan is not a finite number"),
        ({"set": {1}}, "set: a set is not JSON data"),
    ]
    for value, message in bad:
        with pytest.raises(InvalidValue, match=message):
            validate(ANY, value)
        with pytest.raises(InvalidValue, match=message):
            validate(ListT(item=ANY), [value])
    assert validate(ANY, nested(MAX_DEPTH)) == nested(MAX_DEPTH)
    assert written(nested(MAX_DEPTH)) == nested(MAX_DEPTH)
    with pytest.raises(InvalidValue, match="nested deeper"):
        check_json(nested(MAX_DEPTH + 1))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("NaN", "NaN is not JSON"),
        ("[1, Infinity]", "Infinity is not JSON"),
        ('{"a": -Infinity}', "-Infinity is not JSON"),
        ("1e999", "'1e999' is out of range"),
        ("[-1e400]", "'-1e400' is out of range"),
        ("9" * 5000, f"an integer of 5000 digits is too long \\(at most {DIGITS}\\)"),
        ("-" + "9" * 5000, "an integer of 5000 digits"),
        ("[" * 100_000 + "]" * 100_000, f"nested deeper than {MAX_DEPTH} levels"),
        ("[" * 100_000, f"nested deeper than {MAX_DEPTH} levels"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper"),
        ('"\\ud800"', "lone surrogate"),
        ('["\\udc00x"]', "0: a lone surrogate"),
        ('{"a": 1, "a": 2}', "key 'a' appears twice"),
        ('{"a": 1', "Expecting ',' delimiter at line 1 column 8"),
        ("", "Expecting value at line 1 column 1"),
    ],
    ids=lambda case: case[:20] if isinstance(case, str) else type(case).__name__,
)
def test_input_json_rejects_what_is_not_json_data(text: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidValue, match=message):
        parse_json(text)
    assert time.perf_counter() - started < 2  # generous: no quadratic work on 100k levels


def test_input_json_keeps_surrogate_pairs_and_big_but_printable_numbers() -> None:
    assert parse_json('"\\ud83d\\ude00"') == "\U0001f600"
    assert parse_json("1e308") == 1e308
    assert parse_json("9" * DIGITS) == int("9" * DIGITS)
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) == nested(MAX_DEPTH)


@pytest.mark.parametrize(
    ("t", "text", "message"),
    [
        (FLOAT, "about 1e999 of them", "'1e999' is out of range"),
        (FLOAT, "1" + "0" * 400, "is out of range"),
        (INT, "9" * 5000, "too long"),
        (ListT(item=FLOAT), "[1.5, NaN]", "NaN is not JSON"),
        (ListT(item=FLOAT), '{"values": [Infinity]}', "Infinity is not JSON"),
        (POINT, '{"x": "inf", "label": "a"}', "field 'x': expected a finite number, got \"inf\""),
        (ListT(item=INT), "[" * 100_000, "nested deeper"),
        (ListT(item=INT), "[" + "9" * 5000 + "]", "too long"),
        (ListT(item=STR), '["\\ud800"]', "lone surrogate"),
    ],
    ids=lambda case: case[:20] if isinstance(case, str) else type(case).__name__,
)
def test_model_output_json_cannot_hold_is_invalid(t: Any, text: str, message: str) -> None:
    """InvalidValue is fed back to the model (the call asks again), never a crash."""
    started = time.perf_counter()
    with pytest.raises(InvalidValue, match=message):
        parse_output(t, text)
    assert time.perf_counter() - started < 2


def test_a_lone_surrogate_in_model_text_becomes_a_replacement_character() -> None:
    assert parse_output(STR, "a\ud800b") == "a\ufffdb"
    assert written(parse_output(ANY, "\udcff")) == "\ufffd"
    assert parse_output(STR, "\U0001f600") == "\U0001f600"


def test_bounds_are_checked_on_inputs_and_model_output() -> None:
    bounded = ListT(item=Prim(name="str", max_len=3), max_items=2)
    assert validate(bounded, ["ab", "c"]) == ["ab", "c"]
    with pytest.raises(InvalidValue, match="has 3 items; at most 2"):
        parse_output(bounded, '["a", "b", "c"]')
    with pytest.raises(InvalidValue, match="item 0: has 4 characters; at most 3"):
        validate(bounded, ["abcd"])
    with pytest.raises(InvalidValue, match="more than 5"):
        parse_output(Prim(name="str", max_len=5), "too long a text")


def test_a_union_of_records_takes_the_one_the_data_fits() -> None:
    email = RecordT(name="Email", fields=(("address", STR),))
    phone = RecordT(name="Phone", fields=(("number", STR),))
    union = UnionT(options=(email, phone))
    assert parse_output(union, 'It is {"number": "555"}') == {"number": "555"}
    assert validate(union, {"address": "a@b"}) == {"address": "a@b"}
    with pytest.raises(
        InvalidValue,
        match="expected Email \\| Phone, got a record \\(.*is not a field of the record",
    ):
        validate(union, {"address": "a@b", "number": "555"})


def test_a_union_of_enums_reads_any_member() -> None:
    union = UnionT(
        options=(EnumT(name="A", members=("yes", "no")), EnumT(name="B", members=("maybe",)))
    )
    assert parse_output(union, "Maybe.") == "maybe"
    assert parse_output(union, "no") == "no"


def test_an_optional_reads_none_or_a_value() -> None:
    assert validate(OptionalT(item=INT), None) is None
    assert parse_output(OptionalT(item=INT), "null") is None
    assert parse_output(OptionalT(item=INT), "about 3") == 3
    with pytest.raises(InvalidValue):
        validate(OptionalT(item=INT), "x")


def test_run_time_choices_read_leniently_and_reject_others() -> None:
    assert parse_choice(["billing", "shipping"], "Billing.") == "billing"
    with pytest.raises(InvalidValue, match="expected one of billing, shipping"):
        parse_choice(["billing", "shipping"], "sales")


def test_the_retry_message_describes_the_new_types() -> None:
    from llmflow.runtime.values import describe_type

    assert describe_type(Prim(name="str", max_len=9)) == "text of at most 9 characters"
    assert describe_type(OptionalT(item=ListT(item=INT))).startswith("JSON matching")
    union = UnionT(options=(EnumT(name="A", members=("a",)), EnumT(name="B", members=("b",))))
    assert describe_type(union) == "exactly one of: a, b"


def test_a_bounded_str_input_is_its_text_and_is_checked_for_length() -> None:
    from llmflow.runtime.inputs import value_from_text

    bounded = Prim(name="str", max_len=5)
    assert value_from_text("-i name", bounded, "Jane") == "Jane"
    with pytest.raises(InvalidValue, match="characters; at most 5"):
        validate(bounded, value_from_text("-i name", bounded, "Jane Doe"))
