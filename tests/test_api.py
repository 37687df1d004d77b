"""The Python API checks values handed in directly as `llmflow run` checks `-i` values,
and never returns an output that JSON cannot hold. No model runs here."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

import llmflow
from llmflow.api import bind_inputs
from llmflow.compiler.ir import Plan
from llmflow.errors import InputError, RunError

PROGRAM = """
flow main(n: int, x: float, s: str, xs: list[list[int]], k: float = 0.5) -> n2: int, x2: float {
    n2 = n
    x2 = x * x
}
"""
GOOD = {"n": 1, "x": 2.0, "s": "a", "xs": [[1]]}


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.fixture
def plan(compile_source: Callable[..., Plan]) -> Plan:
    return compile_source(PROGRAM)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"x": math.nan}, "input 'x' expects float: expected a finite number, got "),
        ({"x": -math.inf}, "input 'x' expects float: expected a finite number, got "),
        ({"x": 10**400}, "input 'x' expects float: an integer this large is out of range"),
        ({"n": 10**5000}, "input 'n' expects int: an integer of more than 4300 digits"),
        ({"s": "bad \udcff byte"}, "input 's' expects str: a lone surrogate"),
        (
            {"xs": nested(100_000)},
            r"input 'xs' expects list\[list\[int\]\]: item 0, item 0: expected an integer",
        ),
        ({"bad\udcff": 1}, r"unknown input 'bad\\udcff'"),
        ({7: 1}, "unknown input '7'"),
    ],
)
def test_bad_values_are_input_errors_naming_the_input(
    plan: Plan, given: dict[Any, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        bind_inputs(plan, {**GOOD, **given})
    with pytest.raises(InputError, match=message):
        llmflow.run(plan, {**GOOD, **given})


def test_every_problem_is_reported_at_once(plan: Plan) -> None:
    with pytest.raises(InputError) as err:
        bind_inputs(plan, {"x": math.nan, "s": "\ud800", "typo": 1})
    assert str(err.value).splitlines() == [
        "unknown input 'typo' (inputs: k, n, s, x, xs)",
        "missing input 'n' (int)",
        "input 'x' expects float: expected a finite number, got NaN",
        "input 's' expects str: a lone surrogate ('\\ud800') at character 0 is not text",
        "missing input 'xs' (list[list[int]])",
    ]


def test_inputs_must_be_a_mapping(plan: Plan) -> None:
    with pytest.raises(InputError, match="inputs are a dict of name → value, not a list"):
        bind_inputs(plan, [("n", 1)])  # type: ignore[arg-type]


def test_an_output_json_cannot_hold_fails_and_the_others_are_kept(plan: Plan) -> None:
    assert llmflow.run(plan, GOOD) == {"n2": 1, "x2": 4.0}
    with pytest.raises(RunError) as err:
        llmflow.run(plan, {**GOOD, "x": 1e200})  # x * x overflows to inf
    assert err.value.outputs == {"n2": 1}
    assert "the result of `*` is too large for a number (it overflows a float)" in str(err.value)
