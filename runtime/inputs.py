"""Binding a run's input values to a flow's parameters: every problem at once, each
naming its input, as data (`InputError.problems`) so that a caller (the CLI, with its
own `-i` problems) can merge and show them without parsing a message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmflow.compiler.diagnostics import did_you_mean
from llmflow.compiler.ir import Plan
from llmflow.compiler.types import EnumT, OptionalT, Prim, Type, UnionT
from llmflow.errors import InputError
from llmflow.runtime.secrets import clip
from llmflow.runtime.values import InvalidValue, NotJSON, parse_json, validate


def bind_inputs(
    plan: Plan, values: Mapping[str, Any], partial: bool = False, given: Mapping[str, str] = {}
) -> dict[str, Any]:
    """Check input values against the flow's parameters and fill in defaults. Every
    problem is reported at once (InputError, its `problems` one per input name). A value
    that passes is JSON data that can be recorded and printed (`runtime.values.check_json`):
    no NaN, no lone surrogate, no nesting deeper than MAX_DEPTH. `partial`: missing inputs
    are fine (planning with what is known). `given`: problems the caller found reading
    inputs (name → message): reported first, and such an input is not also missing."""
    problems = dict(given)
    if not isinstance(values, Mapping):
        problems[""] = f"inputs are a dict of name → value, not a {type(values).__name__}"
        raise InputError(problems)
    known = {spec.name for spec in plan.inputs}
    for name in values:
        if name not in known and name not in problems:
            hint = did_you_mean(name, known) if isinstance(name, str) else None
            problems[name] = f"unknown input {quoted_name(name)}" + (
                f"; {hint}" if hint else f" (inputs: {', '.join(sorted(known)) or 'none'})"
            )
    bound: dict[str, Any] = {}
    for spec in plan.inputs:
        if spec.name in values:
            value, what = values[spec.name], f"input '{spec.name}'"
        elif spec.name in given:
            continue
        elif spec.required:
            if not partial:
                problems[spec.name] = f"missing input '{spec.name}' ({spec.type})"
            continue
        else:
            value, what = spec.default, f"the default of input '{spec.name}'"
        try:
            bound[spec.name] = validate(spec.type, value)
        except InvalidValue as err:
            problems.setdefault(spec.name, f"{what} expects {spec.type}: {err}")
    if problems:
        raise InputError(problems)
    return bound


def quoted_name(name: object, limit: int = 60) -> str:
    """An input name fit for a message: quoted, bounded, any lone surrogate (a byte of
    a non-UTF-8 argv) escaped."""
    text = name if isinstance(name, str) else repr(name)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "'" + text.encode("utf-8", "backslashreplace").decode("utf-8") + "'"


def value_from_text(who: str, t: Type | None, text: str) -> Any:
    """An input written as text (`-i NAME=VALUE`, a CSV cell): the text itself for `str`
    and enum inputs (and unknown names, reported later), JSON for the others. A type that
    takes a string among other values (`str?`, a union with an enum) reads the text as
    JSON when it is JSON of such a value (`null`, `{"name": "Al"}`), else as the string
    itself, so `-i nickname=Al` is "Al". Problems are InvalidValue, naming `who`."""
    if t is None or isinstance(t, EnumT) or isinstance(t, Prim) and t.name == "str":
        return text
    try:
        value = parse_json(text)
    except InvalidValue as err:
        if _takes_text(t):  # not JSON (or not a value of t): the string itself
            return text
        shown = clip(text, 60).encode("utf-8", "backslashreplace").decode("utf-8")
        scalar = t.item if isinstance(t, OptionalT) else t
        if isinstance(err, NotJSON) and isinstance(scalar, Prim) and scalar.name in _SCALARS:
            none = " (or null)" if isinstance(t, OptionalT) else ""
            said = f"{shown!r} is not {_SCALARS[scalar.name]}{none}"
            raise InvalidValue(f"{who} expects {t}: {said}") from None
        raise InvalidValue(f"{who} expects {t} written as JSON: {err} in {shown!r}") from None
    if (
        _takes_text(t)
        and isinstance(value, str | int | float | bool)
        and not isinstance(value, str)
    ):
        try:
            validate(t, value)
        except InvalidValue:
            return text  # `-i nickname=42`: the string "42"
    return value


_SCALARS = {"int": "an integer", "float": "a number", "bool": "true or false"}


def _takes_text(t: Type) -> bool:
    """Whether a value of `t` may be a string (`str?`, `Color?`, `Cat | Color`)."""
    match t:
        case Prim(name="str") | EnumT():
            return True
        case OptionalT(item=item):
            return _takes_text(item)
        case UnionT(options=options):
            return any(_takes_text(o) for o in options)
    return False
