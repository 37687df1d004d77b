"""The evaluator's bounds: no builtin or operator makes a value past the limits, and one
that would is refused before it is made (so these tests allocate little and end fast)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from llmflow.stdlib.builtins import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_ITEMS,
    MAX_SIZE,
    BuiltinError,
    LimitError,
    evaluate,
    measure,
)


def call(name: str, *args: Any, **keywords: Any) -> Any:
    return evaluate(name, list(keywords), [*args, *keywords.values()])


BIG = "x" * (MAX_SIZE // 2 + 1)


@pytest.mark.parametrize(
    ("op", "args", "message"),
    [
        ("range", [10_000_000_000], "range(10000000000) would have 10,000,000,000 items"),
        ("*", ["x", 10**12], "`*` would repeat 1,000,000,000,000 times"),
        ("*", [10**12, "x"], "`*` would repeat 1,000,000,000,000 times"),
        ("*", [[1, 2], MAX_ITEMS], "`*` would repeat"),
        ("*", [["a" * 1000], 20_000], "`*` would repeat"),
        ("+", [BIG, BIG], "the result of `+` would have 10,000,002 characters"),
        ("+", [[BIG], [BIG]], "the result of `+` would be larger than 10,000,000"),
        ("*", [10 ** (MAX_INT_DIGITS // 2 + 1), 10 ** (MAX_INT_DIGITS // 2)], "4,300 digits"),
        ("neg", [-(10 ** (MAX_INT_DIGITS - 1)) * 10], "4,300 digits"),
        ("*", [1e308, 10.0], "overflows a float"),
        ("+", [10**400, 0.5], "overflows a float"),
        ("/", [10**400, 3], "overflows a float"),
        ("list", [BIG, BIG], "this list would be larger than 10,000,000"),
    ],
)
def test_operators_and_literals_refuse_values_past_the_limits(
    op: str, args: list[Any], message: str
) -> None:
    with pytest.raises(LimitError, match=re.escape(message)):
        evaluate(op, ["a", "b"] if op == "record" else None, args)


@pytest.mark.parametrize(
    ("name", "args", "keywords"),
    [
        ("join", [[BIG, BIG]], {}),
        ("join", [list(range(1000))], {"sep": "s" * 100_000}),
        ("format", ["{a}" * 1000], {"a": "x" * 100_000}),
        ("format", ["{a:>99999999999}"], {"a": "x"}),
        ("format", ["{a:>" + "9" * 400 + "}"], {"a": "x"}),
        ("format", ["{a!a}"], {"a": "\U0001f600" * 2_000_000}),
        ("replace", ["a" * 1000, "", "b" * 100_000], {}),
        ("replace", ["ab" * 1000, "a", "c" * 100_000], {}),
        ("split", ["\n" * (MAX_ITEMS + 1)], {}),
        ("chunk", ["a b " * 250_000, 1000, 999], {}),
        ("flatten", [[[1] * 600_000, [1] * 600_000]], {}),
        ("str", [[BIG, BIG]], {}),
        ("str", [["y" * 1_000_000] * 100], {}),  # shared items: small in memory, huge as text
        ("int", ["9" * (MAX_INT_DIGITS + 1)], {}),
        ("float", ["9" * 400], {}),
    ],
)
def test_builtins_refuse_results_past_the_limits(
    name: str, args: list[Any], keywords: dict[str, Any]
) -> None:
    with pytest.raises(LimitError):
        call(name, *args, **keywords)


def test_within_the_limits_everything_still_works() -> None:
    assert call("range", MAX_ITEMS)[-1] == MAX_ITEMS - 1
    assert len(evaluate("*", None, ["ab", MAX_SIZE // 2])) == MAX_SIZE
    assert evaluate("*", None, [[0], 3]) == [0, 0, 0]
    assert evaluate("*", None, [10 ** (MAX_INT_DIGITS - 1), 9]) == 9 * 10 ** (MAX_INT_DIGITS - 1)
    assert call("int", "n = " + "9" * MAX_INT_DIGITS) == 10**MAX_INT_DIGITS - 1
    assert call("format", "Hi {who}, {who:>5}|{n!r}", who="Bo", n=3) == "Hi Bo,    Bo|'3'"
    assert call("format", "{{literal}} {x}", x=[1, 2]) == "{literal} - 1\n- 2"
    assert call("replace", "banana", "a", "o") == "bonono"
    assert call("join", ["a", 1, True], sep=", ") == "a, 1, true"
    assert call("chunk", "aaa bbb", 4) == ["aaa", "bbb"]
    assert call("split", "a\n\nb") == ["a", "b"]
    assert call("flatten", [[1], [2, 3]]) == [1, 2, 3]
    assert call("str", {"a": [1]}) == '{"a": [1]}'


def test_format_fields_are_keyword_names_only() -> None:
    for template in ["{}", "{0}", "{a.__class__}", "{a[0]}", "{missing}"]:
        with pytest.raises(BuiltinError, match="fields are names given as keywords"):
            call("format", template, a="x")


def test_doubling_a_string_stops_at_the_limit() -> None:
    value = "x"
    with pytest.raises(LimitError):
        for _ in range(64):
            value = evaluate("+", None, [value, value])
    assert len(value) <= MAX_SIZE


def test_sharing_cannot_hide_an_exponential_value() -> None:
    """[v, v] of [v, v] of ... is small in memory, but its text would be 2^n long."""
    value: Any = "abcdefgh"
    with pytest.raises(LimitError, match="larger than"):
        for _ in range(64):
            value = evaluate("list", None, [value, value])
    assert measure(value)[0] <= MAX_SIZE


def test_nesting_stops_at_the_depth_limit() -> None:
    value: Any = 1
    with pytest.raises(LimitError, match=f"more than {MAX_DEPTH} deep"):
        for _ in range(MAX_DEPTH + 5):
            value = evaluate("record", ["inner"], [value])
    assert measure(value)[1] <= MAX_DEPTH


def test_measure_stops_counting_early() -> None:
    shared = ["y" * 1000] * 1000
    size, _ = measure([shared] * 1000, limit=5_000)
    assert 5_000 < size < 10_000


@pytest.mark.parametrize(
    ("op", "a", "b", "expected"),
    [("//", 7, 2, 3), ("//", -7, 2, -4), ("%", -7, 2, 1), ("//", 7.5, 2, 3.0)],
)
def test_integer_division_and_remainder_round_down(op: str, a: Any, b: Any, expected: Any) -> None:
    result = evaluate(op, None, [a, b])
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("op", ["/", "//", "%"])
def test_division_by_zero_is_a_builtin_error(op: str) -> None:
    with pytest.raises(BuiltinError, match="division by zero"):
        evaluate(op, None, [7, 0])


def test_enumerate_pairs_each_item_with_its_index() -> None:
    assert call("enumerate", ["a", "b"]) == [{"index": 0, "item": "a"}, {"index": 1, "item": "b"}]
    assert call("enumerate", []) == []


def test_zip_puts_two_lists_side_by_side_and_refuses_different_lengths() -> None:
    assert call("zip", [1, 2], ["a", "b"]) == [
        {"first": 1, "second": "a"},
        {"first": 2, "second": "b"},
    ]
    with pytest.raises(BuiltinError, match=r"different lengths \(2 and 1\)"):
        call("zip", [1, 2], ["a"])


def test_enumerate_and_zip_types_name_their_fields() -> None:
    from llmflow.compiler.types import INT, STR, ListT, RecordT
    from llmflow.stdlib.builtins import BUILTINS

    indexed = BUILTINS["enumerate"].result([ListT(item=STR)])
    fields = (("index", INT), ("item", STR))
    assert indexed == ListT(item=RecordT(name="Indexed[str]", fields=fields))
    pair = BUILTINS["zip"].result([ListT(item=INT), ListT(item=STR)])
    assert isinstance(pair, ListT) and isinstance(pair.item, RecordT)
    assert pair.item.fields == (("first", INT), ("second", STR))
    refused = BUILTINS["zip"].result([ListT(item=INT), STR])
    assert refused == "expects a list, got str (second argument)"


def test_sum_max_min_sort_and_drop_over_lists() -> None:
    assert call("sum", [3, 1, 2]) == 6
    assert call("sum", [1.5, 2]) == 3.5
    assert call("sum", []) == 0
    assert call("max", [3, 1, 2]) == 3
    assert call("min", ["b", "a"]) == "a"
    assert call("max", 3, 4) == 4  # the two-value form still works
    assert call("min", 2.5, 1) == 1
    assert call("sort", [3, 1, 2]) == [1, 2, 3]
    assert call("sort", ["b", "c", "a"], reverse=True) == ["c", "b", "a"]
    xs = [1, 2, 3, 4]
    for n in (-5, -1, 0, 2, 9):
        assert call("take", xs, n) + call("drop", xs, n) == xs
    assert call("drop", xs, 1) == [2, 3, 4]


@pytest.mark.parametrize("name", ["max", "min", "vote", "best_of"])
def test_a_builtin_that_needs_an_item_refuses_an_empty_list(name: str) -> None:
    from llmflow.stdlib.builtins import EmptyListError

    args: list[Any] = [[], []] if name == "best_of" else [[]]
    with pytest.raises(EmptyListError, match=rf"{name}\(\) of an empty list"):
        call(name, *args)


def test_list_builtins_are_typed_by_their_items() -> None:
    from llmflow.compiler.types import ANY, FLOAT, INT, STR, ListT, Prim
    from llmflow.stdlib.builtins import BUILTINS

    ints, floats, strs = ListT(item=INT), ListT(item=FLOAT), ListT(item=STR)
    assert BUILTINS["sum"].result([ints]) == INT
    assert BUILTINS["sum"].result([floats]) == FLOAT
    assert BUILTINS["sum"].result([strs]).startswith("expects a list of numbers")
    assert BUILTINS["max"].result([ints, None]) == INT
    assert BUILTINS["min"].result([ListT(item=Prim(name="str", max_len=5)), None]).name == "str"
    assert BUILTINS["max"].result([INT, FLOAT]) == FLOAT
    assert BUILTINS["max"].result([INT, ANY]) == INT
    assert BUILTINS["max"].result([INT, None]).startswith("of one value")
    assert BUILTINS["sort"].result([strs, None]) == strs
    bounded = ListT(item=INT, max_items=3)
    assert BUILTINS["drop"].result([bounded, INT]) == bounded


@pytest.mark.parametrize(
    ("a", "b", "expected"), [(None, 2, 2), (0, 2, 0), ("", "x", ""), (False, True, False)]
)
def test_the_default_operator_replaces_only_none(a: Any, b: Any, expected: Any) -> None:
    """`??` is about no value, not falsy values: 0, "" and false are kept."""
    result = evaluate("??", None, [a, b])
    assert result == expected and type(result) is type(expected)
