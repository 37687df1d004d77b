"""Builtin functions for text and lists: their types (for the checker) and code (for the
runtime), side by side so they cannot drift apart."""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmflow.compiler.types import (
    ANY,
    BOOL,
    FLOAT,
    INT,
    STR,
    AnyT,
    EnumT,
    ListT,
    Prim,
    Type,
    assignable,
)


@dataclass(frozen=True)
class Param:
    name: str
    type: Type | None
    """None: any type (the builtin's `result` checks it)."""
    default: Any = ...

    @property
    def required(self) -> bool:
        return self.default is ...


@dataclass(frozen=True)
class Builtin:
    name: str
    params: tuple[Param, ...]
    result: Callable[[list[Type]], Type | str]
    """Result type from argument types, or an error message."""
    impl: Callable[..., Any]
    doc: str
    variadic: bool = False
    """Accepts any further keyword arguments (format)."""


def _fixed(t: Type) -> Callable[[list[Type]], Type]:
    return lambda _args: t


def _list_item(args: list[Type]) -> Type | str:
    if isinstance(args[0], AnyT):
        return ANY
    if not isinstance(args[0], ListT):
        return f"expects a list, got {args[0]}"
    return args[0].item


def _same_list(args: list[Type]) -> Type | str:
    if isinstance(args[0], AnyT | ListT):
        return args[0]
    return f"expects a list, got {args[0]}"


def _len_type(args: list[Type]) -> Type | str:
    if args[0] == STR or isinstance(args[0], ListT | AnyT):
        return INT
    return f"expects str or a list, got {args[0]}"


def _join_type(args: list[Type]) -> Type | str:
    item = args[0].item if isinstance(args[0], ListT) else args[0]
    if isinstance(args[0], ListT | AnyT) and (assignable(item, STR) or isinstance(item, Prim)):
        return STR
    return f"expects a list of strings, got {args[0]}"


def _flatten_type(args: list[Type]) -> Type | str:
    if isinstance(args[0], AnyT):
        return ANY
    if isinstance(args[0], ListT) and isinstance(args[0].item, ListT | AnyT):
        return args[0].item
    return f"expects a list of lists, got {args[0]}"


def _contains_type(args: list[Type]) -> Type | str:
    if args[0] == STR or isinstance(args[0], ListT | AnyT | EnumT):
        return BOOL
    return f"expects str or a list, got {args[0]}"


def _convert_to(target: Prim) -> Callable[[list[Type]], Type | str]:
    def result(args: list[Type]) -> Type | str:
        if isinstance(args[0], Prim | EnumT | AnyT):
            return target
        return f"cannot convert {args[0]} to {target}"

    return result


def _extremum_type(args: list[Type]) -> Type | str:
    if args[0] == args[1] and args[0] in (INT, FLOAT, STR):
        return args[0]
    if all(t in (INT, FLOAT) for t in args):
        return FLOAT
    return "expects two numbers or two strings"


def chunk(text: str, size: int, overlap: int = 0) -> list[str]:
    """Cut text into pieces of at most `size` characters, at paragraph, line or word
    boundaries where possible, so that no chunk starts mid-word."""
    if size <= 0:
        raise ValueError("chunk size must be positive")
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and smaller than the chunk size")
    pieces: list[str] = []
    start = 0
    text = text.strip()
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            window = text[start:end]
            for sep in ("\n\n", "\n", ". ", " "):
                cut = window.rfind(sep)
                if cut > size // 2:
                    end = start + cut + len(sep)
                    break
        piece = text[start:end].strip()
        if piece:
            pieces.append(piece)
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return pieces


def select(value: Any, path: list[str]) -> Any:
    """The field at `path` in a record value (`{{review.summary}}` in a template)."""
    for name in path:
        value = value[name]
    return value


def to_text(value: Any) -> str:
    """A value as text, in prompts and in `str()`: lists one item a line, records as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        if all(isinstance(v, str | int | float) for v in value):
            return "\n".join(f"- {to_text(v)}" for v in value)
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _format(template: str, **values: Any) -> str:
    return template.format(**{k: to_text(v) for k, v in values.items()})


def _split(text: str, sep: str = "\n") -> list[str]:
    return [part.strip() for part in text.split(sep) if part.strip()]


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        match = re.search(r"-?\d+", value)
        if not match:
            raise ValueError(f"no integer in {value!r}")
        return int(match.group())
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, str):
        match = re.search(r"-?\d+(\.\d+)?", value)
        if not match:
            raise ValueError(f"no number in {value!r}")
        return float(match.group())
    return float(value)


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in [
        Builtin("len", (Param("value", None),), _len_type, len, "Length of a string or list."),
        Builtin(
            "join",
            (Param("items", None), Param("sep", STR, "\n")),
            _join_type,
            lambda items, sep="\n": sep.join(to_text(i) for i in items),
            "Join a list into one string with a separator (default: newline).",
        ),
        Builtin(
            "split",
            (Param("text", STR), Param("sep", STR, "\n")),
            _fixed(ListT(item=STR)),
            _split,
            "Split text at a separator (default: newline), dropping empty pieces.",
        ),
        Builtin(
            "chunk",
            (Param("text", STR), Param("size", INT), Param("overlap", INT, 0)),
            _fixed(ListT(item=STR)),
            chunk,
            "Cut text into pieces of at most `size` characters at natural boundaries.",
        ),
        Builtin(
            "format",
            (Param("template", STR),),
            _fixed(STR),
            _format,
            'Fill `{name}` fields of a string: format("Hi {who}", who=name).',
            variadic=True,
        ),
        Builtin("str", (Param("value", None),), _convert_to(STR), to_text, "Value as text."),
        Builtin("int", (Param("value", None),), _convert_to(INT), _to_int, "Parse an int."),
        Builtin("float", (Param("value", None),), _convert_to(FLOAT), _to_float, "Parse a number."),
        Builtin("strip", (Param("text", STR),), _fixed(STR), str.strip, "Trim whitespace."),
        Builtin("lower", (Param("text", STR),), _fixed(STR), str.lower, "Lowercase."),
        Builtin("upper", (Param("text", STR),), _fixed(STR), str.upper, "Uppercase."),
        Builtin(
            "replace",
            (Param("text", STR), Param("old", STR), Param("new", STR)),
            _fixed(STR),
            lambda text, old, new: text.replace(old, new),
            "Replace every occurrence of `old`.",
        ),
        Builtin(
            "contains",
            (Param("haystack", None), Param("needle", None)),
            _contains_type,
            lambda haystack, needle: needle in haystack,
            "Whether a string contains a substring, or a list an item.",
        ),
        Builtin(
            "range",
            (Param("n", INT),),
            _fixed(ListT(item=INT)),
            lambda n: list(range(n)),
            "The integers 0 .. n-1.",
        ),
        Builtin(
            "first",
            (Param("items", None),),
            _list_item,
            lambda items: items[0],
            "The first item of a list.",
        ),
        Builtin(
            "last",
            (Param("items", None),),
            _list_item,
            lambda items: items[-1],
            "The last item of a list.",
        ),
        Builtin(
            "take",
            (Param("items", None), Param("n", INT)),
            _same_list,
            lambda items, n: items[:n],
            "The first n items of a list.",
        ),
        Builtin(
            "flatten",
            (Param("lists", None),),
            _flatten_type,
            lambda lists: [x for sub in lists for x in sub],
            "Concatenate a list of lists.",
        ),
        Builtin(
            "max",
            (Param("a", None), Param("b", None)),
            _extremum_type,
            max,
            "The larger of two numbers.",
        ),
        Builtin(
            "min",
            (Param("a", None), Param("b", None)),
            _extremum_type,
            min,
            "The smaller of two numbers.",
        ),
    ]
}


class BuiltinError(Exception):
    """A builtin or operator failed on its arguments; the message is for the user."""


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": operator.mod,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "and": lambda a, b: a and b,
    "or": lambda a, b: a or b,
}


def evaluate(op: str, value: Any, args: list[Any]) -> Any:
    """Compute a `builtin` node: an operator, a field access, a record or list, or a
    named builtin (`value` holds a field name, record fields, or keyword names)."""
    if op == "field":
        return args[0][value]
    if op == "record":
        return dict(zip(value, args, strict=True))
    if op == "list":
        return args
    if op == "index":
        try:
            return args[0][args[1]]
        except IndexError:
            raise BuiltinError(f"index {args[1]} is out of range (length {len(args[0])})") from None
    if op == "neg":
        return -args[0]
    if op == "not":
        return not args[0]
    if op in _OPERATORS:
        if op in ("/", "%") and args[1] == 0:
            raise BuiltinError("division by zero")
        return _OPERATORS[op](args[0], args[1])
    keywords = value or []
    positional = args[: len(args) - len(keywords)]
    named = dict(zip(keywords, args[len(positional) :], strict=True))
    try:
        return BUILTINS[op].impl(*positional, **named)
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise BuiltinError(f"{op}(): {err}") from err
