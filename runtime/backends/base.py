"""The one interface every model backend implements.

A backend turns a `GenerationRequest` into a `Generation`. The request is a conversation
so that chat models (which need their chat template) and completion models (which
continue raw text) can both serve the same template: a chat backend formats the turns
with the model's template, a completion backend concatenates their text.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from llmflow.errors import LLMFlowError


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
    max_chars: int | None = None
    """Text of at most this many characters (a `str[max=N]` output)."""

    @model_serializer(mode="wrap")
    def _without_max_chars(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Left out when absent: response cache and cassette keys of requests without it
        stay what they were."""
        data: dict[str, Any] = handler(self)
        if self.max_chars is None:
            data.pop("max_chars", None)
        return data


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
    """The sampling seed (runs derive one per sampled call; None: greedy, or the
    backend's own choice)."""
    random_seed: bool = False
    """The seed was drawn at random for this run (no `--seed`, no `seed=`): no other run
    will ask this very request, so its answer is not kept in the response cache. Not
    part of any key."""
    group: str | None = None
    """The prefix group the optimizer put this call in: calls of one group start with
    the same text, so a backend should run them together and keep their shared prefix
    warm (a KV state, a prompt-cache key). None: no sharing expected (-O0)."""
    shared_tokens: int = 0
    """About how many leading tokens the group's calls share (the optimizer's estimate):
    whether warming a provider's prompt cache first is worth a round trip."""
    priority: float = 0.0
    """Higher runs first when requests wait for the same model (critical path, @latency)."""
    node: str | None = None
    """The IR node this request serves (for traces and logs); never part of a cache key."""


class Generation(BaseModel):
    text: str
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    cached_tokens: int = Field(0, ge=0)
    """Prompt tokens the backend did not have to evaluate again (reused prefix)."""
    seconds: float = Field(0.0, ge=0, allow_inf_nan=False)
    finish_reason: str | None = None
    dollars: float = Field(0.0, ge=0, allow_inf_nan=False)
    """What this answer cost at the model's prices (the gateway sets it; answers from
    the cache or a journal cost nothing)."""
    source: Literal["model", "cache", "journal", "cassette"] = "model"
    """Who answered: the model, the response cache, a resumed run's journal, or a test's
    cassette of recorded answers (`runtime/cassette.py`)."""
    seed: int | None = None
    """The seed the answer was sampled with (the request's), kept in the journal."""
    retries: int = 0
    """Failed tries before this answer (429s, 5xx, timeouts, dropped connections)."""
    events: list[dict[str, Any]] = Field(default_factory=list)
    """What happened on the way, with times: {"name": "retry", "time": …, "reason": "429"}."""


class Backend(Protocol):
    """A model server. One instance serves every model of its kind in a run."""

    async def generate(self, request: GenerationRequest) -> Generation: ...

    async def aclose(self) -> None: ...


class BackendError(LLMFlowError):
    """A backend could not serve a request; the message is safe to show the user (it
    never holds an API key).

    `retryable`: the same request may succeed later (408, 409, 429, 5xx, a timeout, a
    dropped connection, a malformed response). `retry_after`: seconds the server asked
    us to wait, if it said. `status`: the HTTP status, if there was one. `sent`: whether
    the request may have reached the server (False when the connection never opened: a
    refused connection, a name that does not resolve; then nothing can have been billed)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.sent = sent
