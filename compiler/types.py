"""The type system: what a semantic variable may hold.

Types are data (pydantic, JSON-serializable) so the plan can carry them to the runtime,
which validates model output against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Type(BaseModel):
    model_config = ConfigDict(frozen=True)


class Prim(_Type):
    kind: Literal["prim"] = "prim"
    name: Literal["str", "int", "float", "bool"]

    def __str__(self) -> str:
        return self.name


class ListT(_Type):
    kind: Literal["list"] = "list"
    item: Type

    def __str__(self) -> str:
        return f"list[{self.item}]"


class EnumT(_Type):
    kind: Literal["enum"] = "enum"
    name: str
    members: tuple[str, ...]

    def __str__(self) -> str:
        return self.name


class RecordT(_Type):
    kind: Literal["record"] = "record"
    name: str
    fields: tuple[tuple[str, Type], ...]

    def __str__(self) -> str:
        return self.name

    def field(self, name: str) -> Type | None:
        return dict(self.fields).get(name)


class AnyT(_Type):
    """Unknown: stands in after an error (so one mistake is reported once) and for the
    element of an empty list."""

    kind: Literal["any"] = "any"

    def __str__(self) -> str:
        return "any"


Type = Annotated[Prim | ListT | EnumT | RecordT | AnyT, Field(discriminator="kind")]

for _model in (ListT, RecordT):
    _model.model_rebuild()

STR = Prim(name="str")
INT = Prim(name="int")
FLOAT = Prim(name="float")
BOOL = Prim(name="bool")
ANY = AnyT()
PRIMS = {"str": STR, "int": INT, "float": FLOAT, "bool": BOOL}


def assignable(src: Type, dst: Type) -> bool:
    """May a value of type `src` be used where `dst` is expected?"""
    if isinstance(src, AnyT) or isinstance(dst, AnyT) or src == dst:
        return True
    if dst == FLOAT and src == INT:
        return True
    if dst == STR and isinstance(src, EnumT):
        return True
    if isinstance(src, ListT) and isinstance(dst, ListT):
        return assignable(src.item, dst.item)
    return False


def unify(a: Type, b: Type) -> Type | None:
    """The type of a value that is either `a` or `b` (list items, branch results)."""
    if assignable(a, b) and not isinstance(b, AnyT):
        return b
    if assignable(b, a):
        return a
    return None


def is_numeric(t: Type) -> bool:
    return t in (INT, FLOAT) or isinstance(t, AnyT)


def json_schema(t: Type) -> dict[str, Any]:
    """The JSON schema of a value, used to constrain and validate structured output."""
    match t:
        case Prim(name="str"):
            return {"type": "string"}
        case Prim(name="int"):
            return {"type": "integer"}
        case Prim(name="float"):
            return {"type": "number"}
        case Prim(name="bool"):
            return {"type": "boolean"}
        case ListT(item=item):
            return {"type": "array", "items": json_schema(item)}
        case EnumT(members=members):
            return {"type": "string", "enum": list(members)}
        case RecordT(fields=fields):
            return {
                "type": "object",
                "properties": {name: json_schema(ft) for name, ft in fields},
                "required": [name for name, _ in fields],
                "additionalProperties": False,
            }
    return {}
