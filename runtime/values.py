"""Typed values at run time: validating inputs, parsing model output, rendering values
into prompts. Validation is pydantic's, against a Python type built from the llmflow type."""

from __future__ import annotations

import json
import re
from enum import Enum
from functools import lru_cache
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError, create_model

from llmflow.compiler.types import AnyT, EnumT, ListT, Prim, RecordT, Type, json_schema
from llmflow.runtime.secrets import clip


class InvalidValue(Exception):
    """Text or data that does not fit a type; the message is fed back to the model."""


@lru_cache(maxsize=512)
def _python_type(t: Type) -> Any:
    match t:
        case Prim(name=name):
            return {"str": str, "int": int, "float": float, "bool": bool}[name]
        case ListT(item=item):
            return list[_python_type(item)]  # type: ignore[misc]
        case EnumT(members=members):
            return Literal[members]  # type: ignore[valid-type]
        case RecordT(name=name, fields=fields):
            safe = re.sub(r"\W", "_", name)
            return create_model(safe, **{f: (_python_type(ft), ...) for f, ft in fields})  # type: ignore[call-overload]
    return Any


@lru_cache(maxsize=512)
def _adapter(t: Type) -> TypeAdapter[Any]:
    return TypeAdapter(_python_type(t))


def validate(t: Type, value: Any, strict: bool = True) -> Any:
    """Check a value against a type; plain JSON data out. Inputs are checked strictly;
    model output laxly (a record field "3" may stand for 3)."""
    if isinstance(t, AnyT):
        return value
    if (
        strict
        and t == Prim(name="float")
        and isinstance(value, int)
        and not isinstance(value, bool)
    ):
        return float(value)
    try:
        checked = _adapter(t).validate_python(value, strict=strict)
    except ValidationError as err:
        raise InvalidValue(_describe(err)) from None
    return _plain(checked)


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value


def _describe(err: ValidationError) -> str:
    problems = []
    for e in err.errors()[:3]:
        where = ".".join(str(p) for p in e["loc"])
        problems.append(f"{where + ': ' if where else ''}{e['msg']}")
    return "; ".join(problems)


def parse_output(t: Type, text: str) -> Any:
    """Model text → a value of type t, leniently: a small model writes `Yes.` for an
    enum member `yes`, or wraps JSON in prose and code fences."""
    text = text.strip()
    match t:
        case Prim(name="str") | AnyT():
            return text
        case Prim(name="int"):
            found = re.search(r"-?\d[\d,]*", text)
            if not found:
                raise InvalidValue(f"expected an integer, got {_quote(text)}")
            return int(found.group().replace(",", ""))
        case Prim(name="float"):
            found = re.search(r"-?\d[\d,]*(\.\d+)?([eE]-?\d+)?", text)
            if not found:
                raise InvalidValue(f"expected a number, got {_quote(text)}")
            return float(found.group().replace(",", ""))
        case Prim(name="bool"):
            word = _first_word(text)
            if word in ("true", "yes"):
                return True
            if word in ("false", "no"):
                return False
            raise InvalidValue(f"expected true or false, got {_quote(text)}")
        case EnumT(members=members):
            return _enum_member(members, text)
    data = _extract_json(text)
    if data is None:
        if isinstance(t, ListT) and t.item in (Prim(name="str"),):
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
    """The first JSON object or array in the text, or None."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text[match.start() :])
        except json.JSONDecodeError:
            continue
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
        case ListT() | RecordT():
            return "JSON matching this schema: " + json.dumps(json_schema(t))
    return "text"
