"""The type system: what a semantic variable may hold.

Types are data (pydantic, JSON-serializable) so the plan can carry them to the runtime,
which validates model output against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class _Type(BaseModel):
    model_config = ConfigDict(frozen=True)

    @model_serializer(mode="wrap")
    def _without_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Optional parts (bounds, descriptions) are left out when absent, so a plan
        without them is written exactly as before they existed."""
        data: dict[str, Any] = handler(self)
        for name, info in type(self).model_fields.items():
            if name != "kind" and not info.is_required() and getattr(self, name) == info.default:
                data.pop(name, None)
        return data


class Prim(_Type):
    kind: Literal["prim"] = "prim"
    name: Literal["str", "int", "float", "bool"]
    max_len: int | None = None
    """`str[max=80]`: at most this many characters."""

    def __str__(self) -> str:
        return f"{self.name}[max={self.max_len}]" if self.max_len is not None else self.name


class ListT(_Type):
    kind: Literal["list"] = "list"
    item: Type
    max_items: int | None = None
    """`list[str, max=5]`: at most this many items."""

    def __str__(self) -> str:
        bound = f", max={self.max_items}" if self.max_items is not None else ""
        return f"list[{self.item}{bound}]"


class EnumT(_Type):
    kind: Literal["enum"] = "enum"
    name: str
    members: tuple[str, ...]
    descriptions: tuple[str, ...] = ()
    """One per member ("" for none), shown to the model (`enum E { a "the first" }`)."""

    def __str__(self) -> str:
        return self.name


class RecordT(_Type):
    kind: Literal["record"] = "record"
    name: str
    fields: tuple[tuple[str, Type], ...]
    descriptions: tuple[str, ...] = ()
    """One per field ("" for none), shown to the model (`name: str "full name"`)."""

    def __str__(self) -> str:
        return self.name

    def field(self, name: str) -> Type | None:
        return dict(self.fields).get(name)


class OptionalT(_Type):
    """`T?`: a T or nothing (an `if` without `else` yields one). `none` is an optional of
    `any`: it fits every `T?` (NONE below)."""

    kind: Literal["optional"] = "optional"
    item: Type

    def __str__(self) -> str:
        return "none" if isinstance(self.item, AnyT) else f"{self.item}?"


class UnionT(_Type):
    """`A | B`: a value of one of several records or enums."""

    kind: Literal["union"] = "union"
    options: tuple[Type, ...]

    def __str__(self) -> str:
        return " | ".join(map(str, self.options))

    def field(self, name: str) -> Type | None:
        """A field every option has, with one type; else None."""
        found = [o.field(name) if isinstance(o, RecordT) else None for o in self.options]
        if found and all(f is not None and f == found[0] for f in found):
            return found[0]
        return None


class AnyT(_Type):
    """Unknown: stands in after an error (so one mistake is reported once) and for the
    element of an empty list."""

    kind: Literal["any"] = "any"

    def __str__(self) -> str:
        return "any"


Type = Annotated[
    Prim | ListT | EnumT | RecordT | OptionalT | UnionT | AnyT, Field(discriminator="kind")
]

for _model in (ListT, RecordT, OptionalT, UnionT):
    _model.model_rebuild()

STR = Prim(name="str")
INT = Prim(name="int")
FLOAT = Prim(name="float")
BOOL = Prim(name="bool")
ANY = AnyT()
PRIMS = {"str": STR, "int": INT, "float": FLOAT, "bool": BOOL}
NONE = OptionalT(item=ANY)
"""The type of the `none` literal: fits every optional, and no other type."""


def unbounded(t: Type) -> Type:
    """The type without its bounds: bounds are checked on values at run time, never
    between types (a `list[str]` may be passed where `list[str, max=5]` is expected)."""
    match t:
        case Prim(max_len=int()):
            return t.model_copy(update={"max_len": None})
        case ListT():
            return ListT(item=unbounded(t.item))
        case OptionalT(item=item):
            return OptionalT(item=unbounded(item))
    return t


OUTPUTS = " outputs"
"""The name of the record a call of a function with several outputs gives: `judge outputs`."""


def assignable(src: Type, dst: Type) -> bool:
    """May a value of type `src` be used where `dst` is expected?"""
    src, dst = unbounded(src), unbounded(dst)
    if isinstance(src, AnyT) or isinstance(dst, AnyT) or src == dst:
        return True
    if dst == NONE:  # what is always none (a loop value carried from `none`) stays none
        return False
    if isinstance(dst, OptionalT):
        return assignable(src.item if isinstance(src, OptionalT) else src, dst.item)
    if isinstance(src, OptionalT):
        return False
    if isinstance(dst, UnionT):
        options = src.options if isinstance(src, UnionT) else (src,)
        return all(any(assignable(o, d) for d in dst.options) for o in options)
    if dst == FLOAT and src == INT:
        return True
    if dst == STR and isinstance(src, EnumT):
        return True
    if isinstance(src, ListT) and isinstance(dst, ListT):
        return assignable(src.item, dst.item)
    if isinstance(src, RecordT) and isinstance(dst, RecordT) and src.name.endswith(OUTPUTS):
        # A call's outputs fit a record declared with the same fields: both are a JSON
        # object at run time, and `results: list[Judged]` is how a flow names them.
        fields, wanted = dict(src.fields), dict(dst.fields)
        return fields.keys() == wanted.keys() and all(
            assignable(fields[name], t) for name, t in wanted.items()
        )
    return False


def unify(a: Type, b: Type) -> Type | None:
    """The type of a value that is either `a` or `b` (list items, branch results)."""
    if a == NONE or b == NONE:  # `none` and a T: a T?
        return optional(b if a == NONE else a)
    if assignable(a, b) and not isinstance(b, AnyT):
        return b
    if assignable(b, a):
        return a
    return None


def optional(t: Type) -> Type:
    """`t?` (an optional stays one level deep)."""
    return t if isinstance(t, OptionalT | AnyT) else OptionalT(item=t)


def is_numeric(t: Type) -> bool:
    return t in (INT, FLOAT) or isinstance(t, AnyT)


def json_schema(t: Type) -> dict[str, Any]:
    """The JSON schema of a value, used to constrain and validate structured output."""
    match t:
        case Prim(name="str", max_len=int() as most):
            return {"type": "string", "maxLength": most}
        case Prim(name="str"):
            return {"type": "string"}
        case Prim(name="int"):
            return {"type": "integer"}
        case Prim(name="float"):
            return {"type": "number"}
        case Prim(name="bool"):
            return {"type": "boolean"}
        case ListT(item=item, max_items=most):
            schema = {"type": "array", "items": json_schema(item)}
            return schema if most is None else {**schema, "maxItems": most}
        case EnumT(members=members, descriptions=notes):
            schema = {"type": "string", "enum": list(members)}
            said = [f"{m}: {n}" for m, n in zip(members, notes, strict=False) if n]
            return {**schema, "description": "; ".join(said)} if said else schema
        case RecordT(fields=fields, descriptions=notes):
            properties = {name: json_schema(ft) for name, ft in fields}
            for (name, _), note in zip(fields, notes, strict=False):
                if note:
                    properties[name] = {**properties[name], "description": note}
            return {
                "type": "object",
                "properties": properties,
                "required": [name for name, _ in fields],
                "additionalProperties": False,
            }
        case OptionalT(item=item):
            return {"anyOf": [json_schema(item), {"type": "null"}]}
        case UnionT(options=options):
            return {"anyOf": [json_schema(o) for o in options]}
    return {}


def describe_format(t: Type, indent: str = "") -> str:
    """The output type as a short schema for a prompt (`{{o | format}}`), in the
    TypeScript-like shape BAML's `ctx.output_format` uses, with descriptions as comments."""
    inner = indent + "  "
    match t:
        case Prim(name="str", max_len=int() as most):
            return f"string (at most {most} characters)"
        case Prim(name="str"):
            return "string"
        case Prim(name="int"):
            return "int"
        case Prim(name="float"):
            return "float"
        case Prim(name="bool"):
            return "bool"
        case ListT(item=item, max_items=most):
            bound = f" (at most {most} items)" if most is not None else ""
            return f"[{describe_format(item, indent)}, ...]{bound}"
        case EnumT(members=members, descriptions=notes):
            if not any(notes):
                return " or ".join(f'"{m}"' for m in members)
            lines = [
                f'{inner}"{m}"' + (f"  // {n}" if n else "")
                for m, n in zip(members, notes, strict=False)
            ]
            return "one of:\n" + "\n".join(lines)
        case RecordT(fields=fields, descriptions=notes):
            lines = []
            for i, (name, ft) in enumerate(fields):
                note = notes[i] if i < len(notes) and notes[i] else ""
                lines.append(
                    f'{inner}"{name}": {describe_format(ft, inner)},'
                    + (f"  // {note}" if note else "")
                )
            return "{\n" + "\n".join(lines) + f"\n{indent}}}"
        case OptionalT(item=item):
            return f"{describe_format(item, indent)} or null"
        case UnionT(options=options):
            return " or ".join(describe_format(o, indent) for o in options)
    return "any JSON value"


CHOICES_INTRO = (
    "Answer with one of these, exactly as written, and nothing else (no quotes, no JSON):\n"
)
"""What `{{o | format}}` says before the choices of an enum or of `choices=`: such an
output is constrained to a bare member name, so a JSON schema would be the wrong advice."""


def describe_choices(members: tuple[str, ...], notes: tuple[str, ...] = ()) -> str:
    """Members one a line, each with its description (`- bug: a defect`)."""
    lines = []
    for i, member in enumerate(members):
        note = notes[i] if i < len(notes) else ""
        lines.append(f"- {member}: {note}" if note else f"- {member}")
    return "\n".join(lines)


def enum_members(t: Type) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The member names and descriptions of an enum or a union of enums (first wins)."""
    options = t.options if isinstance(t, UnionT) else (t,)
    if not all(isinstance(o, EnumT) for o in options):
        return None
    members: dict[str, str] = {}
    for o in options:
        assert isinstance(o, EnumT)
        for i, m in enumerate(o.members):
            members.setdefault(m, o.descriptions[i] if i < len(o.descriptions) else "")
    return tuple(members), tuple(members.values())


def format_instructions(t: Type) -> str:
    """What `{{o | format}}` puts in the prompt before the output: how to answer."""
    match t:
        case Prim(name="str", max_len=None) | AnyT():
            return ""
        case Prim():
            return f"Answer with {describe_format(t)}.\n"
    choices = enum_members(t)
    if choices is not None:
        return CHOICES_INTRO + describe_choices(*choices) + "\n"
    return f"Answer with JSON in this format:\n{describe_format(t)}\n"
