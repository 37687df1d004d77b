"""The one interface every model backend implements.

A backend turns a `GenerationRequest` into a `Generation`. The request is a conversation
so that chat models (which need their chat template) and completion models (which
continue raw text) can both serve the same template: a chat backend formats the turns
with the model's template, a completion backend concatenates their text.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field


class Turn(BaseModel):
    """One turn of the conversation a template lowers to."""

    role: Literal["system", "user", "assistant"]
    text: str


class Constraint(BaseModel):
    """What the generated text must look like, for backends that can enforce it.

    `choices`: the text is exactly one of these strings. `json_schema`: the text is a
    JSON document matching the schema. `pattern`: one of the named scalar shapes
    ("int", "float", "bool"). A backend that cannot enforce a constraint ignores it;
    the caller validates every result anyway.
    """

    choices: list[str] | None = None
    json_schema: dict[str, Any] | None = None
    pattern: Literal["int", "float", "bool"] | None = None


class GenerationRequest(BaseModel):
    model: str
    """The model's name as declared (its `ModelSpec.name`)."""
    turns: list[Turn]
    """The last turn is the user's (chat) or the text to continue (completion)."""
    max_tokens: int = 256
    stop: list[str] = Field(default_factory=list)
    temperature: float = 0.0
    constraint: Constraint | None = None
    seed: int | None = None
    group: str | None = None
    """The prefix group the optimizer put this call in: calls of one group start with
    the same text, so a backend should run them together and keep their shared prefix
    warm (a KV state, a prompt-cache key). None: no sharing expected (-O0)."""
    priority: float = 0.0
    """Higher runs first when requests wait for the same model (critical path, @latency)."""


class Generation(BaseModel):
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens the backend did not have to evaluate again (reused prefix)."""
    seconds: float = 0.0
    finish_reason: str | None = None


class Backend(Protocol):
    """A model server. One instance serves every model of its kind in a run."""

    async def generate(self, request: GenerationRequest) -> Generation: ...

    async def aclose(self) -> None: ...


class BackendError(Exception):
    """A backend could not serve a request; the message is safe to show the user."""
