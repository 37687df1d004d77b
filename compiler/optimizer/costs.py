"""What one call costs on one model: dollars, seconds, and how well the model fits it.

Dollars are `llmflow.compiler.prices.dollars` (the arithmetic the runtime bills with),
seconds the model's `Capabilities.timing`: what the optimizer knows of a backend comes
from its declaration, never from its name."""

from __future__ import annotations

from dataclasses import dataclass

from llmflow.compiler import prices
from llmflow.compiler.ir import Generate, LLMCall, LLMNode, Read, Ref, System, Text
from llmflow.compiler.models import ModelSpec, Timing
from llmflow.compiler.optimizer.prompts import Shape
from llmflow.compiler.types import ListT, RecordT

NEUTRAL_SKILL = 0.5
"""The skill assumed for a model that declares no score for it."""


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


def written_as_chat_turn(call: LLMCall) -> bool:
    """Whether the template reads as a message to answer rather than text to continue:
    some output placeholder begins its own line (nothing but spaces between it and the
    line break or template start before it), as in `Name two problems.\\n{{critique}}`.
    A placeholder after text on its line continues that text (`Introduction. {{intro}}`,
    `Answer: {{a}}`, `{{opening}} {{next}}`): the form a completion-only model serves.
    Such a template is not moved to a completion-only model without measurements."""
    on_line = False  # text or a value since the last line break
    for segment in call.segments:
        if isinstance(segment, Text):
            line = segment.text.rsplit("\n", 1)
            on_line = bool(line[-1].strip()) if len(line) > 1 else on_line or bool(line[0].strip())
        elif isinstance(segment, Read | Ref):
            on_line = True
        elif isinstance(segment, System):
            on_line = False  # the user's turn starts after the system section
        elif isinstance(segment, Generate):
            if not on_line:
                return True
            on_line = True
    return False


def fits_form(model: ModelSpec, call: LLMCall) -> bool:
    """A completion-only model does not fit a template written as a chat turn."""
    return model.chat or not written_as_chat_turn(call)


def needs_schema(node: LLMNode) -> bool:
    return any(isinstance(o.type, ListT | RecordT) for o in node.call.outputs)


@dataclass(frozen=True)
class Cost:
    dollars: float
    seconds: float
    cached_tokens: float = 0.0


def call_cost(model: ModelSpec, shape: Shape, cached_per_instance: float = 0.0) -> Cost:
    """All instances of a call on a model; `cached_per_instance` prompt tokens come from
    a reused prefix (`prefix_reuse.cached_tokens_expected`): billed at the cached price,
    and not evaluated again where the backend evaluates prompts itself (`prefill_tps`)."""
    n = shape.instances
    fresh = max(0.0, shape.input_tokens - cached_per_instance)
    dollars = n * prices.dollars(model, fresh, cached_per_instance, shape.output_tokens)
    time = n * seconds(model.capabilities.timing, fresh, shape.output_tokens)
    return Cost(dollars, time, n * cached_per_instance)


def seconds(timing: Timing, fresh: float, output: float) -> float:
    """How long one call takes: the first token's latency, the fresh prompt tokens at the
    prefill speed (when the backend's timing counts them: a hosted model's first-token
    latency covers its prompt), the answer at the decode speed."""
    prefill = fresh / timing.prefill_tps if timing.prefill_tps else 0.0
    return timing.first_token_seconds + prefill + output / timing.decode_tps


def fits_context(model: ModelSpec, shape: Shape) -> bool:
    return model.context is None or shape.input_tokens + shape.output_tokens <= model.context
