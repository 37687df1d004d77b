"""The built-in metrics: scores in [0, 1] for any value, hostile ones included."""

from __future__ import annotations

import math

import pytest

from llmflow.compiler.evalspec import (
    ContainsMetric,
    ExactMetric,
    F1Metric,
    FieldsMetric,
    Normalize,
    NumericMetric,
)
from llmflow.compiler.types import BOOL, FLOAT, INT, STR, EnumT, ListT, RecordT
from llmflow.runtime.evals.metrics import (
    MAX_SCORED_CHARS,
    expected_value,
    f1,
    final_number,
    normalize_text,
    score,
)
from llmflow.runtime.values import InvalidValue

SQUAD = Normalize(case=False, whitespace=False, punctuation=False, articles=False)
LABEL = EnumT(name="Label", members=("yes", "no"))
ISSUE = RecordT(name="Issue", fields=(("component", STR), ("severity", INT)))


def test_exact_is_strict_but_for_surrounding_whitespace() -> None:
    assert score(ExactMetric(), STR, "  Paris\n", "Paris") == 1.0
    assert score(ExactMetric(), STR, "paris", "Paris") == 0.0
    assert score(ExactMetric(), STR, "Paris.", "Paris") == 0.0


def test_exact_with_squad_normalization() -> None:
    assert normalize_text("The  Eiffel-Tower, in PARIS!", SQUAD) == "eiffeltower in paris"
    assert score(ExactMetric(normalize=SQUAD), STR, "the Eiffel tower.", "Eiffel  Tower") == 1.0
    assert score(ExactMetric(normalize=SQUAD), STR, "an answer", "answers") == 0.0


@pytest.mark.parametrize(
    ("flag", "output", "expected"),
    [
        ("case", "YES", "yes"),
        ("whitespace", "a  b", "a b"),
        ("punctuation", "yes!", "yes"),
        ("articles", "the cat", "cat"),
    ],
)
def test_each_normalization_flag_on_its_own(flag: str, output: str, expected: str) -> None:
    assert score(ExactMetric(), STR, output, expected) == 0.0
    only = Normalize(**{flag: False})
    assert score(ExactMetric(normalize=only), STR, output, expected) == 1.0


def test_exact_on_values_compares_them_as_values() -> None:
    assert score(ExactMetric(), LABEL, "yes", "yes") == 1.0
    assert score(ExactMetric(), LABEL, "no", "yes") == 0.0
    assert score(ExactMetric(), INT, 3, 3) == 1.0
    assert score(ExactMetric(), FLOAT, 3.0, 3) == 1.0
    assert score(ExactMetric(), BOOL, True, True) == 1.0
    assert score(ExactMetric(), BOOL, True, 1) == 0.0  # JSON true is not 1
    record = {"component": "lid", "severity": 4}
    assert score(ExactMetric(), ISSUE, dict(reversed(record.items())), record) == 1.0


def test_contains_after_normalization() -> None:
    assert score(ContainsMetric(), STR, "ticket: lid (severity 4)", "lid") == 1.0
    assert score(ContainsMetric(), STR, "ticket: Lid", "lid") == 0.0
    assert score(ContainsMetric(normalize=Normalize(case=False)), STR, "ticket: Lid", "lid") == 1.0


def test_numeric_tolerances() -> None:
    assert score(NumericMetric(), INT, 4, 4) == 1.0
    assert score(NumericMetric(), INT, 5, 4) == 0.0
    assert score(NumericMetric(tolerance=1), INT, 5, 4) == 1.0
    assert score(NumericMetric(tolerance=1), INT, 6, 4) == 0.0
    assert score(NumericMetric(relative=0.1), FLOAT, 109.0, 100) == 1.0
    assert score(NumericMetric(relative=0.1), FLOAT, 111.0, 100) == 0.0


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("She pays 3 + 4 = 7 dollars.\n#### 7", 7.0),
        ("#### 1,234", 1234.0),
        ("so $40.00 - $20.00 = $20.00.\n\n#### $20.00 profit, 3 days", 20.0),
        ("first 12, then 18\n#### 30\nand 99 later", 30.0),  # the marked answer wins
        ("The answer is 1,000,000.", 1_000_000.0),
        ("It costs $-3.50 in the end", -3.5),
        ("about 2.5e3 units", 2500.0),
        ("no number here", None),
        ("", None),
    ],
)
def test_final_number_reads_gsm8k_answers(text: str, number: float | None) -> None:
    assert final_number(text) == number


def test_numeric_on_text_outputs() -> None:
    solution = "Natalia sold 48/2 = 24 clips in May.\n48+24 = 72\n#### 72"
    assert score(NumericMetric(), STR, "So she sold 72 clips.", solution) == 1.0
    assert score(NumericMetric(), STR, "So she sold 70 clips.", solution) == 0.0
    assert score(NumericMetric(), STR, "I do not know", solution) == 0.0


def test_f1_counts_duplicates_and_ignores_order() -> None:
    assert f1(["a", "b"], ["b", "a"]) == 1.0
    assert f1([], []) == 1.0
    assert f1(["a"], []) == 0.0
    assert f1(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx(2 / 3)
    tags = ListT(item=STR)
    assert score(F1Metric(), tags, ["x", "y", "z"], ["x", "y"]) == pytest.approx(0.8)
    assert score(F1Metric(normalize=Normalize(case=False)), tags, ["X"], ["x"]) == 1.0


def test_f1_on_text_is_squad_word_f1() -> None:
    got = score(F1Metric(normalize=SQUAD), STR, "the Eiffel Tower in Paris", "Eiffel Tower")
    assert got == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))


def test_f1_of_records_by_value() -> None:
    records = ListT(item=ISSUE)
    a, b = {"component": "lid", "severity": 1}, {"component": "cap", "severity": 2}
    assert score(F1Metric(), records, [a, b], [b, a]) == 1.0


def test_fields_is_the_mean_of_per_field_metrics() -> None:
    metric = FieldsMetric(
        fields={"component": ContainsMetric(), "severity": NumericMetric(tolerance=1)}
    )
    want = {"component": "lid", "severity": 4}
    assert score(metric, ISSUE, {"component": "the lid", "severity": 5}, want) == 1.0
    assert score(metric, ISSUE, {"component": "cap", "severity": 5}, want) == 0.5
    assert score(metric, ISSUE, {"component": "cap", "severity": 9}, want) == 0.0
    assert score(metric, ISSUE, {"severity": 4}, want) == 0.5  # a missing field scores 0


@pytest.mark.parametrize(
    "hostile",
    [None, math.nan, math.inf, -math.inf, 10**400, "x" * (3 * MAX_SCORED_CHARS), [None], {}, 3j],
)
@pytest.mark.parametrize(
    ("metric", "t"),
    [
        (ExactMetric(normalize=SQUAD), STR),
        (ContainsMetric(), STR),
        (NumericMetric(tolerance=1), STR),
        (NumericMetric(), FLOAT),
        (F1Metric(), ListT(item=STR)),
        (F1Metric(), STR),
        (FieldsMetric(fields={"component": ExactMetric(), "severity": NumericMetric()}), ISSUE),
        (ExactMetric(), FLOAT),
    ],
)
def test_hostile_values_score_in_range_never_raise(metric, t, hostile) -> None:  # type: ignore[no-untyped-def]
    for output, expected in [(hostile, "4"), ("4", hostile), (hostile, hostile)]:
        got = score(metric, t, output, expected)
        assert 0.0 <= got <= 1.0


def test_nan_never_equals_nan() -> None:
    assert score(ExactMetric(), FLOAT, math.nan, math.nan) == 0.0
    assert score(NumericMetric(tolerance=1e9), FLOAT, math.nan, 1.0) == 0.0
    assert final_number(math.inf) is None and final_number(True) is None


def test_a_huge_text_is_scored_on_its_bounded_part() -> None:
    huge = "7 " * MAX_SCORED_CHARS + "#### 42"
    assert score(NumericMetric(), STR, huge, 42) == 1.0


def test_expected_values_are_checked_against_the_output_type() -> None:
    assert expected_value(ExactMetric(), LABEL, "yes") == "yes"
    with pytest.raises(InvalidValue, match="'yes' or 'no'"):
        expected_value(ExactMetric(), LABEL, "maybe")
    with pytest.raises(InvalidValue):
        expected_value(ExactMetric(), INT, "3")
    with pytest.raises(InvalidValue, match="expected a number"):
        expected_value(NumericMetric(), INT, None)
    with pytest.raises(InvalidValue, match="a text without a number"):
        expected_value(NumericMetric(), STR, "none")
    assert expected_value(NumericMetric(), STR, "#### 5") == "#### 5"
    metric = FieldsMetric(fields={"component": ExactMetric(), "severity": NumericMetric()})
    with pytest.raises(InvalidValue, match="no field 'severity'"):
        expected_value(metric, ISSUE, {"component": "lid"})
    with pytest.raises(InvalidValue, match="field 'severity'"):
        expected_value(metric, ISSUE, {"component": "lid", "severity": [1]})
    with pytest.raises(InvalidValue, match="not a list"):
        expected_value(metric, ISSUE, [1])
