"""The built-in metrics: each scores one output against its expected value, in [0, 1].

Pure functions of (metric, type, output, expected). Any value may arrive (a model's
text, a record, None from a failed field, NaN, a megabyte of text): a value that cannot
be scored is a score of 0, never an exception; an expected value that is not of the
output's type is the dataset's mistake, found before scoring (`expected_value`) and
reported with the row's file and line. The judge (a model call) and extern metrics (a
user's Python) run in `runner.py`.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from typing import Any

from llmflow.compiler.evalspec import (
    ContainsMetric,
    ExactMetric,
    F1Metric,
    FieldsMetric,
    Metric,
    Normalize,
    NumericMetric,
)
from llmflow.compiler.types import AnyT, ListT, RecordT, Type
from llmflow.runtime.values import InvalidValue, validate

MAX_SCORED_CHARS = 1_000_000
"""Text longer than this is cut before it is compared: scoring stays linear and bounded
(a runaway generation still scores, against its first million characters)."""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SPACES = re.compile(r"\s+")
_GSM8K_ANSWER = re.compile(r"####\s*\$?\s*([-+]?[\d,]*\.?\d+)")
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*)?\.?\d+(?:[eE][-+]?\d+)?")


def normalize_text(text: str, how: Normalize) -> str:
    """Text as a metric compares it: cut to MAX_SCORED_CHARS, Unicode NFC, then what
    `how` ignores removed (SQuAD's order: case, punctuation, articles, whitespace)."""
    text = unicodedata.normalize("NFC", text[:MAX_SCORED_CHARS])
    if not how.case:
        text = text.casefold()
    if not how.punctuation:
        text = text.translate(_PUNCTUATION)
    if not how.articles:
        text = _ARTICLES.sub(" ", text)
    if not how.whitespace:
        text = _SPACES.sub(" ", text)
    return text.strip()


def final_number(value: Any) -> float | None:
    """The number a value stands for: a finite int or float as it is; a text's final
    answer (GSM8K's `#### N`, else the last number in it, thousands commas removed).
    None if there is none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    if not isinstance(value, str):
        return None
    text = value[-MAX_SCORED_CHARS:]
    marked = _GSM8K_ANSWER.findall(text)
    found = marked[-1] if marked else next(reversed(_NUMBER.findall(text)), None)
    if found is None:
        return None
    try:
        number = float(found.replace(",", ""))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def expected_value(metric: Metric, t: Type, raw: Any) -> Any:
    """The expected value of an output, checked for its metric (InvalidValue says what
    is wrong): a number, or a text holding one, for `numeric`; a value of the output's
    type otherwise (records field by field, each for its own metric)."""
    if isinstance(metric, NumericMetric):
        if final_number(raw) is None:
            raise InvalidValue(f"expected a number (or a text ending in one), not {_kind(raw)}")
        return raw
    if isinstance(metric, FieldsMetric) and isinstance(t, RecordT):
        if not isinstance(raw, dict):
            raise InvalidValue(f"expected a {t} record (a JSON object), not {_kind(raw)}")
        out = {}
        for name, field_type in t.fields:
            if name not in raw:
                raise InvalidValue(f"the expected {t} has no field '{name}'")
            try:
                out[name] = expected_value(metric.fields[name], field_type, raw[name])
            except InvalidValue as err:
                raise InvalidValue(f"field '{name}': {err}") from None
        return out
    return validate(t, raw)


def score(metric: Metric, t: Type, output: Any, expected: Any) -> float:
    """How well `output` matches `expected` under a built-in metric, from 0 to 1."""
    match metric:
        case ExactMetric(normalize=how):
            return float(_comparable(output, how) == _comparable(expected, how))
        case ContainsMetric(normalize=how):
            if not isinstance(output, str) or not isinstance(expected, str):
                return 0.0
            return float(normalize_text(expected, how) in normalize_text(output, how))
        case NumericMetric(tolerance=tolerance, relative=relative):
            got, want = final_number(output), final_number(expected)
            if got is None or want is None:
                return 0.0
            return float(abs(got - want) <= max(tolerance, relative * abs(want)))
        case F1Metric(normalize=how):
            return f1(_items(output, t, how), _items(expected, t, how))
        case FieldsMetric(fields=fields):
            if not isinstance(output, dict) or not isinstance(expected, dict) or not fields:
                return 0.0
            field_types = dict(t.fields) if isinstance(t, RecordT) else {}
            total = 0.0
            for name, field_metric in fields.items():
                if name in output:
                    field_type = field_types.get(name, AnyT())
                    total += score(field_metric, field_type, output[name], expected.get(name))
            return total / len(fields)
    raise ValueError(f"{metric.kind} is not a built-in metric: the runner scores it")


def f1(got: list[Any], want: list[Any]) -> float:
    """F1 of two multisets (order free; an item twice counts twice). Both empty: 1."""
    if not got and not want:
        return 1.0
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def _items(value: Any, t: Type, how: Normalize) -> list[Any]:
    """What F1 counts: a text's words, a list's items (text normalized, other items
    as their JSON, so that unhashable records count too)."""
    if isinstance(value, str) and not isinstance(t, ListT):
        return normalize_text(value, how).split()
    if not isinstance(value, list):
        return []
    return [_comparable(item, how) for item in value[:MAX_SCORED_CHARS]]


def _comparable(value: Any, how: Normalize) -> Any:
    """A value as exact match compares it: text normalized, a list item by item, other
    values as JSON text (1 and 1.0 are one number; NaN is never equal to anything)."""
    if isinstance(value, str):
        return ("s", normalize_text(value, how))
    if isinstance(value, list) and all(isinstance(v, str) for v in value[:MAX_SCORED_CHARS]):
        return ("l", tuple(normalize_text(v, how) for v in value[:MAX_SCORED_CHARS]))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return ("j", json.dumps(value, sort_keys=True, allow_nan=False, default=repr))
    except (ValueError, TypeError, RecursionError):
        return ("x", object())  # NaN, inf, cycles: equal to nothing, not even itself


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a text without a number" if value.strip() else "an empty text"
    return {dict: "an object", list: "a list", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
