"""Builtin functions for text and lists: their types (for the checker) and code (for the
runtime), side by side so they cannot drift apart.

`evaluate` serves the optimizer (values known at plan time) and the scheduler alike, so
both share its bounds: no value it makes exceeds the limits below, and a value that would
is refused before it is made wherever its size can be foreseen (`"x" * n`, `range(n)`,
`join`, `replace`...), so a program can neither exhaust memory nor hang the planner.
"""

from __future__ import annotations

import json
import math
import operator
import re
import string
from collections.abc import Callable, Iterable
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
    RecordT,
    Type,
    assignable,
    unbounded,
)
from llmflow.errors import LLMFlowError
from llmflow.stdlib import tokenizers


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
    result: Callable[[list[Type | None]], Type | str]
    """Result type from argument types, or an error message."""
    impl: Callable[..., Any]
    doc: str
    variadic: bool = False
    """Accepts any further keyword arguments (format)."""
    shown: tuple[str, ...] = ()
    """How `llmflow doc` writes a generic builtin's signature, one line per form
    (`take(items: list[T], n: int) -> list[T]`): its result depends on its arguments'
    types, which the parameters alone (typed `None`, any) cannot say."""


MAX_INT_DIGITS = 4_300
"""Digits of an integer, literal or computed (Python's limit for writing one as text)."""
MAX_ITEMS = 1_000_000
"""Items of a list that a builtin or operator makes."""
MAX_SIZE = 10_000_000
"""Size of a value a builtin or operator makes: the characters of its strings plus the
items of its lists and records, nested ones included (each as often as it appears)."""
MAX_DEPTH = 200
"""Nesting of lists and records in a value a builtin or operator makes."""
_INT_BOUND = 10**MAX_INT_DIGITS


class BuiltinError(LLMFlowError):
    """A builtin or operator failed on its arguments; the message is for the user."""


class LimitError(BuiltinError):
    """A value would exceed MAX_INT_DIGITS, MAX_ITEMS, MAX_SIZE or MAX_DEPTH."""


class EmptyListError(BuiltinError):
    """A builtin that needs an item got an empty list: a certain failure, so the optimizer
    reports it at plan time when the list is known there."""


def _limit(what: str, count: int, limit: int, unit: str) -> LimitError:
    return LimitError(f"{what} would have {count:,} {unit}; the limit is {limit:,}")


def measure(value: Any, limit: int = MAX_SIZE) -> tuple[int, int]:
    """A value's size (as MAX_SIZE counts it) and nesting depth. A list or record that
    appears several times is walked once; counting stops once the size passes `limit` or
    the depth MAX_DEPTH, so it costs at most that much, however the value was built."""
    if not isinstance(value, list | dict):
        return _scalar_size(value), 0
    done: dict[int, tuple[int, int]] = {}
    # Each frame: a list or record, its items still to count, its size and depth so far.
    frames: list[list[Any]] = [[value, iter(_items(value)), len(value), 0]]
    total = len(value)  # of every frame: the whole value is at least this large
    while frames:
        frame = frames[-1]
        item = next(frame[1], _END)
        if item is _END:
            frames.pop()
            done[id(frame[0])] = (frame[2], frame[3] + 1)
            if frames:
                frames[-1][2] += frame[2]
                frames[-1][3] = max(frames[-1][3], frame[3] + 1)
            continue
        if isinstance(item, list | dict):
            known = done.get(id(item))
            if known is None:
                if len(frames) >= MAX_DEPTH:
                    return total, len(frames) + 1
                frames.append([item, iter(_items(item)), len(item), 0])
                total += len(item)
            else:
                frame[2] += known[0]
                frame[3] = max(frame[3], known[1])
                total += known[0]
        else:
            size = _scalar_size(item)
            frame[2] += size
            total += size
        if total > limit:
            return total, len(frames)
    return done[id(value)]


_END = object()


def _items(value: list[Any] | dict[str, Any]) -> Iterable[Any]:
    return value.values() if isinstance(value, dict) else value


def _scalar_size(value: Any) -> int:
    return len(value) if isinstance(value, str) else 1


def check_size(what: str, value: Any) -> None:
    """LimitError if `value` is larger (written out) or deeper than the limits allow."""
    size, depth = measure(value)
    if size > MAX_SIZE:
        raise LimitError(f"{what} would be larger than {MAX_SIZE:,} characters and items")
    if depth > MAX_DEPTH:
        raise LimitError(f"{what} would nest lists and records more than {MAX_DEPTH} deep")


def _check_result(what: str, value: Any) -> Any:
    """`value` if it is within the limits (checks that cost O(1): lengths, digits)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -_INT_BOUND < value < _INT_BOUND:
        raise LimitError(f"{what} would have more than {MAX_INT_DIGITS:,} digits")
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitError(f"{what} is too large for a number (it overflows a float)")
    if isinstance(value, str) and len(value) > MAX_SIZE:
        raise _limit(what, len(value), MAX_SIZE, "characters")
    if isinstance(value, list | dict) and len(value) > MAX_ITEMS:
        raise _limit(what, len(value), MAX_ITEMS, "items")
    return value


def _fixed(t: Type) -> Callable[[list[Type]], Type]:
    return lambda _args: t


def _list_item(args: list[Type]) -> Type | str:
    if isinstance(args[0], AnyT):
        return ANY
    if not isinstance(args[0], ListT):
        return f"expects a list, got {args[0]}"
    return args[0].item


def _enumerate_type(args: list[Type]) -> Type | str:
    """A list of records `{index: int, item: T}`: named fields read better in a map body
    (`map e in enumerate(xs): f(e.index, e.item)`) than positions of a 2-list, which
    could not hold an int and a T in one typed list anyway."""
    item = _list_item(args)
    if isinstance(item, str):
        return item
    return ListT(item=RecordT(name=f"Indexed[{item}]", fields=(("index", INT), ("item", item))))


def _zip_type(args: list[Type]) -> Type | str:
    """A list of records `{first: A, second: B}`, one per position of two lists."""
    items = [_list_item([a]) for a in args]
    for i, item in enumerate(items):
        if isinstance(item, str):
            return f"{item} ({'first' if i == 0 else 'second'} argument)"
    a, b = items
    return ListT(item=RecordT(name=f"Pair[{a}, {b}]", fields=(("first", a), ("second", b))))


def _enumerate(items: list[Any]) -> list[dict[str, Any]]:
    check_size("enumerate()", [items, items])
    return [{"index": i, "item": item} for i, item in enumerate(items)]


def _zip(a: list[Any], b: list[Any]) -> list[dict[str, Any]]:
    if len(a) != len(b):
        raise ValueError(f"the lists have different lengths ({len(a)} and {len(b)})")
    check_size("zip()", [a, b, a])
    return [{"first": x, "second": y} for x, y in zip(a, b, strict=True)]


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


_ORDERED = (INT, FLOAT, STR)


def _ordered_item(args: list[Type | None], what: str) -> Type | str:
    """The item type of a list of numbers or strings (which compare with one another)."""
    item = _list_item(args[:1])
    if isinstance(item, str | AnyT):
        return item
    if unbounded(item) in _ORDERED:
        return item
    return f"expects a list of {what}, got {args[0]}"


def _extremum_type(args: list[Type | None]) -> Type | str:
    """`max(xs)`: the item type of a list; `max(a, b)`: of two numbers or strings."""
    a, b = args
    if b is None:
        if isinstance(a, Prim):
            return "of one value: give two values, or a list of numbers or strings"
        return _ordered_item(args, "numbers or strings")
    ta, tb = unbounded(a), unbounded(b)
    if isinstance(ta, AnyT):
        ta = tb
    if isinstance(tb, AnyT):
        tb = ta
    if isinstance(ta, AnyT) or ta == tb and ta in _ORDERED:
        return ta
    if ta in (INT, FLOAT) and tb in (INT, FLOAT):
        return FLOAT
    return "expects two numbers, two strings, or a list of numbers or strings"


def _extremum(pick: Callable[..., Any], name: str) -> Callable[..., Any]:
    def impl(a: Any, b: Any = None) -> Any:
        if b is not None:
            return pick(a, b)
        if not isinstance(a, list):
            raise BuiltinError(f"{name}() of one value: give two values, or a list")
        if not a:
            raise EmptyListError(f"{name}() of an empty list")
        return pick(a)

    return impl


def _sum_type(args: list[Type | None]) -> Type | str:
    item = _list_item(args[:1])
    if isinstance(item, str | AnyT):
        return item
    if item in (INT, FLOAT):
        return item
    return f"expects a list of numbers (int or float), got {args[0]}"


def _sum(items: list[Any]) -> Any:
    """0 for an empty list (of either type: 0 is also a float)."""
    return sum(items)


def _sort_type(args: list[Type | None]) -> Type | str:
    item = _ordered_item(args, "numbers or strings")
    return item if isinstance(item, str) else args[0]


def _sort(items: list[Any], reverse: bool = False) -> list[Any]:
    return sorted(items, reverse=reverse)


def _drop(items: list[Any], n: int) -> list[Any]:
    """All but the first n items (`take`'s complement: take(xs, n) + drop(xs, n) == xs)."""
    return items[n:]


def _vote(items: list[Any]) -> Any:
    """Records and lists compare by value; an empty list fails."""
    if not items:
        raise EmptyListError("vote() of an empty list")
    counts: dict[str, list[Any]] = {}
    for item in items:
        key = json.dumps(item, sort_keys=True)
        counts.setdefault(key, [0, item])[0] += 1
    best = max(counts.values(), key=lambda entry: entry[0])  # max keeps the first of ties
    return best[1]


def _best_of(items: list[Any], scores: list[Any]) -> Any:
    """Fails on an empty list, or if there is not one score per item."""
    if not items:
        raise EmptyListError("best_of() of an empty list")
    if len(items) != len(scores):
        raise BuiltinError(f"best_of(): {len(items)} items but {len(scores)} scores")
    best = max(range(len(items)), key=lambda i: scores[i])
    return items[best]


def _best_of_type(args: list[Type]) -> Type | str:
    scores = args[1]
    if not (
        isinstance(scores, AnyT)
        or isinstance(scores, ListT)
        and (isinstance(scores.item, AnyT) or scores.item in (INT, FLOAT))
    ):
        return f"expects a list of numbers as scores, got {scores}"
    return _list_item(args[:1])


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
    total = 0
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
            total += len(piece) + 1
            if total > MAX_SIZE or len(pieces) > MAX_ITEMS:
                raise LimitError(
                    f"the chunks would be larger than {MAX_SIZE:,} characters and items "
                    f"or more than {MAX_ITEMS:,}: use a larger size or a smaller overlap"
                )
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
    if value is None:  # an optional without a value
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        if all(isinstance(v, str | int | float) for v in value):
            return "\n".join(f"- {to_text(v)}" for v in value)
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


_WIDTH = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)")


def _format(template: str, **values: Any) -> str:
    """`str.format` with every value as text, its size added up as it goes: a field used
    many times, or a width like {x:>999999999}, cannot make a string past MAX_SIZE."""
    texts: dict[str, str] = {}
    pieces: list[str] = []
    total = 0
    for literal, name, spec, conversion in string.Formatter().parse(template):
        pieces.append(literal)
        total += len(literal)
        if name is not None:
            if name not in values:
                raise ValueError(
                    f"no value for {{{name}}}: fields are names given as keywords, "
                    'format("Hi {who}", who=name)'
                )
            if name not in texts:
                check_size(f"the value of '{name}' as text", values[name])
                texts[name] = to_text(values[name])
            width = _WIDTH.match(spec or "")
            digits = width.group(1) if width else ""
            if len(digits) > 9:
                raise _limit("format()", 10 ** len(digits), MAX_SIZE, "characters")
            total += max(len(texts[name]) * (10 if conversion else 1), int(digits or 0))
            if total <= MAX_SIZE:
                field = "{0" + (f"!{conversion}" if conversion else "") + f":{spec or ''}}}"
                pieces.append(field.format(texts[name]))
        if total > MAX_SIZE:
            raise LimitError(f"format() would make more than {MAX_SIZE:,} characters")
    return "".join(pieces)


def _join(items: list[Any], sep: str = "\n") -> str:
    check_size("join()'s list as text", items)
    if len(sep) * max(0, len(items) - 1) > MAX_SIZE:
        raise _limit("join()", len(sep) * (len(items) - 1), MAX_SIZE, "characters")
    return sep.join(to_text(i) for i in items)


def _split(text: str, sep: str = "\n") -> list[str]:
    if sep and text.count(sep) >= MAX_ITEMS:
        raise _limit("split()", text.count(sep) + 1, MAX_ITEMS, "pieces")
    return [part.strip() for part in text.split(sep) if part.strip()]


def _replace(text: str, old: str, new: str) -> str:
    count = text.count(old) if old else len(text) + 1
    size = len(text) + count * (len(new) - len(old))
    if size > MAX_SIZE:
        raise _limit("replace()", size, MAX_SIZE, "characters")
    return text.replace(old, new)


def _range(n: int) -> list[int]:
    if n > MAX_ITEMS:
        raise _limit(f"range({n})", n, MAX_ITEMS, "items")
    return list(range(n))


def _str(value: Any) -> str:
    check_size("str()", value)
    return to_text(value)


def _flatten(lists: list[list[Any]]) -> list[Any]:
    count = sum(len(sub) for sub in lists)
    if count > MAX_ITEMS:
        raise _limit("flatten()", count, MAX_ITEMS, "items")
    return [x for sub in lists for x in sub]


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        match = re.search(r"-?\d+", value)
        if not match:
            raise ValueError(f"no integer in {value!r}")
        digits = match.group().lstrip("-")
        if len(digits) > MAX_INT_DIGITS:
            raise _limit("int()", len(digits), MAX_INT_DIGITS, "digits")
        return int(match.group())
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, str):
        match = re.search(r"-?\d+(\.\d+)?", value)
        if not match:
            raise ValueError(f"no number in {value!r}")
        return float(match.group())
    return float(value)


EXTREMUM_FORMS = (
    "(a: list[T]) -> T  (T: int, float or str; an empty list fails)",
    "(a: T, b: T) -> T  (two ints, two floats or two strs; an int and a float give float)",
)

BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in [
        Builtin(
            "len",
            (Param("value", None),),
            _len_type,
            len,
            "Length of a string or list.",
            shown=("(value: str | list[T]) -> int",),
        ),
        Builtin(
            "join",
            (Param("items", None), Param("sep", STR, "\n")),
            _join_type,
            _join,
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
            "count_tokens",
            (Param("text", STR), Param("model", STR, tokenizers.ASSIGNED)),
            _fixed(INT),
            tokenizers.count_tokens,
            "Tokens of text on an embedded model's tokenizer.",
        ),
        Builtin(
            "chunk_tokens",
            (
                Param("text", STR),
                Param("size", INT),
                Param("overlap", INT, 0),
                Param("model", STR, tokenizers.ASSIGNED),
            ),
            _fixed(ListT(item=STR)),
            tokenizers.chunk_tokens,
            "Cut text into pieces of at most `size` tokens.",
        ),
        Builtin(
            "truncate_tokens",
            (Param("text", STR), Param("size", INT), Param("model", STR, tokenizers.ASSIGNED)),
            _fixed(STR),
            tokenizers.truncate_tokens,
            "The start of text that fits in `size` tokens.",
        ),
        Builtin(
            "format",
            (Param("template", STR),),
            _fixed(STR),
            _format,
            'Fill `{name}` fields of a string: format("Hi {who}", who=name).',
            variadic=True,
        ),
        Builtin("str", (Param("value", None),), _convert_to(STR), _str, "Value as text."),
        Builtin("int", (Param("value", None),), _convert_to(INT), _to_int, "Parse an int."),
        Builtin("float", (Param("value", None),), _convert_to(FLOAT), _to_float, "Parse a number."),
        Builtin("strip", (Param("text", STR),), _fixed(STR), str.strip, "Trim whitespace."),
        Builtin("lower", (Param("text", STR),), _fixed(STR), str.lower, "Lowercase."),
        Builtin("upper", (Param("text", STR),), _fixed(STR), str.upper, "Uppercase."),
        Builtin(
            "replace",
            (Param("text", STR), Param("old", STR), Param("new", STR)),
            _fixed(STR),
            _replace,
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
            _range,
            "The integers 0 .. n-1.",
        ),
        Builtin(
            "first",
            (Param("items", None),),
            _list_item,
            lambda items: items[0],
            "The first item of a list.",
            shown=("(items: list[T]) -> T",),
        ),
        Builtin(
            "last",
            (Param("items", None),),
            _list_item,
            lambda items: items[-1],
            "The last item of a list.",
            shown=("(items: list[T]) -> T",),
        ),
        Builtin(
            "take",
            (Param("items", None), Param("n", INT)),
            _same_list,
            lambda items, n: items[:n],
            "The first n items of a list.",
            shown=("(items: list[T], n: int) -> list[T]",),
        ),
        Builtin(
            "drop",
            (Param("items", None), Param("n", INT)),
            _same_list,
            _drop,
            "The items of a list after the first n.",
            shown=("(items: list[T], n: int) -> list[T]",),
        ),
        Builtin(
            "sort",
            (Param("items", None), Param("reverse", BOOL, False)),
            _sort_type,
            _sort,
            "A list of numbers or strings in ascending order (descending with reverse=true).",
            shown=("(items: list[T], reverse: bool = false) -> list[T]  (T: int, float or str)",),
        ),
        Builtin(
            "sum",
            (Param("items", None),),
            _sum_type,
            _sum,
            "The sum of a list of numbers.",
            shown=("(items: list[int]) -> int", "(items: list[float]) -> float"),
        ),
        Builtin(
            "enumerate",
            (Param("items", None),),
            _enumerate_type,
            _enumerate,
            "Each item with its position: a list of {index, item} records (index from 0).",
            shown=("(items: list[T]) -> list[{index: int, item: T}]",),
        ),
        Builtin(
            "zip",
            (Param("a", None), Param("b", None)),
            _zip_type,
            _zip,
            "Two lists of one length, side by side: a list of {first, second} records.",
            shown=("(a: list[A], b: list[B]) -> list[{first: A, second: B}]",),
        ),
        Builtin(
            "flatten",
            (Param("lists", None),),
            _flatten_type,
            _flatten,
            "Concatenate a list of lists.",
            shown=("(lists: list[list[T]]) -> list[T]",),
        ),
        Builtin(
            "vote",
            (Param("items", None),),
            _list_item,
            _vote,
            "The most common item of a list (majority vote); a tie goes to the tied item "
            "that appears first, so the same samples always give the same answer.",
            shown=("(items: list[T]) -> T",),
        ),
        Builtin(
            "best_of",
            (Param("items", None), Param("scores", None)),
            _best_of_type,
            _best_of,
            "The item with the highest score (scores: a list of numbers, one per item); a "
            "tie goes to the earliest.",
            shown=("(items: list[T], scores: list[int] | list[float]) -> T",),
        ),
        Builtin(
            "max",
            (Param("a", None), Param("b", None, None)),
            _extremum_type,
            _extremum(max, "max"),
            "The largest item of a list, or the larger of two values (numbers or strings).",
            shown=EXTREMUM_FORMS,
        ),
        Builtin(
            "min",
            (Param("a", None), Param("b", None, None)),
            _extremum_type,
            _extremum(min, "min"),
            "The smallest item of a list, or the smaller of two values (numbers or strings).",
            shown=EXTREMUM_FORMS,
        ),
    ]
}


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "and": lambda a, b: a and b,
    "or": lambda a, b: a or b,
    "??": lambda a, b: b if a is None else a,
}

SHORT_CIRCUIT = frozenset({"and", "or", "??"})
"""Operators whose right operand is computed only when the left one does not decide."""


def decides(op: str, left: Any) -> bool:
    """Does the left operand of a short-circuit operator give its result on its own?"""
    if op == "??":
        return left is not None
    return bool(left) == (op == "or")


def evaluate(op: str, value: Any, args: list[Any], bound: dict[str, Any] | None = None) -> Any:
    """Compute a `builtin` node: an operator, a field access, a record or list, or a
    named builtin (`value` holds a field name, record fields, or keyword names; `bound`
    keyword arguments the optimizer fixed)."""
    if op == "field":
        return args[0][value]
    if op == "record":
        record = dict(zip(value, args, strict=True))
        check_size("this record", record)
        return record
    if op == "list":
        check_size("this list", args)
        return args
    if op == "index":
        try:
            return args[0][args[1]]
        except IndexError:
            raise BuiltinError(f"index {args[1]} is out of range (length {len(args[0])})") from None
    if op == "neg":
        return _check_result("the negation", -args[0])
    if op == "not":
        return not args[0]
    if op in _OPERATORS:
        return _check_result(f"the result of `{op}`", _operator(op, args[0], args[1]))
    keywords = value or []
    positional = args[: len(args) - len(keywords)]
    named = dict(zip(keywords, args[len(positional) :], strict=True))
    if bound:  # by name, over what the arguments say
        named.update(zip((p.name for p in BUILTINS[op].params), positional, strict=False))
        named.update(bound)
        positional = []
    try:
        return _check_result(f"{op}()", BUILTINS[op].impl(*positional, **named))
    except LimitError:
        raise
    except OverflowError as err:
        raise LimitError(f"{op}(): the number is too large ({err})") from err
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise BuiltinError(f"{op}(): {err}") from err


def _operator(op: str, a: Any, b: Any) -> Any:
    if op in ("/", "//", "%") and b == 0:
        raise BuiltinError("division by zero")
    if op == "*":
        sequence, count = (a, b) if isinstance(b, int) else (b, a)
        if isinstance(sequence, str | list) and isinstance(count, int) and count > 0:
            size = measure(sequence)[0] * count
            if size > MAX_SIZE or isinstance(sequence, list) and len(sequence) * count > MAX_ITEMS:
                raise LimitError(
                    f"`*` would repeat {count:,} times a value of size {len(sequence):,}: "
                    f"larger than {MAX_SIZE:,} characters and items"
                )
    if op == "+" and isinstance(a, list) and isinstance(b, list):
        check_size("the result of `+`", [a, b])
    if op == "+" and isinstance(a, str) and isinstance(b, str) and len(a) + len(b) > MAX_SIZE:
        raise _limit("the result of `+`", len(a) + len(b), MAX_SIZE, "characters")
    try:
        return _OPERATORS[op](a, b)
    except OverflowError:
        raise LimitError(
            f"the result of `{op}` is too large for a number (it overflows a float)"
        ) from None
