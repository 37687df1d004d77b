"""Typed values at run time: validating inputs, parsing model output, rendering values
into prompts. Validation is pydantic's, against a Python type built from the llmflow type."""

from __future__ import annotations

import json
import math
import re
import sys
from enum import Enum
from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, FiniteFloat, TypeAdapter, ValidationError, create_model

from llmflow.compiler.types import (
    FLOAT,
    AnyT,
    EnumT,
    ListT,
    OptionalT,
    Prim,
    RecordT,
    Type,
    UnionT,
    json_schema,
    unbounded,
)
from llmflow.errors import LLMFlowError
from llmflow.runtime.secrets import clip

MAX_DEPTH = 100
"""Deepest nesting of lists and records a value may have: far beyond any real input, and
well below the recursion Python's JSON reader and writer can take."""

_SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone UTF-16 surrogate: a Python str can hold one, UTF-8 (and so JSON) cannot."""


class InvalidValue(LLMFlowError):
    """Text or data that does not fit a type; the message is fed back to the model."""


class NotJSON(InvalidValue):
    """Input text that is not JSON at all (not one that is JSON out of range)."""


@lru_cache(maxsize=512)
def _python_type(t: Type) -> Any:
    match t:
        case Prim(name="str", max_len=int() as most):
            return Annotated[str, Field(max_length=most)]
        case Prim(name=name):
            return {"str": str, "int": int, "float": FiniteFloat, "bool": bool}[name]
        case ListT(item=item, max_items=int() as most):
            return Annotated[list[_python_type(item)], Field(max_length=most)]  # type: ignore[misc]
        case ListT(item=item):
            return list[_python_type(item)]  # type: ignore[misc]
        case EnumT(members=members):
            return Literal[members]  # type: ignore[valid-type]
        case RecordT(name=name, fields=fields):
            safe = re.sub(r"\W", "_", name)
            return create_model(safe, **{f: (_python_type(ft), ...) for f, ft in fields})  # type: ignore[call-overload]
        case OptionalT(item=item):
            return _python_type(item) | None
        case UnionT(options=options):
            # A plain (smart-mode) union: pydantic picks the option the data fits best;
            # records reject fields they do not declare, so the cases stay apart.
            return Union[tuple(_union_option(o) for o in options)]  # noqa: UP007
    return Any


def _union_option(t: Type) -> Any:
    """A record as a union's option rejects fields it does not declare."""
    if not isinstance(t, RecordT):
        return _python_type(t)
    fields = {f: (_python_type(ft), ...) for f, ft in t.fields}
    safe = re.sub(r"\W", "_", t.name)
    return create_model(safe, __config__=ConfigDict(extra="forbid"), **fields)  # type: ignore[call-overload]


@lru_cache(maxsize=512)
def _adapter(t: Type) -> TypeAdapter[Any]:
    return TypeAdapter(_python_type(t))


def validate(t: Type, value: Any, strict: bool = True) -> Any:
    """Check a value against a type; plain JSON data out, which `json.dumps(...,
    allow_nan=False)` always writes (see `check_json`). Inputs are checked strictly;
    model output laxly (a record field "3" may stand for 3)."""
    try:
        if isinstance(t, AnyT):
            checked = value
        elif strict and t == FLOAT and isinstance(value, int) and not isinstance(value, bool):
            checked = float(value)
        else:
            checked = _plain(_adapter(t).validate_python(value, strict=strict))
    except ValidationError as err:
        raise InvalidValue(_describe(t, value, err)) from None
    except OverflowError:  # float(10**400)
        raise InvalidValue("an integer this large is out of range for a float") from None
    except RecursionError:  # a list[any] nested 100k deep
        raise InvalidValue(f"nested deeper than {MAX_DEPTH} levels") from None
    check_json(checked)
    return checked


def check_json(value: Any) -> None:
    """Raise InvalidValue unless the value is JSON data that writes and reads back as
    itself: str without lone surrogates, int of at most `sys.get_int_max_str_digits()`
    digits, finite float, bool, None, and lists and str-keyed dicts of them nested at
    most MAX_DEPTH deep. Iterative: a cycle or a 100k-deep list is just too deep."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, where = stack.pop()
        problem = None
        if isinstance(item, str):
            if found := _SURROGATE.search(item):
                problem = (
                    f"a lone surrogate ({found.group()!a}) at character {found.start()} is not text"
                )
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            problem = _int_problem(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                problem = f"{item} is not a finite number (JSON has no inf or NaN)"
        elif isinstance(item, list | dict):
            if len(where) >= MAX_DEPTH:
                problem = f"nested deeper than {MAX_DEPTH} levels"
            elif isinstance(item, list):
                stack.extend((v, (*where, i)) for i, v in enumerate(item))
            else:
                for k, v in item.items():
                    if not isinstance(k, str):
                        problem = f"key {k!r} is not a string"
                        break
                    stack.append((k, (*where, "key")))
                    stack.append((v, (*where, k)))
        else:
            problem = f"a {type(item).__name__} is not JSON data"
        if problem:
            path = ".".join(str(p) for p in where[:5]) + (".…" if len(where) > 5 else "")
            raise InvalidValue(f"{path}: {problem}" if path else problem)


def _int_problem(value: int) -> str | None:
    """Why an int cannot be written in decimal (Python refuses more than
    `sys.get_int_max_str_digits()` digits), or None."""
    limit = sys.get_int_max_str_digits()
    if limit and value.bit_length() > 3 * limit:  # fewer bits cannot reach the limit
        try:
            str(value)
        except ValueError:
            return f"an integer of more than {limit} digits is too long"
    return None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidValue(f"{_quote(text, 40)} is out of range for a number")
    return value


def _short_int(text: str) -> int:
    limit = sys.get_int_max_str_digits()
    digits = len(text) - text.startswith("-")
    if limit and digits > limit:
        raise InvalidValue(f"an integer of {digits} digits is too long (at most {limit})")
    return int(text)


def _no_constant(name: str) -> Any:
    raise InvalidValue(f"{name} is not JSON (JSON has no NaN or Infinity)")


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidValue(f"key {_quote(key, 40)} appears twice")
            seen.add(key)
    return data


_INPUT_JSON = json.JSONDecoder(
    parse_float=_finite_float,
    parse_int=_short_int,
    parse_constant=_no_constant,
    object_pairs_hook=_no_repeated_keys,
)
_OUTPUT_JSON = json.JSONDecoder(
    parse_float=_finite_float, parse_int=_short_int, parse_constant=_no_constant
)


def parse_json(text: str) -> Any:
    """Strict JSON for inputs: every problem (bad syntax, NaN, a number out of range, a
    repeated key, nesting too deep) is an InvalidValue saying what and where."""
    try:
        value = _INPUT_JSON.decode(text)
    except json.JSONDecodeError as err:
        raise NotJSON(f"{err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise InvalidValue(f"nested deeper than {MAX_DEPTH} levels") from None
    check_json(value)
    return value


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "model_type": "a record (a JSON object)",
    "dict_type": "a record (a JSON object)",
    "model_attributes_type": "a record (a JSON object)",
}


def _describe(t: Type, value: Any, err: ValidationError) -> str:
    """A validation error in our words (`item 1: expected an integer, got "a"`), not
    pydantic's (`1: Input should be a valid integer`): the locations as items and fields,
    the types as the language names them."""
    union = isinstance(unbounded(t), UnionT)
    problems = []
    for e in err.errors():
        if len(problems) == 3:
            break
        where = _location(t, e["loc"])
        if union and not where:
            continue  # this option is not even the right kind of value
        kind, ctx = e["type"], e.get("ctx") or {}
        if kind == "missing":
            problems.append(f"{where or 'the value'} is missing")
            continue
        if kind in _EXPECTED:
            what = f"expected {_EXPECTED[kind]}, got {_shown(e['input'])}"
        elif kind in ("literal_error", "enum"):
            what = f"expected one of {ctx.get('expected', '')}, got {_shown(e['input'])}"
        elif kind == "string_too_long":
            what = f"has {len(e['input'])} characters; at most {ctx.get('max_length')}"
        elif kind == "too_long":
            what = f"has {ctx.get('actual_length')} items; at most {ctx.get('max_length')}"
        elif kind == "extra_forbidden":
            what = "is not a field of the record"
        else:
            what = str(e["msg"])[:1].lower() + str(e["msg"])[1:]
        problems.append(f"{where}: {what}" if where else what)
    if union:  # no option fits: name them all, then what kept the closest ones out
        said = f"expected {t}, got {_shown(value)}"
        return said + (f" ({'; '.join(problems)})" if problems else "")
    return "; ".join(problems)


def _location(t: Type | None, loc: tuple[int | str, ...]) -> str:
    """`item 1`, `field 'name'`, `field 'tags', item 0`: pydantic's path read along the
    type, so the option names it adds inside a union (`P`, `literal['a','b']`) are left
    out (they are no field)."""
    parts = []
    for part in loc:
        while isinstance(t, OptionalT):
            t = t.item
        if isinstance(t, UnionT):
            t = None  # this part names the option; its fields follow
            continue
        if isinstance(part, int):
            parts.append(f"item {part}")
            t = t.item if isinstance(t, ListT) else None
        else:
            parts.append(f"field '{part}'")
            t = t.field(part) if isinstance(t, RecordT) else None
    return ", ".join(parts)


def _shown(value: Any) -> str:
    """A value a message quotes: a scalar as JSON (clipped), a list or record by kind
    (it may be huge or deeply nested)."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "a record"
    try:
        return clip(json.dumps(value, ensure_ascii=False), 40)
    except (TypeError, ValueError):
        return clip(repr(value), 40)


def parse_output(t: Type, text: str) -> Any:
    """Model text → a value of type t, leniently: a small model writes `Yes.` for an
    enum member `yes`, or wraps JSON in prose and code fences. A lone surrogate (a
    server's JSON can carry one) becomes U+FFFD: the value must be writable as UTF-8."""
    text = _SURROGATE.sub("\ufffd", text.strip())
    match t:
        case Prim(name="str", max_len=int() as most) if len(text) > most:
            raise InvalidValue(f"the text has {len(text)} characters, more than {most}")
        case Prim(name="str") | AnyT():
            return text
        case Prim(name="int"):
            found = re.search(r"-?\d[\d,]*", text)
            if not found:
                raise InvalidValue(f"expected an integer, got {_quote(text)}")
            return _short_int(found.group().replace(",", ""))
        case Prim(name="float"):
            found = re.search(r"-?\d[\d,]*(\.\d+)?([eE]-?\d+)?", text)
            if not found:
                raise InvalidValue(f"expected a number, got {_quote(text)}")
            return _finite_float(found.group().replace(",", ""))
        case Prim(name="bool"):
            word = _first_word(text)
            if word in ("true", "yes"):
                return True
            if word in ("false", "no"):
                return False
            raise InvalidValue(f"expected true or false, got {_quote(text)}")
        case EnumT(members=members):
            return _enum_member(members, text)
        case OptionalT(item=item):
            if _first_word(text) in ("", "null", "none") and not re.search(r"[\[{\d]", text):
                return None
            return parse_output(item, text)
        case UnionT(options=options) if all(isinstance(o, EnumT) for o in options):
            members = tuple(m for o in options if isinstance(o, EnumT) for m in o.members)
            return _enum_member(members, text)
    data = _extract_json(text)
    if data is None and isinstance(t, UnionT):
        members = tuple(m for o in t.options if isinstance(o, EnumT) for m in o.members)
        if members:
            return _enum_member(members, text)
    if data is None:
        if isinstance(t, ListT) and unbounded(t.item) == Prim(name="str"):
            items = [
                re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in text.splitlines()
            ]
            return [i for i in items if i]
        raise InvalidValue(f"expected JSON for {t}, got {_quote(text)}")
    if isinstance(t, ListT) and isinstance(data, dict) and len(data) == 1:
        (only,) = data.values()
        if isinstance(only, list):
            data = only
    if isinstance(t, ListT) and isinstance(t.item, EnumT) and isinstance(data, list):
        data = [_enum_member(t.item.members, str(x)) for x in data]
    return validate(t, data, strict=False)


def parse_choice(choices: list[str], text: str) -> str:
    """Model text → one of an output's run-time `choices=`, as leniently as an enum."""
    return _enum_member(tuple(choices), _SURROGATE.sub("\ufffd", text.strip()))


def _enum_member(members: tuple[str, ...], text: str) -> str:
    lowered = {m.lower(): m for m in members}
    cleaned = text.strip().strip("\"'`*.,:;!()[]").strip()
    if cleaned in members:
        return cleaned
    if cleaned.lower() in lowered:
        return lowered[cleaned.lower()]
    words = re.findall(r"[A-Za-z0-9_]+", text.lower())
    found = [lowered[w] for w in dict.fromkeys(words) if w in lowered]
    if len(found) == 1:
        return found[0]
    raise InvalidValue(f"expected one of {', '.join(members)}, got {_quote(text)}")


def _first_word(text: str) -> str:
    words = re.findall(r"[A-Za-z]+", text.lower())
    return words[0] if words else ""


def _extract_json(text: str) -> Any:
    """The first JSON object or array in the text, or None. NaN, numbers out of range
    and nesting too deep are InvalidValue (fed back to the model)."""
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = _OUTPUT_JSON.raw_decode(text[match.start() :])
        except json.JSONDecodeError:
            continue
        except RecursionError:
            raise InvalidValue(f"JSON nested deeper than {MAX_DEPTH} levels") from None
        return value
    return None


def _quote(text: str, limit: int = 80) -> str:
    return repr(clip(text, limit))


def describe_type(t: Type) -> str:
    """How to ask a model for a value of this type, in words."""
    match t:
        case Prim(name="int"):
            return "an integer"
        case Prim(name="float"):
            return "a number"
        case Prim(name="bool"):
            return "true or false"
        case EnumT(members=members):
            return "exactly one of: " + ", ".join(members)
        case UnionT(options=options) if all(isinstance(o, EnumT) for o in options):
            members = [m for o in options if isinstance(o, EnumT) for m in o.members]
            return "exactly one of: " + ", ".join(members)
        case ListT() | RecordT() | OptionalT() | UnionT():
            return "JSON matching this schema: " + json.dumps(json_schema(t))
        case Prim(name="str", max_len=int() as most):
            return f"text of at most {most} characters"
    return "text"
