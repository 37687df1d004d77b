"""An `eval` declaration as plan data: the labeled dataset, the flow, and how each flow
output is scored. The checker builds these from the AST (every option checked against
the output's type), lowering fills in the judge's call, and the Plan carries them as
JSON (`Plan.evals`), so a saved plan can be evaluated without its source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from llmflow.compiler.ir import LLMCall

_STRICT = ConfigDict(frozen=True, extra="forbid")


class Normalize(BaseModel):
    """What counts when two texts are compared: each flag `false` ignores it (SQuAD's
    normalization is all four off). Leading and trailing whitespace never counts."""

    model_config = _STRICT
    case: bool = True
    whitespace: bool = True
    """Runs of inner whitespace (`false`: any run is one space)."""
    punctuation: bool = True
    articles: bool = True
    """The English articles a, an, the (`false`: dropped as words)."""


class ExactMetric(BaseModel):
    """Equal after normalization (text), equal as values otherwise (an enum member, a
    number, a bool, a list or record as JSON)."""

    model_config = _STRICT
    kind: Literal["exact"] = "exact"
    normalize: Normalize = Normalize()


class ContainsMetric(BaseModel):
    """The expected text occurs in the output, after normalization of both."""

    model_config = _STRICT
    kind: Literal["contains"] = "contains"
    normalize: Normalize = Normalize()


class NumericMetric(BaseModel):
    """|output - expected| <= max(tolerance, relative * |expected|). A text output (or
    expected value) is read as its final number: GSM8K's `#### N`, else the last number
    in it, commas removed."""

    model_config = _STRICT
    kind: Literal["numeric"] = "numeric"
    tolerance: float = 0.0
    relative: float = 0.0


class F1Metric(BaseModel):
    """F1 of the output's items against the expected ones (a list: its items, order
    free, duplicates counted; a text: its words after normalization, as SQuAD)."""

    model_config = _STRICT
    kind: Literal["f1"] = "f1"
    normalize: Normalize = Normalize()


class FieldsMetric(BaseModel):
    """The mean over a record's fields of each field's own metric."""

    model_config = _STRICT
    kind: Literal["fields"] = "fields"
    fields: dict[str, Metric]
    """Every field of the record, in declaration order, with its metric."""


class JudgeMetric(BaseModel):
    """A semantic function asked to score the output: it returns a float in [0, 1], a
    bool (true is 1), or an enum member (its score from `scores`)."""

    model_config = _STRICT
    kind: Literal["judge"] = "judge"
    function: str
    binds: list[str]
    """Per parameter of the judge, in order: "output", "expected", or the name of the
    flow input it reads."""
    returns: Literal["float", "bool", "enum"]
    scores: dict[str, float] = Field(default_factory=dict)
    """An enum result's member → score (default: the first member 1, the last 0,
    evenly between)."""
    call: LLMCall | None = None
    """The judge's call, filled in by lowering (the type is resolved by `ir`, which
    defines LLMCall and carries these specs on the Plan)."""


class ExternMetric(BaseModel):
    """A Python function `(output, expected) -> float | bool`, declared `extern fn`."""

    model_config = _STRICT
    kind: Literal["extern"] = "extern"
    function: str
    target: str
    """`module:function`, found beside the program as any extern is."""


Metric = Annotated[
    ExactMetric
    | ContainsMetric
    | NumericMetric
    | F1Metric
    | FieldsMetric
    | JudgeMetric
    | ExternMetric,
    Field(discriminator="kind"),
]


class EvalSpec(BaseModel):
    """One `eval` block."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    flow: str
    data: str | None = None
    """The labeled rows (JSON lines or CSV), resolved against the program's folder;
    None: given when the eval runs (`--data`)."""
    metrics: dict[str, Metric]
    """Flow output → its metric, in the order written."""
    where: str = ""
    """`file:line` of the declaration, for messages."""


def judges_of(metric: Metric) -> list[JudgeMetric]:
    """The judges a metric asks (a record's fields' included)."""
    if isinstance(metric, JudgeMetric):
        return [metric]
    if isinstance(metric, FieldsMetric):
        return [j for m in metric.fields.values() for j in judges_of(m)]
    return []


def describe(metric: Metric) -> str:
    """A metric as people write it (`numeric(tolerance = 1)`), for reports."""
    match metric:
        case JudgeMetric(function=function):
            return f"judge({function})"
        case ExternMetric(function=function):
            return function
        case NumericMetric(tolerance=tolerance, relative=relative):
            options = [f"tolerance = {tolerance:g}"] * bool(tolerance)
            options += [f"relative = {relative:g}"] * bool(relative)
            return f"numeric({', '.join(options)})" if options else "numeric"
        case FieldsMetric():
            return "fields"
        case ExactMetric(normalize=n) | ContainsMetric(normalize=n) | F1Metric(normalize=n):
            off = [name for name, on in n.model_dump().items() if not on]
            return (
                f"{metric.kind}({', '.join(f'{o} = false' for o in off)})" if off else metric.kind
            )
    return "?"


from llmflow.compiler import ir as _ir  # noqa: E402, F401  (resolves LLMCall above)
