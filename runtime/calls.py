"""Running one semantic-function call: render the template, generate each output in turn,
validate it, and retry once with the validation error fed back.

A template lowers to a conversation: the text up to an output is a user turn, the output
is the assistant's reply, and the text after it opens the next user turn. A completion
model reads the same turns concatenated, which is exactly the template with its outputs
filled in.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from llmflow.compiler.ir import LLMCall, OutputSpec, Read, Ref, System, Text
from llmflow.compiler.models import MAX_OPTION_NUMBER, ModelSpec
from llmflow.compiler.types import (
    AnyT,
    EnumT,
    ListT,
    OptionalT,
    Prim,
    RecordT,
    Type,
    UnionT,
    json_schema,
)
from llmflow.errors import LLMFlowError
from llmflow.runtime.backends.base import Backend, Constraint, Generation, GenerationRequest, Turn
from llmflow.runtime.values import InvalidValue, describe_type, parse_choice, parse_output
from llmflow.stdlib.builtins import select, to_text

ATTEMPTS = 2
"""One try and one retry with the validation error fed back."""


SEED_LIMIT = 2**31
"""Seeds sent are below this: every server and llama.cpp (a uint32, with 2**32 - 1
meaning "random") takes them."""

RowId = str | int
"""A dataset row's id: its id column's value, else its line number."""

Place = tuple[str | int, ...]
"""Where a call runs: for each map or loop around it, that node and the item or iteration
index, then the call's own node (`("n4", 2, "n7")`: n7 in the third item of map n4)."""


@dataclass(frozen=True)
class RunSeed:
    """The seed a run derives every sampled call's seed from."""

    value: int
    chosen: bool = True
    """Given by the user (`--seed N`): a later run may ask the same requests, so sampled
    answers go to the response cache. A seed drawn at random for one run is never asked
    again, so its answers are not cached."""

    @classmethod
    def draw(cls) -> RunSeed:
        return cls(random.randrange(SEED_LIMIT), chosen=False)

    def for_row(self, row: RowId) -> RunSeed:
        """A dataset row's seed: derived from this one and the row's id, so rows sample
        apart and a resumed row samples (and so finds in the journal) what it did."""
        return RunSeed(derive_seed(self.value, ("row", row), ""), self.chosen)


def derive_seed(base: int, place: Place, output: str) -> int:
    """A sampled output's seed: a hash of the base seed (the run's, or the output's
    `seed=`), where its call runs and the output's name. Four samples of one prompt in a
    map get four seeds, and a run with the same seed sends the same ones again."""
    text = json.dumps([base, *place, output])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SEED_LIMIT


class CallFailed(LLMFlowError):
    """A call could not produce a valid value; the message names function and output."""


class CallStats(BaseModel):
    """What one call did: its tokens, dollars, time, and what went wrong on the way."""

    function: str
    model: str
    node: str = ""
    group: str | None = None
    row: RowId | None = None
    """The dataset row whose run made the call (`Session.run_many`)."""
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    dollars: float = 0.0
    """What the model calls cost; answers from the cache or the journal cost nothing."""
    seconds: float = 0.0
    generations: int = 0
    retries: int = 0
    """Failed tries the transport retried (429s, 5xx, timeouts)."""
    validation_retries: int = 0
    """Answers that did not parse as the output's type and were asked again."""
    cache_hits: int = 0
    journal_hits: int = 0
    start: float = 0.0
    end: float = 0.0
    """Wall-clock (unix) seconds."""
    fallback_from: str | None = None
    """The model that gave up before this one took the call over."""
    error: str | None = None
    seeds: dict[str, int] = Field(default_factory=dict)
    """The seed each sampled output was generated with (greedy outputs have none)."""
    events: list[dict[str, Any]] = Field(default_factory=list)

    def add(self, gen: Generation) -> None:
        self.input_tokens += gen.input_tokens
        self.cached_tokens += gen.cached_tokens
        self.output_tokens += gen.output_tokens
        self.dollars += gen.dollars
        self.seconds += gen.seconds
        self.generations += 1
        self.retries += gen.retries
        self.events += gen.events
        self.cache_hits += gen.source == "cache"
        self.journal_hits += gen.source == "journal"


def default_max_tokens(t: Type) -> int:
    if isinstance(t, Prim) and t.name != "str" or isinstance(t, EnumT):
        return 16
    if isinstance(t, ListT | RecordT | OptionalT | UnionT):
        return 512
    return 256


def constraint_for(t: Type, choices: list[str] | None = None) -> Constraint | None:
    """What the output must look like; `choices` are an output's `choices=` strings."""
    if choices is not None:
        return Constraint(choices=choices)
    match t:
        case EnumT(members=members):
            return Constraint(choices=list(members))
        case UnionT(options=options) if all(isinstance(o, EnumT) for o in options):
            return Constraint(
                choices=[m for o in options if isinstance(o, EnumT) for m in o.members]
            )
        case Prim(name="int" | "float" | "bool" as name):
            return Constraint(pattern=name)
        case Prim(name="str", max_len=int() as most):
            return Constraint(max_chars=most)
        case OptionalT(item=Prim() | EnumT()):
            return None  # `none` or a scalar's text: no JSON to constrain; validated
        case ListT() | RecordT() | OptionalT() | UnionT():
            return Constraint(json_schema=json_schema(t))
    return None


async def run_call(
    call: LLMCall,
    args: list[Any],
    model: ModelSpec,
    backend: Backend,
    stats: CallStats,
    priority: float = 0.0,
    shared_tokens: int = 0,
    seed: RunSeed | None = None,
    place: Place = (),
) -> Any:
    """Generate every output of one call; the value is the output, or a dict of outputs.
    `stats` (the caller's, so it survives a failure) collects what the call consumed;
    its group (with the tokens the group shares) and `priority` are the optimizer's
    placement, passed on to the backend. A sampled output's seed is derived from its
    `seed=`, else the run's `seed`, and the call's `place` (none without either)."""
    values = dict(zip(call.params, args, strict=True))
    outputs: dict[str, Any] = {}
    specs = {o.name: o for o in call.outputs}
    turns: list[Turn] = []
    pending = ""
    for segment in call.segments:
        if isinstance(segment, Text):
            pending += segment.text
        elif isinstance(segment, Read):
            pending += to_text(select(values[segment.input], segment.path))
        elif isinstance(segment, Ref):
            pending += to_text(select(outputs[segment.output], segment.path))
        elif isinstance(segment, System):
            turns.append(system_turn(pending, model.chat))
            pending = ""
        else:
            spec = _with_inputs(call, specs[segment.output], values)
            prompt = pending.strip() if model.chat else pending.rstrip(" ")
            turns.append(Turn(role="user", text=prompt))
            pending = ""
            seeding = _seeding(spec, seed, place)
            if seeding[0] is not None:
                stats.seeds[spec.name] = seeding[0]
            choices = _choices(call, spec, values)
            value, text = await _generate(
                call, spec, turns, model, backend, stats, priority, shared_tokens, seeding, choices
            )
            outputs[spec.name] = value
            turns.append(Turn(role="assistant", text=text))
            if len(outputs) == len(specs):
                break
    if len(call.outputs) == 1:
        return outputs[call.outputs[0].name]
    return outputs


OPTION_RANGES = {
    "max_tokens": (1, MAX_OPTION_NUMBER, "a positive integer"),
    "temperature": (0, 2, "a number from 0 to 2"),
    "seed": (0, 2**63 - 1, "an integer from 0 to 2**63-1"),
}


def _with_inputs(call: LLMCall, spec: OutputSpec, values: dict[str, Any]) -> OutputSpec:
    """The output's options with those an input gives (`max_tokens=n`) filled in, each
    checked here because only now is its value known."""
    if not spec.from_inputs:
        return spec
    update: dict[str, Any] = {}
    for option, name in spec.from_inputs.items():
        value = values[name]
        low, high, what = OPTION_RANGES[option]
        whole = option != "temperature"
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (whole and not isinstance(value, int))
            or not low <= value <= high
        ):
            raise CallFailed(
                f"{call.function}(): output '{spec.name}': {option}={name} must be {what}, "
                f"but '{name}' is {value!r}"
            )
        update[option] = value
    return spec.model_copy(update=update)


def _cut_off(call: LLMCall, spec: OutputSpec, max_tokens: int, error: str) -> CallFailed:
    """The model stopped at the token cap mid-answer: asking again with the same cap would
    cut it again, so say which cap to raise rather than "not a valid ..."."""
    kind = "text" if isinstance(spec.type, AnyT) else str(spec.type)
    how = f"{{{{{spec.name} | max_tokens=...}}}}"
    return CallFailed(
        f"{call.function}(): output '{spec.name}' ({kind}) was cut off at "
        f"max_tokens={max_tokens} (finish reason: length) before it was complete ({error}); "
        f"raise max_tokens: {how}"
    )


def system_turn(text: str, chat: bool) -> Turn:
    """The system section as a turn: a chat model's system message; for a completion
    model, the leading text, set off from the rest by a blank line."""
    return Turn(role="system", text=text.strip() if chat else text.strip() + "\n\n")


def _choices(call: LLMCall, spec: OutputSpec, values: dict[str, Any]) -> list[str] | None:
    """The strings an output with `choices=` must be one of, from its input's value."""
    if spec.choices is None:
        return None
    given = spec.choices if isinstance(spec.choices, list) else values[spec.choices]
    choices = list(dict.fromkeys(given))
    if not choices:
        raise CallFailed(
            f"{call.function}(): output '{spec.name}' has no choices: '{spec.choices}' is empty"
        )
    return choices


def _seeding(spec: OutputSpec, seed: RunSeed | None, place: Place) -> tuple[int | None, bool]:
    """The output's seed, and whether it was drawn at random (greedy outputs need none:
    a seed would only split the response cache)."""
    if not spec.temperature:
        return None, False
    if spec.seed is not None:
        return derive_seed(spec.seed, place, spec.name), False
    if seed is None:
        return None, False
    return derive_seed(seed.value, place, spec.name), not seed.chosen


async def _generate(
    call: LLMCall,
    spec: OutputSpec,
    turns: list[Turn],
    model: ModelSpec,
    backend: Backend,
    stats: CallStats,
    priority: float,
    shared_tokens: int,
    seeding: tuple[int | None, bool],
    choices: list[str] | None = None,
) -> tuple[Any, str]:
    stop = spec.stop
    if stop is None:
        # A base model rambles on; without a stop it ends its answer at a blank line.
        plain = isinstance(spec.type, Prim) and spec.type.name == "str" and choices is None
        stop = ["\n\n"] if not model.chat and plain else []
    request = GenerationRequest(
        model=model.name,
        turns=turns,
        max_tokens=spec.max_tokens or default_max_tokens(spec.type),
        stop=stop,
        temperature=spec.temperature or 0.0,
        seed=seeding[0],
        random_seed=seeding[1],
        constraint=constraint_for(spec.type, choices),
        group=stats.group,
        shared_tokens=shared_tokens,
        priority=priority,
        node=stats.node or None,
    )
    error = ""
    for attempt in range(ATTEMPTS):
        generation = await backend.generate(request)
        stats.add(generation)
        text = generation.text if not model.chat else generation.text.strip()
        try:
            if choices is not None:
                return parse_choice(choices, text), text
            return parse_output(spec.type, text), text
        except InvalidValue as err:
            error = str(err)
        if generation.finish_reason == "length":
            raise _cut_off(call, spec, request.max_tokens, error)
        if attempt + 1 < ATTEMPTS:
            stats.validation_retries += 1
            lead_in = turns[-1].text.rsplit("\n", 1)[-1] if not model.chat else ""
            feedback = (
                f"That answer is not valid: {error}. Reply with only "
                + ("exactly one of: " + ", ".join(choices) if choices else describe_type(spec.type))
                + "."
            )
            request = request.model_copy(
                update={
                    "turns": [
                        *turns,
                        Turn(role="assistant", text=text),
                        Turn(role="user", text=f"\n{feedback}\n{lead_in}" if lead_in else feedback),
                    ]
                }
            )
    kind = "text" if isinstance(spec.type, AnyT) else str(spec.type)
    raise CallFailed(
        f"{call.function}(): output '{spec.name}' is not a valid {kind} "
        f"after {ATTEMPTS} attempts: {error}"
    )
