"""What one call costs on one model: dollars, seconds, and how well the model fits it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llmflow.compiler.ir import LLMNode
from llmflow.compiler.models import ModelSpec
from llmflow.compiler.optimizer.prompts import Shape
from llmflow.compiler.types import ListT, RecordT
from llmflow.errors import LLMFlowError

REMOTE_FIRST_TOKEN_SECONDS = 0.5
"""Time to first token of a hosted model when the catalog has no figure."""
REMOTE_TOKENS_PER_SECOND = 60.0
"""Decode speed of a hosted model when the catalog has no figure."""
LOCAL_PREFILL_TPS = 400.0
LOCAL_DECODE_TPS = 80.0
NEUTRAL_SKILL = 0.5
"""The skill assumed for a model that declares no score for it."""


class UnknownPrice(LLMFlowError):
    """A budget was asked for, but a model it would pay for has no price."""


def price_in(model: ModelSpec) -> float:
    """USD per million input tokens; an unknown price counts as free in plans without a
    budget (and is flagged by `llmflow models`); a budget refuses it (`check_priced`)."""
    return model.price_in or 0.0


def price_out(model: ModelSpec) -> float:
    return model.price_out or 0.0


def priced(model: ModelSpec) -> bool:
    """Whether what a call costs on this model is known (embedded models are free)."""
    return model.backend == "local" or (model.price_in is not None and model.price_out is not None)


def check_priced(models: Iterable[ModelSpec]) -> None:
    """A budget cannot be kept on a model whose price is unknown: say which, and how to
    declare its price, instead of counting it as free."""
    lines = []
    for m in (m for m in models if not priced(m)):
        missing = " and ".join(n for n in ("price_in", "price_out") if getattr(m, n) is None)
        lines.append(
            f"--budget: model '{m.name}' ({m.backend} \"{m.id}\") has no {missing}; declare "
            "price_in and price_out on it (USD per 1M tokens, 0 for a free server), or a "
            "catalog_id from the price table (llmflow models --prices TEXT)"
        )
    if lines:
        raise UnknownPrice("\n".join(lines))


def price_cached_in(model: ModelSpec) -> float:
    return model.price_cached_in if model.price_cached_in is not None else price_in(model)


def skill(model: ModelSpec, name: str) -> float:
    return model.skills.get(name, NEUTRAL_SKILL if not model.skills else 0.0)


def quality(model: ModelSpec, node: LLMNode) -> float:
    """How well a model serves a call: its weakest needed skill, else its mean skill."""
    if node.call.needs:
        return min(skill(model, s) for s in node.call.needs)
    if not model.skills:
        return NEUTRAL_SKILL
    return sum(model.skills.values()) / len(model.skills)


def shortfall(model: ModelSpec, node: LLMNode) -> dict[str, float]:
    """Needed skills the model lacks, and by how much."""
    return {s: q - skill(model, s) for s, q in node.call.needs.items() if skill(model, s) < q}


def needs_schema(node: LLMNode) -> bool:
    return any(isinstance(o.type, ListT | RecordT) for o in node.call.outputs)


def token_dollars(model: ModelSpec, fresh: float, cached: float, output: float) -> float:
    """What tokens cost on a model: fresh and cached prompt tokens, and output tokens."""
    return (
        fresh * price_in(model) + cached * price_cached_in(model) + output * price_out(model)
    ) / 1e6


@dataclass(frozen=True)
class Cost:
    dollars: float
    seconds: float
    cached_tokens: float = 0.0


def call_cost(model: ModelSpec, shape: Shape, cached_per_instance: float = 0.0) -> Cost:
    """All instances of a call on a model; `cached_per_instance` prompt tokens come from
    a reused prefix (cheaper on hosted models, skipped by the embedded engine)."""
    n = shape.instances
    fresh = max(0.0, shape.input_tokens - cached_per_instance)
    dollars = n * token_dollars(model, fresh, cached_per_instance, shape.output_tokens)
    if model.backend == "local":
        prefill = model.prefill_tps or LOCAL_PREFILL_TPS
        decode = model.decode_tps or LOCAL_DECODE_TPS
        seconds = n * (fresh / prefill + shape.output_tokens / decode)
    else:
        seconds = n * (REMOTE_FIRST_TOKEN_SECONDS + shape.output_tokens / REMOTE_TOKENS_PER_SECOND)
    return Cost(dollars, seconds, n * cached_per_instance)


def fits_context(model: ModelSpec, shape: Shape) -> bool:
    return model.context is None or shape.input_tokens + shape.output_tokens <= model.context
